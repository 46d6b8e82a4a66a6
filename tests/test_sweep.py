"""Optuna sweeps over LightningCLI: space parsing, pruning, resume, failures, best.yaml.

The trials run ``experiments/sweeps/stage2_tiny.yaml`` with its data module swapped for
:class:`SphereDataModule` (in-memory spheres, no phantom rendering) so a trial takes seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import lightning as L
import optuna
import pytest
import yaml
from optuna.trial import TrialState
from torch.utils.data import DataLoader

from lungvlm.cli import main
from lungvlm.commands import sweep as sweep_cli
from lungvlm.commands.fit import LungVLMCLI
from lungvlm.sweep.report import merged_config_yaml
from lungvlm.sweep.runner import cli_args, default_storage, format_value, open_study, run_sweep
from lungvlm.sweep.space import ParamSpec, SweepConfig
from lungvlm.types import collate_samples
from tests.conftest import sphere_sample

REPO = Path(__file__).resolve().parents[1]
TINY_SWEEP = REPO / "experiments" / "sweeps" / "stage2_tiny.yaml"
SPHERES = "tests.test_sweep.SphereDataModule"
CROP_VOX = 24  # 24-voxel crops, batches of 1, no context branch: a CPU trial takes seconds


class SphereDataModule(L.LightningDataModule):
    """In-memory sphere crops (tests/conftest.py) with the phantom module's size arguments.

    Args:
        crop_size_vox: edge of the cubic crop (voxels).
        n_train: training samples (seeds 0 .. n_train - 1).
        n_val: validation samples (seeds 100 .. 100 + n_val - 1).
        batch_size: samples per batch.
    """

    normalization = {"hu_min": -1000.0, "hu_max": 400.0}

    def __init__(
        self, crop_size_vox: int = 32, n_train: int = 4, n_val: int = 2, batch_size: int = 2
    ) -> None:
        super().__init__()
        self.crop_size_vox, self.batch_size = crop_size_vox, batch_size
        self.n_train, self.n_val = n_train, n_val

    def _loader(self, seeds: range) -> DataLoader:
        radius_vox = self.crop_size_vox / 4
        samples = [sphere_sample(s, self.crop_size_vox, radius_vox) for s in seeds]
        return DataLoader(samples, batch_size=self.batch_size, collate_fn=collate_samples)

    def train_dataloader(self) -> DataLoader:
        return self._loader(range(self.n_train))

    def val_dataloader(self) -> DataLoader:
        return self._loader(range(100, 100 + self.n_val))


def tiny_sweep_dict(**changes) -> dict:
    """stage2_tiny.yaml with sphere data and ``changes`` applied to its top-level entries."""
    raw = yaml.safe_load(TINY_SWEEP.read_text())
    raw["base_configs"] = [str(REPO / p) for p in raw["base_configs"]]
    raw["overrides"]["data.class_path"] = SPHERES
    raw["overrides"]["data.init_args.crop_size_vox"] = CROP_VOX
    raw["overrides"]["data.init_args.batch_size"] = 1
    raw["overrides"]["model.encoder.init_args.use_context"] = False
    raw.update(changes)
    return raw


def tiny_sweep(**changes) -> SweepConfig:
    """:func:`tiny_sweep_dict` parsed."""
    return SweepConfig.from_dict(tiny_sweep_dict(**changes))


def states(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


# ---------------------------------------------------------------- the sweep YAML
def test_tiny_sweep_file_parses_with_its_space():
    config = SweepConfig.from_yaml(TINY_SWEEP)
    assert config.metric == "val/seg/dice" and config.direction == "maximize"
    assert config.n_trials == 6
    assert [p.key for p in config.space] == [
        "model.optimizer.init_args.lr",
        "model.seg_loss.init_args.hausdorff_weight",
        "model.encoder.init_args.fpn_channels",
    ]
    lr = config.space[0]
    assert (lr.type, lr.low, lr.high, lr.log) == ("float", 1e-6, 1e-1, True)
    pruner = config.build_pruner()
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert pruner._n_startup_trials == 2 and pruner._n_warmup_steps == 0


def test_suggest_reads_the_space_and_cli_args_layer_in_order():
    config = tiny_sweep(space={"a.lr": {"type": "float", "low": 0.1, "high": 1.0}})
    fixed = optuna.trial.FixedTrial({"a.lr": 0.25})
    params = config.suggest(fixed)
    assert params == {"a.lr": 0.25}
    args = cli_args(config, params, "/tmp/run")
    configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    assert [Path(c).name for c in configs] == ["base.yaml", "stage2.yaml", "debug.yaml"]
    assert args[-3:] == ["--a.lr=0.25", "--run_dir", "/tmp/run"]
    assert "--model.init_from=null" in args and f"--data.class_path={SPHERES}" in args
    assert format_value(True) == "true" and format_value("[8, 16]") == "[8, 16]"


@pytest.mark.parametrize("sweep_file", sorted((REPO / "experiments" / "sweeps").glob("*.yaml")))
def test_every_sweep_file_layers_into_a_config_that_parses(sweep_file, monkeypatch):
    monkeypatch.chdir(REPO)  # base_configs are relative to the repository root
    config = SweepConfig.from_yaml(sweep_file)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = config.suggest(trial)
    merged = yaml.safe_load(merged_config_yaml(config, params, "runs/check"))
    for key, value in {**config.overrides, **params}.items():
        node = merged
        for part in key.split("."):
            node = node[part]
        # A str-or-int argument (trainer.devices) keeps the command-line string, exactly as
        # `lungvlm fit --trainer.devices 1` does; Lightning reads "1" as one device.
        assert node == (format_value(value) if isinstance(node, str) else value), key
    if "model.loss_weights.contrastive" in params:  # dotted keys merge into the dict
        stage3 = yaml.safe_load((REPO / "experiments" / "stage3.yaml").read_text())
        assert set(merged["model"]["loss_weights"]) == set(stage3["model"]["loss_weights"])
        assert merged["model"]["loss_weights"]["report"] == 1.0


def test_int_and_categorical_specs_draw_within_their_range():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    depth = ParamSpec.from_dict("d", {"type": "int", "low": 2, "high": 8, "step": 2})
    norm = ParamSpec.from_dict("n", {"type": "categorical", "choices": ["instance", "batch"]})
    drawn = [(depth.suggest(t), norm.suggest(t)) for t in (study.ask() for _ in range(20))]
    assert {d for d, _ in drawn} <= {2, 4, 6, 8} and len({d for d, _ in drawn}) > 1
    assert {n for _, n in drawn} == {"instance", "batch"}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (
            {"type": "flaot", "low": 0, "high": 1},
            r"type='flaot' is not valid.*did you mean 'float'",
        ),
        ({"type": "float", "low": 2.0, "high": 1.0}, r"low=2.0 is above high=1.0"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, r"log=true needs low > 0"),
        ({"type": "int", "low": 1}, r"needs 'low' and 'high'"),
        ({"type": "categorical", "choices": []}, r"expected a non-empty list"),
        ({"type": "categorical", "choices": [[8, 16]]}, r"write lists as YAML strings"),
        ({"type": "float", "low": 0, "high": 1, "choices": [1]}, r"unknown entries \['choices'\]"),
    ],
)
def test_bad_param_specs_are_rejected(spec, match):
    with pytest.raises(ValueError, match=match):
        ParamSpec.from_dict("model.x", spec)


def test_bad_sweep_configs_are_rejected():
    raw = yaml.safe_load(TINY_SWEEP.read_text())
    with pytest.raises(ValueError, match=r"unknown sweep keys \['metrc'\].*did you mean 'metric'"):
        SweepConfig.from_dict({**raw, "metrc": "val/loss"})
    with pytest.raises(ValueError, match=r"direction='maximise'.*did you mean 'maximize'"):
        SweepConfig.from_dict({**raw, "direction": "maximise"})
    with pytest.raises(ValueError, match=r"pruner.type='medain'.*did you mean 'median'"):
        SweepConfig.from_dict({**raw, "pruner": {"type": "medain"}})
    clash = {**raw, "overrides": {"model.optimizer.init_args.lr": 0.1}}
    with pytest.raises(ValueError, match=r"both fixed in overrides and searched"):
        SweepConfig.from_dict(clash)
    with pytest.raises(FileNotFoundError, match="nope.yaml does not exist"):
        SweepConfig.from_yaml(REPO / "nope.yaml")


# ---------------------------------------------------------------- real trials
def sweep_then_resume(tmp_path: Path, first: int, total: int, **changes) -> optuna.Study:
    """Run ``first`` trials through the API, then resume to ``total`` through ``sweep``."""
    config = tiny_sweep(**changes)
    study = run_sweep(config, tmp_path, n_trials=first, study_name="tiny", write_outputs=False)
    assert len(study.trials) == first
    assert not (tmp_path / "best.yaml").exists()

    # Same storage (the default OUT/study.db) and study name: only the missing trials run.
    sweep_yaml = tmp_path / "sweep.yaml"
    sweep_yaml.write_text(yaml.safe_dump(tiny_sweep_dict(**changes)))
    parser = argparse.ArgumentParser()
    sweep_cli.register(parser.add_subparsers())
    argv = ["sweep", "--config", str(sweep_yaml), "--trials", str(total)]
    namespace = parser.parse_args([*argv, "--out", str(tmp_path), "--study", "tiny"])
    assert namespace.func(namespace) == 0
    study = optuna.load_study(study_name="tiny", storage=default_storage(tmp_path))
    assert [t.number for t in study.trials] == list(range(total))  # nothing ran twice
    counts = states(study)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == total, counts
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == total
    rows = (tmp_path / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == total + 1 and "params_model.optimizer.init_args.lr" in rows[0]
    return study


def test_sweep_prunes_resumes_and_writes_a_best_config_that_fits(tmp_path, capsys):
    start = time.perf_counter()
    # Prune from the second trial on, so that three trials are enough to see a pruned one.
    pruner = {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}
    study = sweep_then_resume(tmp_path, first=2, total=3, pruner=pruner)
    printed = capsys.readouterr().out
    print(f"3 trials: {time.perf_counter() - start:.1f} s, states {states(study)}")
    assert f"best config: {tmp_path / 'best.yaml'}" in printed

    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(pruned) >= 1, states(study)
    assert all(t.intermediate_values for t in pruned)  # reported per epoch before pruning
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert study.best_trial.value == max(t.value for t in complete)
    assert all(set(t.intermediate_values) == {0, 1} for t in complete)  # one per epoch
    assert (tmp_path / "optimization_history.png").stat().st_size > 0

    best_yaml = tmp_path / "best.yaml"
    best = yaml.safe_load(best_yaml.read_text())
    lr = study.best_trial.params["model.optimizer.init_args.lr"]
    assert best["model"]["optimizer"]["init_args"]["lr"] == pytest.approx(lr)
    assert best["trainer"]["max_epochs"] == 2 and best["model"]["init_from"] is None
    assert best["data"]["class_path"] == SPHERES
    assert best["data"]["init_args"]["crop_size_vox"] == CROP_VOX
    assert best["run_dir"] == str(tmp_path / "best")
    parsed = LungVLMCLI(args=["--config", str(best_yaml)], run=False)
    fpn = study.best_trial.params["model.encoder.init_args.fpn_channels"]
    assert parsed.model.encoder.fpn_channels == fpn
    assert parsed.trainer.max_epochs == 2

    # `lungvlm fit --config OUT/best.yaml` accepts it unchanged. (Outside capsys: `main` adds
    # a logging handler bound to the current stderr, which capsys closes after this test.)
    with capsys.disabled():
        assert main(["fit", "--config", str(best_yaml), "--trainer.fast_dev_run=true"]) == 0


@pytest.mark.slow
def test_six_trials_with_the_tiny_sweeps_own_pruner(tmp_path):
    start = time.perf_counter()
    study = sweep_then_resume(tmp_path, first=3, total=6)
    print(f"6 trials: {time.perf_counter() - start:.1f} s, states {states(study)}")
    assert states(study).get("PRUNED", 0) >= 1, states(study)
    assert (tmp_path / "param_importances.png").stat().st_size > 0


def test_failing_trials_are_recorded_and_the_study_continues(tmp_path):
    # mask_ratio=1.5 makes LungVLMModule raise ValueError; the next trial must still run.
    ratio = {"model.mask_ratio": {"type": "categorical", "choices": [1.5, 0.5]}}
    config = tiny_sweep(space=ratio, n_trials=1, pruner={"type": "none"})
    study = open_study(config, default_storage(tmp_path), "fails")
    study.enqueue_trial({"model.mask_ratio": 1.5})
    study.enqueue_trial({"model.mask_ratio": 0.5})
    # n_trials=1 counts only COMPLETE/PRUNED trials: after the failure one is still to run.
    study = run_sweep(config, tmp_path, study_name="fails", max_failures=3)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    first, last = study.trials[0], study.trials[-1]
    assert first.params == {"model.mask_ratio": 1.5} and first.value is None
    assert last.params == {"model.mask_ratio": 0.5} and last.value > 0.0
    assert (tmp_path / "trials.csv").read_text().count("FAIL") == 1

    # A value the parser rejects (not a stage) is a FAIL too, not a process exit, and a
    # worker whose trials all fail stops after max_failures (default n_trials) of them.
    stage = {"model.stage": {"type": "categorical", "choices": ["segmnet"]}}
    config = tiny_sweep(space=stage, n_trials=5)
    study = run_sweep(config, tmp_path, study_name="bad-config", max_failures=2)
    assert states(study) == {"FAIL": 2}


# ---------------------------------------------------------------- PostgreSQL (opt-in)
POSTGRES_DRIVERS = {"psycopg2": "psycopg2", "psycopg": "psycopg", "pg8000": "pg8000"}


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server (trust auth, 127.0.0.1, random port) and database."""
    import importlib.util
    import pwd

    driver = next((d for d, m in POSTGRES_DRIVERS.items() if importlib.util.find_spec(m)), None)
    if driver is None:
        pytest.skip("no PostgreSQL driver for SQLAlchemy installed (psycopg2, psycopg, pg8000)")
    tools = {name: _postgres_bin(name) for name in ("initdb", "pg_ctl", "createdb")}
    if not all(tools.values()):
        pytest.skip(f"PostgreSQL server binaries not found: {tools}")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="lungvlm-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None or shutil.which("runuser") is None:
            pytest.skip("running as root without a 'postgres'/'nobody' user or runuser")
        record = pwd.getpwnam(user)
        os.chown(root, record.pw_uid, record.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    port, data = _free_port(), root / "data"
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"

    def call(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=60)

    steps = [
        (tools["initdb"], "-D", str(data), "-A", "trust", "-U", "sweep"),
        (tools["pg_ctl"], "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"),
        (tools["createdb"], "-h", "127.0.0.1", "-p", str(port), "-U", "sweep", "optuna"),
    ]
    try:
        for step in steps:
            done = call(*step)
            if done.returncode != 0:
                pytest.skip(f"could not start PostgreSQL ({step[0]}): {done.stderr[-500:]}")
        yield f"postgresql+{driver}://sweep@127.0.0.1:{port}/optuna"
    finally:
        call(tools["pg_ctl"], "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.mark.slow
def test_two_trials_share_a_postgresql_study(tmp_path, postgres_url):
    config = tiny_sweep(pruner={"type": "none"})
    run_sweep(config, tmp_path / "a", n_trials=1, storage=postgres_url, study_name="pg")
    # A second worker (another folder, same storage and name) adds the second trial.
    study = run_sweep(config, tmp_path / "b", n_trials=2, storage=postgres_url, study_name="pg")
    assert states(study) == {"COMPLETE": 2}
    assert [Path(t.user_attrs["run_dir"]).parent.name for t in study.trials] == ["a", "b"]
    assert (tmp_path / "b" / "best.yaml").exists()


def test_resumed_study_does_not_replay_parameters():
    from lungvlm.sweep.space import SweepConfig

    raw = {
        "base_configs": ["experiments/base.yaml"],
        "metric": "val/loss",
        "direction": "minimize",
        "sampler": {"type": "random", "seed": 0},
        "space": {"model.mask_ratio": {"type": "float", "low": 0.1, "high": 0.9}},
    }
    config = SweepConfig.from_dict(raw)
    first = config.build_sampler()
    resumed = config.build_sampler(seed_offset=3)
    assert first._rng.rng.random() != resumed._rng.rng.random()
    again = config.build_sampler()
    assert config.build_sampler()._rng.rng.random() == again._rng.rng.random()
