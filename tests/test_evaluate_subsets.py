"""Scanner-profile subsets and the operating point of ``lungvlm evaluate`` and
``lungvlm evaluate-reports``, on hand-built records with hand-computed figures."""

from __future__ import annotations

import pytest

from data_modules.phantom import PhantomConfig, generate_case
from lungvlm.commands.evaluate import phantom_profile
from lungvlm.evaluation.detection import ScanEvaluation, summarize
from lungvlm.evaluation.operating_point import operating_point, subset_summary
from lungvlm.evaluation.report_subsets import subset_figures
from lungvlm.evaluation.report_subsets import subset_summary as report_subset_summary
from lungvlm.evaluation.reports import attenuation_summary, diameter_error_summary, score_case
from lungvlm.evaluation.subsets import difference_points, profile_subset

THIN = {"slice_thickness_mm": 1.0, "exposure_mas": 100.0, "kernel": "soft"}
THICK_LOW = {"slice_thickness_mm": 3.0, "exposure_mas": 25.0, "kernel": "sharp"}


@pytest.mark.parametrize(
    ("profile", "subset"),
    [
        ({"slice_thickness_mm": 2.5, "exposure_mas": 30.0}, "thick_low_dose"),  # both bounds in
        ({"slice_thickness_mm": 2.49, "exposure_mas": 30.0}, "rest"),
        ({"slice_thickness_mm": 2.5, "exposure_mas": 30.1}, "rest"),
        ({"slice_thickness_mm": 5.0, "exposure_mas": 200.0}, "rest"),  # thick, not low dose
        ({"slice_thickness_mm": 0.6, "exposure_mas": 20.0}, "rest"),  # low dose, thin
        ({"exposure_mas": 20.0}, None),
        (None, None),
    ],
)
def test_profile_subset_bounds(profile, subset):
    assert profile_subset(profile) == subset


def test_difference_points_and_tolerance():
    diff = difference_points({"a": 0.80, "b": 0.5, "c": None}, {"a": 0.90, "b": 0.46, "c": 1.0},
                             ["a", "b", "c"])  # fmt: skip
    assert diff["a"]["points"] == pytest.approx(-10.0) and diff["a"]["within_tolerance"] is False
    assert diff["b"]["points"] == pytest.approx(4.0) and diff["b"]["within_tolerance"] is True
    assert diff["c"] == {"points": None, "within_tolerance": None}


def _scan(scan_id, references, candidates, profile):
    return ScanEvaluation(
        scan_id, [0.0] * len(references), references, candidates, [], 0, [], 1.0,
        {"segmentation": 1.0}, profile,
    )  # fmt: skip


# thin: R1 (10 mm) hit by .9, R2 (4 mm) hit by .6, FPs .8 and .3.
# thick: R3 (8 mm) hit by .7, FP .95.  unknown profile: R4 (6.0 mm) missed, no candidates.
SCANS = [
    _scan("thin", [(0, 0, 0, 10.0), (50, 0, 0, 4.0)],
          [(1, 0, 0, 0.9), (50, 0, 1, 0.6), (100, 0, 0, 0.8), (200, 0, 0, 0.3)], THIN),
    _scan("thick", [(0, 0, 0, 8.0)], [(0, 0, 1, 0.7), (80, 0, 0, 0.95)], THICK_LOW),
    _scan("unknown", [(0, 0, 0, 6.0)], [], None),
]  # fmt: skip


def test_operating_point_counts_candidates_at_the_candidate_threshold():
    # At 0.75: thin keeps .9 (R1) and .8 (FP); thick keeps .95 (FP); 1 of 4 nodules found,
    # 1 of the 3 nodules >= 6 mm (R1, R3, R4), 2 FPs over 3 scans.
    point = operating_point(SCANS, 0.75)
    assert (point["n_nodules"], point["n_detected"], point["n_false_positives"]) == (4, 1, 2)
    assert point["sensitivity"] == 0.25
    assert point["fps_per_scan"] == pytest.approx(2 / 3)
    assert (point["n_nodules_ge_6mm"], point["sensitivity_ge_6mm"]) == (3, pytest.approx(1 / 3))
    # Without a candidate threshold every instance counts: R1, R2, R3 found, 3 FPs.
    point = operating_point(SCANS, None)
    assert (point["sensitivity"], point["fps_per_scan"]) == (0.75, 1.0)
    assert point["sensitivity_ge_6mm"] == pytest.approx(2 / 3)


def test_summary_states_the_threshold_used():
    calibrated = summarize(SCANS, 0.5, candidate_threshold=0.75).to_dict()["summary"]
    assert calibrated["operating_point"] == {"kind": "candidate_threshold",
                                             "probability_threshold": 0.5,
                                             "candidate_threshold": 0.75}  # fmt: skip
    assert (calibrated["sensitivity"], calibrated["sensitivity_ge_6mm"]) == (0.25, 1 / 3)
    plain = summarize(SCANS, 0.5).to_dict()["summary"]
    assert plain["operating_point"]["kind"] == "probability_threshold"
    assert (plain["sensitivity"], plain["fps_per_scan"]) == (0.75, 1.0)


def test_detection_subsets_froc_and_cpm_by_hand():
    subsets = subset_summary(SCANS, 0.75)
    assert [subsets[k]["n_scans"] for k in ("all", "thick_low_dose", "rest")] == [3, 1, 1]
    # rest (thin): .9 T, .8 F, .6 T, .3 F -> (0, 0) (0, .5) (1, .5) (1, 1) (2, 1).
    rest = [subsets["rest"][f"sensitivity_at_{k}_fps"] for k in
            ("0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0")]  # fmt: skip
    assert rest == pytest.approx([0.5, 0.5, 0.5, 1, 1, 1, 1])
    assert subsets["rest"]["cpm"] == pytest.approx(11 / 14)
    # thick: .95 F, .7 T -> (0, 0) (1, 0) (1, 1): 0 below 1 FP/scan, 1 from 1 on.
    assert subsets["thick_low_dose"]["cpm"] == pytest.approx(4 / 7)
    # all: .95 F .9 T .8 F .7 T .6 T .3 F, 3 scans, 4 nodules -> .25 at 1/2, .75 from 1 on.
    every = [subsets["all"][f"sensitivity_at_{k}_fps"] for k in
             ("0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0")]  # fmt: skip
    assert every == pytest.approx([0, 0, 0.25, 0.75, 0.75, 0.75, 0.75])
    assert subsets["all"]["cpm"] == pytest.approx(13 / 28)
    diff = subsets["thick_low_dose_minus_rest"]
    assert diff["cpm"]["points"] == pytest.approx(100 * (4 / 7 - 11 / 14))
    assert diff["sensitivity"] == {"points": pytest.approx(-50.0), "within_tolerance": False}
    assert diff["sensitivity_ge_6mm"]["points"] == pytest.approx(-100.0)


@pytest.mark.parametrize("seed", [0, 2_000_001])
def test_phantom_profile_is_the_rendered_cases_profile(seed):
    assert (
        phantom_profile(seed, "tiny") == generate_case(seed, PhantomConfig.tiny()).profile.to_dict()
    )


def _nodule(centre, diameter, attenuation, status=None, vdt=None):
    return {"centre_lps_mm": list(centre), "mean_diameter_mm": diameter, "concepts": {},
            "lungrads_category": "2", "attenuation": attenuation, "status": status,
            "vdt_days": vdt}  # fmt: skip


def _row(refs, reps, exam, timings, profile):
    reference = {"nodules": refs, "exam_category": exam[0], "emphysema": "none"}
    report = {"nodules": reps, "exam_category": exam[1], "emphysema": "none"}
    return {"reference": reference, "report": report, "timings_s": timings, "profile": profile,
            **score_case(reference, report)}  # fmt: skip


# Thick/low-dose: N1 found (solid, 8 -> 9 mm, growing, VDT 200 -> 300), N2 (5 mm) missed, 1 FP.
ROW_THICK = _row(
    [_nodule((0, 0, 0), 8.0, "solid", "growing", 200.0), _nodule((50, 0, 0), 5.0, "part_solid", "stable")],
    [_nodule((1, 0, 0), 9.0, "solid", "growing", 300.0), _nodule((100, 0, 0), 6.0, "solid")],
    ("4A", "3"), {"read": 1.0, "segmentation": 3.0}, THICK_LOW,
)  # fmt: skip
# Rest: N3 (part-solid 10 -> 12 mm, read ground glass, VDT 100 -> 150), N4 (solid 6 -> 6.5 mm,
# no comparison: status wrong), both found.
ROW_THIN = _row(
    [_nodule((0, 0, 0), 10.0, "part_solid", "growing", 100.0), _nodule((0, 50, 0), 6.0, "solid", "stable")],
    [_nodule((0, 0, 1), 12.0, "ground_glass", "growing", 150.0), _nodule((0, 50, 0), 6.5, "solid")],
    ("4B", "4B"), {"read": 2.0, "segmentation": 6.0}, THIN,
)  # fmt: skip


def test_attenuation_and_diameter_error_by_hand():
    assert attenuation_summary([("solid", "solid"), ("part_solid", "ground_glass"),
                                ("solid", None)])["accuracy"] == pytest.approx(1 / 3)  # fmt: skip
    pairs = [
        (ROW_THIN["reference"]["nodules"][i], ROW_THIN["report"]["nodules"][i]) for i in (0, 1)
    ]
    size = diameter_error_summary(pairs)
    assert (size["median_abs_error_mm"], size["median_abs_error_part_solid_mm"]) == (1.25, 2.0)


def test_report_figures_per_subset_by_hand():
    thick = subset_figures([ROW_THICK])
    assert thick == {
        "n_cases": 1, "sensitivity": 0.5, "sensitivity_ge_6mm": 1.0, "fps_per_scan": 1.0,
        "exam_lungrads_accuracy": 0.0, "attenuation_accuracy": 1.0,
        "diameter_median_abs_error_mm": 1.0, "diameter_median_abs_error_part_solid_mm": None,
        "growth_status_accuracy": 1.0, "vdt_median_abs_relative_error_growing": 0.5,
        "seconds_per_chest": 4.0, "step_seconds": {"read": 1.0, "segmentation": 3.0},
    }  # fmt: skip
    summary = report_subset_summary([ROW_THICK, ROW_THIN])
    every, rest = summary["all"], summary["rest"]
    assert (every["sensitivity"], every["fps_per_scan"], every["exam_lungrads_accuracy"]) == (
        0.75, 0.5, 0.5)  # fmt: skip
    assert every["attenuation_accuracy"] == pytest.approx(2 / 3)
    assert every["growth_status_accuracy"] == pytest.approx(2 / 3)
    assert (every["diameter_median_abs_error_mm"], every["seconds_per_chest"]) == (1.0, 6.0)
    assert every["step_seconds"] == {"read": 1.5, "segmentation": 4.5}
    assert (rest["attenuation_accuracy"], rest["growth_status_accuracy"]) == (0.5, 0.5)
    diff = summary["thick_low_dose_minus_rest"]
    assert diff["sensitivity"] == {"points": -50.0, "within_tolerance": False}
    assert diff["sensitivity_ge_6mm"] == {"points": 0.0, "within_tolerance": True}
    assert diff["attenuation_accuracy"]["points"] == 50.0
    assert diff["seconds_per_chest"] == {"difference": -4.0}
    assert diff["diameter_median_abs_error_mm"] == {"difference": -0.25}
    assert diff["diameter_median_abs_error_part_solid_mm"] == {"difference": None}


def test_seed_list_adds_thick_low_dose_chests_after_stop():
    from lungvlm.commands.evaluate import phantom_seed_list
    from lungvlm.evaluation.subsets import profile_subset

    def subset(seed):
        return profile_subset(phantom_profile(seed, "tiny"))

    assert phantom_seed_list("2000000:2000004", size="tiny") == [2000000, 2000001, 2000002, 2000003]
    seeds = phantom_seed_list("2000000:2000004", 3, size="tiny")
    assert seeds[:4] == [2000000, 2000001, 2000002, 2000003]
    assert sum(subset(s) == "thick_low_dose" for s in seeds) == 3
    extra = seeds[4:]
    assert extra == sorted(extra) and extra[0] > 2000003
    assert all(subset(s) == "thick_low_dose" for s in extra)
    # every skipped seed between STOP and the last added one is outside the subset
    skipped = set(range(2000004, extra[-1])) - set(extra)
    assert all(subset(s) != "thick_low_dose" for s in skipped)
    # the default seeds get the default minimum
    default = phantom_seed_list(None, size="tiny")
    assert default[:20] == list(range(2000000, 2000020))
    assert sum(subset(s) == "thick_low_dose" for s in default) >= 5


def test_seed_list_rejects_a_negative_minimum():
    from lungvlm.commands.evaluate import phantom_seed_list

    with pytest.raises(ValueError, match="min-thick-low-dose=-1"):
        phantom_seed_list("0:2", -1)
