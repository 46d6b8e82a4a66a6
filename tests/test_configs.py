"""Every YAML under experiments/ parses with the real LightningCLI parser and instantiates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lungvlm.cli import PLAIN_COMMANDS, build_parser, main
from lungvlm.commands.fit import LungVLMCLI, resolve_precision
from lungvlm.lightning.module import LungVLMModule

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
STAGE_FILES = sorted(p.name for p in EXPERIMENTS.glob("stage[0-9].yaml"))
OVERLAYS = sorted(
    p.name for p in EXPERIMENTS.glob("*.yaml") if p.name not in STAGE_FILES + ["base.yaml"]
)


def parse(*files: str) -> LungVLMCLI:
    args: list[str] = []
    for name in ("base.yaml", *files):
        args += ["--config", str(EXPERIMENTS / name)]
    return LungVLMCLI(args=args, run=False)


def test_every_experiment_file_is_covered():
    assert STAGE_FILES == ["stage1.yaml", "stage2.yaml", "stage3.yaml"]
    assert "debug.yaml" in OVERLAYS


@pytest.mark.parametrize("stage_file", STAGE_FILES)
def test_stage_configs_parse_and_instantiate(stage_file):
    cli = parse(stage_file, "debug.yaml")
    assert isinstance(cli.model, LungVLMModule)
    expected = {
        "stage1.yaml": "pretrain",
        "stage2.yaml": "segment",
        "stage3.yaml": "vision_language",
    }
    assert cli.model.stage == expected[stage_file]
    assert cli.trainer.max_epochs == 1  # debug.yaml overrides the stage


def test_long_stage3_overlay_parses():
    assert "stage3_long.yaml" in OVERLAYS
    cli = parse("stage3.yaml", "stage3_long.yaml")
    assert cli.model.stage == "vision_language"
    assert cli.model.vl_heads.decoder.d_model == 256
    assert cli.config["data"]["init_args"]["crop_size_vox"] == 48


def test_stage2_inherits_from_stage1_checkpoint_path():
    cli = parse("stage2.yaml", "debug.yaml")
    assert cli.model.init_from == "runs/stage1/checkpoints/last.ckpt"


@pytest.mark.parametrize(
    ("value", "cuda", "expected"),
    [(None, True, "bf16-mixed"), (None, False, "32-true"), ("16-mixed", False, "16-mixed")],
)
def test_precision_auto(value, cuda, expected):
    assert resolve_precision(value, cuda) == expected


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    text = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "phantom"):
        assert command in text
    assert build_parser().prog == "lungvlm"


HEAVY_MODULES = ("torch", "lightning", "monai", "transformers", "data_modules")


@pytest.mark.parametrize("command", [None, *PLAIN_COMMANDS])
def test_help_imports_no_heavy_library(command):
    """`lungvlm --help` and `lungvlm COMMAND --help` import neither torch nor Lightning (fast)."""
    argv = ["--help"] if command is None else [command, "--help"]
    code = (
        "import sys\n"
        "from lungvlm.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip().splitlines()[-1] == "[]", out
    if command is not None:
        assert f"usage: lungvlm {command}" in out


def test_unknown_command_suggests_the_nearest(capsys):
    assert main(["reprot"]) == 2
    assert "did you mean 'report'?" in capsys.readouterr().err


def test_fast_dev_run_of_stage3_debug_config(tmp_path):
    args = ["fit"]
    for name in ("base.yaml", "stage3.yaml", "debug.yaml"):
        args += ["--config", str(EXPERIMENTS / name)]
    args += [
        "--trainer.fast_dev_run=true",
        f"--run_dir={tmp_path}",
        f"--model.init_from={tmp_path / 'none.ckpt'}",
    ]
    assert main(args) == 0
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()


def test_more_mining_overlay_continues_stage2_into_its_pool():
    assert "stage2_more_mining.yaml" in OVERLAYS
    cli = parse("stage2.yaml", "stage2_more_mining.yaml")
    assert cli.model.stage == "segment"
    assert cli.model.init_from == "runs/stage2/checkpoints/last.ckpt"
    mining = [
        c for c in cli.config["trainer"]["callbacks"] if "HardNegativeMining" in c["class_path"]
    ]
    assert len(mining) == 1
    assert mining[0]["init_args"]["epochs"] == [0, 2, 4]
    assert mining[0]["init_args"]["out_dir"] == cli.config["data"]["init_args"]["mined_dir"]
