"""Patient identifiers: a report written from a folder named like a patient holds no trace of it.

The scan is a tiny phantom DICOM series in ``DOE^JOHN_12345/`` with PatientName ``DOE^JOHN`` and
PatientID ``12345``; its prior belongs to ``ROE^RICHARD`` (``67890``). By default the case id is
the pseudonym of the series UID and no output file, path or log line names either patient;
``--case-id`` and ``--keep-identifiers`` are the two ways to name the case otherwise. The DICOM
SEG and SR keep the patient module of the source series.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re
import shutil
from pathlib import Path

import pydicom
import pytest

import lungvlm.cli as cli
from data_modules.io import write_nifti
from data_modules.phantom import PhantomConfig, generate_case
from data_modules.phantom.writers import write_dicom_series
from lungvlm.commands.scan_io import read_volume
from lungvlm.export.identifiers import (
    case_pseudonym,
    content_pseudonym,
    is_pseudonym,
    prior_mismatch_message,
    report_source,
    series_pseudonym,
    withhold_path,
)
from lungvlm.export.json_report import read_report_json

PATIENT_FOLDER = "DOE^JOHN_12345"
PRIOR_FOLDER = "ROE^RICHARD_67890"
#: Every trace of the two patients that must not reach an output.
MARKERS = ("DOE", "JOHN", "12345", "ROE", "RICHARD", "67890")
#: Output files that are not text: images, NIfTI and DICOM (checked separately).
BINARY_SUFFIXES = (".png", ".gz", ".dcm")
#: Traces searched in PNG and (decompressed) NIfTI bytes: long enough not to occur by chance.
BINARY_MARKERS = (b"DOE^", b"JOHN", b"12345", b"ROE^", b"RICHARD", b"67890")


def _write_patient_series(case, folder: Path, patient_id: str, patient_name: str) -> Path:
    write_dicom_series(case, folder, patient_id=patient_id)
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        ds.PatientName = patient_name
        ds.save_as(path, enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def phantom():
    return generate_case(0, PhantomConfig.tiny())


@pytest.fixture(scope="module")
def scans(tmp_path_factory, phantom) -> dict[str, Path]:
    """The patient's series and a prior of another patient (another series UID)."""
    root = tmp_path_factory.mktemp("pacs")
    current = _write_patient_series(phantom, root / PATIENT_FOLDER, "12345", "DOE^JOHN")
    prior = root / PRIOR_FOLDER
    write_dicom_series(phantom, prior, patient_id="67890", series_uid="1.2.826.0.1.3680043.2.7")
    for path in sorted(prior.iterdir()):
        ds = pydicom.dcmread(path)
        ds.PatientName = "ROE^RICHARD"
        ds.save_as(path, enforce_file_format=True)
    return {"current": current, "prior": prior}


def _no_decimals(text: str) -> str:
    """``text`` without decimal numbers and UIDs (a timing such as 0.0123456 is no PatientID)."""
    return re.sub(r"\d*\.\d+", "", text)


def _traces(text: str) -> list[str]:
    return [m for m in MARKERS if m in _no_decimals(text)]


def _leaks(out: Path) -> dict[str, list[str]]:
    """Markers found in any output path (relative to ``out``'s parent) or text file."""
    found: dict[str, list[str]] = {}
    files = [p for p in out.rglob("*")]
    assert any(p.name == "report.json" for p in files)
    for path in [out, *files]:
        where = str(path.relative_to(out.parent))
        if hits := _traces(where):
            found[f"path {where}"] = hits
        if path.is_file() and not path.name.endswith(BINARY_SUFFIXES):
            text = path.read_text(encoding="utf-8")  # every other output is text
            if hits := _traces(text):
                found[where] = hits
        elif path.is_file() and not path.name.endswith(".dcm"):  # PNG text chunks, NIfTI header
            data = path.read_bytes()
            data = gzip.decompress(data) if path.name.endswith(".gz") else data
            if hits := [m.decode() for m in BINARY_MARKERS if m in data]:
                found[where] = hits
    return found


def _report(*args: str) -> int:
    # The test model segments the whole lung, which the guard refuses: --no-guard.
    return cli.main(["report", *args, "--device", "cpu", "--no-progress", "--no-guard"])


def test_a_report_from_a_patient_named_folder_holds_no_trace_of_the_patient(
    ckpt, scans, tmp_path, capsys, caplog
):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "reports" / "case"
    # The untrained model's findings describe nothing: keep every component (SEG/SR written).
    assert _report(str(scans["current"]), "--ckpt", str(ckpt), "--out", str(out),
                   "--keep-unconfirmed", "--prior", str(scans["prior"]),
                   "--interval-days", "90") == 0  # fmt: skip
    captured = capsys.readouterr()
    assert _leaks(out) == {}
    logs = {"stdout": captured.out, "stderr": captured.err, "log": caplog.text}
    assert {name: _traces(text) for name, text in logs.items()} == {
        "stdout": [], "stderr": [], "log": []
    }  # fmt: skip
    # The prior of another patient is not compared, and the warning names neither patient.
    assert "warning: prior scan belongs to another patient" in captured.err
    assert "Not compared: prior scan belongs to another patient" in (out / "report.md").read_text()
    report = read_report_json(out / "report.json")
    series_uid = pydicom.dcmread(next(scans["current"].iterdir())).SeriesInstanceUID
    assert report.case_id == series_pseudonym(series_uid) and is_pseudonym(report.case_id)
    assert report.source.path is None and report.source.identifiers == "withheld"
    assert report.source.series_uid == series_uid
    assert f"Case ID <b>{report.case_id}</b>" in (out / "index.html").read_text()
    assert "patient identifiers withheld" in report.narrative
    # The DICOM SEG and SR keep the patient module of the source series, as the standard asks.
    for name in ("seg.dcm", "sr.dcm"):
        ds = pydicom.dcmread(out / "dicom" / name)
        assert (str(ds.PatientName), ds.PatientID) == ("DOE^JOHN", "12345"), name


def test_case_id_names_the_case(ckpt, scans, tmp_path, capsys):
    out = tmp_path / "named"
    assert _report(str(scans["current"]), "--ckpt", str(ckpt), "--out", str(out),
                   "--case-id", "trial-007") == 0  # fmt: skip
    report = read_report_json(out / "report.json")
    assert report.case_id == "trial-007" and report.source.path is None
    assert (out / "report.md").read_text().startswith("# Screening chest CT report: trial-007")
    assert _leaks(out) == {}
    assert _traces(capsys.readouterr().err) == []


def test_keep_identifiers_keeps_the_folder_name_and_says_so(ckpt, scans, tmp_path, capsys):
    out = tmp_path / "kept"
    assert _report(str(scans["current"]), "--ckpt", str(ckpt), "--out", str(out),
                   "--keep-identifiers", "--prior", str(scans["prior"]),
                   "--interval-days", "90") == 0  # fmt: skip
    report = read_report_json(out / "report.json")
    assert report.case_id == PATIENT_FOLDER
    assert report.source.path == str(scans["current"]) and report.source.identifiers == "kept"
    assert "Identifiers kept (--keep-identifiers)" in (out / "report.md").read_text()
    assert "Identifiers kept (--keep-identifiers)" in (out / "index.html").read_text()
    # The same check that finds nothing by default finds the name here (it can fail).
    assert {"report.json", "report.md", "index.html"} <= {Path(k).name for k in _leaks(out)}
    err = capsys.readouterr().err
    assert "prior scan belongs to patient '67890', the current scan to '12345'" in err


def test_predict_names_cases_and_scans_without_their_paths(ckpt, scans, tmp_path, capsys):
    source = tmp_path / "export"
    shutil.copytree(scans["current"], source / PATIENT_FOLDER)
    (source / "ROE^RICHARD.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "batch"
    assert cli.main(["predict", str(source), "--ckpt", str(ckpt), "--out", str(out),
                     "--device", "cpu", "--no-progress", "--num-workers", "0",
                     "--keep-unconfirmed", "--no-guard"]) == 1  # fmt: skip
    with (out / "summary.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    series_uid = pydicom.dcmread(next(scans["current"].iterdir())).SeriesInstanceUID
    # Sorted paths: the DICOM folder ("D...") is #1, the broken NIfTI ("R...") #2.
    assert [(r["case_id"], r["scan"], r["status"]) for r in rows] == [
        (series_pseudonym(series_uid), "#1", "ok"), ("input-2", "#2", "failed")
    ]  # fmt: skip
    assert "<input #2>" in rows[1]["error"]  # the error names the scan by its position
    assert json.loads((out / "failures.json").read_text())[0]["scan"] == "#2"
    assert _leaks(out) == {}
    captured = capsys.readouterr()
    assert _traces(captured.out + captured.err) == []


def test_pseudonyms_are_stable_per_series_and_never_from_the_path(scans, phantom, tmp_path):
    uid = "1.2.826.0.1.3680043.2.1125.1"
    assert series_pseudonym(uid) == series_pseudonym(uid + "\x00")
    assert is_pseudonym(series_pseudonym(uid)) and uid not in series_pseudonym(uid)
    assert series_pseudonym(uid) != series_pseudonym(uid + "2")
    # The same series in another folder has the same pseudonym; another series another one.
    moved = shutil.copytree(scans["current"], tmp_path / "anonymous")
    current = read_volume(scans["current"])
    assert case_pseudonym(read_volume(moved).volume, "dicom") == case_pseudonym(
        current.volume, "dicom"
    ) == series_pseudonym(current.series_uid)  # fmt: skip
    assert case_pseudonym(read_volume(scans["prior"]).volume, "dicom") != case_pseudonym(
        current.volume, "dicom"
    )
    # NIfTI: from the image content, the same under any file name, another for other voxels.
    a = write_nifti(phantom.image_hu, tmp_path / "DOE^JOHN.nii.gz", spacing_mm=phantom.spacing_mm,
                    origin=phantom.origin_lps_mm)  # fmt: skip
    b = shutil.copy(a, tmp_path / "other.nii.gz")
    changed = phantom.image_hu.copy()
    changed[0, 0, 0] += 1.0
    c = write_nifti(changed, tmp_path / "changed.nii.gz", spacing_mm=phantom.spacing_mm,
                    origin=phantom.origin_lps_mm)  # fmt: skip
    names = [case_pseudonym(read_volume(p).volume, "nifti") for p in (a, b, c)]
    assert names[0] == names[1] != names[2] and all(is_pseudonym(n) for n in names)
    # A MetaImage's "series UID" is its file name: never used, neither as pseudonym nor source.
    volume = read_volume(a).volume
    volume.metadata["series_instance_uid"] = "DOE^JOHN"
    assert case_pseudonym(volume, "metaimage") == content_pseudonym(volume) == names[0]
    source = report_source(tmp_path / "DOE^JOHN.mhd", "metaimage", "DOE^JOHN")
    assert (source.path, source.series_uid, source.identifiers) == (None, None, "withheld")


def test_prior_mismatch_message_names_no_patient_unless_kept():
    assert _traces(prior_mismatch_message("12345", "67890")) == []
    assert "'67890'" in prior_mismatch_message("12345", "67890", keep_identifiers=True)


def test_withhold_path_replaces_every_spelling_of_the_scan(tmp_path):
    scan = tmp_path / PATIENT_FOLDER
    scan.mkdir()
    text = f"file {scan}/0001.dcm and {scan.resolve()} are bad"
    assert withhold_path(text, scan, "<input #1>") == (
        "file <input #1>/0001.dcm and <input #1> are bad"
    )


def test_schema_refuses_a_path_when_identifiers_are_withheld():
    from lungvlm.export.schema import Source

    with pytest.raises(ValueError, match=r"path='/x' must be null when identifiers are withheld"):
        Source("/x", "dicom", identifiers="withheld")
    with pytest.raises(ValueError, match=r"identifiers='some' is not allowed"):
        Source(None, "dicom", identifiers="some")
    assert Source(None, "nifti", identifiers="withheld").to_dict()["path"] is None
