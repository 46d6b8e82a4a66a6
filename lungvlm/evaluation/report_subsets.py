"""Whole-exam report figures per scanner-profile subset (``lungvlm evaluate-reports``).

The figures of issue 15 on all chests, on the thick-slice low-dose chests and on the rest
(:mod:`lungvlm.evaluation.subsets`), from scored case rows (:mod:`lungvlm.evaluation.reports`,
conventions there). Each row carries its scanner ``profile``; growth and VDT need a follow-up
(a reference ``status``). Pure functions over JSON-ready dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lungvlm.evaluation.reports import (
    attenuation_summary,
    category_summary,
    detection_summary,
    diameter_error_summary,
    paired_nodules,
    status_summary,
    timing_summary,
    vdt_summary,
)
from lungvlm.evaluation.subsets import SUBSETS, difference, difference_points, split_by_profile

#: Lower bound (mm) of the large-nodule sensitivity.
LARGE_NODULE_MIN_MM: float = 6.0
#: Fractions compared in percentage points (the issue-15 "within 5 points" figures).
POINT_FIGURES: tuple[str, ...] = (
    "sensitivity", "sensitivity_ge_6mm", "exam_lungrads_accuracy", "attenuation_accuracy",
    "growth_status_accuracy",
)  # fmt: skip
#: Figures compared in their own units (per scan, mm, relative error, seconds).
UNIT_FIGURES: tuple[str, ...] = (
    "fps_per_scan", "diameter_median_abs_error_mm", "diameter_median_abs_error_part_solid_mm",
    "vdt_median_abs_relative_error_growing", "seconds_per_chest",
)  # fmt: skip


def subset_figures(rows: Sequence[Mapping]) -> dict:
    """The issue-15 figures of a set of scored case rows (None where undefined).

    Returns:
        ``n_cases``; detection ``sensitivity`` (all sizes), ``sensitivity_ge_6mm`` and
        ``fps_per_scan`` of the final report; ``exam_lungrads_accuracy`` (exact);
        ``attenuation_accuracy`` on found (paired) nodules; ``diameter_median_abs_error_mm``
        (all paired nodules and ``..._part_solid_mm``); ``growth_status_accuracy`` on paired
        nodules with a reference status; ``vdt_median_abs_relative_error_growing`` over paired
        nodules whose reference is growing; ``seconds_per_chest`` (mean total of the report
        steps) and ``step_seconds`` (mean per step).
    """
    detections = [r["detection"] for r in rows]
    paired = [pair for r in rows for pair in paired_nodules(r)]
    everything = detection_summary(detections, 0.0)
    large = detection_summary(detections, LARGE_NODULE_MIN_MM)
    exam = category_summary(
        [(r["reference"]["exam_category"], r["report"]["exam_category"]) for r in rows]
    )
    attenuation = attenuation_summary(
        [(ref["attenuation"], rep.get("attenuation")) for ref, rep in paired
         if ref.get("attenuation")]
    )  # fmt: skip
    size = diameter_error_summary(paired)
    growth = [(ref["status"], rep.get("status")) for ref, rep in paired if ref.get("status")]
    growing = [(ref.get("vdt_days"), rep.get("vdt_days")) for ref, rep in paired
               if ref.get("status") == "growing"]  # fmt: skip
    timings = timing_summary([r["timings_s"] for r in rows])
    total = timings.pop("total", None)
    return {
        "n_cases": len(rows),
        "sensitivity": everything["sensitivity"],
        "sensitivity_ge_6mm": large["sensitivity"],
        "fps_per_scan": everything["fps_per_scan"],
        "exam_lungrads_accuracy": exam["accuracy"],
        "attenuation_accuracy": attenuation["accuracy"],
        "diameter_median_abs_error_mm": size["median_abs_error_mm"],
        "diameter_median_abs_error_part_solid_mm": size["median_abs_error_part_solid_mm"],
        "growth_status_accuracy": status_summary(growth)["accuracy"] if growth else None,
        "vdt_median_abs_relative_error_growing": vdt_summary(growing)["median_abs_relative_error"],
        "seconds_per_chest": None if total is None else total["mean_s"],
        "step_seconds": {step: t["mean_s"] for step, t in timings.items()},
    }


def subset_summary(rows: Sequence[Mapping]) -> dict:
    """:func:`subset_figures` on all rows, the thick-slice low-dose ones and the rest, with the
    subset's difference from the rest: fractions in percentage points (and whether each is
    within the issue-15 tolerance), the other figures in their own units."""
    groups = split_by_profile(list(rows), lambda r: r.get("profile"))
    out: dict = {name: subset_figures(groups[name]) for name in SUBSETS}
    subset, rest = out["thick_low_dose"], out["rest"]
    out["thick_low_dose_minus_rest"] = {
        **difference_points(subset, rest, POINT_FIGURES),
        **{k: {"difference": v} for k, v in difference(subset, rest, UNIT_FIGURES).items()},
    }
    return out
