"""Errors raised by the readers in :mod:`data_modules.io`.

Every reader error is a :class:`DataError`, a ``ValueError`` that carries the offending file or
folder in ``.path``, so a caller can catch one type, log the path, and skip the case.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path


class DataError(ValueError):
    """A file or folder that cannot be read as the expected medical-image data.

    Attributes:
        path: the file or folder at fault (``None`` when the data came from memory).
    """

    def __init__(self, message: str, path: str | PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class DicomReadError(DataError):
    """A DICOM file that is unreadable, truncated, or lacks a tag the reader needs."""


class NoDicomError(DataError):
    """A folder that holds no DICOM file (or no file of the requested series)."""


class MultipleSeriesError(DataError):
    """A folder that holds several series when the caller did not choose one."""


class NotCTError(DataError):
    """A DICOM series whose Modality is not CT."""


class UnsupportedTransferSyntaxError(DataError):
    """Compressed pixel data that none of pydicom's installed plugins can decode."""


class SliceGeometryError(DataError):
    """Slices that do not form one regular stack: mixed orientation, duplicates or gaps."""


class AnnotationError(DataError):
    """An LIDC XML file, or one of its ROIs, that cannot be parsed or placed in its CT volume."""


class ClusterError(DataError):
    """Reader annotations that cannot be grouped into nodules of at most four annotations."""


class MetaImageError(DataError):
    """A MetaImage (.mhd/.raw) pair that is malformed, missing, or shorter than its header says."""


class CSVFormatError(DataError):
    """A LUNA16 CSV with a missing column or a row that cannot be parsed."""


class PointOutsideImageError(DataError):
    """A CSV row whose world position lies outside the image of its series."""


class NiftiError(DataError):
    """A NIfTI file that SimpleITK cannot read or write, or whose compressed stream or raw voxels
    are broken (truncated gzip, CRC error, non-finite voxels, zero spacing)."""


class ImplausibleImageError(DataError):
    """An image that was read but that no CT scanner produces: non-finite voxels, or a voxel
    spacing outside :data:`data_modules.io.checks.SPACING_RANGE_MM`."""
