"""``lungvlm evaluate-reports``: hand-computed scores, phantom truth, one tiny run and its resume."""

from __future__ import annotations

import json
import re

import pytest

import lungvlm.cli as cli
from data_modules.phantom import PhantomConfig, generate_case, generate_follow_up
from data_modules.phantom.report import exam_findings
from lungvlm.commands.evaluate_reports import reference_from_case
from lungvlm.evaluation.reports import (
    cascade_summary,
    category_summary,
    concept_f1,
    concept_pairs,
    detection_record,
    detection_summary,
    match_detections,
    nodule_concepts,
    score_case,
    status_summary,
    summarize,
    vdt_summary,
)

# Two reference nodules (radius 5 mm and 1.75 mm); reported: a hit, a duplicate, a false positive.
REF_CENTRES = [(0.0, 0.0, 0.0), (50.0, 0.0, 0.0)]
REF_DIAMETERS = [10.0, 3.5]
CAND_CENTRES = [(1.0, 0.0, 0.0), (3.0, 0.0, 0.0), (100.0, 0.0, 0.0)]


def test_hit_duplicate_and_false_positive():
    match = match_detections(REF_CENTRES, REF_DIAMETERS, CAND_CENTRES)
    assert match.reference_detected == [True, False]
    assert match.reference_match == [0, None]  # the closer of the two hits is the pair
    assert match.candidate_kinds == ["tp", "duplicate", "fp"]
    record = {**match.to_dict(), "reference_diameters_mm": REF_DIAMETERS,
              "candidate_diameters_mm": [8.0, 7.0, 5.0]}  # fmt: skip
    overall = detection_summary([record])
    assert overall["sensitivity"] == 0.5 and overall["n_false_positives"] == 1
    assert overall["fps_per_scan"] == 1.0 and overall["n_duplicates"] == 1
    # >= 4 mm: the 3.5 mm miss leaves the stratum, the 5 mm false positive stays; >= 6 mm: both go.
    at4, at6 = detection_summary([record], 4.0), detection_summary([record], 6.0)
    assert (at4["n_reference"], at4["sensitivity"], at4["n_false_positives"]) == (1, 1.0, 1)
    assert (at6["n_reference"], at6["sensitivity"], at6["n_false_positives"]) == (1, 1.0, 0)
    # Two scans: FPs per scan halves; a scan without reference keeps the sensitivity.
    empty = {"reference_diameters_mm": [], "reference_detected": [], "reference_match": [],
             "candidate_diameters_mm": [], "candidate_kinds": []}  # fmt: skip
    assert detection_summary([record, empty])["fps_per_scan"] == 0.5


def test_hit_radius_is_strict_and_pairs_are_one_to_one():
    # Exactly at the radius (5 mm) is no hit (LUNA16: distance below the radius).
    assert match_detections([(0, 0, 0)], [10.0], [(5.0, 0, 0)]).candidate_kinds == ["fp"]
    # Two overlapping references, each closest to a different candidate: both paired.
    match = match_detections([(0, 0, 0), (6, 0, 0)], [20.0, 20.0], [(5, 0, 0), (-1, 0, 0)])
    assert match.reference_match == [1, 0] and match.candidate_kinds == ["tp", "tp"]
    with pytest.raises(ValueError, match="2 reference centres but 1 reference_diameters_mm"):
        match_detections(REF_CENTRES, [10.0], CAND_CENTRES)
    with pytest.raises(ValueError, match="must be > 0 mm"):
        match_detections(REF_CENTRES, [10.0, 0.0], CAND_CENTRES)


def test_lungrads_accuracy_within_one_step_and_confusion():
    result = category_summary([("2", "2"), ("3", "4A"), ("4B", "2"), ("1", "0")])
    assert result["accuracy"] == 0.25
    assert result["within_one_step"] == 0.5  # 2/2 and 3/4A; 4B/2 is 3 steps; "0" is apart
    assert result["confusion"] == {"1": {"0": 1}, "2": {"2": 1}, "3": {"4A": 1}, "4B": {"2": 1}}
    with pytest.raises(ValueError, match="predicted category '5' is not one of"):
        category_summary([("2", "5")])


def test_concept_f1_counts_missed_false_positive_and_exam_fields():
    match = match_detections(REF_CENTRES, REF_DIAMETERS, CAND_CENTRES)
    generated = [{"side": "right", "margin": "smooth", "mean_diameter_mm": 7.0},
                 {"side": "left"}, {"attenuation": "solid"}]  # fmt: skip
    reference = [{"side": "right", "margin": "spiculated", "mean_diameter_mm": 7.9},
                 {"side": "left"}]  # fmt: skip
    pairs = concept_pairs(match, generated, reference, {"category": "2", "emphysema": "none"},
                          {"category": "2", "emphysema": "mild"})  # fmt: skip
    # The duplicate (generated[1]) is left out, as in detection.
    assert [p["kind"] for p in pairs] == ["matched", "missed", "false_positive", "exam"]
    # TP: side, size (7 vs 8 mm, within 1 mm), category. FP: margin, attenuation, emphysema.
    # FN: margin, the missed nodule's side, emphysema.
    scores = concept_f1(pairs)
    assert scores["micro_precision"] == pytest.approx(0.5)
    assert scores["micro_recall"] == pytest.approx(0.5)
    side = scores["per_field"]["side"]
    assert (side["precision"], side["recall"], side["support"]) == (1.0, 0.5, 2)
    assert side["f1"] == pytest.approx(2 / 3)
    assert scores["per_field"]["attenuation"]["precision"] == 0.0
    matched = concept_f1(p for p in pairs if p["kind"] in ("matched", "exam"))
    assert matched["micro_f1"] == pytest.approx(0.6)  # TP 3, FP 2, FN 2


def test_nodule_concepts_read_the_generated_sentence():
    text = "There is a 6.4 mm solid nodule in the right upper lobe with a spiculated margin."
    assert nodule_concepts(text) == {"side": "right", "lobe": "upper", "mean_diameter_mm": 6.4,
                                     "attenuation": "solid", "margin": "spiculated"}  # fmt: skip
    assert nodule_concepts("no words the parser knows") == {}


def test_growth_status_accuracy_and_vdt_error():
    status = status_summary([("growing", "growing"), ("stable", "growing"), ("stable", None),
                             ("stable", "stable")])  # fmt: skip
    assert status["accuracy"] == 0.5
    assert status["confusion"] == {"growing": {"growing": 1},
                                   "stable": {"growing": 1, "none": 1, "stable": 1}}  # fmt: skip
    vdt = vdt_summary([(100.0, 110.0), (200.0, 150.0), (None, 300.0), (400.0, None),
                       (300.0, -300.0)])  # fmt: skip
    # Finite references: 4; reported: 3 (errors 10, 50, 600 days; relative 0.1, 0.25, 2).
    assert (vdt["n_finite_reference"], vdt["n_measured"], vdt["n_unmeasured"]) == (4, 3, 1)
    assert vdt["median_abs_error_days"] == 50.0
    assert vdt["median_abs_relative_error"] == pytest.approx(0.25)


def _nodule(centre, diameter, category, status=None, vdt=None):
    return {"centre_lps_mm": list(centre), "mean_diameter_mm": diameter, "concepts": {},
            "lungrads_category": category, "status": status, "vdt_days": vdt}  # fmt: skip


def _row(ref_nodules, rep_nodules, exam, timings, full_candidates, full_s):
    reference = {"nodules": ref_nodules, "exam_category": exam[0], "emphysema": "none"}
    report = {"nodules": rep_nodules, "exam_category": exam[1], "emphysema": "none"}
    row = {"reference": reference, "report": report, "timings_s": timings,
           **score_case(reference, report)}  # fmt: skip
    full = detection_record(ref_nodules, [_nodule(c, 8.0, "2") for c in full_candidates])
    return {**row, "full_pass": {"detection": full, "segmentation_s": full_s}}


def test_summary_of_two_follow_up_cases():
    row1 = _row(
        [_nodule((0, 0, 0), 10.0, "4A", "growing", 100.0), _nodule((50, 0, 0), 6.0, "3", "stable")],
        [_nodule((1, 0, 0), 9.0, "4A", "growing", 120.0),
         _nodule((50, 1, 0), 6.0, "3", "growing", 500.0)],
        ("4A", "4A"), {"read": 1.0, "segmentation": 4.0}, [(0, 0, 0), (50, 0, 0)], 8.0,
    )  # fmt: skip
    row2 = _row([_nodule((0, 0, 0), 8.0, "2", "stable", 1000.0)], [], ("2", "1"),
                {"read": 3.0, "segmentation": 2.0}, [(0, 0, 0)], 6.0)  # fmt: skip
    summary = summarize([row1, row2])
    assert summary["detection"][">=0mm"]["sensitivity"] == pytest.approx(2 / 3)
    assert summary["exam_lungrads"]["accuracy"] == 0.5
    assert summary["exam_lungrads"]["within_one_step"] == 1.0
    assert summary["nodule_lungrads"]["accuracy"] == 1.0  # both paired nodules
    assert summary["growth_status"]["accuracy"] == 0.5  # the missed nodule is not scored
    vdt = summary["vdt"]  # only the paired growing nodule has a finite reference VDT
    assert (vdt["n_finite_reference"], vdt["median_abs_error_days"]) == (1, 20.0)
    assert summary["timings_s"]["read"] == {"n": 2, "mean_s": 2.0, "median_s": 2.0}
    assert summary["timings_s"]["total"]["mean_s"] == 5.0
    cascade = summary["cascade_vs_full"]
    assert cascade["full"]["detection"][">=0mm"]["sensitivity"] == 1.0
    assert cascade["sensitivity_drop_pp"] == pytest.approx(100 / 3)
    assert cascade["time_saved_fraction"] == pytest.approx(1 - 3.0 / 7.0)
    assert cascade["keep_cascade"] is False
    # The same detections from both passes, faster with the cascade: keep it.
    same = _row([_nodule((0, 0, 0), 8.0, "2")], [_nodule((0, 0, 0), 8.0, "2")], ("2", "2"),
                {"segmentation": 1.0}, [(0, 0, 0)], 2.0)  # fmt: skip
    assert cascade_summary([same])["keep_cascade"] is True
    assert cascade_summary([{**same, "full_pass": None}]) is None


def test_reference_of_a_follow_up_phantom():
    case = generate_case(3, PhantomConfig.tiny())
    follow_up = generate_follow_up(case, 12.0, 3 + 7919)
    ref = reference_from_case(follow_up)
    assert len(ref["nodules"]) == len(follow_up.nodules) >= 1
    for got, labels in zip(ref["nodules"], follow_up.nodules, strict=True):
        assert got["status"] == labels.change["status"]
        assert got["vdt_days"] == (labels.vdt_days if labels.vdt_days != float("inf") else None)
        assert got["concepts"]["side"] == labels.side  # read back from the reference text
        assert got["concepts"]["mean_diameter_mm"] == pytest.approx(
            labels.mean_diameter_mm, abs=0.051
        )
    truth = exam_findings(follow_up.nodules, follow_up.laa950_percent)
    assert ref["exam_category"] == truth.impression.category


def test_cli_on_one_tiny_phantom_then_resume(ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate-reports", "--ckpt", str(ckpt), "--phantom-seeds", "0:1", "--out", str(out),
            "--phantom-size", "tiny", "--cascade", "compare", "--device", "cpu", "--no-follow-up"]  # fmt: skip
    assert cli.main(args) == 0
    data = json.loads((out / "report_eval.json").read_text())
    (row,) = data["cases"]
    case = generate_case(0, PhantomConfig.tiny())
    report = json.loads((out / "cases" / "phantom-0" / "report.json").read_text())
    summary = data["summary"]
    assert summary["n_reference_nodules"] == len(case.nodules) == len(row["reference"]["nodules"])
    assert summary["detection"][">=0mm"]["n_reference"] == len(case.nodules)
    assert summary["n_reported_nodules"] == len(report["nodules"]) == len(row["report"]["nodules"])
    kinds = row["detection"]["candidate_kinds"]
    assert len(kinds) == len(report["nodules"])
    assert kinds.count("tp") == sum(m is not None for m in row["detection"]["reference_match"])
    assert summary["detection"][">=0mm"]["n_false_positives"] == kinds.count("fp")
    truth = exam_findings(case.nodules, case.laa950_percent).impression.category
    assert row["reference"]["exam_category"] == truth
    assert row["report"]["exam_category"] == report["exam"]["lungrads_category"]
    steps = {"read", "lung_mask", "emphysema", "segmentation", "nodule_heads", "generation",
             "export"}  # fmt: skip
    assert steps <= set(row["timings_s"]) and all(row["timings_s"][s] > 0 for s in steps)
    assert summary["timings_s"]["segmentation"]["mean_s"] == row["timings_s"]["segmentation"]
    assert row["full_pass"]["segmentation_s"] > 0
    assert summary["cascade_vs_full"]["n_scans"] == 1 and summary["n_resumed"] == 0
    assert "## Detection (LUNA16 hit rule)" in (out / "report_eval.md").read_text()
    assert "phantom-0: reported" in capsys.readouterr().err

    stamp = (out / "cases" / "phantom-0" / "report.json").stat().st_mtime_ns
    assert cli.main(args) == 0
    again = json.loads((out / "report_eval.json").read_text())
    assert again["summary"]["n_resumed"] == 1 and again["cases"][0]["resumed"] is True
    assert (out / "cases" / "phantom-0" / "report.json").stat().st_mtime_ns == stamp
    assert again["summary"]["detection"] == summary["detection"]
    assert "phantom-0: resumed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ckpt", "{tmp}/missing.ckpt"], r"checkpoint \S*missing\.ckpt does not exist"),
        (["--ckpt", "{ckpt}", "--follow-up-months", "-3"],
         r"--follow-up-months=-3\.0 must be a positive number of months"),
        (["--ckpt", "{ckpt}", "--phantom-seeds", "5:2"], r"--phantom-seeds='5:2' must satisfy"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_naming_the_problem(ckpt, tmp_path, capsys, extra, message):
    extra = [e.format(tmp=tmp_path, ckpt=ckpt) for e in extra]
    code = cli.main(
        ["evaluate-reports", "--out", str(tmp_path / "out"), "--phantom-size", "tiny", *extra]
    )
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out" / "report_eval.json").exists()
