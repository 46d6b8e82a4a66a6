"""LUNA16: MetaImage (.mhd/.raw) scans and the annotation / candidate CSVs (luna16.md).

World coordinates in the CSVs are LPS mm (x, y, z), like ITK's physical space, so a row maps to
a voxel with the image's own origin, spacing and direction (never by hand-parsing
``TransformMatrix``, which SimpleITK writes transposed).
"""

from __future__ import annotations

import csv
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

from data_modules.io.errors import CSVFormatError, MetaImageError, PointOutsideImageError
from lungvlm.imaging.volume import CTVolume

LUNA16_SUBSETS = 10
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
_ELEMENT_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_LONG": 8, "MET_ULONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}  # fmt: skip


@dataclass(frozen=True)
class LunaAnnotation:
    """One ``annotations.csv`` row: a nodule centre (world LPS mm) and its diameter in mm.

    ``row_number`` is the 1-based line of the file (the header is line 1).
    """

    seriesuid: str
    xyz_mm: tuple[float, float, float]
    diameter_mm: float
    source_path: Path
    row_number: int


@dataclass(frozen=True)
class LunaCandidate:
    """One ``candidates.csv`` / ``candidates_V2.csv`` row; ``label`` 1 = nodule, 0 = not."""

    seriesuid: str
    xyz_mm: tuple[float, float, float]
    label: int
    source_path: Path
    row_number: int


def _parse_header(mhd_path: Path) -> dict[str, str]:
    try:
        text = mhd_path.read_text(encoding="latin-1")
    except OSError as exc:
        raise MetaImageError(f"cannot read MetaImage header {mhd_path}: {exc}", mhd_path) from exc
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _decompressed_size(path: Path, chunk: int = 1 << 22) -> int:
    """Bytes a zlib-compressed MetaImage data file (``.zraw``) decompresses to.

    A stream cut short decompresses to fewer bytes than the header needs; a corrupt one raises.

    Raises:
        MetaImageError: the file is not a readable zlib stream (names it).
    """
    decoder = zlib.decompressobj()
    total = 0
    try:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                total += len(decoder.decompress(block))
        total += len(decoder.flush())
    except (OSError, zlib.error) as exc:
        raise MetaImageError(f"{path} is not a readable compressed data file: {exc}", path) from exc
    return total


def _check_raw_size(mhd_path: Path, fields: dict[str, str]) -> None:
    for key in ("DimSize", "ElementType", "ElementDataFile"):
        if key not in fields:
            raise MetaImageError(f"MetaImage header {mhd_path} lacks {key}", mhd_path)
    data_file = fields["ElementDataFile"]
    if data_file.upper() in ("LOCAL", "LIST") or data_file.upper().startswith("LIST"):
        return  # data inside the header file or split over many files: left to SimpleITK
    compressed = fields.get("CompressedData", "False").lower() == "true"
    raw_path = mhd_path.parent / data_file
    if not raw_path.is_file():
        raise MetaImageError(f"{mhd_path}: data file {raw_path} is missing", raw_path)
    if fields["ElementType"] not in _ELEMENT_BYTES:
        raise MetaImageError(f"{mhd_path}: unknown ElementType {fields['ElementType']}", mhd_path)
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError as exc:
        raise MetaImageError(f"{mhd_path}: bad DimSize {fields['DimSize']!r}", mhd_path) from exc
    expected = int(np.prod(dims)) * channels * _ELEMENT_BYTES[fields["ElementType"]]
    actual = _decompressed_size(raw_path) if compressed else raw_path.stat().st_size
    if actual < expected:
        raise MetaImageError(
            f"{raw_path} holds {actual} bytes but {mhd_path} (DimSize {dims}, "
            f"{fields['ElementType']}) needs {expected}: the file is truncated",
            raw_path,
        )


def read_metaimage(mhd_path: str | PathLike[str]) -> CTVolume:
    """Read a LUNA16 ``<seriesuid>.mhd`` (+ ``.raw``) scan as HU float32 (z, y, x).

    The data file's size (decompressed, for a ``.zraw``) is checked against the header before
    SimpleITK reads it, so a short download fails with a clear error. Origin, spacing and direction come from SimpleITK.
    Metadata: ``series_instance_uid`` (the file stem, LUNA16's ``seriesuid``) and
    ``source_path``.

    Raises:
        MetaImageError: missing header keys, missing or truncated data file, or a read failure.
    """
    mhd_path = Path(mhd_path)
    _check_raw_size(mhd_path, _parse_header(mhd_path))
    try:
        image = sitk.ReadImage(str(mhd_path))
    except RuntimeError as exc:
        raise MetaImageError(f"SimpleITK cannot read {mhd_path}: {exc}", mhd_path) from exc
    metadata = {"series_instance_uid": mhd_path.stem, "source_path": str(mhd_path)}
    try:
        return CTVolume.from_sitk(image, metadata)
    except ValueError as exc:
        raise MetaImageError(f"{mhd_path}: {exc}", mhd_path) from exc


def _read_rows(path: Path, columns: tuple[str, ...]) -> Iterable[tuple[int, dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise CSVFormatError(f"{path} lacks column(s) {missing}; expected {columns}", path)
            rows = list(reader)
    except OSError as exc:
        raise CSVFormatError(f"cannot read CSV {path}: {exc}", path) from exc
    except UnicodeDecodeError as exc:
        raise CSVFormatError(f"{path} is not UTF-8 text: {exc}", path) from exc
    except csv.Error as exc:  # e.g. a NUL byte: a binary file named .csv
        raise CSVFormatError(f"{path} is not a readable CSV: {exc}", path) from exc
    for i, row in enumerate(rows):
        if not (row.get("seriesuid") or "").strip():
            raise CSVFormatError(f"{path} row {i + 2}: empty seriesuid in {row}", path)
    return ((i + 2, row) for i, row in enumerate(rows))


def _xyz(path: Path, line: int, row: dict[str, str], extra: str) -> tuple[tuple[float, ...], float]:
    try:
        xyz = tuple(float(row[c]) for c in ("coordX", "coordY", "coordZ"))
        value = float(row[extra])
    except (TypeError, ValueError) as exc:
        raise CSVFormatError(f"{path} row {line}: cannot parse {row}: {exc}", path) from exc
    if not np.all(np.isfinite([*xyz, value])):
        raise CSVFormatError(f"{path} row {line}: non-finite value in {row}", path)
    return xyz, value


def read_annotations_csv(path: str | PathLike[str]) -> list[LunaAnnotation]:
    """Read ``annotations.csv`` (seriesuid, coordX/Y/Z in world mm, diameter_mm in mm).

    Raises:
        CSVFormatError: a missing column, an unparsable row, or a non-positive diameter.
    """
    path = Path(path)
    out = []
    for line, row in _read_rows(path, ANNOTATION_COLUMNS):
        xyz, diameter = _xyz(path, line, row, "diameter_mm")
        if diameter <= 0:
            raise CSVFormatError(f"{path} row {line}: diameter_mm {diameter} must be > 0", path)
        out.append(LunaAnnotation(row["seriesuid"], xyz, diameter, path, line))  # type: ignore[arg-type]
    return out


def read_candidates_csv(path: str | PathLike[str]) -> list[LunaCandidate]:
    """Read ``candidates.csv`` / ``candidates_V2.csv`` (seriesuid, coordX/Y/Z mm, class 0/1).

    Raises:
        CSVFormatError: a missing column, an unparsable row, or a class other than 0 or 1.
    """
    path = Path(path)
    out = []
    for line, row in _read_rows(path, CANDIDATE_COLUMNS):
        xyz, label = _xyz(path, line, row, "class")
        if label not in (0.0, 1.0):
            raise CSVFormatError(f"{path} row {line}: class {row['class']!r} must be 0 or 1", path)
        out.append(LunaCandidate(row["seriesuid"], xyz, int(label), path, line))  # type: ignore[arg-type]
    return out


def world_to_voxel_zyx(volume: CTVolume, xyz_mm: ArrayLike) -> NDArray[np.float64]:
    """World LPS (x, y, z) mm, shape (..., 3) -> continuous (z, y, x) indices into ``array_hu``."""
    return volume.world_to_voxel(xyz_mm)


def check_rows_inside(
    volume: CTVolume, rows: Iterable[LunaAnnotation | LunaCandidate], seriesuid: str | None = None
) -> int:
    """Check that every row of the volume's series lies inside the image.

    Args:
        volume: the scan.
        rows: CSV rows of any series; only those of ``seriesuid`` are checked.
        seriesuid: defaults to ``volume.metadata["series_instance_uid"]``.

    Returns:
        The number of rows checked.

    Raises:
        PointOutsideImageError: names the CSV, its row number and the series.
        ValueError: no series UID given or known from the volume.
    """
    seriesuid = seriesuid or volume.metadata.get("series_instance_uid")
    if not seriesuid:
        raise ValueError("seriesuid is required when the volume's metadata has no series UID")
    checked = 0
    for row in rows:
        if row.seriesuid != seriesuid:
            continue
        zyx = volume.world_to_voxel(row.xyz_mm)
        if not volume.contains_index(zyx):
            raise PointOutsideImageError(
                f"{row.source_path} row {row.row_number}: series {seriesuid} point "
                f"{row.xyz_mm} mm is voxel (z, y, x) {np.round(zyx, 2).tolist()}, outside the "
                f"image of shape {volume.shape}",
                row.source_path,
            )
        checked += 1
    return checked


def fold_of_subset_folder(folder: str | PathLike[str]) -> int:
    """The fold N of a LUNA16 ``subsetN`` folder (N in 0..9), e.g. ``.../subset3`` -> 3.

    Raises:
        ValueError: the folder name is not ``subset0`` ... ``subset9``.
    """
    name = Path(folder).name
    match = re.fullmatch(r"subset(\d+)", name)
    if match is None or not 0 <= int(match.group(1)) < LUNA16_SUBSETS:
        raise ValueError(f"folder must be named subset0..subset{LUNA16_SUBSETS - 1}, got {name!r}")
    return int(match.group(1))
