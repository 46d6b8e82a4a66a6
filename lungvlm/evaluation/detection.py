"""Whole-scan evaluation: per-nodule Dice, detection sensitivity, FPs per scan, FROC and CPM.

Conventions (project choices, documented here):

- Dice is computed on the **original grid**: the probability is resampled back linearly
  (:meth:`PreparedScan.to_original_grid`) and thresholded at the segmentation threshold; each
  reference nodule (label ``i`` of the reference label map) is compared with the union of the
  predicted components touching it (:func:`lungvlm.metrics.segmentation.per_nodule_dice`), so a
  missed nodule scores 0 and a false positive elsewhere does not lower it.
- Detection follows LUNA16 (``reference/luna16.md``, "Evaluation"): each detected instance is
  a candidate at its world centre (LPS mm) with its score; it hits a reference nodule when the
  distance to the reference centre is below half the reference diameter. Reference centres
  are the centroids of the reference label map mapped to world mm. FROC and CPM come from
  :func:`lungvlm.metrics.froc.froc` (1/8 ... 8 FPs per scan); sensitivity and FPs/scan at the
  operating point count every instance above the threshold (duplicate hits on one nodule are
  neither true nor false positives, as in LUNA16).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from torch import nn

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
    """

    scan_id: str
    image_hu: ArrayLike
    spacing_mm: Sequence[float]
    origin_lps_mm: Sequence[float]
    gt_label_map: ArrayLike
    gt_nodule_diameters_mm: Sequence[float]
    lung_mask: ArrayLike | None = None


@dataclass
class ScanEvaluation:
    """Per-scan numbers: Dice of each reference nodule, hits, instances and timings."""

    scan_id: str
    dice: list[float]
    references: list[tuple[float, float, float, float]]
    candidates: list[tuple[float, float, float, float]]
    detected: list[bool]
    n_false_positives: int
    instances: list[dict]
    windows_fraction: float
    timings_s: dict[str, float]

    def to_dict(self) -> dict:
        """JSON-serialisable fields."""
        return dict(self.__dict__)


@dataclass
class EvaluationResult:
    """Evaluation of a set of scans (see the module docstring for the conventions).

    Attributes:
        scans: per-scan evaluations.
        froc: LUNA16 FROC analysis, or None when no scan has a reference nodule.
        threshold: probability threshold of the instances.
    """

    scans: list[ScanEvaluation]
    froc: FROCResult | None
    threshold: float
    settings: dict = field(default_factory=dict)

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
        """Fraction of reference nodules hit by an instance above the threshold."""
        hits = [h for s in self.scans for h in s.detected]
        return float(np.mean(hits)) if hits else None

    @property
    def fps_per_scan(self) -> float:
        """Instances hitting no reference nodule, per scan."""
        return sum(s.n_false_positives for s in self.scans) / max(1, len(self.scans))

    def to_dict(self) -> dict:
        """A JSON-serialisable summary (FROC curve included)."""
        summary = {
            "n_scans": len(self.scans),
            "n_nodules": self.n_nodules,
            "threshold": self.threshold,
            "mean_dice": self.mean_dice,
            "sensitivity": self.sensitivity,
            "fps_per_scan": self.fps_per_scan,
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
) -> ScanEvaluation:
    """Compare one scan's segmentation with its reference (module docstring)."""
    refs = reference_nodules(gt_label_map, gt_nodule_diameters_mm, segmentation)
    labels = np.asarray(gt_label_map).astype(np.int64)
    pred = segmentation.prepared.to_original_grid(segmentation.probability, order=1) >= threshold
    dice = per_nodule_dice(pred, labels) if refs else []
    cands = [(*inst.centroid_world_mm, inst.score) for inst in segmentation.instances]
    ref_arr = np.asarray([r[:3] for r in refs]).reshape(-1, 3)
    radius = np.asarray([r[3] / 2.0 for r in refs])
    hits = np.zeros((len(cands), len(refs)), dtype=bool)
    if cands and refs:
        dist2 = ((np.asarray(cands)[:, None, :3] - ref_arr[None]) ** 2).sum(-1)
        hits = dist2 < radius[None] ** 2
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
    )


def summarize(scans: Sequence[ScanEvaluation], threshold: float, settings: dict | None = None):
    """FROC/CPM over per-scan evaluations -> :class:`EvaluationResult`."""
    ids = [s.scan_id for s in scans]
    if len(set(ids)) != len(ids):
        raise ValueError(f"scan ids must be unique; got {ids}")
    candidates = [(s.scan_id, *c) for s in scans for c in s.candidates]
    references = [(s.scan_id, *r) for s in scans for r in s.references]
    result = froc(candidates, references, scan_ids=ids) if references else None
    return EvaluationResult(list(scans), result, threshold, dict(settings or {}))


def evaluate_scans(
    model: nn.Module,
    scans: Iterable[EvaluationScan | Sequence],
    target_spacing_mm: float = 1.0,
    threshold: float = 0.5,
    cascade: bool = False,
    **segment_kwargs,
) -> EvaluationResult:
    """Segment every scan and evaluate it against its reference (module docstring).

    Args:
        model: segmentation model with a ``normalization`` dict (``hu_min``, ``hu_max``).
        scans: :class:`EvaluationScan` rows or plain tuples in the same order (the lung mask
            is optional).
        target_spacing_mm: the model's spacing (mm).
        threshold: probability threshold of the instances and the Dice masks.
        cascade: use :func:`segment_scan_cascade` instead of :func:`segment_scan`.
        **segment_kwargs: passed to the segmentation function (roi_size_vox, overlap, ...).
    """
    segment = segment_scan_cascade if cascade else segment_scan
    normalization = getattr(model, "normalization", None)
    evaluations = []
    for row in scans:
        scan = row if isinstance(row, EvaluationScan) else EvaluationScan(*row)
        start = time.perf_counter()
        prepared = prepare_scan(
            scan.image_hu, scan.spacing_mm, target_spacing_mm, normalization, scan.origin_lps_mm
        )
        prepare_s = time.perf_counter() - start
        seg = segment(
            model, prepared, lung_mask=scan.lung_mask, threshold=threshold, **segment_kwargs
        )
        seg.timings_s["prepare"] = prepare_s
        evaluations.append(
            evaluate_segmentation(
                str(scan.scan_id), seg, scan.gt_label_map, scan.gt_nodule_diameters_mm, threshold
            )
        )
    settings = {
        "target_spacing_mm": target_spacing_mm,
        "cascade": cascade,
        **{k: v for k, v in segment_kwargs.items() if isinstance(v, (int, float, str, bool))},
    }
    return summarize(evaluations, threshold, settings)
