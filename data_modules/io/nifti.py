"""NIfTI read/write through SimpleITK, so LPS handling matches every other ITK-based reader.

NIfTI stores a RAS affine; ITK converts it to LPS on read and back on write (negating the first
two world axes), so a :class:`CTVolume` read here shares its conventions with the DICOM and
MetaImage readers.

ITK's NIfTI reader is lenient in three ways that turn a broken file into a plausible-looking
scan: it fills the missing part of a truncated file (``.nii`` or ``.nii.gz``) with zeros, reads
NaN and inf voxels as 0, and reads a zero ``pixdim`` as 1 mm. :func:`read_nifti` therefore
checks the file itself first (:func:`check_nifti_file`): the whole gzip stream (its CRC and
length), the data size the header asks for, the header's voxel size, and the raw float voxels
(with nibabel, before any cast).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from os import PathLike
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike

from data_modules.io.checks import check_finite
from data_modules.io.errors import NiftiError
from lungvlm.imaging.volume import CTVolume

_CHUNK_BYTES = 1 << 24  # gzip is checked in 16 MiB pieces: no full-size copy in memory
_NIFTI1_HEADER_BYTES = 348  # sizeof_hdr, the first int32 of a NIfTI-1 file
_NIFTI2_HEADER_BYTES = 540  # and of a NIfTI-2 file


def _stream_bytes(path: Path) -> int:
    """Bytes of the (decompressed) file; a ``.gz`` is decompressed to its end, which checks its
    CRC and length (zlib alone stops silently at a cut)."""
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size
    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                total += len(chunk)
    except EOFError as exc:
        raise NiftiError(
            f"NIfTI {path} is truncated: its gzip stream ({path.stat().st_size} bytes on disk) "
            f"ends before the end-of-stream marker ({exc}); download or copy it again",
            path,
        ) from exc
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise NiftiError(
            f"NIfTI {path} is a corrupt gzip file ({exc}); download or copy it again", path
        ) from exc
    return total


def _raw_header(path: Path, nibabel):
    """The NIfTI-1 or NIfTI-2 header exactly as stored (``check=False``: nibabel's loader would
    also replace a zero pixdim by 1)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        head = handle.read(_NIFTI2_HEADER_BYTES)
    header_classes = {_NIFTI1_HEADER_BYTES: nibabel.Nifti1Header, _NIFTI2_HEADER_BYTES: nibabel.Nifti2Header}  # fmt: skip
    for order in "<>":
        size = struct.unpack(f"{order}i", head[:4])[0] if len(head) >= 4 else 0
        if size in header_classes and len(head) >= size:
            return header_classes[size](head[:size], endianness=order, check=False)
    raise NiftiError(
        f"cannot read NIfTI {path}: not a NIfTI file (its first 4 bytes do not give the NIfTI-1 "
        f"or NIfTI-2 header size, {_NIFTI1_HEADER_BYTES} or {_NIFTI2_HEADER_BYTES})",
        path,
    )


def check_nifti_file(path: str | PathLike[str]) -> None:
    """Check what ITK's reader would silently repair: truncation, zero voxel size, NaN/inf.

    Raises:
        NiftiError: a corrupt or truncated gzip stream, not a NIfTI header, less voxel data
            than the header describes, or a ``pixdim`` that is not a positive number of mm.
        ImplausibleImageError: NaN or inf among the raw float voxels.
    """
    import nibabel  # a NIfTI reader that keeps the raw voxels (ITK replaces NaN by 0)

    path = Path(path)
    size = _stream_bytes(path)
    try:
        header = _raw_header(path, nibabel)
        shape = tuple(int(n) for n in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        offset = int(header.get_data_offset())
        zooms = [float(z) for z in header.get_zooms()[:3]]
    except NiftiError:
        raise
    except Exception as exc:  # nibabel raises many types on a malformed header
        raise NiftiError(f"cannot read NIfTI header of {path}: {exc}", path) from exc
    for axis, zoom in zip("xyz", zooms, strict=False):
        if not (math.isfinite(zoom) and zoom > 0):
            raise NiftiError(
                f"NIfTI {path}: header voxel size (pixdim) along {axis} is {zoom:g} mm; it must "
                "be a positive number of mm (ITK would silently read it as 1 mm)",
                path,
            )
    expected = offset + math.prod(shape) * dtype.itemsize
    if size < expected:
        raise NiftiError(
            f"NIfTI {path} is truncated: it holds {size} bytes but its header (shape {shape}, "
            f"{dtype}) needs {expected}; download or copy it again",
            path,
        )
    if dtype.kind in "fc":  # only float voxels can be NaN or inf
        raw = np.asanyarray(nibabel.load(str(path)).dataobj.get_unscaled())
        # nibabel's array is (x, y, z[, t]); the transpose is a (z, y, x) view, no copy
        check_finite(raw.T, path, what="raw voxels")


def read_nifti(path: str | PathLike[str]) -> CTVolume:
    """Read a 3-D NIfTI (.nii / .nii.gz) as float32 (z, y, x) with LPS geometry in mm.

    The file is checked first (:func:`check_nifti_file`). Metadata: ``source_path``. Values are
    taken as HU: a mask comes back as 0.0/1.0.

    Raises:
        NiftiError: a truncated or corrupt file, a non-positive voxel size in the header,
            SimpleITK cannot read the file, or the image is not 3-D scalar.
        ImplausibleImageError: NaN or inf voxels.
    """
    path = Path(path)
    check_nifti_file(path)
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
