"""Audit metrics on hand-built inputs: hierarchy, reliability/ECE, calibrators, subgroups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungvlm.evaluation.hierarchy import (
    catastrophic,
    constrained_predictions,
    hierarchical_distance,
    hierarchical_summary,
    risk_constrained_report,
    risk_constrained_threshold,
    suspicious_probability,
)
from lungvlm.evaluation.reliability import (
    compare_calibrators,
    cross_validated_ece,
    ece,
    fit_isotonic,
    growth_12m_labels,
    multiclass_ece,
    reliability_table,
)
from lungvlm.evaluation.subgroups import (
    bootstrap_ci,
    dose_band,
    largest_gaps,
    subgroup_of,
    subgroup_table,
    thickness_band,
)
from lungvlm.inference.calibration import MalignancyCalibrator

# ---------------------------------------------------------------- hierarchy


@pytest.mark.parametrize(
    "a, b, distance",
    [("4B", "4B", 0), ("4B", "4A", 1), ("4B", "2", 2), ("1", "2", 1), ("3", "2", 2),
     ("0", "1", 2), ("4X", "3", 2)],
)  # fmt: skip
def test_hierarchical_distance(a, b, distance):
    assert hierarchical_distance([a], [b]).tolist() == [distance]


def test_catastrophic_only_across_the_benign_suspicious_divide():
    ref = ["4A", "4B", "2", "1", "3", "4A"]
    pred = ["2", "3", "4X", "2", "1", "4B"]
    assert catastrophic(ref, pred).tolist() == [True, False, True, False, False, False]


def test_hierarchical_summary_of_a_hand_built_set():
    ref = ["4A", "4B", "2", "1", "3", "4A", "2", "2"]
    pred = ["2", "4A", "4X", "1", "3", "4A", "1", "2"]
    s = hierarchical_summary(ref, pred)
    assert s["n"] == 8
    assert s["accuracy"] == pytest.approx(4 / 8)  # 1, 3, 4A, 2
    # distances: 2, 1, 2, 0, 0, 0, 1, 0 -> mean 6/8; branch accuracy 6/8
    assert s["mean_distance"] == pytest.approx(6 / 8)
    assert s["branch_accuracy"] == pytest.approx(6 / 8)
    assert s["catastrophic_rate"] == pytest.approx(2 / 8)
    assert s["n_suspicious"] == 3 and s["catastrophic_miss_rate"] == pytest.approx(1 / 3)
    assert s["n_benign"] == 4 and s["catastrophic_overcall_rate"] == pytest.approx(1 / 4)
    assert s["overcall_rate"] == pytest.approx(1 / 5)  # the 2 called 4X, of 5 non-suspicious
    assert sum(map(sum, s["confusion"])) == 8


def _probs(rows):
    """(N, 7) probabilities from dicts {category: p}."""
    cats = ("0", "1", "2", "3", "4A", "4B", "4X")
    return np.array([[row.get(c, 0.0) for c in cats] for row in rows])


def test_constrained_rule_and_threshold_on_hand_built_probabilities():
    probs = _probs([
        {"2": 0.7, "4A": 0.3},   # suspicious, p_s 0.3
        {"2": 0.9, "4B": 0.1},   # suspicious, p_s 0.1
        {"1": 0.95, "4A": 0.05},  # benign, p_s 0.05
        {"4A": 0.6, "2": 0.4},   # suspicious, p_s 0.6
    ])  # fmt: skip
    ref = ["4A", "4B", "1", "4A"]
    assert suspicious_probability(probs) == pytest.approx([0.3, 0.1, 0.05, 0.6])
    assert constrained_predictions(probs, 0.25).tolist() == [4, 2, 1, 4]
    fitted = risk_constrained_threshold(probs, ref, max_miss_rate=0.0)
    assert fitted["threshold"] == pytest.approx(0.1)  # largest t that calls all three suspicious
    assert fitted["summary"]["catastrophic_miss_rate"] == 0.0
    assert fitted["summary"]["catastrophic_overcall_rate"] == 0.0
    # one miss of three suspicious allowed: 0.3 is the largest threshold with <= 1/3 misses
    assert risk_constrained_threshold(probs, ref, 0.34)["threshold"] == pytest.approx(0.3)
    report = risk_constrained_report(probs, ref, probs, ref, max_miss_rate=0.0)
    assert report["test_argmax"]["catastrophic_miss_rate"] == pytest.approx(2 / 3)
    assert report["test_constrained"]["catastrophic_miss_rate"] == 0.0
    assert report["cost"]["accuracy"] == pytest.approx(2 / 4)


def test_hierarchy_rejects_unknown_categories():
    with pytest.raises(ValueError, match="unknown Lung-RADS"):
        hierarchical_distance(["5"], ["1"])


# ---------------------------------------------------------------- reliability


def test_reliability_table_and_ece_of_hand_built_predictions():
    p = [0.05, 0.05, 0.85, 0.85, 0.85, 0.85]
    y = [0, 0, 1, 1, 0, 0]
    table = reliability_table(p, y, n_bins=10)
    assert table[0]["count"] == 2 and table[0]["observed"] == 0.0
    assert table[8]["count"] == 4 and table[8]["observed"] == 0.5
    assert table[8]["mean_probability"] == pytest.approx(0.85)
    assert sum(row["count"] for row in table) == 6
    # ECE = (2/6) * |0.05 - 0| + (4/6) * |0.85 - 0.5|
    assert ece(p, y) == pytest.approx(2 / 6 * 0.05 + 4 / 6 * 0.35, abs=1e-6)
    assert reliability_table([1.0], [1], 10)[9]["count"] == 1


def test_multiclass_ece_of_a_perfectly_confident_correct_set_is_zero():
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert multiclass_ece(probs, [0, 1, 2, 1]) == pytest.approx(0.0)
    assert multiclass_ece(probs, [1, 1, 2, 1]) == pytest.approx(0.25)


def test_isotonic_calibrator_maps_logits_to_observed_frequencies():
    z = [-3, -2, -1, 1, 2, 3]
    y = [0, 0, 1, 0, 1, 1]
    calibrator = fit_isotonic(z, y)
    assert calibrator.kind == "isotonic"
    p = calibrator.probability(np.array(z, float))
    assert p.tolist() == pytest.approx([0, 0, 0.5, 0.5, 1, 1])
    assert calibrator.probability(-10.0) == 0.0 and calibrator.probability(10.0) == 1.0
    again = MalignancyCalibrator.from_dict(calibrator.to_dict())
    assert again == calibrator


def test_temperature_calibrator_and_bad_knots():
    assert MalignancyCalibrator(temperature=2.0).probability(2.0) == pytest.approx(
        1 / (1 + math.exp(-1.0))
    )
    with pytest.raises(ValueError, match="non-decreasing"):
        MalignancyCalibrator(kind="isotonic", knots_logit=(0.0, 1.0), knots_probability=(0.9, 0.1))
    with pytest.raises(ValueError, match="temperature"):
        MalignancyCalibrator(temperature=0.0)
    with pytest.raises(ValueError, match="finite"):
        MalignancyCalibrator.from_dict(
            {"kind": "isotonic", "knots_logit": [0.0, float("nan")], "knots_probability": [0, 1]}
        )


def test_compare_calibrators_fixes_an_overconfident_model():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 1.5, 600)
    y = (rng.random(600) < 1 / (1 + np.exp(-true_logit))).astype(int)
    z = 4.0 * true_logit  # four times overconfident
    out = compare_calibrators(z[:300], y[:300], z[300:], y[300:])
    before = out["methods"]["none"]["test_ece"]
    after = out["methods"][out["chosen"]]["test_ece"]
    assert before > 0.1
    assert after < before / 2
    assert out["methods"]["temperature"]["calibrator"]["temperature"] == pytest.approx(4.0, rel=0.3)
    assert cross_validated_ece(z[:300], y[:300], "isotonic") is not None


def test_compare_calibrators_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        compare_calibrators([1.0, 2.0], [1, 1], [0.0], [0])


def test_growth_labels_censor_short_follow_up_without_growth():
    usable, label = growth_12m_labels([6, 18, 6, 24, 13], [1, 1, 0, 0, 1])
    assert usable.tolist() == [True, True, False, True, True]
    assert label.tolist() == [1, 0, 0, 0, 0]


# ---------------------------------------------------------------- subgroups


def test_bands_and_subgroups():
    assert thickness_band(1.49) == "<1.5 mm" and thickness_band(1.5) == "1.5-2.5 mm"
    assert thickness_band(2.5) == ">=2.5 mm"
    assert dose_band(30.0) == "<=30 mAs" and dose_band(30.1) == "30-100 mAs"
    assert dose_band(150) == ">100 mAs"
    profile = {"manufacturer": "GE", "kernel": "sharp", "slice_thickness_mm": 2.7,
               "exposure_mas": 25.0}  # fmt: skip
    assert [subgroup_of(profile, a) for a in ("vendor", "kernel", "slice_thickness", "dose")] == [
        "GE",
        "sharp",
        ">=2.5 mm",
        "<=30 mAs",
    ]
    assert subgroup_of(None, "vendor") is None


def test_subgroup_table_gap_and_bootstrap_ci():
    def record(vendor, hit):
        return {"profile": {"manufacturer": vendor, "kernel": "soft"}, "hit": hit}

    records = (
        [record("A", 1)] * 8 + [record("A", 0)] * 2 + [record("B", 1)] * 5 + [record("B", 0)] * 5
    )

    def sensitivity(sample):
        return float(np.mean([r["hit"] for r in sample])) if sample else None

    table = subgroup_table(records, lambda r: r["profile"], {"sens": sensitivity}, n_boot=200,
                           axes=("vendor", "kernel"))  # fmt: skip
    groups = table["axes"]["vendor"]["groups"]
    assert groups["A"]["sens"]["value"] == pytest.approx(0.8)
    assert groups["B"]["sens"]["value"] == pytest.approx(0.5)
    lo, hi = groups["A"]["sens"]["ci"]
    assert lo <= 0.8 <= hi and hi - lo > 0.1
    gap = table["axes"]["vendor"]["gaps"]["sens"]
    assert gap == {"gap": pytest.approx(0.3), "high": "A", "low": "B"}
    assert table["axes"]["kernel"]["gaps"]["sens"] is None  # one kernel only
    assert largest_gaps(table)["sens"]["axis"] == "vendor"
    assert table["overall"]["sens"]["value"] == pytest.approx(13 / 20)
    again = bootstrap_ci(records, sensitivity, 200, seed=1000)
    assert again == bootstrap_ci(records, sensitivity, 200, seed=1000)  # reproducible
