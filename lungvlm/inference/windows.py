"""Sliding-window probability of a whole normalised scan (MONAI), with window skipping.

The model sees ``roi_size_vox`` windows (the training crop size) through MONAI
``sliding_window_inference``. When the encoder has a context branch, each window also gets the
context crop training used: the same grid size covering ``context_scale`` times the field of
view around the window centre (voxel ``size // 2`` of the window), sampled linearly from the
normalised scan; outside the scan it is 0 (``hu_min``). This is the same sampling as
``data_modules.sampling.context_crop`` (tested equal), which the cached real-data crops use;
phantom crops render their context directly at the coarser spacing, which linear sampling
approximates without its partial-volume smoothing. ``context_scale=0`` omits it (the encoder then skips the fusion, which equals an
untrained, zero-initialised branch). Windows may be skipped (outside the
dilated lung mask, or outside the cascade's candidate region); the predictor then returns a
zero weight so skipped windows do not dilute the average of the processed ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from numpy.typing import NDArray
from scipy import ndimage
from torch import nn

from lungvlm.progress import update as progress_update

WindowSelector = Callable[[tuple[slice, slice, slice]], bool]
"""Called with a window's (z, y, x) slices; returns whether the model runs on it."""


def _roi3(roi_size_vox: int | Sequence[int]) -> tuple[int, int, int]:
    roi = (roi_size_vox,) * 3 if isinstance(roi_size_vox, (int, np.integer)) else roi_size_vox
    roi = tuple(int(r) for r in roi)
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi_size_vox={roi_size_vox!r} must be a positive int or 3 positive ints")
    return roi  # type: ignore[return-value]


def _context_window(volume: NDArray[np.float32], window: Sequence[slice], scale: float) -> NDArray:
    """Context crop of one window, as ``data_modules.sampling.context_crop`` builds it in training:
    voxel ``i`` samples ``centre + (i - size // 2) * scale`` linearly, 0 outside the volume."""
    axes = [
        s.start
        + (s.stop - s.start) // 2
        + (np.arange(s.stop - s.start) - (s.stop - s.start) // 2) * scale
        for s in window
    ]
    coords = np.meshgrid(*axes, indexing="ij")
    return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0)


def window_count(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Number of sliding windows over ``shape`` (MONAI's grid: step ``roi * (1 - overlap)``)."""
    count = 1
    for n, r in zip(shape, roi, strict=True):
        if n <= r:
            continue
        step = max(int(r * (1.0 - overlap)), 1)
        count *= math.ceil((n - r) / step) + 1
    return count


def _model_device(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def sliding_window_probability(
    model: nn.Module,
    image: NDArray[np.float32],
    roi_size_vox: int | Sequence[int] = 32,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    context_scale: float = 2.0,
    select: WindowSelector | None = None,
    progress: bool = False,
) -> tuple[NDArray[np.float32], int, int]:
    """Nodule probability of a normalised (z, y, x) volume by MONAI sliding windows.

    Args:
        model: returns logits (B, 1, D, H, W) (or a list of them, finest first) from
            ``model(window, context)``; a context crop is built when ``model.encoder.use_context``.
        image: normalised volume (z, y, x).
        roi_size_vox: window size (voxels), the training crop size.
        overlap: fraction of overlap between neighbouring windows.
        sw_batch_size: windows per forward pass.
        context_scale: context field of view / window field of view; 0 feeds no context.
        select: called with a window's (z, y, x) slices; False skips the window (probability 0
            where no processed window covers a voxel).
        progress: also show MONAI's tqdm bar over window batches (the rich bars of the
            commands come from :func:`lungvlm.progress.update`, called after every batch).

    Returns:
        ``(probability, windows_total, windows_processed)``; probability is the mean of the
        sigmoid of the processed windows covering each voxel.
    """
    roi = _roi3(roi_size_vox)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap!r} must be in [0, 1)")
    if not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size={sw_batch_size!r} must be a positive int")
    shape = image.shape
    # Pad to at least one window at the far end so MONAI's window slices are scan indices.
    padded = np.pad(image, [(0, max(0, r - n)) for r, n in zip(roi, shape, strict=True)])
    padded = np.ascontiguousarray(padded, dtype=np.float32)
    encoder = getattr(model, "encoder", None)
    use_context = context_scale > 0 and bool(getattr(encoder, "use_context", False))
    device = _model_device(model)
    counts = {"total": 0, "processed": 0}
    n_windows = window_count(padded.shape, roi, overlap)
    progress_update("segmentation windows", 0, n_windows)  # a new bar per scan

    def predictor(windows: torch.Tensor, slices: list) -> torch.Tensor:
        # windows: (B, 1, *roi); slices[b] = [batch slice, channel slice, z, y, x slices].
        spatial = [tuple(s[2:]) for s in slices]
        keep = [i for i, w in enumerate(spatial) if select is None or select(w)]
        counts["total"] += len(spatial)
        counts["processed"] += len(keep)
        out = torch.zeros((windows.shape[0], 2, *roi), device=windows.device)
        if keep:
            context = None
            if use_context:
                crops = np.stack([_context_window(padded, spatial[i], context_scale) for i in keep])
                context = torch.from_numpy(crops)[:, None].to(windows.device)
            logits = model(windows[keep], context)
            logits = logits[0] if isinstance(logits, (list, tuple)) else logits
            out[keep, 0] = torch.sigmoid(logits[:, 0].float())
            out[keep, 1] = 1.0  # weight channel: skipped windows do not dilute the average
        progress_update("segmentation windows", min(counts["total"], n_windows), n_windows)
        return out

    with torch.inference_mode():
        summed = sliding_window_inference(
            torch.from_numpy(padded)[None, None],
            roi,
            sw_batch_size,
            predictor,
            overlap=overlap,
            sw_device=device,
            device="cpu",
            progress=progress,
            with_coord=True,
        )[0]
    weight = summed[1]
    prob = torch.where(weight > 0, summed[0] / weight.clamp_min(1e-12), 0.0)
    prob = prob[: shape[0], : shape[1], : shape[2]].numpy().astype(np.float32)
    return prob, counts["total"], counts["processed"]


def dilate_mm(mask: NDArray[np.bool_], margin_mm: float, spacing_mm: Sequence[float]) -> NDArray:
    """Grow a mask by a box of half-side ``margin_mm`` (a separable max filter, fast on scans)."""
    if margin_mm <= 0:
        return mask.astype(bool)
    size = [2 * math.ceil(margin_mm / s) + 1 for s in spacing_mm]
    return ndimage.maximum_filter(mask.astype(np.uint8), size=size).astype(bool)


def window_selector(region: NDArray[np.bool_]) -> WindowSelector:
    """A ``select`` callback keeping the windows that contain a voxel of ``region``."""
    shape = region.shape

    def select(window: Sequence[slice]) -> bool:
        inside = tuple(
            slice(min(s.start, n), min(s.stop, n)) for s, n in zip(window, shape, strict=True)
        )
        return bool(region[inside].any())

    return select
