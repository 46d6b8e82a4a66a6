"""Adaptive-resolution cascade: a low-resolution triage pass picks where the full pass runs.

1. Triage: the prepared scan is average-pooled by ``triage_factor`` (2: 1 mm -> 2 mm voxels) and
   the same model runs on it by sliding windows of the same size, each covering
   ``triage_factor``³ times the volume, so the triage pass needs about ``1 / factor³`` of the
   full pass's windows. The context crop keeps its scale relative to the window.
2. Candidates: triage voxels with probability ``>= triage_threshold`` (a low level, to keep
   sensitivity), inside the lung mask when one is given, grown by ``triage_margin_mm``.
3. Full pass: :func:`lungvlm.inference.scan.segment_scan` runs only on the full-resolution
   windows touching a candidate voxel; voxels no processed window covers get probability 0.
   It also builds the instances, so with a candidate head they get their
   ``candidate_probability`` and ranking exactly as without the cascade.

The model was trained at the prepared spacing, so at ``triage_factor`` times coarser voxels a
nodule looks ``triage_factor`` times smaller than in training; whether the triage keeps
sensitivity is an empirical question per checkpoint (measure it with ``lungvlm evaluate
--cascade`` against the full pass), not a guarantee.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike, NDArray
from torch import nn

from lungvlm.inference.guard import InferenceGuard
from lungvlm.inference.scan import (
    MIN_NODULE_VOLUME_MM3,
    PreparedScan,
    ScanSegmentation,
    prepared_lung_mask,
    segment_scan,
)
from lungvlm.inference.windows import dilate_mm, sliding_window_probability, window_selector


def _pool(volume: NDArray, factor: int, mode: str) -> NDArray:
    """Average (image) or max (mask) pooling by ``factor``; a partial last block is kept."""
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    pool = F.avg_pool3d if mode == "avg" else F.max_pool3d
    return pool(tensor, factor, ceil_mode=True)[0, 0].numpy()


def triage_candidates(
    model: nn.Module,
    prepared: PreparedScan,
    lung: NDArray[np.bool_] | None,
    roi_size_vox: int | Sequence[int] = 32,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    context_scale: float = 2.0,
    triage_factor: int = 2,
    triage_threshold: float = 0.1,
    triage_margin_mm: float = 8.0,
) -> tuple[NDArray[np.bool_], dict[str, float]]:
    """Run the low-resolution pass and return the candidate region on the prepared grid.

    Args:
        model: the segmentation model.
        prepared: the prepared scan.
        lung: dilated lung mask on the prepared grid, or None.
        roi_size_vox, overlap, sw_batch_size, context_scale: as in ``segment_scan``.
        triage_factor: pooling factor of the triage pass (integer >= 2).
        triage_threshold: probability above which a low-resolution voxel is a candidate.
        triage_margin_mm: growth of the candidate region (mm).

    Returns:
        ``(region, details)``: boolean (z, y, x) region at the prepared spacing and the triage
        pass's window counts, candidate fraction and seconds.
    """
    if not isinstance(triage_factor, int) or triage_factor < 2:
        raise ValueError(f"triage_factor={triage_factor!r} must be an int >= 2")
    if not 0.0 < triage_threshold < 1.0:
        raise ValueError(f"triage_threshold={triage_threshold!r} must be in (0, 1)")
    start = time.perf_counter()
    low = _pool(prepared.image, triage_factor, "avg")
    low_lung = None if lung is None else _pool(lung, triage_factor, "max") > 0
    select = None if low_lung is None else window_selector(low_lung)
    prob, n_total, n_run = sliding_window_probability(
        model, low, roi_size_vox, overlap, sw_batch_size, context_scale, select
    )
    candidates = prob >= triage_threshold
    if low_lung is not None:
        candidates &= low_lung
    low_spacing = [s * triage_factor for s in prepared.spacing_mm]
    candidates = dilate_mm(candidates, triage_margin_mm, low_spacing)
    # Prepared voxel o lies in low-resolution voxel o // factor.
    index = [np.arange(n) // triage_factor for n in prepared.image.shape]
    region = candidates[np.ix_(*index)]
    details = {
        "triage_windows_total": float(n_total),
        "triage_windows_processed": float(n_run),
        "candidate_fraction": float(region.mean()),
        "triage_s": time.perf_counter() - start,
    }
    return region, details


def segment_scan_cascade(
    model: nn.Module,
    prepared: PreparedScan,
    roi_size_vox: int | Sequence[int] = 32,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    lung_mask: ArrayLike | None = None,
    context_scale: float = 2.0,
    threshold: float = 0.5,
    min_volume_mm3: float = MIN_NODULE_VOLUME_MM3,
    lung_margin_mm: float = 5.0,
    triage_factor: int = 2,
    triage_threshold: float = 0.1,
    triage_margin_mm: float = 8.0,
    progress: bool = False,
    guard: InferenceGuard | None = None,
) -> ScanSegmentation:
    """Segment a prepared scan with the adaptive-resolution cascade (module docstring).

    Arguments are those of :func:`lungvlm.inference.scan.segment_scan` (``guard`` checks the
    full pass's components) plus the triage settings of :func:`triage_candidates`. The result's ``windows_processed`` counts full-resolution
    windows only; ``details`` holds the triage pass's numbers and ``timings_s["triage"]`` its
    seconds.
    """
    start = time.perf_counter()
    lung = None if lung_mask is None else prepared_lung_mask(prepared, lung_mask, lung_margin_mm)
    lung_s = time.perf_counter() - start
    region, details = triage_candidates(
        model,
        prepared,
        lung,
        roi_size_vox,
        overlap,
        sw_batch_size,
        context_scale,
        triage_factor,
        triage_threshold,
        triage_margin_mm,
    )
    result = segment_scan(
        model,
        prepared,
        roi_size_vox,
        overlap,
        sw_batch_size,
        lung,  # already dilated: no second margin
        context_scale,
        threshold,
        min_volume_mm3,
        lung_margin_mm=0.0,
        region=region,
        progress=progress,
        guard=guard,
    )
    result.timings_s["lung_mask"] += lung_s
    result.timings_s["triage"] = details.pop("triage_s")
    result.details.update(details)
    return result
