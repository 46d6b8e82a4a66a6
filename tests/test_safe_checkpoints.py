"""No entry point unpickles a file a user hands us.

Each test feeds a file whose unpickling would create a marker file (``__reduce__`` -> ``open``)
to one entry point: a clear error naming the refusal, and no marker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.io import write_nifti
from data_modules.phantom import PhantomConfig, generate_case
from lungvlm import cli
from lungvlm.lightning.checkpoint import plain_data, read_checkpoint
from tests.cli_helpers import CreatesMarker
from tests.report_fixtures import write_stage3_checkpoint

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> tuple[Path, Path]:
    """A real stage-3 checkpoint plus one entry whose unpickling creates a marker file."""
    folder = tmp_path_factory.mktemp("evil")
    path = write_stage3_checkpoint(folder / "good.ckpt")
    marker = folder / "MARKER"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["lungvlm"]["payload"] = CreatesMarker(marker)
    torch.save(checkpoint, folder / "evil.ckpt")
    assert not marker.exists()
    return folder / "evil.ckpt", marker


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    case = generate_case(0, PhantomConfig.tiny())
    path = tmp_path_factory.mktemp("scan") / "chest.nii.gz"
    return write_nifti(case.image_hu, path, spacing_mm=case.spacing_mm, origin=case.origin_lps_mm)


def _refused(capsys, marker: Path) -> None:
    err = capsys.readouterr().err
    assert "safe load refuses" in err and "open" in err, err
    assert not marker.exists()


def test_marker_object_is_really_unsafe(tmp_path):
    """The payload is dangerous: what its pickle runs on load (``__reduce__``) creates the
    marker. Run here directly, without unpickling anything."""
    marker = tmp_path / "copy_marker"
    call, args = CreatesMarker(marker).__reduce__()
    assert call is open
    call(*args).close()
    assert marker.exists()


def test_read_checkpoint_refuses(evil):
    path, marker = evil
    with pytest.raises(ValueError, match=r"holds a Python object \(\S*open\) that a safe load"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["report", "{scan}", "--out", "{tmp}/case"],
        ["ask", "{scan}", "Where is it?", "--nodule", "1"],
        ["calibrate", "--n-val", "1"],
        ["evaluate", "{scan}"],
        ["evaluate-reports", "--out", "{tmp}/eval", "--phantom-seeds", "0:1"],
        ["predict", "{scan_dir}", "--out", "{tmp}/batch"],
        ["export-onnx", "--out", "{tmp}/model.onnx"],
    ],
    ids=lambda c: c[0],
)
def test_inference_commands_refuse(command, evil, scan, tmp_path, capsys):
    path, marker = evil
    values = {"scan": str(scan), "scan_dir": str(scan.parent), "tmp": str(tmp_path)}
    args = [part.format(**values) for part in command] + ["--ckpt", str(path)]
    assert cli.main(args) == 2
    _refused(capsys, marker)


def test_fit_init_from_refuses(evil, tmp_path, capsys):
    path, marker = evil
    args = ["fit"] + [
        a for n in ("base", "stage2", "debug") for a in ("--config", str(EXPERIMENTS / f"{n}.yaml"))
    ]
    args += [f"--run_dir={tmp_path}", f"--model.init_from={path}", "--trainer.fast_dev_run=true"]
    assert cli.main(args) == 2
    _refused(capsys, marker)


def test_fit_ckpt_path_refuses(tmp_path, capsys):
    """Resuming (``--ckpt_path``) goes through Lightning's loader with weights_only=True."""
    args = ["fit"] + [
        a for n in ("base", "stage2", "debug") for a in ("--config", str(EXPERIMENTS / f"{n}.yaml"))
    ]
    args += [f"--run_dir={tmp_path / 'run'}", "--model.init_from=null", "--trainer.max_epochs=1"]
    assert cli.main(args) == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)  # our own checkpoints load safely
    marker = tmp_path / "MARKER"
    checkpoint["lungvlm"]["payload"] = CreatesMarker(marker)
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    resume = [*args[:-1], "--trainer.max_epochs=2", f"--ckpt_path={tmp_path / 'evil.ckpt'}"]
    assert cli.main(resume) == 2
    err = capsys.readouterr().err
    assert "--ckpt_path" in err and "safe load refuses" in err
    assert not marker.exists()
    assert cli.main(["fit", *args[1:], "--weights_only=false"]) == 2
    assert "--weights_only false is refused" in capsys.readouterr().err


def test_phantom_cache_never_unpickles(tmp_path):
    """The phantom cache is .npz read with allow_pickle=False: an object array is refused."""
    from data_modules.phantom_datamodule import read_cached_sample

    marker = tmp_path / "MARKER"
    path = tmp_path / "phantom-evil-0.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = CreatesMarker(marker)
    np.savez(
        path, image=payload, context=payload, mask=payload, concepts=payload, json=np.array("{}")
    )
    with pytest.raises(
        ValueError, match=r"phantom-evil-0.npz is not a readable LungVLM cache entry"
    ):
        read_cached_sample(path)
    assert not marker.exists()


def test_plain_data_turns_config_objects_into_loadable_values(tmp_path):
    from jsonargparse import Namespace

    value = {"path": tmp_path, "ns": Namespace(a=1, b=(2, 3)), "items": {4, 5}, "t": torch.ones(2)}
    plain = plain_data(value)
    assert plain["path"] == str(tmp_path) and plain["ns"] == {"a": 1, "b": (2, 3)}
    assert sorted(plain["items"]) == [4, 5]
    torch.save(plain, tmp_path / "plain.pt")
    loaded = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert loaded["ns"] == {"a": 1, "b": (2, 3)} and torch.equal(loaded["t"], torch.ones(2))
