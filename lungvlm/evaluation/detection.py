"""Whole-scan evaluation: per-nodule Dice, detection sensitivity, FPs per scan, FROC and CPM.

Conventions (project choices, documented here):

- Dice is computed on the **original grid**: the probability is resampled back linearly
  (:meth:`PreparedScan.to_original_grid`) and thresholded at the segmentation threshold; each
  reference nodule (label ``i`` of the reference label map) is compared with the union of the
  predicted components touching it (:func:`lungvlm.metrics.segmentation.per_nodule_dice`), so a
  missed nodule scores 0 and a false positive elsewhere does not lower it.
- Detection follows LUNA16 (``reference/luna16.md``, "Evaluation"): each detected instance is
  a candidate at its world centre (LPS mm) with its ranking score
  (:attr:`~lungvlm.inference.scan.DetectedNodule.ranking_score`: the candidate head's
  ``candidate_probability`` when the model has one, else the segmentation's peak probability
  ``score``); it hits a reference nodule when the distance to the reference centre is below
  half the reference diameter (:func:`candidate_hits`). Reference centres
  are the centroids of the reference label map mapped to world mm. FROC and CPM come from
  :func:`lungvlm.metrics.froc.froc` (1/8 ... 8 FPs per scan) over every instance.
- Operating point (:func:`operating_point`): sensitivity, sensitivity for nodules >= 6 mm and
  FPs/scan count the instances whose ranking score is at or above the checkpoint's calibrated
  candidate threshold (what the report lists), or every instance above the segmentation
  probability threshold when the checkpoint has none (duplicate hits on one nodule are neither
  true nor false positives, as in LUNA16). The 6 mm bound applies to the reference mean
  diameter rounded to 0.1 mm, as Lung-RADS reports it.
- Operating threshold (:func:`operating_threshold`): on validation chests, the lowest
  candidate-probability threshold whose false positives per scan stay within a budget; the
  report lists the candidates at or above it (``lungvlm calibrate --detection``).
- Scanner-profile subsets (:func:`subset_summary`): every figure on all scans, on the
  thick-slice low-dose scans and on the rest (:mod:`lungvlm.evaluation.subsets`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from torch import nn

from lungvlm.evaluation.operating_point import candidate_hits, operating_point, subset_summary
from lungvlm.inference.cascade import segment_scan_cascade
from lungvlm.inference.scan import ScanSegmentation, prepare_scan, segment_scan
from lungvlm.metrics.froc import FROCResult, froc
from lungvlm.metrics.segmentation import per_nodule_dice


class EvaluationScan(NamedTuple):
    """One scan with its reference.

    Attributes:
        scan_id: unique name of the scan.
        image_hu: CT (z, y, x) in HU.
        spacing_mm: spacing (z, y, x) in mm.
        origin_lps_mm: world (x, y, z) of voxel (0, 0, 0), identity direction.
        gt_label_map: int (z, y, x) map, nodule ``i`` has value ``i`` (1-based), 0 elsewhere.
        gt_nodule_diameters_mm: diameter (mm) of nodules 1..N, in label order.
        lung_mask: optional boolean lung mask on the original grid.
        profile: optional scanner profile (``slice_thickness_mm``, ``exposure_mas``, ``kernel``
            ...), kept in the scan's evaluation for the subsets.
    """

    scan_id: str
    image_hu: ArrayLike
    spacing_mm: Sequence[float]
    origin_lps_mm: Sequence[float]
    gt_label_map: ArrayLike
    gt_nodule_diameters_mm: Sequence[float]
    lung_mask: ArrayLike | None = None
    profile: Mapping | None = None


@dataclass
class ScanEvaluation:
    """Per-scan numbers: Dice of each reference nodule, hits of every instance above the
    probability threshold, instances, timings and the scanner profile (None if unknown)."""

    scan_id: str
    dice: list[float]
    references: list[tuple[float, float, float, float]]
    candidates: list[tuple[float, float, float, float]]
    detected: list[bool]
    n_false_positives: int
    instances: list[dict]
    windows_fraction: float
    timings_s: dict[str, float]
    profile: dict | None = None

    def to_dict(self) -> dict:
        """JSON-serialisable fields."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping) -> ScanEvaluation:
        """The inverse of :meth:`to_dict` (a stored per-chest record)."""
        fields = dict(data)
        for key in ("references", "candidates"):
            fields[key] = [tuple(float(v) for v in row) for row in fields[key]]
        return cls(**fields)


@dataclass
class EvaluationResult:
    """Evaluation of a set of scans (see the module docstring for the conventions).

    Attributes:
        scans: per-scan evaluations.
        froc: LUNA16 FROC analysis, or None when no scan has a reference nodule.
        threshold: probability threshold of the instances.
        settings: segmentation settings, stored with the summary.
        candidate_threshold: the checkpoint's calibrated candidate threshold; when given, the
            operating point counts only instances scoring at or above it.
    """

    scans: list[ScanEvaluation]
    froc: FROCResult | None
    threshold: float
    settings: dict = field(default_factory=dict)
    candidate_threshold: float | None = None

    @property
    def n_nodules(self) -> int:
        """Reference nodules over all scans."""
        return sum(len(s.dice) for s in self.scans)

    @property
    def mean_dice(self) -> float | None:
        """Mean per-nodule Dice (missed nodules count 0); None without reference nodules."""
        dice = [d for s in self.scans for d in s.dice]
        return float(np.mean(dice)) if dice else None

    @property
    def sensitivity(self) -> float | None:
        """Fraction of reference nodules hit at the operating point (module docstring)."""
        return operating_point(self.scans, self.candidate_threshold)["sensitivity"]

    @property
    def fps_per_scan(self) -> float:
        """Instances hitting no reference nodule at the operating point, per scan."""
        return operating_point(self.scans, self.candidate_threshold)["fps_per_scan"] or 0.0

    def to_dict(self) -> dict:
        """A JSON-serialisable summary (FROC curve included)."""
        point = operating_point(self.scans, self.candidate_threshold)
        summary = {
            "n_scans": len(self.scans),
            "n_nodules": self.n_nodules,
            "threshold": self.threshold,
            "operating_point": {
                "kind": "probability_threshold"
                if self.candidate_threshold is None
                else "candidate_threshold",
                "probability_threshold": self.threshold,
                "candidate_threshold": self.candidate_threshold,
            },
            "mean_dice": self.mean_dice,
            "sensitivity": point["sensitivity"],
            "sensitivity_ge_6mm": point["sensitivity_ge_6mm"],
            "fps_per_scan": point["fps_per_scan"] or 0.0,
            "cpm": None if self.froc is None else self.froc.cpm,
            "sensitivity_at_fps": None
            if self.froc is None
            else {str(k): v for k, v in self.froc.sensitivities_at_points.items()},
            "mean_window_fraction": float(np.mean([s.windows_fraction for s in self.scans]))
            if self.scans
            else None,
            "seconds_per_scan": {
                key: float(np.mean([s.timings_s.get(key, 0.0) for s in self.scans]))
                for key in sorted({k for s in self.scans for k in s.timings_s})
            },
        }
        summary["subsets"] = subset_summary(self.scans, self.candidate_threshold)
        if self.froc is not None:
            summary["froc_curve"] = {
                "fps_per_scan": self.froc.fps_per_scan.tolist(),
                "sensitivity": self.froc.sensitivity.tolist(),
            }
        return {
            "summary": summary,
            "settings": self.settings,
            "scans": [s.to_dict() for s in self.scans],
        }


def reference_nodules(
    gt_label_map: ArrayLike, diameters_mm: Sequence[float], segmentation: ScanSegmentation
) -> list[tuple[float, float, float, float]]:
    """World centres (x, y, z, mm) and diameters of the labels 1..N of a reference label map."""
    labels = np.asarray(gt_label_map)
    n = len(diameters_mm)
    if labels.shape != segmentation.prepared.original_shape:
        raise ValueError(
            f"gt_label_map has shape {labels.shape}; expected the scan's "
            f"{segmentation.prepared.original_shape}"
        )
    present = set(np.unique(labels).tolist()) - {0}
    if present != set(range(1, n + 1)):
        raise ValueError(
            f"gt_label_map holds labels {sorted(present)} but {n} diameters were given; "
            "expected labels 1..N, one per diameter"
        )
    if n == 0:
        return []
    centres = ndimage.center_of_mass(labels > 0, labels, list(range(1, n + 1)))
    world = segmentation.prepared.to_world(np.asarray(centres, dtype=np.float64))
    return [(*map(float, w), float(d)) for w, d in zip(world, diameters_mm, strict=True)]


def evaluate_segmentation(
    scan_id: str,
    segmentation: ScanSegmentation,
    gt_label_map: ArrayLike,
    gt_nodule_diameters_mm: Sequence[float],
    threshold: float = 0.5,
    profile: Mapping | None = None,
) -> ScanEvaluation:
    """Compare one scan's segmentation with its reference (module docstring)."""
    refs = reference_nodules(gt_label_map, gt_nodule_diameters_mm, segmentation)
    labels = np.asarray(gt_label_map).astype(np.int64)
    pred = segmentation.prepared.to_original_grid(segmentation.probability, order=1) >= threshold
    dice = per_nodule_dice(pred, labels) if refs else []
    cands = [(*inst.centroid_world_mm, inst.ranking_score) for inst in segmentation.instances]
    hits = candidate_hits(cands, refs)
    return ScanEvaluation(
        scan_id=scan_id,
        dice=[float(d) for d in dice],
        references=refs,
        candidates=[tuple(float(v) for v in c) for c in cands],
        detected=hits.any(axis=0).tolist(),
        n_false_positives=int((~hits.any(axis=1)).sum()),
        instances=[inst.to_dict() for inst in segmentation.instances],
        windows_fraction=segmentation.window_fraction,
        timings_s=dict(segmentation.timings_s),
        profile=None if profile is None else dict(profile),
    )


def summarize(
    scans: Sequence[ScanEvaluation],
    threshold: float,
    settings: dict | None = None,
    candidate_threshold: float | None = None,
) -> EvaluationResult:
    """FROC/CPM over per-scan evaluations -> :class:`EvaluationResult`."""
    ids = [s.scan_id for s in scans]
    if len(set(ids)) != len(ids):
        raise ValueError(f"scan ids must be unique; got {ids}")
    candidates = [(s.scan_id, *c) for s in scans for c in s.candidates]
    references = [(s.scan_id, *r) for s in scans for r in s.references]
    result = froc(candidates, references, scan_ids=ids) if references else None
    return EvaluationResult(
        list(scans), result, threshold, dict(settings or {}), candidate_threshold
    )


def evaluate_scan(
    model: nn.Module,
    scan: EvaluationScan | Sequence,
    target_spacing_mm: float = 1.0,
    threshold: float = 0.5,
    cascade: bool = False,
    **segment_kwargs,
) -> ScanEvaluation:
    """Segment one scan and evaluate it against its reference (arguments: :func:`evaluate_scans`)."""
    scan = scan if isinstance(scan, EvaluationScan) else EvaluationScan(*scan)
    segment = segment_scan_cascade if cascade else segment_scan
    start = time.perf_counter()
    prepared = prepare_scan(
        scan.image_hu, scan.spacing_mm, target_spacing_mm, getattr(model, "normalization", None),
        scan.origin_lps_mm,
    )  # fmt: skip
    prepare_s = time.perf_counter() - start
    seg = segment(model, prepared, lung_mask=scan.lung_mask, threshold=threshold, **segment_kwargs)
    seg.timings_s["prepare"] = prepare_s
    return evaluate_segmentation(
        str(scan.scan_id), seg, scan.gt_label_map, scan.gt_nodule_diameters_mm, threshold,
        scan.profile,
    )  # fmt: skip


def segmentation_settings(
    target_spacing_mm: float, cascade: bool, **segment_kwargs
) -> dict[str, int | float | str | bool]:
    """The plain settings of an evaluation, stored with its summary."""
    return {
        "target_spacing_mm": target_spacing_mm,
        "cascade": cascade,
        **{k: v for k, v in segment_kwargs.items() if isinstance(v, (int, float, str, bool))},
    }


def evaluate_scans(
    model: nn.Module,
    scans: Iterable[EvaluationScan | Sequence],
    target_spacing_mm: float = 1.0,
    threshold: float = 0.5,
    cascade: bool = False,
    candidate_threshold: float | None = None,
    **segment_kwargs,
) -> EvaluationResult:
    """Segment every scan and evaluate it against its reference (module docstring).

    Args:
        model: segmentation model with a ``normalization`` dict (``hu_min``, ``hu_max``).
        scans: :class:`EvaluationScan` rows or plain tuples in the same order (the lung mask
            and profile are optional).
        target_spacing_mm: the model's spacing (mm).
        threshold: probability threshold of the instances and the Dice masks.
        cascade: use :func:`segment_scan_cascade` instead of :func:`segment_scan`.
        candidate_threshold: the operating point's candidate threshold (None: every instance).
        **segment_kwargs: passed to the segmentation function (roi_size_vox, overlap, ...).
    """
    evaluations = [
        evaluate_scan(model, row, target_spacing_mm, threshold, cascade, **segment_kwargs)
        for row in scans
    ]
    settings = segmentation_settings(target_spacing_mm, cascade, **segment_kwargs)
    return summarize(evaluations, threshold, settings, candidate_threshold)


def operating_threshold(
    scores_per_scan: Sequence[Sequence[float]],
    hits_per_scan: Sequence[ArrayLike],
    n_scans: int,
    max_fps_per_scan: float,
) -> tuple[float, float, float]:
    """The lowest candidate threshold whose false positives per scan stay within a budget.

    A candidate is kept when its probability is ``>= threshold``. The thresholds tried are the
    distinct candidate probabilities (each keeps every candidate tied with it) and, last, the
    float just above the highest one (keeps nothing). False positives are kept candidates that
    hit no reference nodule; a reference is detected when a kept candidate hits it (several
    hits on one nodule are one detection and no false positive, as in LUNA16).

    Args:
        scores_per_scan: per scan, the probability of each candidate.
        hits_per_scan: per scan, a bool (n_candidates, n_references) hit matrix
            (:func:`candidate_hits`); its columns count the scan's reference nodules.
        n_scans: scans the candidates come from (the false-positive denominator), at least the
            number of lists given (a scan without candidates or references may be left out).
        max_fps_per_scan: the false-positive budget per scan (>= 0).

    Returns:
        ``(threshold, sensitivity, fps_per_scan)`` on those scans at the threshold; sensitivity
        is NaN without reference nodules. Without any candidate the threshold is 0.0.

    Raises:
        ValueError: lists of different lengths, a hit matrix of the wrong shape, ``n_scans``
            smaller than the number of lists, or a negative budget.
    """
    if len(scores_per_scan) != len(hits_per_scan):
        raise ValueError(
            f"scores_per_scan ({len(scores_per_scan)} scans) and hits_per_scan "
            f"({len(hits_per_scan)}) must list the same scans"
        )
    if n_scans < max(1, len(scores_per_scan)):
        raise ValueError(f"n_scans={n_scans} must be >= max(1, {len(scores_per_scan)} scans given)")
    if not max_fps_per_scan >= 0:
        raise ValueError(f"max_fps_per_scan={max_fps_per_scan!r} must be >= 0")
    scores, is_fp, best_hit = [], [], []  # best_hit: per reference, its best hitting score
    for i, (scan_scores, scan_hits) in enumerate(zip(scores_per_scan, hits_per_scan, strict=True)):
        p = np.asarray(scan_scores, dtype=np.float64).reshape(-1)
        h = np.asarray(scan_hits, dtype=bool)
        if h.ndim != 2 or h.shape[0] != p.size:
            raise ValueError(
                f"hits_per_scan[{i}] has shape {h.shape}; expected ({p.size}, n_references)"
            )
        scores.append(p)
        is_fp.append(~h.any(axis=1))
        best_hit.append(np.where(h, p[:, None], -np.inf).max(axis=0, initial=-np.inf))
    p, fp = np.concatenate([np.zeros(0), *scores]), np.concatenate([np.zeros(0, bool), *is_fp])
    best = np.concatenate([np.zeros(0), *best_hit])
    if p.size == 0:
        return 0.0, math.nan if best.size == 0 else 0.0, 0.0
    budget = max_fps_per_scan * n_scans + 1e-9  # allowed false positives, float-safe
    candidates = [*np.unique(p), float(np.nextafter(p.max(), np.inf))]
    threshold = next(t for t in candidates if np.count_nonzero(fp & (p >= t)) <= budget)
    sensitivity = float(np.mean(best >= threshold)) if best.size else math.nan
    fps = np.count_nonzero(fp & (p >= threshold)) / n_scans
    return float(threshold), sensitivity, float(fps)


def detection_calibration(result: EvaluationResult, max_fps_per_scan: float = 1.0) -> dict:
    """The stored detection calibration of validation chests evaluated by :func:`evaluate_scans`.

    Returns:
        ``{"candidate_threshold", "max_fps_per_scan", "val_sensitivity", "val_fps_per_scan",
        "n_chests"}`` (:func:`operating_threshold` over ``result``'s scans).

    Raises:
        ValueError: no scans, or instances without a ``candidate_probability`` (a model with
            no candidate head).
    """
    if not result.scans:
        raise ValueError("detection calibration needs at least one validation chest")
    if any(n.get("candidate_probability") is None for s in result.scans for n in s.instances):
        raise ValueError(
            "the candidates have no candidate_probability: the model has no candidate head"
        )
    scores = [[c[3] for c in s.candidates] for s in result.scans]
    hits = [candidate_hits(s.candidates, s.references) for s in result.scans]
    threshold, sensitivity, fps = operating_threshold(
        scores, hits, len(result.scans), max_fps_per_scan
    )
    return {
        "candidate_threshold": threshold,
        "max_fps_per_scan": float(max_fps_per_scan),
        "val_sensitivity": sensitivity,
        "val_fps_per_scan": fps,
        "n_chests": len(result.scans),
    }
