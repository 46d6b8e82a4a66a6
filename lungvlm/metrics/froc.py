"""LUNA16 FROC analysis and the competition performance metric (CPM), in pure numpy.

Follows the LUNA16 evaluation (luna16.grand-challenge.org/Evaluation and its script
``noduleCADEvaluationLUNA16.py``, summarised in ``reference/luna16.md``):

- a candidate hits a nodule if its squared 3-D world distance is ``< (diameter_mm / 2)**2``;
- if several candidates hit one reference nodule only the most probable counts (true
  positive); the others are dropped, neither true nor false positive;
- candidates that hit an excluded ("irrelevant") finding are ignored; an excluded finding with
  a negative diameter is given 10 mm;
- all other candidates are false positives; missed nodules count in the sensitivity's
  denominator only;
- only the ``max_marks_per_scan`` most probable candidates of each scan are kept (the script's
  ``maxNumberOfCADMarks``, default 100; ties at the cut are dropped, as in the script);
- the curve is the ROC thresholding of ``sklearn.metrics.roc_curve`` (one point per distinct
  probability, starting at (0, 0)), rescaled to false positives per scan and sensitivity;
  sensitivities at 1/8 ... 8 FPs/scan come from ``np.interp`` on that curve, and the CPM is
  their mean.

As in the script, a candidate that hits two reference nodules counts as a hit for both.
Where the script returns NaN (no nodule detected at all) this module returns sensitivity 0.
Coordinates are world mm in the CSVs' (x, y, z) order; any order works if used consistently.
The bootstrap confidence interval of the challenge is not computed here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

FROC_FP_PER_SCAN_POINTS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""False positives per scan at which LUNA16 reads the sensitivity for the CPM."""

EXCLUDED_DEFAULT_DIAMETER_MM = 10.0
"""Diameter given to an excluded finding whose diameter is negative (LUNA16 script)."""

DEFAULT_MAX_MARKS_PER_SCAN = 100
"""The script's ``maxNumberOfCADMarks`` (a modified copy elsewhere uses 300)."""


class Candidate(NamedTuple):
    """One detection: scan, world position (mm) and probability (a row of results.csv)."""

    scan_id: str
    x_mm: float
    y_mm: float
    z_mm: float
    probability: float


class ReferenceNodule(NamedTuple):
    """One reference or excluded finding: scan, world centre (mm) and diameter (mm)."""

    scan_id: str
    x_mm: float
    y_mm: float
    z_mm: float
    diameter_mm: float


@dataclass(frozen=True)
class FROCResult:
    """FROC curve and CPM.

    Attributes:
        fps_per_scan: false positives per scan at each threshold, starting at 0.
        sensitivity: fraction of reference nodules detected at each threshold, starting at 0.
        thresholds: probability threshold of each point (``inf`` for the first).
        sensitivities_at_points: ``{fps_per_scan: sensitivity}`` at the CPM points.
        cpm: mean of ``sensitivities_at_points``.
        n_scans: scans evaluated (the per-scan denominator).
        n_nodules: reference nodules in those scans.
        n_detected: reference nodules hit by at least one kept candidate.
        n_false_positives: kept candidates that hit no reference or excluded finding.
        n_ignored: kept candidates dropped as duplicate hits or hits on excluded findings.
    """

    fps_per_scan: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    sensitivities_at_points: dict[float, float]
    cpm: float
    n_scans: int
    n_nodules: int
    n_detected: int
    n_false_positives: int
    n_ignored: int


def froc_curve(
    is_nodule: np.ndarray, probability: np.ndarray, n_scans: int, n_nodules: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC thresholding (as ``sklearn.metrics.roc_curve``) rescaled to FPs/scan and sensitivity.

    Args:
        is_nodule: bool (N,), one entry per detected nodule (True) or false positive (False).
        probability: (N,) scores of those entries.
        n_scans: number of scans (FP denominator).
        n_nodules: number of reference nodules, detected or not (sensitivity denominator).

    Returns:
        ``(fps_per_scan, sensitivity, thresholds)``, one point per distinct probability in
        decreasing order, preceded by (0, 0, inf).
    """
    labels = np.asarray(is_nodule, dtype=bool)
    scores = np.asarray(probability, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, labels = scores[order], labels[order]
    # Last index of each run of equal scores: ties form one point, as in roc_curve.
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1].astype(int)
    if scores.size == 0:
        last_of_run = np.zeros(0, dtype=int)
    tps = np.cumsum(labels)[last_of_run]
    fps = last_of_run + 1 - tps
    fps_per_scan = np.r_[0.0, fps / n_scans]
    sensitivity = np.r_[0.0, tps / n_nodules]
    thresholds = np.r_[np.inf, scores[last_of_run]]
    return fps_per_scan, sensitivity, thresholds


def _group_by_scan(rows: Iterable[Sequence], kind: str) -> dict[str, np.ndarray]:
    grouped: dict[str, list[list[float]]] = defaultdict(list)
    for row in rows:
        if len(row) != 5:
            raise ValueError(f"each {kind} must be (scan_id, x_mm, y_mm, z_mm, value); got {row!r}")
        grouped[str(row[0])].append([float(v) for v in row[1:]])
    arrays = {scan: np.asarray(values, dtype=np.float64) for scan, values in grouped.items()}
    for scan, values in arrays.items():
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{kind} rows of scan {scan!r} contain non-finite values")
    return arrays


def _hits(candidates: np.ndarray, findings: np.ndarray) -> np.ndarray:
    """Bool (n_candidates, n_findings): squared distance < (diameter / 2)**2."""
    if candidates.size == 0 or findings.size == 0:
        return np.zeros((len(candidates), len(findings)), dtype=bool)
    d2 = ((candidates[:, None, :3] - findings[None, :, :3]) ** 2).sum(-1)
    return d2 < (findings[None, :, 3] / 2.0) ** 2


def _keep_top(candidates: np.ndarray, max_marks: int | None) -> np.ndarray:
    if max_marks is None or len(candidates) <= max_marks:
        return candidates
    cut = np.sort(candidates[:, 3])[::-1][max_marks]
    return candidates[candidates[:, 3] > cut]


def froc(
    candidates: Iterable[Sequence],
    references: Iterable[Sequence],
    excluded: Iterable[Sequence] = (),
    scan_ids: Sequence[str] | None = None,
    max_marks_per_scan: int | None = DEFAULT_MAX_MARKS_PER_SCAN,
    fp_points: Sequence[float] = FROC_FP_PER_SCAN_POINTS,
) -> FROCResult:
    """LUNA16 FROC analysis and CPM.

    Args:
        candidates: rows ``(scan_id, x_mm, y_mm, z_mm, probability)``, e.g. :class:`Candidate`.
        references: rows ``(scan_id, x_mm, y_mm, z_mm, diameter_mm)`` of the nodules to find,
            e.g. :class:`ReferenceNodule`; diameters must be positive.
        excluded: rows like ``references`` for irrelevant findings (annotations_excluded.csv).
        scan_ids: scans to evaluate (seriesuids.csv); rows of other scans are ignored and a
            listed scan without candidates still counts. ``None``: every scan named in
            ``candidates`` or ``references``.
        max_marks_per_scan: keep only this many most probable candidates per scan; ``None``
            keeps all.
        fp_points: FPs per scan at which sensitivity is read for the CPM.

    Returns:
        The curve, the sensitivities at ``fp_points`` and their mean (CPM).

    Raises:
        ValueError: on malformed rows, non-positive reference diameters, an empty scan list, no
            reference nodule in the evaluated scans, or a bad ``max_marks_per_scan``.
    """
    cands = _group_by_scan(candidates, "candidate")
    refs = _group_by_scan(references, "reference")
    excl = _group_by_scan(excluded, "excluded finding")
    for scan, values in refs.items():
        if np.any(values[:, 3] <= 0):
            raise ValueError(
                f"reference diameters must be > 0 mm; scan {scan!r} has {values[:, 3]}"
            )
    if max_marks_per_scan is not None and (
        not isinstance(max_marks_per_scan, int) or max_marks_per_scan < 1
    ):
        raise ValueError(
            f"max_marks_per_scan must be a positive int or None; got {max_marks_per_scan!r}"
        )
    scans = sorted(set(cands) | set(refs)) if scan_ids is None else list(dict.fromkeys(scan_ids))
    if not scans:
        raise ValueError("no scans to evaluate: scan_ids is empty and no rows were given")

    is_nodule: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    n_nodules = n_ignored = 0
    empty = np.zeros((0, 4))
    for scan in scans:
        scan_cands = _keep_top(cands.get(scan, empty), max_marks_per_scan)
        scan_refs = refs.get(scan, empty)
        scan_excl = excl.get(scan, empty).copy()
        scan_excl[scan_excl[:, 3] < 0, 3] = EXCLUDED_DEFAULT_DIAMETER_MM
        ref_hits = _hits(scan_cands, scan_refs)  # (n_cand, n_ref)
        excl_hits = _hits(scan_cands, scan_excl)
        n_nodules += len(scan_refs)
        detected = ref_hits.any(axis=0)
        # Best probability among the candidates hitting each nodule (-inf if missed).
        hit_score = np.where(ref_hits, scan_cands[:, 3:4], -np.inf)  # (n_cand, n_ref)
        best = hit_score.max(axis=0, initial=-np.inf)
        false_pos = ~ref_hits.any(axis=1) & ~excl_hits.any(axis=1)
        # Candidates kept as true positives; other hitting candidates are dropped.
        n_counted = (
            len(set(hit_score[:, detected].argmax(axis=0).tolist())) if detected.any() else 0
        )
        n_ignored += int((~false_pos).sum()) - n_counted
        is_nodule += [np.ones(int(detected.sum()), bool), np.zeros(int(false_pos.sum()), bool)]
        scores += [best[detected], scan_cands[false_pos, 3]]
    if n_nodules == 0:
        raise ValueError(f"no reference nodules in the {len(scans)} evaluated scans")

    labels, probs = np.concatenate(is_nodule), np.concatenate(scores)
    fps_per_scan, sensitivity, thresholds = froc_curve(labels, probs, len(scans), n_nodules)
    points = [float(p) for p in fp_points]
    at_points = np.interp(points, fps_per_scan, sensitivity)
    return FROCResult(
        fps_per_scan=fps_per_scan,
        sensitivity=sensitivity,
        thresholds=thresholds,
        sensitivities_at_points=dict(zip(points, at_points.tolist(), strict=True)),
        cpm=float(at_points.mean()),
        n_scans=len(scans),
        n_nodules=n_nodules,
        n_detected=int(labels.sum()),
        n_false_positives=int((~labels).sum()),
        n_ignored=n_ignored,
    )
