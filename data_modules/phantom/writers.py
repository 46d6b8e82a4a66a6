"""Write phantom cases in the real on-disk formats: DICOM series, LIDC-IDRI tree, LUNA16 tree.

So the real readers and the preprocessing run end to end on data whose truth is known.

Conventions of the simulated LIDC read (project choices, documented, not LIDC facts):

- Four readers. Two draw the phantom mask exactly; one draws it grown by one pixel (in-plane
  dilation) or shifted by one pixel; one draws it shrunk by one pixel (in-plane erosion) or
  exactly. With the 50 % consensus (>= 2 of 4 readers, ``reference/lidc-idri.md``) no voxel
  outside the mask gets two votes and every voxel inside gets two, so the consensus equals the
  phantom mask: the readers differ plausibly yet the truth is recoverable exactly.
- Contours are traced per slice with ``skimage.measure.find_contours`` and moved to the
  integer pixels just outside the region, so pylidc-style rasterisation (pixel centres strictly
  inside, contour points excluded) gives the region back.
- Ratings: each concept is the phantom rating plus reader noise: the three readers that may
  draw non-empty contours get a permutation of (-1, 0, +1), the shrinking reader 0, all clipped
  to the scale. The median (and the mean, away from the scale ends) is the phantom rating.
- Malignancy rating (the phantom has a label, not a rating): malignant -> 4 (5 when the latent
  score >= 0.75), benign -> 2 (1 when the score < 0.25), unknown -> 3; so the "mean_gt3" rule
  gives back the phantom label.
- Nodules with a long axis < 3 mm are "nodule < 3 mm" marks: one point, no ratings.
- LUNA16 ``diameter_mm`` is the phantom's Lung-RADS mean diameter; every nodule >= 3 mm is
  listed (all four simulated readers accept it).
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage
from skimage.measure import find_contours

from data_modules.phantom.generator import PhantomCase
from lungvlm.labels import CONCEPT_NAMES, CONCEPT_SCALE_MAX

LIDC_NAMESPACE = "http://www.nih.gov"
LIDC_NAMES = {"internal_structure": "internalStructure"}
SMALL_NODULE_MM = 3.0
HU_INTERCEPT = -1024.0


def phantom_uid(case: PhantomCase, what: str) -> str:
    """Deterministic UID of ``what`` for a case (rewriting a case gives the same UIDs)."""
    return generate_uid(
        entropy_srcs=[f"lungvlm-phantom-{case.seed}-{case.months_since_baseline}-{what}"]
    )


def default_patient_id(case: PhantomCase) -> str:
    """``PHANTOM-<seed>``: a follow-up scan of a case shares its patient."""
    return f"PHANTOM-{case.seed:04d}"


def write_dicom_series(
    case: PhantomCase,
    folder: str | PathLike[str],
    patient_id: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> dict[str, Any]:
    """Write the case as an axial CT series, one file ``1-NNN.dcm`` per slice.

    Stored values are uint16 ``HU + 1024`` (RescaleSlope 1, RescaleIntercept -1024; HU below
    -1024 are clipped). Geometry: ImagePositionPatient of slice k is the world position of
    voxel (k, 0, 0), ImageOrientationPatient the identity (1\\0\\0\\0\\1\\0), PixelSpacing
    row\\column. Scanner tags come from the case's profile; SliceThickness is the larger of the
    profile thickness and the grid's slice step (a slice is never thinner than its spacing).

    Returns:
        ``{"files", "sop_uids", "z_positions_mm", "series_uid", "study_uid", "patient_id"}``,
        lists in slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    patient_id = patient_id or default_patient_id(case)
    study_uid = study_uid or phantom_uid(case, "study")
    series_uid = series_uid or phantom_uid(case, "series")
    frame_uid = phantom_uid(case, "frame")
    stored = np.clip(np.rint(case.image_hu) - HU_INTERCEPT, 0, 65535).astype(np.uint16)
    dz, dy, dx = case.spacing_mm
    profile = case.profile
    out: dict[str, Any] = {"files": [], "sop_uids": [], "z_positions_mm": []}
    for k in range(stored.shape[0]):
        sop_uid = phantom_uid(case, f"sop-{k}")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality, ds.BodyPartExamined, ds.PatientPosition = "CT", "CHEST", "HFS"
        ds.PatientID, ds.PatientName = patient_id, patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID, ds.SeriesNumber, ds.InstanceNumber = frame_uid, 1, k + 1
        ds.StudyDate = ds.SeriesDate = "20000101"
        ds.Manufacturer, ds.ManufacturerModelName = profile.manufacturer, profile.model_name
        ds.ConvolutionKernel, ds.KVP = profile.convolution_kernel, f"{profile.kvp:g}"
        ds.Exposure = int(round(profile.exposure_mas))
        ds.SliceThickness = f"{max(profile.slice_thickness_mm, dz):.4g}"
        position = [float(v) for v in case.grid.index_to_world(np.array([k, 0.0, 0.0]))]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = f"{position[2]:.6f}"
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, int(HU_INTERCEPT), "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = stored[k].tobytes()
        path = folder / f"1-{k + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out["files"].append(path)
        out["sop_uids"].append(sop_uid)
        out["z_positions_mm"].append(position[2])
    out.update(series_uid=series_uid, study_uid=study_uid, patient_id=patient_id)
    return out


def outer_contours(mask_yx: NDArray[np.bool_]) -> list[NDArray[np.int64]]:
    """Closed contours (N, 2) of integer pixel (x, y) points just outside each region of a slice.

    Holes are filled first; each 4-connected region gives one contour. A pixel centre strictly
    inside a contour polygon belongs to the region, the contour pixels do not.
    """
    padded = np.pad(ndimage.binary_fill_holes(mask_yx), 1).astype(np.uint8)
    contours = []
    for line in find_contours(padded.astype(np.float64), 0.5):
        points: list[tuple[int, int]] = []
        for r, c in line:
            if abs(r - round(r)) < 1e-6:  # vertex on a horizontal pixel edge: neighbours in x
                pair = ((int(round(r)), int(np.floor(c))), (int(round(r)), int(np.ceil(c))))
            else:
                pair = ((int(np.floor(r)), int(round(c))), (int(np.ceil(r)), int(round(c))))
            outside = pair[0] if padded[pair[0]] == 0 else pair[1]
            if not points or points[-1] != outside:
                points.append(outside)
        if len(points) > 1 and points[0] == points[-1]:
            points.pop()
        contours.append(np.array([(c - 1, r - 1) for r, c in points], dtype=np.int64))
    return contours


def _slicewise(op, mask: NDArray[np.bool_], **kwargs) -> NDArray[np.bool_]:
    return np.stack([op(m, **kwargs) if m.any() else m for m in mask])


def reader_masks(mask: NDArray[np.bool_], rng: np.random.Generator) -> list[NDArray[np.bool_]]:
    """Four readers' versions of a (z, y, x) mask; the last one is the shrinking reader."""
    cross = ndimage.generate_binary_structure(2, 1)
    if rng.random() < 0.5:
        grown = _slicewise(ndimage.binary_dilation, mask, structure=cross)
    else:
        axis, step = int(rng.integers(1, 3)), int(rng.choice([-1, 1]))
        grown = np.roll(mask, step, axis=axis)
    shrunk = (
        _slicewise(ndimage.binary_erosion, mask, structure=cross) if rng.random() < 0.7 else mask
    )
    return [mask, mask.copy(), grown, shrunk]


def malignancy_rating(case: PhantomCase, index: int) -> int:
    """The phantom's malignancy as a 1-5 rating (see the module docstring)."""
    malignant = case.nodules[index].malignant
    score = case.specs[index].malignancy_score
    score = 0.5 if score is None else float(score)
    if malignant is None:
        return 3
    return (5 if score >= 0.75 else 4) if malignant else (1 if score < 0.25 else 2)


def reader_ratings(case: PhantomCase, index: int, rng: np.random.Generator) -> list[dict[str, int]]:
    """Four readers' LIDC characteristics of one nodule (reader order as in ``reader_masks``)."""
    truth = {
        LIDC_NAMES.get(n, n): int(case.nodules[index].characteristics[n]) for n in CONCEPT_NAMES
    }
    truth["malignancy"] = malignancy_rating(case, index)
    top = {LIDC_NAMES.get(n, n): CONCEPT_SCALE_MAX[n] for n in CONCEPT_NAMES} | {"malignancy": 5}
    readers: list[dict[str, int]] = [{}, {}, {}, {}]
    for name, value in truth.items():
        offsets = [*rng.permutation([-1, 0, 1]).tolist(), 0]
        for reader, offset in zip(readers, offsets, strict=True):
            reader[name] = int(np.clip(value + offset, 1, top[name]))
    return readers


def _sub(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
    elem = ET.SubElement(parent, f"{{{LIDC_NAMESPACE}}}{tag}")
    if text is not None:
        elem.text = str(text)
    return elem


def _roi(parent: ET.Element, series: dict[str, Any], k: int, points: NDArray[np.int64]) -> None:
    roi = _sub(parent, "roi")
    _sub(roi, "imageZposition", f"{series['z_positions_mm'][k]:.6f}")
    _sub(roi, "imageSOP_UID", series["sop_uids"][k])
    _sub(roi, "inclusion", "TRUE")
    for x, y in points:
        edge = _sub(roi, "edgeMap")
        _sub(edge, "xCoord", int(x))
        _sub(edge, "yCoord", int(y))


def lidc_xml(case: PhantomCase, series: dict[str, Any], seed: int = 0) -> ET.ElementTree:
    """The LIDC read message (four reading sessions) of a case written by ``write_dicom_series``."""
    ET.register_namespace("", LIDC_NAMESPACE)
    rng = np.random.default_rng([case.seed, seed, 17])
    root = ET.Element(f"{{{LIDC_NAMESPACE}}}LidcReadMessage", {"uid": phantom_uid(case, "xml")})
    header = _sub(root, "ResponseHeader")
    for tag, text in (("Version", "1.8.1"), ("MessageId", case.seed), ("DateRequest", "2000-01-01"),
                      ("TimeRequest", "00:00:00"), ("RequestingSite", "removed"),
                      ("ServicingSite", "removed"), ("TaskDescription", "Second unblinded read"),
                      ("CtImageFile", "removed"), ("SeriesInstanceUid", series["series_uid"]),
                      ("DateService", "2000-01-01"), ("TimeService", "00:00:00"),
                      ("ResponseDescription", "1 - Reading complete"),
                      ("StudyInstanceUID", series["study_uid"])):  # fmt: skip
        _sub(header, tag, text)
    order = rng.permutation(4)  # reader order is not stable across files
    sessions = []
    for r in range(4):
        session = _sub(root, "readingSession")
        _sub(session, "annotationVersion", "3.12")
        _sub(session, "servicingRadiologistID", f"anon-{order[r]}")
        sessions.append(session)
    for index, nodule in enumerate(case.nodules):
        mask = case.nodule_labels == index + 1
        if not mask.any():
            continue
        masks, ratings = reader_masks(mask, rng), reader_ratings(case, index, rng)
        small = nodule.long_axis_mm < SMALL_NODULE_MM
        for r in range(4):
            reader_mask = masks[order[r]]
            if not reader_mask.any():
                continue  # this reader's shrunken outline vanished: no mark
            elem = _sub(sessions[r], "unblindedReadNodule")
            _sub(elem, "noduleID", f"Nodule {index + 1:03d}-{order[r]}")
            if small:  # "nodule < 3 mm": centroid only, no ratings
                cz, cy, cx = np.rint(nodule.centroid_voxel).astype(int)
                _roi(elem, series, int(cz), np.array([[cx, cy]]))
                continue
            chars = _sub(elem, "characteristics")
            for name, value in ratings[order[r]].items():
                _sub(chars, name, value)
            for k in np.flatnonzero(reader_mask.any(axis=(1, 2))):
                for points in outer_contours(reader_mask[k]):
                    _roi(elem, series, int(k), points)
    lung = np.argwhere(case.lung_mask > 0)
    if len(lung):  # one reader marks a "non-nodule >= 3 mm" somewhere in the lung
        k, y, x = lung[int(rng.integers(len(lung)))]
        non = _sub(sessions[0], "nonNodule")
        _sub(non, "nonNoduleID", "Non-nodule 001")
        _sub(non, "imageZposition", f"{series['z_positions_mm'][k]:.6f}")
        _sub(non, "imageSOP_UID", series["sop_uids"][k])
        locus = _sub(non, "locus")
        _sub(locus, "xCoord", int(x))
        _sub(locus, "yCoord", int(y))
    return ET.ElementTree(root)


def write_lidc_tree(
    case: PhantomCase, root: str | PathLike[str], patient_id: str | None = None
) -> Path:
    """Write ``root/<patient>/<study>/<series>/1-NNN.dcm`` plus the series' ``NNN.xml``.

    Returns:
        The series folder.
    """
    patient_id = patient_id or default_patient_id(case)
    study, series_uid = phantom_uid(case, "study"), phantom_uid(case, "series")
    folder = (
        Path(root)
        / patient_id
        / f"01-01-2000-{study[-5:]}"
        / f"{1000 + case.seed}-{series_uid[-5:]}"
    )
    series = write_dicom_series(case, folder, patient_id, study, series_uid)
    tree = lidc_xml(case, series)
    tmp = folder / f".{case.seed:03d}.xml.tmp"
    tree.write(tmp, encoding="UTF-8", xml_declaration=True)
    os.replace(tmp, folder / f"{case.seed % 1000:03d}.xml")
    return folder


def _append_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """Add rows to a CSV (created with ``header``), rewriting it atomically."""
    old = []
    if path.is_file():
        with open(path, newline="") as fh:
            old = list(csv.reader(fh))[1:]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(old + [[str(v) for v in row] for row in rows])
    os.replace(tmp, path)


def write_luna16_tree(
    case: PhantomCase, root: str | PathLike[str], subset: int = 0, n_negatives: int = 20
) -> Path:
    """Write ``root/subset<k>/<uid>.mhd/.raw`` (int16 HU) and add the case to the CSVs.

    ``annotations.csv`` gets every nodule >= 3 mm (world centroid, mean diameter);
    ``candidates_V2.csv`` gets those centres as class 1 plus ``n_negatives`` random lung
    points farther than 10 mm from every nodule as class 0.

    Returns:
        The ``.mhd`` path.
    """
    if not 0 <= subset <= 9:
        raise ValueError(f"subset must be 0..9 (LUNA16 subset0..subset9), got {subset}")
    root = Path(root)
    folder = root / f"subset{subset}"
    folder.mkdir(parents=True, exist_ok=True)
    uid = phantom_uid(case, "series")
    image = sitk.GetImageFromArray(np.clip(np.rint(case.image_hu), -32768, 32767).astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in case.spacing_mm[::-1]))
    image.SetOrigin(tuple(float(v) for v in case.origin_lps_mm))
    mhd = folder / f"{uid}.mhd"
    sitk.WriteImage(image, str(mhd), useCompression=False)
    nodules = [n for n in case.nodules if n.long_axis_mm >= SMALL_NODULE_MM]
    _append_csv(
        root / "annotations.csv",
        ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
        [[uid, *n.centroid_lps_mm, n.mean_diameter_mm] for n in nodules],
    )
    rng = np.random.default_rng([case.seed, 23])
    lung = np.argwhere(case.lung_mask > 0)
    centres = np.array([n.centroid_lps_mm for n in nodules]).reshape(-1, 3)
    negatives = []
    for _ in range(50 * n_negatives):
        if len(negatives) == n_negatives or not len(lung):
            break
        point = case.grid.index_to_world(lung[int(rng.integers(len(lung)))].astype(np.float64))
        if not len(centres) or np.linalg.norm(centres - point, axis=1).min() > 10.0:
            negatives.append(point)
    _append_csv(
        root / "candidates_V2.csv",
        ["seriesuid", "coordX", "coordY", "coordZ", "class"],
        [[uid, *c, 1] for c in centres.tolist()] + [[uid, *p.tolist(), 0] for p in negatives],
    )
    return mhd
