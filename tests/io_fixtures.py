"""Writers of tiny synthetic CT DICOM series and LIDC XML files for the reader tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

AXIAL_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL_IOP = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def oblique_iop(angle_deg: float) -> tuple[float, ...]:
    """Axial orientation tilted by ``angle_deg`` about the x (left) axis."""
    a = np.deg2rad(angle_deg)
    return (1.0, 0.0, 0.0, 0.0, float(np.cos(a)), float(np.sin(a)))


@dataclass
class WrittenSeries:
    """What ``write_ct_series`` wrote, with every list in slice (k) order."""

    paths: list[Path]
    sop_uids: list[str]
    positions: list[np.ndarray]
    series_uid: str
    study_uid: str
    direction: np.ndarray  # columns: row cosines, column cosines, normal


def write_ct_series(
    folder: Path,
    stored: np.ndarray,
    spacing_mm: Sequence[float] = (2.0, 0.7, 0.8),
    origin: Sequence[float] = (-10.0, -20.0, 30.0),
    iop: Sequence[float] = AXIAL_IOP,
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    positions: Sequence[Sequence[float]] | None = None,
    instance_numbers: Sequence[int] | None = None,
    syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
    prefix: str = "",
) -> WrittenSeries:
    """Write ``stored`` (z, y, x) int16/uint16 values as single-frame CT files in ``folder``.

    Slice k sits at ``origin + k * spacing_z * normal`` unless ``positions`` gives each IPP.
    File names and InstanceNumbers are shuffled (seeded) so that neither follows slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = stored.shape[0]
    iop_arr = np.asarray(iop, dtype=np.float64)
    normal = np.cross(iop_arr[:3], iop_arr[3:])
    if positions is None:
        positions = [np.asarray(origin, float) + k * spacing_mm[0] * normal for k in range(n)]
    if instance_numbers is None:
        instance_numbers = [int(v) + 1 for v in rng.permutation(n)]
    names = [f"{prefix}{int(v):04d}.dcm" for v in rng.permutation(n)]
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    written = WrittenSeries(
        [], [], [], series_uid, study_uid, np.stack([iop_arr[:3], iop_arr[3:], normal], axis=1)
    )
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientID = "LIDC-IDRI-9999"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Manufacturer = "PhantomCorp"
        ds.ManufacturerModelName = "Tiny"
        ds.ConvolutionKernel = "B30f"
        ds.KVP = "120"
        ds.SliceThickness = str(spacing_mm[0])
        ds.PatientPosition = "HFS"
        ds.InstanceNumber = instance_numbers[k]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop_arr]
        ds.PixelSpacing = [str(spacing_mm[1]), str(spacing_mm[2])]
        ds.RescaleSlope = str(slope)
        ds.RescaleIntercept = str(intercept)
        ds.RescaleType = "HU"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        if syntax == RLELossless:
            ds.compress(RLELossless)
        elif syntax != ExplicitVRLittleEndian:  # fake an encoding pydicom cannot decode
            ds.PixelData = encapsulate([np.ascontiguousarray(stored[k]).tobytes()])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            ds.file_meta.TransferSyntaxUID = syntax
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        written.paths.append(path)
        written.sop_uids.append(str(ds.SOPInstanceUID))
        written.positions.append(np.asarray(positions[k], float))
    return written


def ramp_volume(shape: tuple[int, int, int], high: int = 4000, dtype=np.uint16) -> np.ndarray:
    """Stored values 0..high spread over a (z, y, x) volume, distinct per voxel position."""
    values = np.linspace(0, high, num=int(np.prod(shape)))
    return np.round(values).astype(dtype).reshape(shape)


def _roi_xml(z_mm: float, sop_uid: str, inclusion: bool, xy: Sequence[Sequence[int]]) -> str:
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in xy)
    return (
        f"<roi><imageZposition>{z_mm}</imageZposition><imageSOP_UID>{sop_uid}</imageSOP_UID>"
        f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>"
    )


def lidc_nodule_xml(nodule_id: str, rois: Sequence[tuple], malignancy: int | None = 3) -> str:
    """One ``unblindedReadNodule``; rois are (z_mm, sop_uid, inclusion, xy points)."""
    chars = ""
    if malignancy is not None:
        chars = (
            "<characteristics><subtlety>5</subtlety><internalStructure>1</internalStructure>"
            "<calcification>6</calcification><sphericity>4</sphericity><margin>4</margin>"
            "<lobulation>2</lobulation><spiculation>1</spiculation><texture>5</texture>"
            f"<malignancy>{malignancy}</malignancy></characteristics>"
        )
    body = "".join(_roi_xml(*roi) for roi in rois)
    return (
        f"<unblindedReadNodule><noduleID>{nodule_id}</noduleID>{chars}{body}</unblindedReadNodule>"
    )


def write_lidc_xml(
    path: Path,
    series_uid: str,
    study_uid: str,
    sessions: Sequence[str],
    root: str = "LidcReadMessage",
    namespace: bool = True,
    series_tag: str = "SeriesInstanceUid",
) -> Path:
    """Write an LIDC read message whose readingSession bodies are the given XML strings."""
    xmlns = ' xmlns="http://www.nih.gov"' if namespace else ""
    readers = "".join(
        f"<readingSession><annotationVersion>3.12</annotationVersion>"
        f"<servicingRadiologistID>anon{i}</servicingRadiologistID>{body}</readingSession>"
        for i, body in enumerate(sessions)
    )
    text = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}{xmlns} uid="1.2.3">'
        f"<ResponseHeader><Version>1.8.1</Version><{series_tag}>{series_uid}</{series_tag}>"
        f"<StudyInstanceUID>{study_uid}</StudyInstanceUID></ResponseHeader>{readers}</{root}>"
    )
    path.write_text(text, encoding="utf-8")
    return path


def dcmread_header(path: Path) -> Dataset:
    """The header of one written file (for tests that edit a file in place)."""
    return pydicom.dcmread(path)
