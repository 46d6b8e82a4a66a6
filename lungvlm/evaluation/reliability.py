"""Calibration audit: reliability tables, ECE, temperature vs isotonic recalibration.

- :func:`reliability_table`: equal-width bins of predicted probability, each with its mean
  prediction, observed frequency and count (the points of a reliability diagram).
- ECE is torchmetrics' L1 binary calibration error
  (:func:`lungvlm.inference.calibration.expected_calibration_error`, :data:`ECE_BINS` bins);
  Lung-RADS class calibration uses torchmetrics' multiclass (top-label) calibration error.
- :func:`compare_calibrators`: fits temperature scaling and isotonic regression on the
  *validation* logits and picks the calibrator with the lower ECE in a K-fold cross-validation
  on validation (each fold's calibrator fitted on the other folds: an isotonic map fitted and
  scored on the same data would always look perfect). The test data only report the result.
- Growth: P(growth within 12 months) is scored against "grew within 12 months"; a nodule whose
  follow-up ends before 12 months without growth is censored there and left out
  (:func:`growth_12m_labels`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from sklearn.isotonic import IsotonicRegression
from torchmetrics.classification import MulticlassCalibrationError

from lungvlm.inference.calibration import (
    ECE_BINS,
    MalignancyCalibrator,
    expected_calibration_error,
    fit_temperature,
    logit_label_arrays,
)

#: Folds of the cross-validation that chooses the calibrator.
DEFAULT_FOLDS = 5
#: Horizon (months) of the growth probability that is audited.
GROWTH_HORIZON_MONTHS = 12.0


def _pairs(probabilities: ArrayLike, labels: ArrayLike) -> tuple[NDArray, NDArray]:
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"probabilities ({p.size}) and labels ({y.size}) differ in length")
    if p.size and (np.nanmin(p) < 0 or np.nanmax(p) > 1 or not np.isfinite(p).all()):
        raise ValueError("probabilities must be finite and in [0, 1]")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return p, y


def reliability_table(
    probabilities: ArrayLike, labels: ArrayLike, n_bins: int = ECE_BINS
) -> list[dict]:
    """Reliability-diagram bins: ``lower``, ``upper``, ``count``, ``mean_probability`` and
    ``observed`` (fraction of label 1); the last two None for an empty bin. The last bin
    includes 1.0."""
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} must be >= 1")
    p, y = _pairs(probabilities, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        inside = which == b
        count = int(inside.sum())
        rows.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "mean_probability": float(p[inside].mean()) if count else None,
                "observed": float(y[inside].mean()) if count else None,
            }
        )
    return rows


def ece(probabilities: ArrayLike, labels: ArrayLike) -> float | None:
    """Binary ECE (L1, :data:`ECE_BINS` bins); None with no data."""
    p, y = _pairs(probabilities, labels)
    return None if p.size == 0 else expected_calibration_error(p, y)


def multiclass_ece(
    probabilities: ArrayLike, labels: ArrayLike, n_bins: int = ECE_BINS
) -> float | None:
    """Top-label ECE of (N, C) class probabilities against (N,) class indices; None if N = 0."""
    probs = np.asarray(probabilities, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != y.size:
        raise ValueError(f"probabilities {probs.shape} must be (N, C) with N = {y.size} labels")
    if y.size == 0:
        return None
    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=n_bins, norm="l1")
    return float(metric(torch.from_numpy(probs), torch.from_numpy(y)))


def fit_isotonic(logits: ArrayLike, labels: ArrayLike) -> MalignancyCalibrator:
    """Isotonic regression (scikit-learn) of the label on the logit, as a calibrator.

    The fitted step function is stored by its knots (logit, probability); between knots it is
    interpolated linearly and it is constant outside them.

    Raises:
        ValueError: no data, or mismatched lengths.
    """
    z, y = logit_label_arrays(logits, labels)
    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(z, y)
    return MalignancyCalibrator(
        kind="isotonic",
        knots_logit=tuple(float(v) for v in model.X_thresholds_),
        knots_probability=tuple(float(v) for v in model.y_thresholds_),
    )


def fit_temperature_calibrator(logits: ArrayLike, labels: ArrayLike) -> MalignancyCalibrator:
    """Temperature scaling (:func:`~lungvlm.inference.calibration.fit_temperature`)."""
    return MalignancyCalibrator(kind="temperature", temperature=fit_temperature(logits, labels))


_FITTERS = {"temperature": fit_temperature_calibrator, "isotonic": fit_isotonic}


def cross_validated_ece(
    logits: ArrayLike, labels: ArrayLike, kind: str, folds: int = DEFAULT_FOLDS, seed: int = 0
) -> float | None:
    """ECE of calibrator ``kind`` over K folds, each scored by a fit on the other folds.

    The held-out probabilities of all folds are pooled into one ECE. None when there are fewer
    samples than folds or a training part holds a single class.
    """
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if kind not in _FITTERS:
        raise ValueError(f"kind={kind!r} is not a calibrator; expected one of {tuple(_FITTERS)}")
    if folds < 2 or z.size < folds:
        return None
    order = np.random.default_rng(seed).permutation(z.size)
    held_out = np.empty(z.size, np.float64)
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        if np.unique(y[train]).size < 2:
            return None
        held_out[fold] = _FITTERS[kind](z[train], y[train]).probability(z[fold])
    return ece(held_out, y)


def compare_calibrators(
    val_logits: ArrayLike,
    val_labels: ArrayLike,
    test_logits: ArrayLike,
    test_labels: ArrayLike,
    folds: int = DEFAULT_FOLDS,
) -> dict:
    """Fit temperature and isotonic on validation, choose by cross-validated ECE, report test.

    Returns:
        ``chosen`` (the kind), ``calibrator`` (the chosen one refitted on all validation data,
        as a dict), and per method (``none``, ``temperature``, ``isotonic``): ``val_cv_ece``
        (None for ``none``: its validation ECE is given instead), ``test_ece`` and the test
        ``reliability`` table. ``n_val``/``n_test`` count the labelled nodules.

    Raises:
        ValueError: no validation data or a single class in it.
    """
    zv = np.asarray(val_logits, dtype=np.float64).reshape(-1)
    yv = np.asarray(val_labels, dtype=np.int64).reshape(-1)
    zt = np.asarray(test_logits, dtype=np.float64).reshape(-1)
    yt = np.asarray(test_labels, dtype=np.int64).reshape(-1)
    if zv.size == 0 or np.unique(yv).size < 2:
        raise ValueError(
            f"calibration needs validation nodules of both classes (got {zv.size} nodules, "
            f"classes {sorted(set(yv.tolist()))})"
        )
    fitted = {kind: fit(zv, yv) for kind, fit in _FITTERS.items()}
    methods = {"none": MalignancyCalibrator(kind="temperature", temperature=1.0), **fitted}
    out: dict = {"n_val": int(zv.size), "n_test": int(zt.size), "methods": {}}
    for kind, calibrator in methods.items():
        test_p = calibrator.probability(zt) if zt.size else np.zeros(0)
        out["methods"][kind] = {
            "val_ece": ece(calibrator.probability(zv), yv) if kind == "none" else None,
            "val_cv_ece": None if kind == "none" else cross_validated_ece(zv, yv, kind, folds),
            "test_ece": ece(test_p, yt),
            "reliability": reliability_table(test_p, yt),
            "calibrator": calibrator.to_dict(),
        }
    scores = {k: out["methods"][k]["val_cv_ece"] for k in fitted}
    finite = {k: v for k, v in scores.items() if v is not None and math.isfinite(v)}
    chosen = min(finite, key=finite.get) if finite else "temperature"
    out["chosen"] = chosen
    out["calibrator"] = fitted[chosen].to_dict()
    return out


def growth_12m_labels(
    time_months: ArrayLike, event: ArrayLike, horizon_months: float = GROWTH_HORIZON_MONTHS
) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
    """(usable, label) for "grew within ``horizon_months``" from (time, event) pairs.

    A growth event at or before the horizon is 1; follow-up past the horizon without growth
    before it is 0; no growth and follow-up ending before the horizon is censored (unusable).
    """
    t = np.asarray(time_months, dtype=np.float64).reshape(-1)
    e = np.asarray(event, dtype=np.float64).reshape(-1) > 0.5
    if t.shape != e.shape:
        raise ValueError(f"time ({t.size}) and event ({e.size}) differ in length")
    grew = e & (t <= horizon_months)
    usable = grew | (t >= horizon_months)
    return usable, grew.astype(np.int64)
