"""Plausibility checks of an image read from a user's file: voxel values and voxel size.

A reader that succeeds can still hand back a volume no CT scanner produces: NaN or infinite
voxels (a float NIfTI or MetaImage written by a broken pipeline; a DICOM RescaleSlope of NaN),
or a voxel spacing of 0, 1e-9 or 50 mm (a header written by hand, or by a tool that dropped the
slice spacing). Downstream each gives a wrong report ("no nodule") or an allocation of tens of
GiB, never a useful answer, so the reader of user scans (``lungvlm.commands.scan_io``) stops
here with an error that names the file and the value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike

import numpy as np
from numpy.typing import NDArray

from data_modules.io.errors import ImplausibleImageError

#: Plausible voxel spacing of a chest CT, per axis, in mm (inclusive). LIDC-IDRI's scans span
#: 0.46-0.98 mm pixels and 0.6-5.0 mm slices (``reference/lidc-idri.md``); the range leaves a
#: wide margin on both sides (micro-CT-like 0.1 mm, 20 mm thick-slab reformats) and refuses the
#: values that only a broken header holds (0, 1e-9, 50 mm).
SPACING_RANGE_MM: tuple[float, float] = (0.1, 20.0)

_AXES = ("z", "y", "x")


def check_spacing(spacing_mm: Sequence[float], path: str | PathLike[str]) -> None:
    """Refuse a voxel spacing outside :data:`SPACING_RANGE_MM`.

    Args:
        spacing_mm: (z, y, x) voxel size in mm.
        path: the file or folder it was read from (named in the error).

    Raises:
        ImplausibleImageError: an axis spacing that is not finite or lies outside the range.
    """
    low, high = SPACING_RANGE_MM
    for axis, value in zip(_AXES, spacing_mm, strict=True):
        if not (math.isfinite(value) and low <= value <= high):
            raise ImplausibleImageError(
                f"{path}: {axis} spacing {value:.6g} mm is outside the plausible CT range "
                f"{low:g}-{high:g} mm (SPACING_RANGE_MM); spacing (z, y, x) = "
                f"({', '.join(f'{s:.6g}' for s in spacing_mm)}) mm: fix the file's header",
                path,
            )


def first_non_finite(array: NDArray) -> tuple[int, tuple[int, ...] | None]:
    """Count the NaN/inf voxels of an array and find the first one, without a full-size copy.

    Returns:
        (count, index of the first one in C order, or None when there is none).
    """
    if not np.issubdtype(array.dtype, np.floating):
        return 0, None  # integer voxels are always finite
    if array.ndim == 0 or array.size == 0:
        return (0, None) if array.size == 0 or np.isfinite(array) else (1, ())
    count, first = 0, None
    for row in range(array.shape[0]):  # one slice at a time: a bool mask of one slice only
        bad = ~np.isfinite(array[row])
        n = int(bad.sum())
        if n and first is None:
            first = (row, *np.unravel_index(int(np.argmax(bad)), bad.shape))
        count += n
    return count, None if first is None else tuple(int(i) for i in first)


def check_finite(array: NDArray, path: str | PathLike[str], what: str = "voxels") -> None:
    """Refuse NaN or infinite voxels.

    Args:
        array: the voxels, (z, y, x) in array order (HU for a CT).
        path: the file or folder they were read from (named in the error).
        what: how the message names the values ("voxels", "raw voxels").

    Raises:
        ImplausibleImageError: at least one voxel is NaN or +-inf.
    """
    count, first = first_non_finite(np.asarray(array))
    if count:
        value = np.asarray(array)[first]
        raise ImplausibleImageError(
            f"{path}: {count} of {np.asarray(array).size} {what} are not finite (NaN or inf; "
            f"the first, {value}, at (z, y, x) index {first}); a CT holds finite HU only: fix "
            "or re-export the file",
            path,
        )
