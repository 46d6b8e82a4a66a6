"""The one resampler: the training cache and inference put scans on the model's grid with it.

Grid convention (shared by ``data_modules/cache.py`` and :mod:`lungvlm.inference.scan`): the
resampled grid keeps the centre of voxel (0, 0, 0) and the direction; along an axis of ``n``
voxels at ``s`` mm it has ``round(n * s / t)`` voxels (at least 1) at ``t`` mm, and output index
``o`` lies at input index ``o * t / s``. Values between voxel centres are trilinear (``order=1``,
intensities) or nearest (``order=0``, labels); beyond the last voxel centre the edge value
repeats along that axis (the input is padded by one replicated voxel; further out SimpleITK's
nearest-neighbour extrapolation applies), so the far border never fades to a fill value.

SimpleITK does the work (multi-threaded C++), the same call for the cache and for inference, so
training and inference see identical voxels for identical input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

_INTERPOLATORS = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear}


def _triplet(name: str, value: ArrayLike) -> NDArray[np.float64]:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name}={value!r} must be three positive (z, y, x) values")
    return arr


def resampled_shape(
    shape: Sequence[int], spacing_mm: ArrayLike, target_spacing_mm: ArrayLike
) -> tuple[int, int, int]:
    """Shape (z, y, x) of ``shape`` at ``spacing_mm`` resampled to ``target_spacing_mm``."""
    spacing = _triplet("spacing_mm", spacing_mm)
    target = _triplet("target_spacing_mm", target_spacing_mm)
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))  # type: ignore[return-value]


def resample_grid(
    volume: ArrayLike, out_shape: Sequence[int], step: ArrayLike, order: int
) -> NDArray:
    """Sample ``volume`` (z, y, x) at input index ``o * step`` for every output index ``o``.

    Args:
        volume: the input array, (z, y, x).
        out_shape: output shape (z, y, x).
        step: input voxels per output voxel along (z, y, x) (``target / spacing``).
        order: 1 (trilinear, float32 output) or 0 (nearest, the input dtype).

    Returns:
        The resampled array; the input itself (copied) when the grid does not change.
    """
    if order not in _INTERPOLATORS:
        raise ValueError(f"order={order!r} must be 0 (nearest) or 1 (linear)")
    array = np.asarray(volume)
    if array.ndim != 3:
        raise ValueError(f"volume must be a 3-D (z, y, x) array; got shape {array.shape}")
    step = _triplet("step", step)
    out_shape = tuple(int(n) for n in out_shape)
    if out_shape == array.shape and np.allclose(step, 1.0):
        return array.copy()
    source_dtype = array.dtype
    if order == 1:
        # One replicated voxel past the far edges keeps the interpolation trilinear up to half a
        # voxel beyond the last centre (the edge value repeats along that axis only).
        array = np.pad(array.astype(np.float32, copy=False), [(0, 1)] * 3, mode="edge")
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))  # index space: spacing 1, origin 0
    out = sitk.Resample(
        image,
        [int(n) for n in out_shape[::-1]],  # SimpleITK sizes are (x, y, z)
        sitk.Transform(),
        _INTERPOLATORS[order],
        (0.0, 0.0, 0.0),
        tuple(float(s) for s in step[::-1]),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        0.0,
        image.GetPixelID(),
        True,  # useNearestNeighborExtrapolator: beyond the last voxel centre the edge repeats
    )
    result = sitk.GetArrayFromImage(out)
    if order == 0 and source_dtype == np.bool_:
        result = result.astype(bool)
    return result


def resample_to_spacing(
    volume: ArrayLike, spacing_mm: ArrayLike, target_spacing_mm: ArrayLike, order: int
) -> NDArray:
    """Resample a (z, y, x) array from ``spacing_mm`` to ``target_spacing_mm`` (module grid).

    Args:
        volume: HU (``order=1``) or labels (``order=0``), (z, y, x).
        spacing_mm: its voxel size (z, y, x) in mm.
        target_spacing_mm: the new voxel size, one number (isotropic) or (z, y, x), in mm.
        order: 1 (trilinear) or 0 (nearest).

    Returns:
        The array on the new grid (:func:`resampled_shape`).
    """
    spacing = _triplet("spacing_mm", spacing_mm)
    target = _triplet("target_spacing_mm", target_spacing_mm)
    shape = resampled_shape(np.shape(volume), spacing, target)
    return resample_grid(volume, shape, target / spacing, order)
