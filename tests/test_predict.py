"""``lungvlm predict`` (Lightning's predict loop over many scans) and the Python API."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from data_modules.io import write_nifti
from data_modules.phantom import PhantomConfig, generate_case
from lungvlm import LungVLM, cli
from lungvlm.commands.predict import list_scans
from lungvlm.export.identifiers import is_pseudonym


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """Two tiny phantom chests as NIfTI in one folder."""
    folder = tmp_path_factory.mktemp("scans")
    for seed in (0, 1):
        case = generate_case(seed, PhantomConfig.tiny())
        write_nifti(case.image_hu, folder / f"chest_{seed}.nii.gz", spacing_mm=case.spacing_mm,
                    origin=case.origin_lps_mm)  # fmt: skip
    return folder


def _summary(out: Path) -> list[dict]:
    with (out / "summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _predict(*args: str) -> int:
    # The test model segments the whole lung, which the guard refuses: --no-guard (its own test:
    # tests/test_bad_input_images.py).
    return cli.main(["predict", *args, "--device", "cpu", "--no-progress", "--num-workers", "0",
                     "--no-guard"])  # fmt: skip


def test_predict_writes_a_report_per_scan_and_resumes(ckpt, scans, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(str(scans), "--ckpt", str(ckpt), "--out", str(out), "--keep-unconfirmed") == 0
    rows = _summary(out)
    # Cases are named by pseudonyms of their content, scans by their position in the input.
    assert all(is_pseudonym(r["case_id"]) for r in rows)
    assert rows[0]["case_id"] != rows[1]["case_id"]
    assert [r["scan"] for r in rows] == ["#1", "#2"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for row in rows:
        report = json.loads((out / row["case_id"] / "report.json").read_text())
        assert int(row["n_nodules"]) == len(report["nodules"]) > 0
        assert row["lungrads_category"] == report["exam"]["lungrads_category"]
    assert json.loads((out / "failures.json").read_text()) == []
    assert "2 scan(s): 2 reported, 0 skipped" in capsys.readouterr().out
    # A second run skips both (their report.json exists) and keeps their numbers.
    assert _predict(str(scans), "--ckpt", str(ckpt), "--out", str(out), "--keep-unconfirmed") == 0
    again = _summary(out)
    assert [r["status"] for r in again] == ["skipped", "skipped"]
    assert [r["n_nodules"] for r in again] == [r["n_nodules"] for r in rows]


def test_a_bad_scan_is_listed_and_the_others_are_reported(ckpt, scans, tmp_path):
    listing = tmp_path / "scans.csv"
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    listing.write_text(f"path,case_id\n{scans / 'chest_0.nii.gz'},first\nbroken.nii.gz,bad\n")
    out = tmp_path / "out"
    assert _predict(str(listing), "--ckpt", str(ckpt), "--out", str(out), "--keep-unconfirmed") == 1
    rows = {r["case_id"]: r for r in _summary(out)}
    assert rows["first"]["status"] == "ok"
    assert rows["bad"]["status"] == "failed" and "<input #2>" in rows["bad"]["error"]
    failures = json.loads((out / "failures.json").read_text())
    assert [f["case_id"] for f in failures] == ["bad"]
    assert not (out / "bad").exists()


def test_predict_in_bf16_matches_the_fp32_findings(ckpt, scans, tmp_path):
    """bf16-mixed autocast (as on a GPU) runs the whole pipeline; here on the CPU."""
    single = tmp_path / "one"
    single.mkdir()
    (single / "chest_0.nii.gz").symlink_to(scans / "chest_0.nii.gz")
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    common = ["--ckpt", str(ckpt), "--keep-unconfirmed"]
    assert _predict(str(single), *common, "--out", str(fp32)) == 0
    assert _predict(str(single), *common, "--out", str(bf16), "--precision", "bf16-mixed") == 0
    a, b = _summary(fp32)[0], _summary(bf16)[0]
    assert b["status"] == "ok"
    assert int(a["n_nodules"]) == int(b["n_nodules"])


def test_list_scans_errors_name_what_was_searched(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"holds no scan: looked for DICOM files"):
        list_scans(empty)
    bad_csv = tmp_path / "list.csv"
    bad_csv.write_text("file\nx.nii\n")
    with pytest.raises(ValueError, match=r"needs a header with a 'path' column"):
        list_scans(bad_csv)
    duplicate = tmp_path / "dup.csv"
    duplicate.write_text("path\na/scan.nii\nb/scan.nii\n")
    assert [case for case, _ in list_scans(duplicate, keep_identifiers=True)] == ["scan", "scan_2"]
    assert [case for case, _ in list_scans(duplicate)] == [None, None]  # pseudonyms, once read


def test_python_api_report_segment_and_ask(ckpt, scans, tmp_path):
    model = LungVLM.from_checkpoint(ckpt, device="cpu")
    assert model.device == "cpu" and not model.calibrated
    scan = scans / "chest_0.nii.gz"
    segmentation = model.segment(scan)
    assert len(segmentation.instances) > 0
    steps: list[tuple[str, int, int | None]] = []
    report = model.report(scan, keep_unconfirmed=True, progress=lambda *a: steps.append(a))
    assert len(report.nodules) == len(segmentation.instances)
    assert report.narrative.startswith("#") and "IMPRESSION" in report.narrative
    # Progress reached the end of the sliding windows and of the candidates.
    windows = [s for s in steps if s[0] == "segmentation windows"]
    assert windows and windows[-1][1] == windows[-1][2]
    candidates = [s for s in steps if s[0] == "candidate nodules"]
    assert candidates[-1][1:] == (len(segmentation.instances), len(segmentation.instances))
    assert not (tmp_path / "case").exists()
    written = model.report(scan, keep_unconfirmed=True, out=tmp_path / "case")
    assert (tmp_path / "case" / "report.json").is_file()
    assert written.exam.lungrads_category == report.exam.lungrads_category
    answers = model.ask(scan, "Where is this nodule?", nodule=1, keep_unconfirmed=True)
    assert answers.nodule == 1 and len(answers.answers) == 1
    first = answers.answers[0]
    assert np.isclose(first.heatmap.sum(), 1.0 if first.answer else 0.0, atol=1e-3)
    assert answers.evidence["volume_mm3"] == pytest.approx(report.nodules[0].volume_mm3, rel=1e-3)


def test_python_api_rejects_what_it_cannot_read(ckpt, tmp_path):
    model = LungVLM.from_checkpoint(ckpt, device="cpu")
    with pytest.raises(TypeError, match=r"scan must be a path"):
        model.segment(42)
    with pytest.raises(ValueError, match=r"prior scan needs interval_days"):
        model.report(tmp_path, prior=tmp_path)
    with pytest.raises(ValueError, match=r"is not auto, cpu, cuda or cuda:N"):
        LungVLM.from_checkpoint(ckpt, device="tpu")


def test_python_api_reports_an_in_memory_volume_like_its_file(ckpt, scans, tmp_path):
    from lungvlm.commands.scan_io import read_volume

    model = LungVLM.from_checkpoint(ckpt, device="cpu")
    scan = scans / "chest_0.nii.gz"
    volume = read_volume(scan, with_headers=False).volume
    from_file = model.report(scan, keep_unconfirmed=True)
    from_memory = model.report(volume, keep_unconfirmed=True, out=tmp_path / "case")
    assert len(from_memory.nodules) == len(from_file.nodules) > 0
    assert from_memory.exam.lungrads_category == from_file.exam.lungrads_category
    assert [n.volume_mm3 for n in from_memory.nodules] == pytest.approx(
        [n.volume_mm3 for n in from_file.nodules], rel=1e-6
    )
    source = json.loads((tmp_path / "case" / "report.json").read_text())["source"]
    assert source["format"] == "volume" and source["path"] is None
