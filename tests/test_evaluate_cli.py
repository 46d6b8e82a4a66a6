"""``lungvlm evaluate`` on tiny phantom chests: per-chest resume, the markdown table, the
scanner profile of each chest and the operating point at the checkpoint's candidate threshold."""

from __future__ import annotations

import json

import pytest

import lungvlm.cli as cli
from lungvlm.commands.evaluate import DEFAULT_N_SEEDS, default_seeds, phantom_profile
from lungvlm.evaluation.detection import ScanEvaluation
from lungvlm.evaluation.operating_point import operating_point
from lungvlm.evaluation.subsets import profile_record
from lungvlm.lightning.checkpoint import write_calibrated_checkpoint


def _evaluate(ckpt, out, seeds, *extra):
    args = ["evaluate", "--ckpt", str(ckpt), "--phantom-seeds", seeds, "--phantom-size", "tiny",
            "--out", str(out), "--device", "cpu", "--no-progress", *extra]  # fmt: skip
    assert cli.main(args) == 0
    return json.loads((out / "evaluation.json").read_text())


def test_default_seeds_are_twenty_test_chests():
    assert DEFAULT_N_SEEDS == 20 and default_seeds() == "2000000:2000020"


def test_resume_profiles_markdown_and_candidate_threshold(ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    first = _evaluate(ckpt, out, "0:1")
    assert first["settings"]["n_resumed"] == 0
    stamp = (out / "chests" / "phantom-0.json").stat().st_mtime_ns
    data = _evaluate(ckpt, out, "0:2")  # as after a crash past chest 0: only chest 1 runs
    assert data["settings"]["n_resumed"] == 1
    assert (out / "chests" / "phantom-0.json").stat().st_mtime_ns == stamp
    assert "phantom-0: resumed" in capsys.readouterr().err
    scans = [ScanEvaluation.from_dict(s) for s in data["scans"]]
    assert [s.scan_id for s in scans] == ["phantom-0", "phantom-1"]
    for seed, scan in enumerate(scans):
        assert scan.profile == profile_record(phantom_profile(seed, "tiny"))
        assert scan.profile["slice_thickness_mm"] > 0 and scan.profile["exposure_mas"] > 0
    summary = data["summary"]
    assert summary["operating_point"]["kind"] == "probability_threshold"
    every = operating_point(scans, None)
    assert summary["n_nodules"] == every["n_nodules"] >= 2
    assert (summary["sensitivity"], summary["fps_per_scan"]) == (
        every["sensitivity"], every["fps_per_scan"])  # fmt: skip
    assert summary["subsets"]["all"]["n_scans"] == 2
    split = summary["subsets"]["thick_low_dose"]["n_scans"] + summary["subsets"]["rest"]["n_scans"]
    assert split == 2
    markdown = (out / "evaluation.md").read_text()
    assert "| figure | all | thick/low-dose | rest | difference (points) |" in markdown
    assert "segmentation probability threshold 0.5 (no calibrated candidate threshold)" in markdown
    assert f"| {scans[1].profile['slice_thickness_mm']:.2f} |" in markdown

    # A calibrated threshold above every candidate's score: nothing is kept at the operating
    # point, while the FROC (every candidate) stays the same.
    top = max(c[3] for s in scans for c in s.candidates)
    calibrated = write_calibrated_checkpoint(
        ckpt, {"detection": {"candidate_threshold": min(1.0, top + 1e-6)}}
    )
    again = _evaluate(calibrated, tmp_path / "calibrated", "0:2")["summary"]
    assert again["operating_point"]["kind"] == "candidate_threshold"
    assert again["operating_point"]["candidate_threshold"] == pytest.approx(min(1.0, top + 1e-6))
    assert (again["sensitivity"], again["fps_per_scan"]) == (0.0, 0.0)
    assert again["cpm"] == summary["cpm"]
    assert "(calibrated)" in (tmp_path / "calibrated" / "evaluation.md").read_text()
    # Each chest's record also holds it at that operating point: nothing kept, no FP there,
    # while the segmentation-threshold fields still count every instance.
    chest = json.loads((tmp_path / "calibrated" / "chests" / "phantom-0.json").read_text())
    point = chest["operating_point"]
    assert point["candidate_threshold"] == pytest.approx(min(1.0, top + 1e-6))
    assert not any(point["detected"]) and point["n_false_positives"] == 0
    assert chest["evaluation"]["n_false_positives"] + sum(chest["evaluation"]["detected"]) > 0
