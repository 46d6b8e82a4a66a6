"""NIfTI maps on a scan's grid: nodule labels, voxel probabilities and per-sentence heatmaps.

Every map carries the scan's LPS geometry so it overlays the CT in 3D Slicer or ITK-SNAP. The
arrays are (z, y, x) and the volume is "CTVolume-like" (:class:`lungvlm.imaging.volume.CTVolume`
or any object with the same attributes): ``array_hu`` (z, y, x), ``spacing_mm`` (z, y, x),
``origin_lps_mm`` (x, y, z) and an optional ``direction`` (3, 3) whose columns are the LPS unit
vectors of the index axes x, y, z (identity when absent). SimpleITK writes the files; it turns
LPS into the RAS affine NIfTI stores (qform and sform), so nibabel reads the same geometry.

Files are written to a temporary sibling and moved into place with :func:`os.replace`, so a
reader never sees a half-written map (as :mod:`lungvlm.export.writer` does for text).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
"""Accepted file endings; ``.nii.gz`` is gzip-compressed."""

LABEL_MAX = int(np.iinfo(np.uint16).max)
"""Largest label a uint16 map can hold."""


def _geometry(volume) -> tuple[tuple[int, ...], tuple[float, ...], NDArray[np.float64], NDArray]:
    """Shape (z, y, x), ITK spacing (x, y, z) mm, origin (x, y, z) mm, direction (3, 3)."""
    shape = tuple(int(n) for n in np.shape(volume.array_hu))
    if len(shape) != 3:
        raise ValueError(f"volume.array_hu must be 3-D (z, y, x); got shape {shape}")
    spacing_zyx = np.asarray(volume.spacing_mm, dtype=np.float64).reshape(-1)
    if spacing_zyx.shape != (3,) or not np.all(spacing_zyx > 0):
        raise ValueError(f"volume.spacing_mm must be 3 positive (z, y, x) mm; got {spacing_zyx}")
    origin = np.asarray(volume.origin_lps_mm, dtype=np.float64).reshape(-1)
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise ValueError(f"volume.origin_lps_mm must be 3 finite (x, y, z) mm; got {origin}")
    direction = getattr(volume, "direction", None)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    if direction.size != 9:
        raise ValueError(f"volume.direction must be a 3x3 matrix; got shape {direction.shape}")
    return shape, tuple(float(s) for s in spacing_zyx[::-1]), origin, direction.reshape(3, 3)


def _check_path(path: str | PathLike[str]) -> Path:
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"path {str(path)!r} must end with one of {list(NIFTI_SUFFIXES)}")
    return path


def _write_image(array_zyx: NDArray, spacing_xyz, origin_xyz, direction, path: Path) -> Path:
    """Write a (z, y, x) array with the given ITK geometry to ``path`` atomically."""
    image = sitk.GetImageFromArray(array_zyx)  # SimpleITK reads numpy (z, y, x) as (x, y, z)
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin(tuple(float(v) for v in origin_xyz))
    image.SetDirection(tuple(float(v) for v in np.asarray(direction).reshape(-1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = next(s for s in NIFTI_SUFFIXES if path.name.endswith(s))
    # The temporary file keeps the NIfTI suffix: SimpleITK picks the format from the extension.
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp_name, useCompression=True)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _on_scan_grid(name: str, array: ArrayLike, shape: tuple[int, ...]) -> NDArray:
    values = np.asarray(array)
    if values.shape != shape:
        raise ValueError(f"{name} has shape {values.shape}; expected the scan's shape {shape}")
    return values


def write_label_nifti(label_map: ArrayLike, volume, path: str | PathLike[str]) -> Path:
    """Write a (z, y, x) label map as uint16 with the scan's LPS geometry.

    Args:
        label_map: integer labels on the scan grid, shape ``volume.array_hu.shape``; 0 is
            background.
        volume: the CTVolume-like scan (module docstring).
        path: ``.nii.gz`` or ``.nii`` file; its parent folder is created.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if the shapes differ, a label is not an integer in [0, 65535], or ``path``
            has another suffix.
    """
    path = _check_path(path)
    shape, spacing_xyz, origin, direction = _geometry(volume)
    labels = _on_scan_grid("label_map", label_map, shape)
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if labels.size and (
        labels.min() < 0 or labels.max() > LABEL_MAX or not np.array_equal(labels, np.rint(labels))
    ):
        raise ValueError(
            f"label_map must hold integers in [0, {LABEL_MAX}] (uint16); got values in "
            f"[{labels.min()}, {labels.max()}] of dtype {labels.dtype}"
        )
    return _write_image(labels.astype(np.uint16), spacing_xyz, origin, direction, path)


def write_probability_nifti(prob_zyx: ArrayLike, volume, path: str | PathLike[str]) -> Path:
    """Write a (z, y, x) probability map in [0, 1] as float32 with the scan's LPS geometry.

    Args:
        prob_zyx: voxel probabilities on the scan's original grid, shape
            ``volume.array_hu.shape``.
        volume: the CTVolume-like scan (module docstring).
        path: ``.nii.gz`` (compressed, recommended) or ``.nii`` file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if the shapes differ, a value is NaN or outside [0, 1], or ``path`` has
            another suffix.
    """
    path = _check_path(path)
    shape, spacing_xyz, origin, direction = _geometry(volume)
    prob = _on_scan_grid("prob_zyx", prob_zyx, shape).astype(np.float32)
    if prob.size and not (np.all(prob >= 0.0) and np.all(prob <= 1.0)):
        raise ValueError(
            f"prob_zyx must hold probabilities in [0, 1]; got values in "
            f"[{np.nanmin(prob)}, {np.nanmax(prob)}]{' and NaN' if np.isnan(prob).any() else ''}"
        )
    return _write_image(prob, spacing_xyz, origin, direction, path)


def _box_bounds(box: Sequence[slice], shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, stop) per axis of a (z, y, x) box of unit-step slices inside ``shape``."""
    if len(box) != 3 or not all(isinstance(s, slice) for s in box):
        raise ValueError(f"box must be 3 slices (z, y, x); got {box!r}")
    bounds = []
    for axis, (s, n) in enumerate(zip(box, shape, strict=True)):
        start = 0 if s.start is None else int(s.start)
        stop = n if s.stop is None else int(s.stop)
        if s.step not in (None, 1) or not 0 <= start < stop <= n:
            raise ValueError(
                f"box[{axis}]={s!r} must be a unit-step slice with 0 <= start < stop <= {n} "
                f"(scan shape {shape})"
            )
        bounds.append((start, stop))
    return bounds


def write_heatmap_nifti(
    heatmap_zyx: ArrayLike, box: Sequence[slice], volume, path: str | PathLike[str]
) -> Path:
    """Write a heatmap covering ``box`` of the scan grid as a cropped float32 image.

    The image keeps the scan's spacing and direction; its origin is the world position of the
    box corner, ``origin + D @ diag(spacing_xyz) @ (x0, y0, z0)``, so voxel (0, 0, 0) of the
    file lies exactly on scan voxel ``(box[0].start, box[1].start, box[2].start)`` and the map
    overlays the CT without resampling.

    Args:
        heatmap_zyx: map values, shape ``(stop - start)`` per axis of ``box``.
        box: (z, y, x) unit-step slices of the scan's original grid (e.g. from
            :func:`lungvlm.inference.nodule_heads.box_around`).
        volume: the CTVolume-like scan (module docstring).
        path: ``.nii.gz`` or ``.nii`` file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``box`` is not inside the scan, the heatmap's shape differs from the
            box's, a value is not finite, or ``path`` has another suffix.
    """
    path = _check_path(path)
    shape, spacing_xyz, origin, direction = _geometry(volume)
    bounds = _box_bounds(box, shape)
    box_shape = tuple(stop - start for start, stop in bounds)
    heatmap = np.asarray(heatmap_zyx)
    if heatmap.shape != box_shape:
        raise ValueError(f"heatmap_zyx has shape {heatmap.shape}; expected the box's {box_shape}")
    heatmap = heatmap.astype(np.float32)
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap_zyx holds NaN or infinite values")
    corner_xyz = np.asarray([start for start, _ in bounds][::-1], dtype=np.float64)
    corner_world = origin + direction @ (np.asarray(spacing_xyz) * corner_xyz)
    return _write_image(heatmap, spacing_xyz, corner_world, direction, path)
