"""Crop sampling shared by the LungVLM DataModules (phantom, LIDC-IDRI, LUNA16).

A fine crop is a block of ``size_vox`` voxels around a centre; a context crop covers ``scale``
times that field of view and is resampled (linear interpolation) to the same grid size, so
both go through one encoder. Voxels outside the volume take ``pad_value`` (use -1000 HU, air,
for HU volumes; 0 for masks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage


def _size3(size_vox: int | Sequence[int]) -> tuple[int, int, int]:
    size = (size_vox,) * 3 if isinstance(size_vox, (int, np.integer)) else tuple(size_vox)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(
            f"size_vox={size_vox!r} must be a positive int or three positive ints (z, y, x)"
        )
    return tuple(int(s) for s in size)


def _check(volume: NDArray, center_zyx: Sequence[float]) -> NDArray[np.float64]:
    if np.ndim(volume) != 3:
        raise ValueError(f"volume must be 3-D (z, y, x); got shape {np.shape(volume)}")
    center = np.asarray(center_zyx, dtype=np.float64)
    if center.shape != (3,) or not np.all(np.isfinite(center)):
        raise ValueError(f"center_zyx={center_zyx!r} must be three finite voxel indices (z, y, x)")
    return center


def crop_around(
    volume: NDArray,
    center_zyx: Sequence[float],
    size_vox: int | Sequence[int],
    pad_value: float = 0.0,
) -> NDArray:
    """Crop ``size_vox`` voxels whose centre is the voxel nearest ``center_zyx``.

    For an even size the centre voxel is the one just after the middle (index ``size // 2``).

    Args:
        volume: (z, y, x) array.
        center_zyx: centre in voxel indices (z, y, x); may lie outside the volume.
        size_vox: crop size, one int or (z, y, x).
        pad_value: value of voxels outside ``volume``.

    Returns:
        The crop, same dtype as ``volume``.
    """
    center = _check(volume, center_zyx)
    size = np.asarray(_size3(size_vox))
    start = np.rint(center).astype(int) - size // 2
    out = np.full(tuple(size), pad_value, dtype=np.asarray(volume).dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + size, np.asarray(volume.shape))
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True))] = volume[
        tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))
    ]
    return out


def context_crop(
    volume: NDArray,
    center: Sequence[float],
    size_vox: int | Sequence[int],
    scale: float,
    pad_value: float = 0.0,
    order: int = 1,
) -> NDArray[np.float32]:
    """A crop covering ``scale`` x ``size_vox`` voxels of ``volume``, resampled to ``size_vox``.

    Output voxel ``i`` samples the volume at ``round(center) + (i - size // 2) * scale``, so for
    ``scale=1`` the result equals :func:`crop_around`. Spacing of the result is ``scale`` times
    the volume's.

    Args:
        volume: (z, y, x) array.
        center: centre in voxel indices (z, y, x).
        size_vox: output size, one int or (z, y, x).
        scale: field-of-view factor (> 0).
        pad_value: value outside the volume.
        order: spline order of the interpolation (1 = linear, 0 = nearest for masks).
    """
    c = _check(volume, center)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale={scale!r} must be a positive number")
    size = _size3(size_vox)
    axes = [np.rint(c[d]) + (np.arange(size[d]) - size[d] // 2) * scale for d in range(3)]
    coords = np.meshgrid(*axes, indexing="ij")
    out = ndimage.map_coordinates(
        np.asarray(volume, dtype=np.float32), coords, order=order, mode="constant", cval=pad_value
    )
    return out.astype(np.float32)
