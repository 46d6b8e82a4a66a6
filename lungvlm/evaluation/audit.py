"""``lungvlm audit`` sections, each a pure function of collected records.

Inputs are the crop records of :mod:`lungvlm.evaluation.crop_predictions` (validation and test
crops) and, for the whole-chest fairness rows, the per-scan dicts of ``lungvlm evaluate``
(``evaluation.json["scans"]``: ``references`` (x, y, z, diameter mm), scored ``candidates``,
``profile``), turned into rows at the evaluation's operating point by :func:`chest_rows`. Every section returns a JSON-able
dict; :func:`run_audit` gathers them. Thresholds and calibrators are fitted on the validation
records only; the test records only report.

Sections (issue 17):

- :func:`calibration_section`: malignancy reliability and ECE before / after temperature
  scaling and isotonic regression (:func:`lungvlm.evaluation.reliability.compare_calibrators`),
  P(growth by 12 months) reliability, Lung-RADS top-label calibration.
- :func:`brock_section`: the Brock full model on the phantom's own nodule features (size =
  reference mean diameter, type, upper lobe, spiculated margin, count 1 per crop; the phantoms
  have no patient data, so age 62, male, no family history and no emphysema: the model's
  centring values, which shift every logit by the same amount and leave the AUROC unchanged)
  against our malignancy probability, AUROC with bootstrap CIs and the paired difference;
  :func:`saliency_section`: Grad-CAM of the malignancy logit against our per-token
  cross-attention heatmaps, pointing game and mass in mask on the same test crops.
- :func:`hierarchy_section`: :mod:`lungvlm.evaluation.hierarchy` on argmax and risk-constrained
  Lung-RADS calls.
- :func:`fairness_section`: :mod:`lungvlm.evaluation.subgroups` on test crops (malignancy
  AUROC and ECE after calibration, Lung-RADS accuracy, crop Dice) and on test chests
  (sensitivity for nodules >= 6 mm, false positives per scan).
- :func:`lungvlm.evaluation.zero_shot.zero_shot_section`: zero-shot attribute AUROC beside the
  concept head's.
- :func:`deferral_section`: risk-coverage curve of the sentence confidence, precision of the
  kept sentences at 80 % coverage (target >= :data:`DEFERRAL_TARGET_PRECISION`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from lungvlm.clinical.brock import malignancy_probability as brock_probability
from lungvlm.clinical.lungrads import round_diameter_mm
from lungvlm.evaluation.hierarchy import risk_constrained_report
from lungvlm.evaluation.reliability import (
    compare_calibrators,
    ece,
    growth_12m_labels,
    multiclass_ece,
    reliability_table,
)
from lungvlm.evaluation.subgroups import (
    DEFAULT_BOOTSTRAP,
    bootstrap_ci,
    largest_gaps,
    subgroup_table,
)
from lungvlm.evaluation.zero_shot import zero_shot_section
from lungvlm.inference.calibration import MalignancyCalibrator

#: Coverages of the risk-coverage curve.
COVERAGE_GRID: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 11))
#: Coverage and target precision of the deferral check (issue 17).
DEFERRAL_COVERAGE, DEFERRAL_TARGET_PRECISION = 0.8, 0.95
#: Diameter (mm) from which a nodule counts in the fairness sensitivity (Lung-RADS 4A solid).
FAIRNESS_MIN_DIAMETER_MM = 6.0
#: Malignancy ECE target after calibration (issue 17).
ECE_TARGET = 0.05


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """ROC AUC (scikit-learn); None unless both classes are present."""
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0 or np.unique(y).size < 2:
        return None
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def _labelled(records: Sequence[Mapping], key: str) -> list[Mapping]:
    return [r for r in records if r.get(key) is not None]


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def calibration_section(val: Sequence[Mapping], test: Sequence[Mapping]) -> dict:
    """Malignancy, growth and Lung-RADS calibration (module docstring)."""
    out: dict = {}
    v, t = _labelled(val, "malignant"), _labelled(test, "malignant")
    vz = [r["malignancy_logit"] for r in v]
    tz = [r["malignancy_logit"] for r in t]
    try:
        out["malignancy"] = compare_calibrators(
            vz, [r["malignant"] for r in v], tz, [r["malignant"] for r in t]
        )
    except ValueError as err:
        out["malignancy"] = {"error": str(err)}
    growth = {}
    for name, records in (("val", val), ("test", test)):
        rows = _labelled(records, "growth_event")
        usable, labels = growth_12m_labels(
            [r["growth_time_months"] for r in rows], [r["growth_event"] for r in rows]
        )
        probs = np.asarray([r["growth_probability_12m"] for r in rows], np.float64)[usable]
        growth[name] = (probs, labels[usable])
    (vp, vy), (tp, ty) = growth["val"], growth["test"]
    try:
        comparison = compare_calibrators(_logit(vp), vy, _logit(tp), ty)
    except ValueError as err:
        comparison = {"error": str(err)}
    out["growth_12m"] = {
        "n_test": int(ty.size),
        "positives_test": int(ty.sum()),
        "ece": ece(tp, ty),
        "reliability": reliability_table(tp, ty),
        "recalibration": comparison,
    }
    lr = _labelled(test, "lungrads")
    probs = np.asarray([r["lungrads_probabilities"] for r in lr], np.float64).reshape(len(lr), -1)
    labels = np.asarray([r["lungrads"] for r in lr], np.int64)
    top = probs.max(axis=1) if len(lr) else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels).astype(np.int64) if len(lr) else np.zeros(0, int)
    out["lungrads"] = {
        "n_test": len(lr),
        "top_label_ece": multiclass_ece(probs, labels) if len(lr) else None,
        "reliability": reliability_table(top, correct),
    }
    return out


def calibrated_probabilities(records: Sequence[Mapping], calibrator: Mapping | None) -> np.ndarray:
    """Malignancy probabilities of the records under a calibrator dict (None: sigmoid)."""
    fitted = MalignancyCalibrator.from_dict(calibrator) if calibrator else MalignancyCalibrator()
    return np.asarray(fitted.probability([r["malignancy_logit"] for r in records]), np.float64)


def brock_of(record: Mapping) -> float | None:
    """Brock probability of a crop's reference nodule (module docstring); None without one."""
    nodule = record.get("nodule")
    if not nodule or nodule.get("mean_diameter_mm") is None:
        return None
    return brock_probability(
        age_years=62.0, female=False, family_history=False, emphysema=False,
        nodule_size_mm=float(nodule["mean_diameter_mm"]),
        nodule_type=str(nodule.get("attenuation", "solid")),
        upper_lobe=nodule.get("lobe") == "upper", nodule_count=1,
        spiculation=nodule.get("margin") == "spiculated",
    )  # fmt: skip


def brock_section(
    test: Sequence[Mapping], calibrator: Mapping | None = None, n_boot: int = DEFAULT_BOOTSTRAP
) -> dict:
    """Brock vs ours on the same labelled test nodules (module docstring)."""
    rows = [r for r in _labelled(test, "malignant") if brock_of(r) is not None]
    if not rows:
        return {"n": 0, "error": "no labelled test nodule with Brock features"}
    ours = calibrated_probabilities(rows, calibrator)
    pairs = [(brock_of(r), float(p), int(r["malignant"])) for r, p in zip(rows, ours, strict=True)]

    def metric(index: int):
        return lambda sample: auroc([s[index] for s in sample], [s[2] for s in sample])

    def difference(sample):
        a, b = metric(1)(sample), metric(0)(sample)
        return None if a is None or b is None else a - b

    out = {"n": len(rows), "positives": int(sum(p[2] for p in pairs))}
    for name, fn in (("brock", metric(0)), ("ours", metric(1)), ("ours_minus_brock", difference)):
        out[name] = {"auroc" if name != "ours_minus_brock" else "difference": fn(pairs),
                     "ci": list(bootstrap_ci(pairs, fn, n_boot))}  # fmt: skip
    out["ece"] = {
        "brock": ece([p[0] for p in pairs], [p[2] for p in pairs]),
        "ours": ece([p[1] for p in pairs], [p[2] for p in pairs]),
    }
    return out


def saliency_section(test: Sequence[Mapping], n_boot: int = DEFAULT_BOOTSTRAP) -> dict:
    """Pointing game and mass in mask of each heatmap kind (``record["grounding"]``), with
    bootstrap CIs over the test crops that have a reference mask (same crops for every kind)."""
    kinds = sorted({k for r in test for k in (r.get("grounding") or {})})
    rows = [r for r in test if all((r.get("grounding") or {}).get(k) is not None for k in kinds)]
    out: dict = {"n": len(rows), "kinds": {}}
    for kind in kinds:
        scores = [r["grounding"][kind] for r in rows]

        def pointing(sample):
            return float(np.mean([s[0] for s in sample])) if sample else None

        def mass(sample):
            return float(np.mean([s[1] for s in sample])) if sample else None

        out["kinds"][kind] = {
            "pointing_game": {"value": pointing(scores), "ci": list(bootstrap_ci(scores, pointing, n_boot))},
            "mass_in_mask": {"value": mass(scores), "ci": list(bootstrap_ci(scores, mass, n_boot))},
        }  # fmt: skip
    return out


def hierarchy_section(val: Sequence[Mapping], test: Sequence[Mapping]) -> dict:
    """Argmax and risk-constrained Lung-RADS calls, flat and hierarchical (module docstring)."""
    v, t = _labelled(val, "lungrads"), _labelled(test, "lungrads")
    if not v or not t:
        return {"error": f"needs Lung-RADS labels (validation {len(v)}, test {len(t)})"}
    report = risk_constrained_report(
        [r["lungrads_probabilities"] for r in v], [r["lungrads"] for r in v],
        [r["lungrads_probabilities"] for r in t], [r["lungrads"] for r in t],
    )  # fmt: skip
    return report


def _crop_metrics(calibrator: Mapping | None) -> dict:
    def malignancy_auroc(sample):
        rows = _labelled(sample, "malignant")
        return auroc([r["malignancy_logit"] for r in rows], [r["malignant"] for r in rows])

    def malignancy_ece(sample):
        rows = _labelled(sample, "malignant")
        if not rows:
            return None
        return ece(calibrated_probabilities(rows, calibrator), [r["malignant"] for r in rows])

    def lungrads_accuracy(sample):
        rows = _labelled(sample, "lungrads")
        if not rows:
            return None
        hits = [int(np.argmax(r["lungrads_probabilities"])) == r["lungrads"] for r in rows]
        return float(np.mean(hits))

    def dice(sample):
        values = [r["dice"] for r in sample if r.get("dice") is not None]
        return float(np.mean(values)) if values else None

    return {
        "malignancy_auroc": malignancy_auroc,
        "malignancy_ece": malignancy_ece,
        "lungrads_accuracy": lungrads_accuracy,
        "crop_dice": dice,
    }


def chest_rows(scans: Sequence[Mapping], candidate_threshold: float | None) -> list[dict]:
    """Per-chest rows at the operating point from ``lungvlm evaluate`` scan dicts.

    Only candidates scoring ``>= candidate_threshold`` count (every candidate when None), as in
    the evaluation's own operating-point figures
    (:func:`lungvlm.evaluation.operating_point.scan_operating_point`); reference diameters are
    rounded to 0.1 mm as Lung-RADS reports them. Rows: ``profile``, ``diameters_mm``,
    ``detected`` (per reference) and ``n_false_positives``.
    """
    from lungvlm.evaluation.detection import ScanEvaluation
    from lungvlm.evaluation.operating_point import scan_operating_point

    rows = []
    for scan in scans:
        evaluation = ScanEvaluation.from_dict(scan)
        detected, n_fp = scan_operating_point(evaluation, candidate_threshold)
        rows.append({
            "scan_id": evaluation.scan_id,
            "profile": scan.get("profile"),
            "diameters_mm": [round_diameter_mm(r[3]) for r in evaluation.references],
            "detected": detected,
            "n_false_positives": n_fp,
        })  # fmt: skip
    return rows


def _chest_metrics(min_diameter_mm: float) -> dict:
    def sensitivity(sample):
        hits = [
            bool(d)
            for scan in sample
            for size, d in zip(scan["diameters_mm"], scan["detected"], strict=True)
            if size >= min_diameter_mm
        ]
        return float(np.mean(hits)) if hits else None

    def fps_per_scan(sample):
        return float(np.mean([scan["n_false_positives"] for scan in sample])) if sample else None

    return {"sensitivity_ge_6mm": sensitivity, "fps_per_scan": fps_per_scan}


def fairness_section(
    test: Sequence[Mapping],
    scans: Sequence[Mapping] | None = None,
    calibrator: Mapping | None = None,
    n_boot: int = DEFAULT_BOOTSTRAP,
) -> dict:
    """Per-subgroup crop and chest metrics with CIs and largest gaps (module docstring).

    ``scans``: :func:`chest_rows` (per chest, at the operating point).
    """
    crops = subgroup_table(test, lambda r: r.get("profile"), _crop_metrics(calibrator), n_boot)
    out = {"crops": crops, "largest_gaps": largest_gaps(crops)}
    if scans:
        chests = subgroup_table(
            scans, lambda s: s.get("profile"), _chest_metrics(FAIRNESS_MIN_DIAMETER_MM), n_boot
        )
        out["chests"] = chests
        out["largest_gaps"].update(largest_gaps(chests))
    return out


def risk_coverage_curve(
    confidences: Sequence[float],
    correct: Sequence[bool],
    coverages: Sequence[float] = COVERAGE_GRID,
) -> list[dict]:
    """Precision (and risk = 1 - precision) of the ``ceil(c * n)`` most confident sentences."""
    conf = np.asarray(confidences, np.float64)
    ok = np.asarray(correct, bool)
    order = np.argsort(-conf, kind="stable")
    rows = []
    for coverage in coverages:
        k = math.ceil(coverage * conf.size - 1e-9)
        precision = float(ok[order[:k]].mean()) if k > 0 else None
        threshold = float(conf[order[k - 1]]) if k > 0 else None
        rows.append({"coverage": float(coverage), "kept": k, "precision": precision,
                     "risk": None if precision is None else 1 - precision,
                     "threshold": threshold})  # fmt: skip
    return rows


def deferral_section(test: Sequence[Mapping]) -> dict:
    """Risk-coverage of generated sentences on test crops (module docstring)."""
    pairs = [s for r in test for s in r.get("sentences", [])]
    curve = risk_coverage_curve([p[0] for p in pairs], [p[1] for p in pairs])
    at = next((row for row in curve if abs(row["coverage"] - DEFERRAL_COVERAGE) < 1e-9), None)
    precision = at["precision"] if at else None
    return {
        "n_sentences": len(pairs),
        "curve": curve,
        "precision_at_80": precision,
        "target": DEFERRAL_TARGET_PRECISION,
        "meets_target": None if precision is None else precision >= DEFERRAL_TARGET_PRECISION,
    }


def run_audit(
    val: Sequence[Mapping],
    test: Sequence[Mapping],
    scans: Sequence[Mapping] | None = None,
    n_boot: int = DEFAULT_BOOTSTRAP,
    robustness: Mapping | None = None,
) -> dict:
    """Every section, plus a ``headline`` of the figures the closing note needs.

    ``robustness``: curves of :func:`lungvlm.evaluation.robustness.robustness_curves` (they
    need the model, so the caller runs them); stored under ``fairness["robustness"]``.
    """
    calibration = calibration_section(val, test)
    chosen = calibration.get("malignancy", {})
    calibrator = chosen.get("calibrator")
    audit = {
        "n_val_crops": len(val),
        "n_test_crops": len(test),
        "n_test_chests": len(scans or ()),
        "calibration": calibration,
        "brock": brock_section(test, calibrator, n_boot),
        "saliency": saliency_section(test, n_boot),
        "hierarchy": hierarchy_section(val, test),
        "fairness": fairness_section(test, scans, calibrator, n_boot),
        "deferral": deferral_section(test),
        "zero_shot": zero_shot_section(test, n_boot),
    }
    if robustness is not None:
        audit["fairness"]["robustness"] = dict(robustness)
    methods = chosen.get("methods", {})
    after = methods.get(chosen.get("chosen"), {}).get("test_ece") if methods else None
    hierarchy = audit["hierarchy"]
    audit["headline"] = {
        "malignancy_ece_before": methods.get("none", {}).get("test_ece") if methods else None,
        "malignancy_ece_after": after,
        "calibrator": chosen.get("chosen"),
        "ece_target_met": None if after is None else after <= ECE_TARGET,
        "brock_auroc": audit["brock"].get("brock", {}).get("auroc"),
        "pointing_game": {
            kind: entry["pointing_game"]["value"]
            for kind, entry in audit["saliency"]["kinds"].items()
        },
        "ours_auroc": audit["brock"].get("ours", {}).get("auroc"),
        "catastrophic_rate_argmax": hierarchy.get("test_argmax", {}).get("catastrophic_rate"),
        "catastrophic_miss_rate_constrained": hierarchy.get("test_constrained", {}).get(
            "catastrophic_miss_rate"
        ),
        "largest_gaps": audit["fairness"]["largest_gaps"],
        "deferral_precision_at_80": audit["deferral"]["precision_at_80"],
        "zero_shot_auroc": {
            name: entry["zero_shot_auroc"]["value"] for name, entry in audit["zero_shot"].items()
        },
    }
    return audit
