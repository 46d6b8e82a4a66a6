"""Hard-negative mining on whole chests: training crops where the sliding window goes wrong.

A model trained on nodule-centred crops meets, at inference, a thousand windows per chest that
hold no nodule: the chest wall, the mediastinum, vessel branchings, the diaphragm. This module
turns whole training chests into the training crops that close that gap
(DESIGN.md, "Two granularities"; issue 15 part 1):

- **False positives** (:func:`mine_chest` with a model): the chest is segmented exactly as
  ``lungvlm report`` does (:func:`lungvlm.inference.scan.segment_scan`); every candidate
  component that hits no reference nodule (the LUNA16 rule: closer than half a reference
  diameter, as :func:`lungvlm.evaluation.detection.candidate_hits`) is a false positive; the
  ``max_false_positives`` highest-ranked of them (the hardest) become crops centred on them.
- **Whole-lung windows** (``n_windows``, no model needed): crops centred where the sliding window
  runs, drawn uniformly over the windows that touch the (dilated) lung mask, so training meets
  the border regions nodule-free lung crops never show.

Every crop is cut from the prepared scan (the model's spacing, normalised) with
:func:`lungvlm.inference.nodule_heads.sample_crop`, the crops inference feeds the candidate head,
with its context crop; its mask is the reference nodule mask on the same crop (so a crop that
catches the edge of a real nodule teaches that edge). Crops whose central cube (half the crop's
edge) holds a reference nodule voxel are skipped: they are near-hits, not negatives.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from torch import nn

from lungvlm.clinical.hu import HU_AIR, normalize_hu
from lungvlm.inference.nodule_heads import sample_crop
from lungvlm.inference.scan import PreparedScan, prepare_scan, prepared_lung_mask, segment_scan
from lungvlm.types import MINED_KINDS, MinedCrop, WholeChest


@dataclass
class MiningResult:
    """What :func:`mine_chest` found on one chest.

    Attributes:
        crops: the mined crops (false positives first, by decreasing score, then windows).
        n_candidates: candidate components of the segmentation (0 without a model).
        n_false_positives: of those, the ones that hit no reference nodule.
        n_true_positives: reference nodules hit by a candidate.
        n_nodules: reference nodules of the chest.
        timings_s: seconds per step ("prepare", "segment", "crops").
    """

    crops: list[MinedCrop]
    n_candidates: int = 0
    n_false_positives: int = 0
    n_true_positives: int = 0
    n_nodules: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)

    def stats(self) -> dict:
        """JSON-serialisable counts and timings."""
        return {
            "n_candidates": self.n_candidates,
            "n_false_positives": self.n_false_positives,
            "n_true_positives": self.n_true_positives,
            "n_nodules": self.n_nodules,
            "n_crops": {k: sum(c.kind == k for c in self.crops) for k in MINED_KINDS},
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }


def reference_centres(
    chest: WholeChest, prepared: PreparedScan
) -> list[tuple[float, float, float, float]]:
    """World centres (x, y, z, mm) and diameters (mm) of the chest's reference nodules."""

    labels = np.asarray(chest.nodule_labels)
    n = len(chest.nodule_diameters_mm)
    if n == 0:
        return []
    centres = ndimage.center_of_mass(labels > 0, labels, list(range(1, n + 1)))
    world = prepared.to_world(np.asarray(centres, dtype=np.float64))
    return [
        (*map(float, w), float(d)) for w, d in zip(world, chest.nodule_diameters_mm, strict=True)
    ]


def hits_reference(centre_world_mm: Sequence[float], references: Sequence[Sequence[float]]) -> bool:
    """LUNA16 hit: the point lies closer than half a reference diameter to its centre."""
    point = np.asarray(centre_world_mm, dtype=np.float64)
    return any(
        float(((point - np.asarray(r[:3])) ** 2).sum()) < (float(r[3]) / 2.0) ** 2
        for r in references
    )


def lung_window_centres(
    region: NDArray[np.bool_], n: int, roi_size_vox: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """``n`` window centres (z, y, x voxels) drawn as the sliding window meets lung windows.

    A window of edge ``roi_size_vox`` runs when it holds a voxel of ``region``; a centre drawn as
    a uniform region voxel plus a uniform integer offset that keeps that voxel inside the window
    lands on such a window, weighted by how much region it holds. Centres are clipped to the
    volume.

    Raises:
        ValueError: an empty region or ``n < 0``.
    """
    if n < 0:
        raise ValueError(f"n={n!r} must be a non-negative number of windows")
    voxels = np.argwhere(region)
    if len(voxels) == 0:
        raise ValueError("the lung region is empty: no window to draw")
    picks = voxels[rng.integers(len(voxels), size=n)]
    # A crop centred on c covers c - size // 2 .. c + size - 1 - size // 2 (crop_around).
    offsets = rng.integers(-(roi_size_vox - 1 - roi_size_vox // 2), roi_size_vox // 2 + 1, (n, 3))
    upper = np.asarray(region.shape) - 1
    return np.clip(picks + offsets, 0, upper).astype(np.float64)


def _crop(
    prepared: PreparedScan,
    reference_mask: NDArray[np.float32],
    centre: Sequence[float],
    crop_size_vox: int,
    context_scale: float,
    pad: float,
) -> tuple[NDArray[np.float32], NDArray[np.float32] | None, NDArray[np.uint8]]:
    fine = sample_crop(prepared.image, centre, crop_size_vox, 1.0, pad)
    context = (
        sample_crop(prepared.image, centre, crop_size_vox, context_scale, pad)
        if context_scale > 0
        else None
    )
    mask = sample_crop(reference_mask, centre, crop_size_vox, 1.0, 0.0) >= 0.5
    return fine, context, mask.astype(np.uint8)


def _central_cube_empty(mask: NDArray[np.uint8]) -> bool:
    lo = [s // 4 for s in mask.shape]
    hi = [s - s // 4 for s in mask.shape]
    return not mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].any()


def mine_chest(
    model: nn.Module | None,
    chest: WholeChest,
    *,
    crop_size_vox: int = 32,
    spacing_mm: float = 1.0,
    context_scale: float = 2.0,
    normalization: dict[str, float] | None = None,
    threshold: float = 0.5,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    max_false_positives: int = 32,
    n_windows: int = 16,
    lung_margin_mm: float = 5.0,
    seed: int = 0,
) -> MiningResult:
    """Mine one whole chest for nodule-free training crops (module docstring).

    Args:
        model: the current segmentation model in eval mode on its device, or None to draw
            whole-lung windows only.
        chest: the chest with its reference nodules (and lung mask: without one the whole
            volume is the region, and segmentation runs everywhere).
        crop_size_vox: training crop edge = sliding-window edge (voxels).
        spacing_mm: the model's isotropic spacing (mm).
        context_scale: training's context field-of-view factor (0: no context crop).
        normalization: ``{"hu_min", "hu_max"}`` of the model (HU); None: the defaults.
        threshold: probability threshold of the candidate components.
        overlap: sliding-window overlap.
        sw_batch_size: windows per forward pass.
        max_false_positives: keep at most this many false positives, the highest ranked.
        n_windows: whole-lung windows to draw.
        lung_margin_mm: the lung mask is dilated by this much (as inference does, mm).
        seed: seed of the window draw.

    Returns:
        A :class:`MiningResult`.
    """
    if max_false_positives < 0 or n_windows < 0:
        raise ValueError(
            f"max_false_positives={max_false_positives!r} and n_windows={n_windows!r} must be >= 0"
        )
    timings: dict[str, float] = {}
    start = time.perf_counter()
    prepared = prepare_scan(
        chest.image_hu, chest.spacing_mm, spacing_mm, normalization, chest.origin_lps_mm
    )
    pad = float(
        normalize_hu(
            np.float32(HU_AIR), prepared.normalization["hu_min"], prepared.normalization["hu_max"]
        )
    )
    reference_mask = prepared.to_prepared_grid((chest.nodule_labels > 0).astype(np.float32), 1)
    references = reference_centres(chest, prepared)
    timings["prepare"] = time.perf_counter() - start
    result = MiningResult(crops=[], n_nodules=len(references))
    false_positives: list = []
    if model is not None:
        start = time.perf_counter()
        segmentation = segment_scan(
            model, prepared, crop_size_vox, overlap, sw_batch_size, chest.lung_mask,
            context_scale, threshold, lung_margin_mm=lung_margin_mm,
        )  # fmt: skip
        timings["segment"] = time.perf_counter() - start
        result.n_candidates = len(segmentation.instances)
        hit = set()
        for nodule in segmentation.instances:
            matched = [
                j for j, r in enumerate(references) if hits_reference(nodule.centroid_world_mm, [r])
            ]
            hit.update(matched)
            if not matched:
                false_positives.append(nodule)
        result.n_false_positives = len(false_positives)
        result.n_true_positives = len(hit)
        false_positives.sort(key=lambda n: -n.ranking_score)
    start = time.perf_counter()
    for nodule in false_positives:
        if sum(c.kind == "false_positive" for c in result.crops) >= max_false_positives:
            break
        fine, context, mask = _crop(
            prepared, reference_mask, nodule.centroid_vox, crop_size_vox, context_scale, pad
        )
        if _central_cube_empty(mask):
            result.crops.append(
                MinedCrop(fine, context, mask, "false_positive", tuple(nodule.centroid_vox),
                          tuple(nodule.centroid_world_mm), float(nodule.ranking_score), chest.case_id)
            )  # fmt: skip
    if n_windows:
        region = (
            np.ones(prepared.image.shape, bool)
            if chest.lung_mask is None
            else prepared_lung_mask(prepared, chest.lung_mask, lung_margin_mm)
        )
        rng = np.random.default_rng([int(seed), 211])
        for centre in lung_window_centres(region, n_windows, crop_size_vox, rng):
            fine, context, mask = _crop(
                prepared, reference_mask, centre, crop_size_vox, context_scale, pad
            )
            if not _central_cube_empty(mask):
                continue
            world = prepared.to_world(prepared.to_original_index(centre))
            result.crops.append(
                MinedCrop(fine, context, mask, "window", tuple(float(v) for v in centre),
                          tuple(float(v) for v in world), None, chest.case_id)
            )  # fmt: skip
    timings["crops"] = time.perf_counter() - start
    result.timings_s = timings
    return result
