"""Data-efficiency study: metric reading, the 20 %-vs-100 % check, and the resumable runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lungvlm.commands import data_efficiency as command
from lungvlm.evaluation.data_efficiency import (
    data_efficiency_summary,
    read_final_metrics,
    run_name,
)
from tests.test_report_pipeline import run_cli


def test_run_names_and_bad_fractions():
    assert run_name("stage1", 0.2) == "stage1-labels-020"
    assert run_name("scratch", 1.0) == "scratch-labels-100"
    with pytest.raises(ValueError):
        run_name("scratch", 0.0)


def test_read_final_metrics_takes_the_last_logged_value(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,train/loss,val/seg/dice\n0,9,0.5,\n0,9,,0.41\n1,19,0.4,\n1,19,,0.57\n2,29,0.3,\n"
    )
    assert read_final_metrics(path) == {"val/seg/dice": 0.57}
    (tmp_path / "empty.csv").write_text("epoch,step,train/loss\n0,1,0.5\n")
    with pytest.raises(ValueError, match="empty.csv"):
        read_final_metrics(tmp_path / "empty.csv")


def test_summary_checks_pretrained_at_20_against_scratch_at_100():
    out = data_efficiency_summary(
        {"stage1": {0.2: 0.70, 1.0: 0.8}, "scratch": {1.0: 0.705, 0.2: 0.6}}
    )
    assert out["curves"]["scratch"] == [[0.2, 0.6], [1.0, 0.705]]
    assert out["difference"] == pytest.approx(-0.005) and out["matches"] is True
    worse = data_efficiency_summary({"stage1": {0.2: 0.65}, "scratch": {1.0: 0.70}})
    assert worse["matches"] is False
    assert data_efficiency_summary({"stage1": {0.5: 0.6}})["matches"] is None


def test_runner_trains_each_run_once_with_its_overrides(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_fit(argv, log_path: Path) -> int:
        calls.append(argv)
        run_dir = Path(next(a for a in argv if a.startswith("--run_dir=")).split("=", 1)[1])
        fraction = float(next(a for a in argv if "label_fraction" in a).split("=", 1)[1])
        pretrained = not any(a == "--model.init_from=null" for a in argv)
        dice = 0.5 + 0.2 * fraction + (0.05 if pretrained else 0.0)
        (run_dir / "csv").mkdir(parents=True, exist_ok=True)
        (run_dir / "csv" / "metrics.csv").write_text(f"epoch,step,val/seg/dice\n0,3,{dice}\n")
        return 0

    monkeypatch.setattr(command, "_fit", fake_fit)
    stage1 = tmp_path / "stage1.ckpt"
    stage1.write_bytes(b"")
    out = tmp_path / "study"
    args = ["data-efficiency", "--out", str(out), "--stage1-ckpt", str(stage1),
            "--fractions", "0.2", "1.0", "--epochs", "2"]  # fmt: skip
    assert run_cli(args) == 0
    assert len(calls) == 4
    first = calls[0]
    assert f"--config={out / 'overlay.yaml'}" not in first and str(out / "overlay.yaml") in first
    assert "--trainer.max_epochs=2" in first and f"--model.init_from={stage1}" in first
    data = json.loads((out / "data_efficiency.json").read_text())
    summary = data["summary"]
    assert summary["pretrained_20"] == pytest.approx(0.59)
    assert summary["scratch_100"] == pytest.approx(0.70)
    assert summary["matches"] is False
    assert (out / "data_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert run_cli(args) == 0
    assert len(calls) == 4  # every run resumed from its done.json
    assert run_cli(args[:-1] + ["3"]) == 0
    assert len(calls) == 8  # another budget: trained again


def test_runner_needs_the_stage1_checkpoint(tmp_path, capsys):
    args = ["data-efficiency", "--out", str(tmp_path / "s"), "--stage1-ckpt", str(tmp_path / "x")]
    assert run_cli(args) != 0
    assert "train stage 1 first" in capsys.readouterr().err
