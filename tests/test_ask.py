"""``lungvlm ask``: answers about one nodule of a report, their heatmaps, bad nodule numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lungvlm.cli as cli
from data_modules.phantom import PhantomConfig, generate_case
from data_modules.phantom.writers import write_dicom_series
from lungvlm.inference.nodule_heads import answer_heatmap, encode_nodule
from lungvlm.inference.report_analysis import load_report_model


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "PHANTOM-0000"
    write_dicom_series(generate_case(0, PhantomConfig.tiny()), folder)
    return folder


@pytest.fixture(scope="module")
def report_dir(ckpt, dicom_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "case"
    # The untrained model's findings describe nothing (keep all) and it segments the whole
    # lung, which the guard refuses (--no-guard).
    args = ["report", str(dicom_dir), "--ckpt", str(ckpt), "--out", str(out), "--keep-unconfirmed",
            "--no-guard"]  # fmt: skip
    assert cli.main(args) == 0
    return out


def test_ask_with_a_report_answers_every_question(ckpt, dicom_dir, report_dir, tmp_path, capsys):
    out = tmp_path / "ask"
    questions = ["What are the margins of this nodule?", "How large is this nodule?"]
    args = ["ask", str(dicom_dir), *questions, "--ckpt", str(ckpt), "--nodule", "1"]
    assert cli.main([*args, "--report", str(report_dir), "--out", str(out)]) == 0
    payload = json.loads((out / "answer.json").read_text())
    report = json.loads((report_dir / "report.json").read_text())
    reported = report["nodules"][0]
    assert payload["nodule"] == 1
    # The answers name the case as the report does (its pseudonym), never the scan's path.
    assert payload["case_id"] == report["case_id"] and "scan" not in payload
    assert [a["question"] for a in payload["answers"]] == questions
    # The evidence is the report's measured nodule, not a new measurement.
    assert payload["evidence"]["mean_diameter_mm"] == pytest.approx(
        reported["mean_diameter_mm"], abs=0.01
    )
    assert payload["centroid_voxel_zyx"] == pytest.approx(reported["centroid_voxel_zyx"], abs=0.01)
    for row in payload["answers"]:
        assert (out / row["heatmap"]).stat().st_size > 1000
    printed = capsys.readouterr().out
    assert printed.count("Q: ") == 2 and "Nodule 1: measured mean diameter" in printed
    assert not list(out.glob("*.tmp"))


def test_ask_without_a_report_numbers_nodules_like_the_report(
    ckpt, dicom_dir, report_dir, tmp_path
):
    out = tmp_path / "ask"
    args = ["ask", str(dicom_dir), "Where is this nodule?", "--ckpt", str(ckpt), "--nodule", "1"]
    # The whole-scan segmentation of the test model covers the lungs: --no-guard.
    assert cli.main([*args, "--out", str(out), "--keep-unconfirmed", "--no-guard"]) == 0
    payload = json.loads((out / "answer.json").read_text())
    reported = json.loads((report_dir / "report.json").read_text())["nodules"][0]
    assert payload["evidence"]["volume_mm3"] == pytest.approx(reported["volume_mm3"], rel=1e-3)


@pytest.mark.parametrize("k", ["0", "99"])
def test_nodule_out_of_range_names_the_scan(ckpt, dicom_dir, report_dir, k, capsys):
    args = ["ask", str(dicom_dir), "Is it calcified?", "--ckpt", str(ckpt), "--nodule", k]
    assert cli.main([*args, "--report", str(report_dir)]) == 2
    err = capsys.readouterr().err
    assert f"nodule {k} is out of range" in err
    if k == "99":
        count = len(json.loads((report_dir / "report.json").read_text())["nodules"])
        assert str(dicom_dir) in err and f"{count} nodule(s)" in err


def test_empty_question_and_foreign_report_are_refused(ckpt, dicom_dir, tmp_path, capsys):
    args = ["ask", str(dicom_dir), "  ", "--ckpt", str(ckpt), "--nodule", "1"]
    assert cli.main(args) == 2
    assert "question is empty" in capsys.readouterr().err
    missing = tmp_path / "no_report"
    missing.mkdir()
    args = ["ask", str(dicom_dir), "Why?", "--ckpt", str(ckpt), "--nodule", "1"]
    assert cli.main([*args, "--report", str(missing)]) == 2
    assert "report.json" in capsys.readouterr().err


def test_answer_heatmap_is_a_distribution_on_the_crop(ckpt):
    rm = load_report_model(ckpt)
    image = np.random.default_rng(0).random((30, 30, 30)).astype(np.float32)
    crops = encode_nodule(rm.model, image, (15, 15, 15), 24, 2.0, rm.model.normalization)
    with torch.no_grad():
        gen = rm.model.vl.answer_question(crops.visual_tokens, "What is the attenuation?", 6)
    heat = answer_heatmap(gen, crops)
    assert heat.shape == (24, 24, 24)
    assert float(heat.sum()) == pytest.approx(1.0, abs=1e-4) and float(heat.min()) >= 0.0
