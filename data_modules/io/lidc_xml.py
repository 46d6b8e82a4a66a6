"""LIDC-IDRI reader XML: parse read messages, pair them with series, rasterise contours.

Schema (lidc-idri.md, "XML schema"): ``LidcReadMessage`` (or ``IdriReadMessage``) holds a
``ResponseHeader`` with ``SeriesInstanceUid`` and ``StudyInstanceUID`` and up to four
``readingSession`` elements; each holds ``unblindedReadNodule`` (noduleID, optional
characteristics, rois) and ``nonNodule`` (a single locus) entries. Tags are matched by local
name inside the root's namespace (usually ``http://www.nih.gov``), or with no namespace.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
from matplotlib.path import Path as MplPath
from numpy.typing import NDArray

from data_modules.io.errors import AnnotationError
from lungvlm.imaging.volume import CTVolume

CHARACTERISTIC_NAMES = (
    "subtlety",
    "internalStructure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)
SERIES_UID_TAGS = ("SeriesInstanceUid", "SeriesInstanceUID")
_ON_EDGE_TOL_PX = 1e-6


@dataclass(eq=False)
class ROI:
    """One reader contour on one slice.

    Attributes:
        z_mm: ``imageZposition``, the slice's ImagePositionPatient z in mm.
        sop_uid: ``imageSOP_UID``, the slice's SOPInstanceUID.
        inclusion: True for an outline, False for a hole to subtract.
        xy: (N, 2) float pixel indices (x = column, y = row) from the top-left pixel centre.
    """

    z_mm: float
    sop_uid: str
    inclusion: bool
    xy: NDArray[np.float64]


@dataclass(eq=False)
class ReaderNodule:
    """One reader's ``unblindedReadNodule``.

    Attributes:
        reader_index: 0-based order of the readingSession in the file (not stable across files).
        nodule_id: the reader's local ``noduleID``; it does not link readers.
        characteristics: the nine ratings as ints, or None when the element is absent or empty.
        rois: contours, one per slice (plus holes).
        source_path: the XML file, for error messages.
    """

    reader_index: int
    nodule_id: str
    characteristics: dict[str, int] | None
    rois: list[ROI]
    source_path: Path | None = None

    @property
    def is_small(self) -> bool:
        """A "nodule < 3 mm" mark: no characteristics and a single one-point roi."""
        return self.characteristics is None and len(self.rois) == 1 and len(self.rois[0].xy) == 1

    @property
    def has_complete_ratings(self) -> bool:
        """All nine ratings present and non-zero: pylidc's criterion for keeping an annotation."""
        chars = self.characteristics or {}
        return all(chars.get(name, 0) != 0 for name in CHARACTERISTIC_NAMES)


@dataclass(eq=False)
class NonNodule:
    """A ``nonNodule`` mark (non-nodule >= 3 mm): one point on one slice, pixel (x, y)."""

    reader_index: int
    non_nodule_id: str
    z_mm: float
    sop_uid: str
    xy: NDArray[np.float64]


@dataclass(eq=False)
class LIDCReadMessage:
    """One parsed LIDC XML file (one CT series read by up to four radiologists)."""

    path: Path
    series_uid: str
    study_uid: str | None
    n_readers: int
    nodules: list[ReaderNodule] = field(default_factory=list)
    non_nodules: list[NonNodule] = field(default_factory=list)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if _local(c.tag) == name]


def _text(elem: ET.Element, name: str, path: Path, required: bool = True) -> str | None:
    found = _children(elem, name)
    if not found or found[0].text is None or not found[0].text.strip():
        if required:
            raise AnnotationError(f"{path}: <{_local(elem.tag)}> lacks <{name}>", path)
        return None
    return found[0].text.strip()


def _number(elem: ET.Element, name: str, path: Path) -> float:
    text = _text(elem, name, path)
    try:
        return float(text)  # type: ignore[arg-type]
    except ValueError as exc:
        raise AnnotationError(f"{path}: <{name}> is {text!r}, expected a number", path) from exc


def _points(elems: list[ET.Element], path: Path) -> NDArray[np.float64]:
    pts = [(_number(e, "xCoord", path), _number(e, "yCoord", path)) for e in elems]
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def _ratings(elem: ET.Element, path: Path) -> dict[str, int]:
    ratings = {}
    for child in elem:
        if child.text and child.text.strip():
            try:
                ratings[_local(child.tag)] = int(float(child.text))
            except ValueError as exc:
                raise AnnotationError(
                    f"{path}: rating <{_local(child.tag)}> is {child.text!r}, expected an integer",
                    path,
                ) from exc
    return ratings


def _header_uids(root: ET.Element, path: Path) -> tuple[str, str | None]:
    headers = _children(root, "ResponseHeader")
    if not headers:
        raise AnnotationError(
            f"{path}: root <{_local(root.tag)}> has no <ResponseHeader>: not an LIDC read "
            "message (LidcReadMessage)",
            path,
        )
    for tag in SERIES_UID_TAGS:
        uid = _text(headers[0], tag, path, required=False)
        if uid:
            return uid, _text(headers[0], "StudyInstanceUID", path, required=False)
    raise AnnotationError(f"{path}: <ResponseHeader> has no SeriesInstanceUid", path)


def _parse_root(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise AnnotationError(f"cannot parse LIDC XML {path}: {exc}", path) from exc


def parse_lidc_xml(path: str | PathLike[str]) -> LIDCReadMessage:
    """Parse one LIDC-IDRI XML read message.

    Args:
        path: the XML file.

    Returns:
        The series/study UIDs and every reader's nodules (with pixel contours) and non-nodules.
        An roi without ``<inclusion>`` is taken as an inclusion (outline).

    Raises:
        AnnotationError: unparsable XML, a missing header UID, or a non-numeric coordinate,
            z position or rating.
    """
    path = Path(path)
    root = _parse_root(path)
    series_uid, study_uid = _header_uids(root, path)
    message = LIDCReadMessage(path, series_uid, study_uid, 0)
    sessions = _children(root, "readingSession")
    message.n_readers = len(sessions)
    for reader, session in enumerate(sessions):
        for elem in _children(session, "unblindedReadNodule"):
            chars = _children(elem, "characteristics")
            ratings = _ratings(chars[0], path) if chars and len(chars[0]) else None
            rois = [
                ROI(
                    z_mm=_number(r, "imageZposition", path),
                    sop_uid=_text(r, "imageSOP_UID", path) or "",
                    inclusion=(_text(r, "inclusion", path, required=False) or "TRUE").upper()
                    == "TRUE",
                    xy=_points(_children(r, "edgeMap"), path),
                )
                for r in _children(elem, "roi")
            ]
            nodule_id = _text(elem, "noduleID", path, required=False) or ""
            message.nodules.append(ReaderNodule(reader, nodule_id, ratings, rois, path))
        for elem in _children(session, "nonNodule"):
            message.non_nodules.append(
                NonNodule(
                    reader_index=reader,
                    non_nodule_id=_text(elem, "nonNoduleID", path, required=False) or "",
                    z_mm=_number(elem, "imageZposition", path),
                    sop_uid=_text(elem, "imageSOP_UID", path) or "",
                    xy=_points(_children(elem, "locus"), path),
                )
            )
    return message


def read_header_uids(path: str | PathLike[str]) -> tuple[str, str | None]:
    """The (SeriesInstanceUID, StudyInstanceUID or None) of an LIDC XML read message.

    Raises:
        AnnotationError: the file cannot be read or parsed, or is not a read message.
    """
    path = Path(path)
    return _header_uids(_parse_root(path), path)


def roi_slice_index(z_mm: float, sop_uid: str, volume: CTVolume, source: Path | None) -> int:
    """The slice k of an roi: by SOPInstanceUID, else the nearest z within half a slice step.

    Args:
        z_mm: the roi's ``imageZposition`` (world z in mm).
        sop_uid: the roi's ``imageSOP_UID``.
        volume: the series; ``metadata["sop_instance_uids"]`` is used when present, and slice
            z comes from the geometry (world z of voxel (k, 0, 0)).
        source: the XML file, named in the error.

    Raises:
        AnnotationError: neither the UID nor the z matches a slice.
    """
    uids = volume.metadata.get("sop_instance_uids") or []
    if sop_uid in uids:
        return uids.index(sop_uid)
    ks = np.arange(volume.shape[0], dtype=np.float64)
    slice_z = volume.voxel_to_world(np.stack([ks, 0 * ks, 0 * ks], axis=1))[:, 2]
    k = int(np.argmin(np.abs(slice_z - z_mm)))
    step_z = abs(slice_z[1] - slice_z[0]) if len(ks) > 1 else volume.spacing_mm[0]
    if abs(slice_z[k] - z_mm) <= step_z / 2:
        return k
    raise AnnotationError(
        f"{source}: roi on SOPInstanceUID {sop_uid} at z {z_mm} mm matches no slice of the volume",
        source,
    )


def _on_edges(points: NDArray[np.float64], poly: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Which (x, y) points lie on a closed polygon's edges (vertices included)."""
    a, b = poly, np.roll(poly, -1, axis=0)
    ab = b - a  # (E, 2)
    ap = points[:, None, :] - a[None]  # (P, E, 2)
    cross = ab[None, :, 0] * ap[..., 1] - ab[None, :, 1] * ap[..., 0]
    dot = np.einsum("pek,ek->pe", ap, ab)
    length2 = np.einsum("ek,ek->e", ab, ab)
    on_segment = (np.abs(cross) <= _ON_EDGE_TOL_PX) & (dot >= -_ON_EDGE_TOL_PX)
    on_segment &= dot <= length2 + _ON_EDGE_TOL_PX
    at_vertex = np.einsum("pek,pek->pe", ap, ap) <= _ON_EDGE_TOL_PX**2
    return (on_segment & (length2 > 0)).any(axis=1) | at_vertex.any(axis=1)


def roi_region(xy: NDArray[np.float64], shape_yx: tuple[int, int], include_contour: bool):
    """Boolean (rows, cols) mask of one contour given as (N, 2) pixel (x, y) vertices.

    Covers the pixel centres strictly inside the polygon, plus the centres lying on its edges
    (vertices included) when ``include_contour`` is True. Fewer than 3 points: edges only.
    """
    region = np.zeros(shape_yx, dtype=bool)
    if len(xy) == 0:
        return region
    lo = np.clip(np.floor(xy.min(axis=0)).astype(int), 0, None)
    hi = np.minimum(np.ceil(xy.max(axis=0)).astype(int), [shape_yx[1] - 1, shape_yx[0] - 1])
    if np.any(hi < lo):
        return region
    xs, ys = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
    centres = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    edge = _on_edges(centres, xy)
    inside = MplPath(xy).contains_points(centres) if len(xy) >= 3 else np.zeros(len(edge), bool)
    keep = (inside & ~edge) | (edge & include_contour)
    region[ys.ravel()[keep], xs.ravel()[keep]] = True
    return region


def rasterize_annotation(
    nodule: ReaderNodule, volume: CTVolume, include_contour_points: bool = False
) -> NDArray[np.bool_]:
    """One reader's nodule as a boolean (z, y, x) mask on the volume's grid.

    Each roi goes on the slice with its SOPInstanceUID (else the nearest z within half a slice
    step, see ``roi_slice_index``). On each slice the mask is the union of the inclusion
    polygons minus the union of the exclusion polygons, as in pylidc's ``boolean_mask``. A
    polygon covers the pixels whose centres are strictly inside it (matplotlib
    ``Path.contains_points``); centres lying exactly on its edges, the contour points included,
    are added only when ``include_contour_points`` is True (pylidc's default is False). A one-
    or two-point roi therefore covers nothing unless ``include_contour_points`` is True.

    Raises:
        AnnotationError: an roi that matches no slice (names the XML file and the UID).
    """
    shape = volume.shape
    include = np.zeros(shape, dtype=bool)
    exclude = np.zeros(shape, dtype=bool)
    for roi in nodule.rois:
        k = roi_slice_index(roi.z_mm, roi.sop_uid, volume, nodule.source_path)
        target = include if roi.inclusion else exclude
        target[k] |= roi_region(roi.xy, shape[1:], include_contour_points)
    return include & ~exclude
