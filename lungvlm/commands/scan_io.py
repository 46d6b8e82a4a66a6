"""The one reader of scans a user hands to ``lungvlm``: a DICOM folder, NIfTI or MetaImage.

Every inference entry point (``report``, ``predict``, ``ask``, ``evaluate``, the Python API)
reads its scans here, so they accept the same inputs and give the same errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydicom

from data_modules.io import DataError, read_dicom_series, read_metaimage, read_nifti
from data_modules.io.checks import check_finite, check_spacing
from lungvlm.imaging.volume import CTVolume

#: Fewest slices of a scan: a single slice is not a CT volume.
MIN_SLICES = 2
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
METAIMAGE_SUFFIXES: tuple[str, ...] = (".mhd",)
ScanFormat = Literal["dicom", "nifti", "metaimage"]


@dataclass
class ScanFile:
    """A scan read from disk.

    Attributes:
        volume: HU (z, y, x) float32 with LPS geometry in mm.
        format: "dicom", "nifti" or "metaimage".
        path: the folder or file it was read from.
        source_datasets: for DICOM, the slice headers (no pixels) in the volume's z order
            (enables the DICOM SEG/SR exports); else None.
    """

    volume: CTVolume
    format: ScanFormat
    path: Path
    source_datasets: list[pydicom.Dataset] | None = None

    @property
    def series_uid(self) -> str | None:
        """The DICOM SeriesInstanceUID, when the format has one."""
        return self.volume.metadata.get("series_instance_uid")


def is_scan_path(path: Path) -> bool:
    """Whether ``path`` names something :func:`read_volume` reads (a folder or a known file)."""
    name = path.name.lower()
    return path.is_dir() or name.endswith(NIFTI_SUFFIXES + METAIMAGE_SUFFIXES)


def scan_name(path: str | Path) -> str:
    """The file or folder name of a scan without its image suffix (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES[::-1] + METAIMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name or "scan"


def read_volume(
    path: str | Path, series_uid: str | None = None, with_headers: bool = True
) -> ScanFile:
    """Read a DICOM series folder, a NIfTI file (.nii/.nii.gz) or a MetaImage (.mhd).

    Args:
        path: the folder or file.
        series_uid: SeriesInstanceUID to read from a folder holding several series.
        with_headers: for DICOM, also read the slice headers (``source_datasets``).

    Returns:
        The :class:`ScanFile`.

    Raises:
        DataError: a missing path, an unknown format, a reader error (naming the file and the
            problem: truncated or corrupt file, missing slice, several series without
            ``series_uid``), a single slice, a voxel spacing outside
            :data:`~data_modules.io.checks.SPACING_RANGE_MM`, or NaN/inf voxels.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"scan {path} does not exist", path)
    sources = None
    kind: ScanFormat
    name = path.name.lower()
    if path.is_dir():
        volume, kind = read_dicom_series(path, series_uid=series_uid), "dicom"
        if with_headers:
            files = volume.metadata["files"]
            sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    elif name.endswith(NIFTI_SUFFIXES):
        volume, kind = read_nifti(path), "nifti"
    elif name.endswith(METAIMAGE_SUFFIXES):
        volume, kind = read_metaimage(path), "metaimage"
    else:
        raise DataError(
            f"scan {path} has an unknown format; expected a DICOM folder, a NIfTI file "
            f"({', '.join(NIFTI_SUFFIXES)}) or a MetaImage ({', '.join(METAIMAGE_SUFFIXES)})",
            path,
        )
    if volume.shape[0] < MIN_SLICES:
        raise DataError(
            f"scan {path} holds a single slice (shape {volume.shape}); LungVLM needs a 3-D CT "
            "volume",
            path,
        )
    check_spacing(volume.spacing_mm, path)
    check_finite(volume.array_hu, path)
    return ScanFile(volume, kind, path, sources)
