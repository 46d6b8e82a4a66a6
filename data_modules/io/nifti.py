"""NIfTI read/write through SimpleITK, so LPS handling matches every other ITK-based reader.

NIfTI stores a RAS affine; ITK converts it to LPS on read and back on write (negating the first
two world axes), so a :class:`CTVolume` read here shares its conventions with the DICOM and
MetaImage readers.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike

from data_modules.io.errors import NiftiError
from lungvlm.imaging.volume import CTVolume


def read_nifti(path: str | PathLike[str]) -> CTVolume:
    """Read a 3-D NIfTI (.nii / .nii.gz) as float32 (z, y, x) with LPS geometry in mm.

    Metadata: ``source_path``. Values are taken as HU: a mask comes back as 0.0/1.0.

    Raises:
        NiftiError: SimpleITK cannot read the file, or the image is not 3-D scalar.
    """
    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
        return CTVolume.from_sitk(image, {"source_path": str(path)})
    except (RuntimeError, ValueError) as exc:
        raise NiftiError(f"cannot read NIfTI {path}: {exc}", path) from exc


def write_nifti(
    volume_or_array: CTVolume | ArrayLike,
    path: str | PathLike[str],
    spacing_mm: ArrayLike | None = None,
    origin: ArrayLike | None = None,
    direction: ArrayLike | None = None,
) -> Path:
    """Write a volume, or a (z, y, x) array with its geometry, as NIfTI.

    Args:
        volume_or_array: a CTVolume (geometry taken from it), or a (z, y, x) array whose dtype
            is kept (bool is written as uint8, e.g. for masks).
        path: output file (``.nii`` or ``.nii.gz``).
        spacing_mm: (z, y, x) voxel size in mm; required for an array, must be None for a volume.
        origin: world LPS (x, y, z) mm of voxel (0, 0, 0); default (0, 0, 0) for an array.
        direction: 3x3, columns = LPS directions of index axes x, y, z; default identity.

    Returns:
        The written path.

    Raises:
        ValueError: geometry given together with a CTVolume, or missing for an array.
        NiftiError: SimpleITK cannot write the file.
    """
    path = Path(path)
    if isinstance(volume_or_array, CTVolume):
        if spacing_mm is not None or origin is not None or direction is not None:
            raise ValueError("spacing_mm/origin/direction must be None when writing a CTVolume")
        image = volume_or_array.to_sitk()
    else:
        if spacing_mm is None:
            raise ValueError("spacing_mm (z, y, x) in mm is required when writing an array")
        array = np.asarray(volume_or_array)
        if array.ndim != 3:
            raise ValueError(f"array must be 3-D (z, y, x), got shape {array.shape}")
        geometry = CTVolume(
            np.zeros((1, 1, 1), np.float32),
            spacing_mm,  # type: ignore[arg-type]
            (0.0, 0.0, 0.0) if origin is None else origin,  # type: ignore[arg-type]
            np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64),
        )  # validates the geometry
        image = sitk.GetImageFromArray(array.astype(np.uint8) if array.dtype == bool else array)
        image.SetSpacing(geometry.spacing_mm[::-1])
        image.SetOrigin(geometry.origin_lps_mm)
        image.SetDirection(tuple(geometry.direction.reshape(-1)))
    try:
        sitk.WriteImage(image, str(path))
    except RuntimeError as exc:
        raise NiftiError(f"cannot write NIfTI {path}: {exc}", path) from exc
    return path
