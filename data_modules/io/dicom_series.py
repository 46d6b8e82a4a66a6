"""Read one CT series from a folder of single-frame DICOM files into a :class:`CTVolume`.

Follows dicom-ct.md "Sorting slices": one SeriesInstanceUID, one ImageOrientationPatient,
slices sorted by ``dot(ImagePositionPatient, normal)`` (never InstanceNumber or SliceLocation),
slice spacing = median step between sorted positions, duplicates and gaps detected, and
``HU = stored * RescaleSlope + RescaleIntercept`` computed in float32.

Metadata keys of the returned volume: ``source_folder``, ``files`` and ``sop_instance_uids`` and
``instance_numbers`` (all in sorted slice order), ``z_positions_mm`` (ImagePositionPatient z of
each slice, the value LIDC XML calls ``imageZposition``), ``slice_positions_mm`` (position along
the slice normal), ``study_instance_uid``, ``series_instance_uid``, ``patient_id``,
``frame_of_reference_uid``, ``convolution_kernel``, ``manufacturer``,
``manufacturer_model_name``, ``slice_thickness_mm``, ``kvp``, ``patient_position``,
``dropped_duplicate_files``. Absent tags give ``None``.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder

from data_modules.io.errors import (
    DicomReadError,
    MultipleSeriesError,
    NoDicomError,
    NotCTError,
    SliceGeometryError,
    UnsupportedTransferSyntaxError,
)
from lungvlm.imaging.volume import CTVolume

DUPLICATE_POLICIES = ("error", "keep_first")
DUPLICATE_TOL_MM = 0.01  # two slices closer than this along the normal share a position
GAP_FACTOR = 1.5  # a step larger than GAP_FACTOR x the median step is a missing slice
ORIENTATION_TOL = 1e-4  # tolerance on direction cosines when comparing slices
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR SOP class
_REQUIRED = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


def _is_part10(path: Path) -> bool:
    """True when the file has the 128-byte preamble followed by the ``DICM`` marker."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _scan_headers(folder: Path, recursive: bool) -> dict[str, list[tuple[Path, Dataset]]]:
    if not folder.is_dir():
        raise NoDicomError(f"DICOM folder {folder} does not exist or is not a folder", folder)
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file())
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in files:
        if not _is_part10(path):
            if path.suffix.lower() == ".dcm":
                raise DicomReadError(f"{path} has a .dcm name but no DICOM preamble", path)
            continue  # XML, CSV and other non-DICOM files sit next to LIDC series
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types on corrupt headers
            raise DicomReadError(f"cannot read DICOM header of {path}: {exc}", path) from exc
        uid = header.get("SeriesInstanceUID")
        if not uid:
            if header.file_meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
                continue  # a DICOMDIR index, not an image
            # pydicom stops quietly at the end of a file cut inside its header
            raise DicomReadError(
                f"{path} has no SeriesInstanceUID: truncated or not an image", path
            )
        groups.setdefault(str(uid), []).append((path, header))
    if not groups:
        raise NoDicomError(f"no DICOM image files found in folder {folder}", folder)
    return groups


def list_series(folder: str | PathLike[str], recursive: bool = False) -> dict[str, list[Path]]:
    """Group the DICOM files of a folder by SeriesInstanceUID.

    Args:
        folder: folder to scan; files without the DICOM ``DICM`` marker are skipped unless they
            are named ``*.dcm``.
        recursive: also scan sub-folders.

    Returns:
        SeriesInstanceUID -> file paths sorted by name (not by position).

    Raises:
        NoDicomError: the folder is missing or holds no DICOM file with a series UID.
        DicomReadError: a DICOM file whose header cannot be parsed.
    """
    groups = _scan_headers(Path(folder), recursive)
    return {uid: [p for p, _ in items] for uid, items in groups.items()}


def describe_series(groups: dict[str, list[tuple[Path, Dataset]]]) -> str:
    """One line listing series by UID with their slice count and SeriesDescription."""
    parts = []
    for uid in sorted(groups):
        items = groups[uid]
        description = str(items[0][1].get("SeriesDescription") or "").strip()
        about = f"{len(items)} slice(s)" + (f", {description!r}" if description else "")
        parts.append(f"{uid} ({about})")
    return "; ".join(parts)


def read_first_header(folder: str | PathLike[str]) -> Dataset | None:
    """Header (no pixels) of the first DICOM file, by name, directly inside ``folder``.

    Returns:
        The dataset, or None when the folder holds no readable DICOM file.
    """
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        if _is_part10(path):
            try:
                return pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # a corrupt first file: try the next one
                continue
    return None


def _value(ds: Dataset, keyword: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    if isinstance(value, pydicom.valuerep.DSfloat | pydicom.valuerep.IS):
        return float(value)
    return str(value)


def _check_geometry(items: list[tuple[Path, Dataset]]) -> None:
    for path, ds in items:
        if str(ds.get("Modality", "")).upper() != "CT":
            raise NotCTError(f"{path} has Modality {ds.get('Modality')!r}; expected 'CT'", path)
        for kw in _REQUIRED:
            if ds.get(kw) is None:
                raise DicomReadError(f"{path} lacks {kw}, needed to place the slice", path)
    path0, ds0 = items[0]
    for path, ds in items[1:]:
        if not np.allclose(
            np.asarray(ds.ImageOrientationPatient, float),
            np.asarray(ds0.ImageOrientationPatient, float),
            atol=ORIENTATION_TOL,
        ):
            raise SliceGeometryError(
                f"ImageOrientationPatient differs between {path0} ({list(ds0.ImageOrientationPatient)})"
                f" and {path} ({list(ds.ImageOrientationPatient)}); one series must share one",
                path,
            )
        same_grid = (ds.Rows, ds.Columns) == (ds0.Rows, ds0.Columns) and np.allclose(
            np.asarray(ds.PixelSpacing, float), np.asarray(ds0.PixelSpacing, float), atol=1e-4
        )
        if not same_grid:
            raise SliceGeometryError(
                f"Rows/Columns/PixelSpacing differ between {path0} and {path}", path
            )


def _sorted_positions(
    items: list[tuple[Path, Dataset]], duplicates: str
) -> tuple[list[tuple[Path, Dataset]], np.ndarray, np.ndarray, list[Path]]:
    iop = np.asarray(items[0][1].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    pos = np.array([np.dot(np.asarray(ds.ImagePositionPatient, float), normal) for _, ds in items])
    order = np.argsort(pos, kind="stable")
    items, pos = [items[i] for i in order], pos[order]
    keep: list[int] = []
    dropped: list[Path] = []
    for i in range(len(items)):
        if keep and abs(pos[i] - pos[keep[-1]]) < DUPLICATE_TOL_MM:
            a, b = items[keep[-1]], items[i]
            if duplicates == "error":
                raise SliceGeometryError(
                    f"{a[0]} and {b[0]} have the same position {pos[i]:.3f} mm along the slice "
                    "normal; pass duplicates='keep_first' to keep the lower InstanceNumber",
                    b[0],
                )
            n_a, n_b = (int(x[1].get("InstanceNumber") or 2**31) for x in (a, b))
            if n_b < n_a:
                dropped.append(a[0])
                keep[-1] = i
            else:
                dropped.append(b[0])
            continue
        keep.append(i)
    return [items[i] for i in keep], pos[keep], normal, dropped


def _slice_spacing_mm(items: list[tuple[Path, Dataset]], pos: np.ndarray) -> float:
    if len(items) == 1:
        ds = items[0][1]
        for kw in ("SpacingBetweenSlices", "SliceThickness"):
            if ds.get(kw):
                return float(ds.get(kw))  # one slice: no positions to difference
        raise SliceGeometryError(
            f"single slice {items[0][0]} has no SpacingBetweenSlices or SliceThickness", items[0][0]
        )
    steps = np.diff(pos)
    median = float(np.median(steps))
    for i in np.flatnonzero(steps > GAP_FACTOR * median):
        raise SliceGeometryError(
            f"gap of {steps[i]:.3f} mm between {items[i][0]} and {items[i + 1][0]} "
            f"(median slice step {median:.3f} mm): a slice is missing",
            items[i + 1][0],
        )
    return median


def _decode_hu(path: Path) -> np.ndarray:
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise DicomReadError(f"cannot read DICOM file {path}: {exc}", path) from exc
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError as exc:
            raise UnsupportedTransferSyntaxError(
                f"{path}: pydicom has no decoder for transfer syntax {syntax.name} ({syntax})", path
            ) from exc
        if not decoder.is_available:
            raise UnsupportedTransferSyntaxError(
                f"{path}: transfer syntax {syntax.name} ({syntax}) needs a plugin that is not "
                f"installed: {'; '.join(decoder.missing_dependencies)}",
                path,
            )
    if int(ds.get("NumberOfFrames") or 1) != 1:
        raise DicomReadError(f"{path} is multi-frame; only single-frame CT slices are read", path)
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise DicomReadError(f"cannot decode pixel data of {path} ({syntax}): {exc}", path) from exc
    if stored.shape != (ds.Rows, ds.Columns):
        raise DicomReadError(f"{path}: pixel shape {stored.shape} != Rows x Columns", path)
    slope = np.float32(ds.get("RescaleSlope", 1.0))
    intercept = np.float32(ds.get("RescaleIntercept", 0.0))
    if not (np.isfinite(slope) and np.isfinite(intercept) and slope != 0):
        raise DicomReadError(
            f"{path}: RescaleSlope {slope} and RescaleIntercept {intercept} do not map stored "
            "values to HU (the slope must be a finite non-zero number, the intercept finite)",
            path,
        )
    return stored.astype(np.float32) * slope + intercept  # float32: no int16 overflow


def read_dicom_series(
    folder: str | PathLike[str],
    series_uid: str | None = None,
    duplicates: str = "error",
    recursive: bool = False,
) -> CTVolume:
    """Read one CT series into HU (z, y, x) float32 with LPS geometry in mm.

    Args:
        folder: folder holding the series' files (other files are skipped, see ``list_series``).
        series_uid: SeriesInstanceUID to read; required when the folder holds several series.
        duplicates: ``"error"`` (default) raises on two slices at one position;
            ``"keep_first"`` keeps the slice with the lower InstanceNumber, as pylidc does.
        recursive: also scan sub-folders.

    Returns:
        The volume; slice k is the k-th slice by increasing ``dot(IPP, normal)``,
        ``spacing_mm[0]`` the median step between positions, origin the first slice's IPP,
        direction columns = (row cosines, column cosines, normal).

    Raises:
        NoDicomError: no DICOM in the folder, or no file of ``series_uid``.
        MultipleSeriesError: several series and no ``series_uid``.
        NotCTError: a file whose Modality is not CT.
        SliceGeometryError: mixed orientation or grid, duplicate positions, or a gap larger
            than 1.5 x the median step.
        UnsupportedTransferSyntaxError: compressed pixels that no installed plugin decodes.
        DicomReadError: an unreadable or truncated file, a missing geometry tag, or a
            RescaleSlope/RescaleIntercept that is not finite (or a zero slope).
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
    folder = Path(folder)
    groups = _scan_headers(folder, recursive)
    if series_uid is None and len(groups) > 1:
        raise MultipleSeriesError(
            f"folder {folder} holds {len(groups)} series: {describe_series(groups)}; choose one "
            "with --series-uid UID (Python: series_uid=UID)",
            folder,
        )
    if series_uid is not None and series_uid not in groups:
        raise NoDicomError(
            f"no file of series {series_uid} (--series-uid) in folder {folder}; it holds "
            f"{len(groups)} series: {describe_series(groups)}",
            folder,
        )
    items = groups[series_uid] if series_uid is not None else next(iter(groups.values()))
    _check_geometry(items)
    items, pos, normal, dropped = _sorted_positions(items, duplicates)
    spacing_z = _slice_spacing_mm(items, pos)
    array = np.stack([_decode_hu(path) for path, _ in items])
    ds0 = items[0][1]
    iop = np.asarray(ds0.ImageOrientationPatient, dtype=np.float64)
    row_cos, col_cos = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    dy, dx = (float(v) for v in ds0.PixelSpacing)  # PixelSpacing = row spacing \ column spacing
    metadata = {
        "source_folder": str(folder),
        "files": [str(p) for p, _ in items],
        "sop_instance_uids": [str(ds.SOPInstanceUID) for _, ds in items],
        "instance_numbers": [int(ds.get("InstanceNumber") or -1) for _, ds in items],
        "z_positions_mm": [float(ds.ImagePositionPatient[2]) for _, ds in items],
        "slice_positions_mm": [float(p) for p in pos],
        "study_instance_uid": _value(ds0, "StudyInstanceUID"),
        "series_instance_uid": _value(ds0, "SeriesInstanceUID"),
        "patient_id": _value(ds0, "PatientID"),
        "frame_of_reference_uid": _value(ds0, "FrameOfReferenceUID"),
        "convolution_kernel": _value(ds0, "ConvolutionKernel"),
        "manufacturer": _value(ds0, "Manufacturer"),
        "manufacturer_model_name": _value(ds0, "ManufacturerModelName"),
        "slice_thickness_mm": _value(ds0, "SliceThickness"),
        "kvp": _value(ds0, "KVP"),
        "patient_position": _value(ds0, "PatientPosition"),
        "dropped_duplicate_files": [str(p) for p in dropped],
    }
    return CTVolume(
        array_hu=array,
        spacing_mm=(spacing_z, dy, dx),
        origin_lps_mm=tuple(float(v) for v in ds0.ImagePositionPatient),
        direction=np.stack([row_cos, col_cos, normal], axis=1),
        metadata=metadata,
    )
