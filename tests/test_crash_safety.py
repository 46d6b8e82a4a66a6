"""kill -9 tests (issue 16, part 3): no orphan workers, no stale temp folder, no lost history.

- ``preprocess --workers 2`` killed with SIGKILL: both worker processes are gone within
  seconds (they die with their parent), and a rerun finishes the cache with no ``.tmp-*``.
- a fit resumed from ``last.ckpt`` keeps the earlier ``metrics.csv`` rows and takes its
  tokenizer from the checkpoint (training a new one would raise here), also after a resumed
  run was itself killed.
- a killed ``report`` leaves a ``.partial`` folder that the next write removes; the folder of
  a report still being written is kept. A real ``kill -9`` while it writes leaves no output
  folder (and no orphan), and the rerun writes the whole report and nothing else. An overwrite
  killed between its two renames leaves a ``.old`` folder: the previous report is restored.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from data_modules.cache import CASE_FILES
from data_modules.phantom.generator import PhantomConfig, generate_case
from data_modules.phantom.writers import write_lidc_tree
from lungvlm.cli import main
from lungvlm.export.case_folder import WRITER_FILE, remove_stale_partials

ROOT = Path(__file__).resolve().parents[1]
LUNGVLM = [sys.executable, "-m", "lungvlm.cli"]
TINY = PhantomConfig.tiny(shape_zyx=(24, 40, 40), z_extent_mm=160.0, with_report=False)


def _wait(predicate, timeout_s: float, period_s: float = 0.05) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(period_s)
    return False


def test_killed_preprocess_leaves_no_orphan_worker(tmp_path: Path):
    src, dst = tmp_path / "lidc", tmp_path / "cache"
    for seed in range(6):
        write_lidc_tree(generate_case(seed, TINY), src)
    args = ["preprocess", "lidc", "--src", str(src), "--dst", str(dst), "--spacing", "4",
            "--workers", "2", "--no-progress"]  # fmt: skip
    parent = subprocess.Popen([*LUNGVLM, *args], cwd=ROOT, stdout=subprocess.DEVNULL)
    proc = psutil.Process(parent.pid)
    try:
        busy = _wait(lambda: len(proc.children()) >= 2 and dst.is_dir(), 60)
        assert busy, "the pool never started"
        workers = proc.children()
        time.sleep(0.3)  # let the workers take cases
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        gone, alive = psutil.wait_procs(workers, timeout=5)
        assert alive == [], f"orphan workers still running: {[p.pid for p in alive]}"
        assert len(gone) == len(workers) >= 2
    finally:
        for child in psutil.Process(parent.pid).children() if parent.poll() is None else []:
            child.kill()
    rerun = subprocess.run([*LUNGVLM, *args], cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert [p.name for p in dst.iterdir() if p.name.startswith(".tmp-")] == []
    cases = [p for p in dst.iterdir() if p.is_dir()]
    assert len(cases) == 6 and all((c / f).is_file() for c in cases for f in CASE_FILES)


LANGUAGE_OVERLAY = """
trainer:
  accelerator: cpu
  devices: 1
  precision: 32-true
  max_steps: 4
  val_check_interval: 2
  limit_val_batches: 1
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
model:
  encoder:
    init_args: {widths: [4, 8, 8, 16, 16], depths: [1, 1, 1, 1, 1], fpn_channels: 8}
  vl_heads:
    init_args: {vocab_size: 300, d_model: 32, n_layers: 1, n_heads: 2, max_length: 64}
  vl:
    tokenizer_corpus_size: 40
data:
  init_args: {n_texts: 40, batch_size: 4}
"""


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _fit_args(tmp_path: Path, *extra: str) -> list[str]:
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(LANGUAGE_OVERLAY)
    args = ["fit"]
    for name in (ROOT / "experiments/base.yaml", ROOT / "experiments/language.yaml", overlay):
        args += ["--config", str(name)]
    return [*args, f"--run_dir={tmp_path / 'run'}", *extra]


def test_resumed_fit_keeps_history_and_tokenizer_after_a_kill(tmp_path: Path, monkeypatch):
    first = subprocess.run([*LUNGVLM, *_fit_args(tmp_path)], cwd=ROOT, capture_output=True)
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    metrics = tmp_path / "run" / "csv" / "metrics.csv"
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = _rows(metrics)
    assert max(int(r["step"]) for r in before) == 3  # steps 0..3 of max_steps 4
    energy = json.loads((tmp_path / "run" / "energy.json").read_text())
    assert [s["status"] for s in energy["segments"]] == ["completed"]
    assert energy["energy_kwh"] > 0 and energy["co2e_kg"] > 0 and "codecarbon" in energy["method"]
    assert any(r.get("energy/kwh") for r in before)  # logged beside the training metrics
    saved = tmp_path / "first.ckpt"
    shutil.copy(last, saved)
    # A resumed run killed at once: it may have moved metrics.csv aside; nothing is lost.
    resumed = _fit_args(tmp_path, f"--ckpt_path={saved}", "--trainer.max_steps=1000")
    victim = subprocess.Popen([*LUNGVLM, *resumed], cwd=ROOT, stderr=subprocess.DEVNULL)
    assert _wait(lambda: len(list((tmp_path / "run/tensorboard").glob("events.*"))) >= 2, 120)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)

    from lungvlm.lightning.vision_language import VisionLanguageTask

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer was trained again on resume")

    monkeypatch.setattr(VisionLanguageTask, "fit_tokenizer", refuse)
    assert main(_fit_args(tmp_path, f"--ckpt_path={saved}", "--trainer.max_steps=6")) == 0
    after = _rows(metrics)
    step = torch.load(saved, weights_only=True, map_location="cpu")["global_step"]
    assert step == 4
    old = [r for r in after if int(r["step"]) < step]  # steps done before the checkpoint
    assert [{k: v for k, v in r.items() if v} for r in old] == [
        {k: v for k, v in r.items() if v} for r in before
    ]
    assert sorted({int(r["step"]) for r in after if int(r["step"]) >= step}) == [4, 5]
    assert not (metrics.parent / ".metrics.csv.before-resume").exists()
    energy = json.loads((tmp_path / "run" / "energy.json").read_text())
    assert len(energy["segments"]) == 2  # the killed run recorded nothing; the resumed one did
    assert energy["energy_kwh"] == pytest.approx(sum(s["energy_kwh"] for s in energy["segments"]))


def test_stale_report_partial_is_removed_and_a_live_one_kept(tmp_path: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live, legacy = (tmp_path / f".case.{n}.partial" for n in ("a1", "b2", "c3"))
    for folder, pid in ((stale, dead.pid), (live, os.getpid())):
        folder.mkdir()
        (folder / WRITER_FILE).write_text(str(pid))
        (folder / "report.json").write_text("{")
    legacy.mkdir()  # no writer file, fresh: kept (could still be written by an old version)
    (legacy / "report.json").write_text("{")
    assert remove_stale_partials(tmp_path) == [stale]
    assert not stale.exists() and (live / "report.json").is_file() and legacy.is_dir()
    old = time.time() - 7200
    os.utime(legacy, (old, old))
    assert remove_stale_partials(tmp_path) == [legacy]


@pytest.mark.parametrize("pid", [0, -1])
def test_pid_alive_rejects_non_pids(pid: int):
    from lungvlm.processes import owner_pid, pid_alive

    assert pid_alive(pid) is False and pid_alive(os.getpid()) is True
    assert owner_pid(".tmp-1.2.3-4567") == 4567 and owner_pid(".tmp-case") is None


def _report_args(scan: Path, ckpt: Path, out: Path) -> list[str]:
    # The tiny test model segments the whole lung, which the runaway guard refuses.
    return ["report", str(scan), "--ckpt", str(ckpt), "--out", str(out), "--keep-unconfirmed",
            "--device", "cpu", "--no-progress", "--no-guard"]  # fmt: skip


def _writing(parent: Path) -> bool:
    return parent.is_dir() and any(parent.glob(".*.partial"))


def test_an_empty_unclaimed_partial_is_stale_after_seconds(tmp_path: Path):
    # A run killed between creating its .partial folder and writing its pid into it.
    fresh, killed = tmp_path / ".case.a1.partial", tmp_path / ".case.b2.partial"
    fresh.mkdir()
    killed.mkdir()
    then = time.time() - 5.0  # older than UNOWNED_EMPTY_STALE_S (2 s)
    os.utime(killed, (then, then))
    os.utime(fresh, (time.time() + 60.0,) * 2)  # "just created", whatever the test's pace
    assert remove_stale_partials(tmp_path) == [killed]
    assert fresh.is_dir() and not killed.exists()


def test_report_killed_while_writing_leaves_nothing_and_reruns(tmp_path: Path):
    from data_modules.io import write_nifti
    from tests.report_fixtures import write_stage3_checkpoint

    ckpt = write_stage3_checkpoint(tmp_path / "last.ckpt")
    case = generate_case(0, TINY)
    scan = tmp_path / "chest.nii.gz"
    write_nifti(case.image_hu, scan, spacing_mm=case.spacing_mm, origin=case.origin_lps_mm)
    parent, out = tmp_path / "reports", tmp_path / "reports" / "case"
    args = _report_args(scan, ckpt, out)
    killed = False
    for _ in range(3):  # the export takes seconds; poll for its .partial folder and kill there
        proc = subprocess.Popen([*LUNGVLM, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            assert _wait(lambda p=proc: _writing(parent) or p.poll() is not None, 300, 0.002)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed = proc.wait(10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
        if killed:
            break
        shutil.rmtree(parent)  # it finished before the kill: try again
    assert killed, "the report finished before every kill"
    assert not out.exists(), "a killed report left its output folder"
    assert len(list(parent.glob(".*.partial"))) == 1
    assert main(args) == 0
    assert sorted(p.name for p in parent.iterdir()) == ["case"]
    report = (out / "report.json").read_text()
    assert '"exam"' in report and not (out / WRITER_FILE).exists()


def test_an_overwrite_killed_between_its_renames_restores_the_previous_report(tmp_path: Path):
    from lungvlm.export.case_folder import OLD_SETTLE_S

    previous = tmp_path / ".case.k3x9q_.old"  # the old report moved aside; "case" never came
    previous.mkdir()
    (previous / "report.json").write_text('{"version": 1}')
    leftover = tmp_path / ".other.a1b2c3.old"  # "other" was written: the .old is garbage
    leftover.mkdir()
    (tmp_path / "other").mkdir()
    fresh = tmp_path / ".third.zz99yy.old"  # an overwrite in progress right now: untouched
    fresh.mkdir()
    old = time.time() - OLD_SETTLE_S - 5
    for folder in (previous, leftover):
        os.utime(folder, (old, old))
    removed = remove_stale_partials(tmp_path)
    assert sorted(p.name for p in removed) == sorted([previous.name, leftover.name])
    assert (tmp_path / "case" / "report.json").read_text() == '{"version": 1}'
    assert not previous.exists() and not leftover.exists() and fresh.is_dir()
