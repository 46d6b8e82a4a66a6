"""DICOM Segmentation (SEG) of the detected nodules, one BINARY segment per nodule.

Coding follows ``reference/dicom-ct.md`` (the QIICR LIDC re-encoding): segmented property
category SCT 49755003 "Morphologically Abnormal Structure", type SCT 27925004 "Nodule",
anatomic region SCT 39607008 "Lung"; algorithm type AUTOMATIC with an Algorithm Identification
naming "LungVLM" (family DCM 123110 "Artificial Intelligence") and the package version.

Project conventions: segment ``k`` (1-based) holds ``label_map == nodule_labels[k - 1]``; its
SegmentLabel and TrackingID are ``"Nodule {label}"`` (see :func:`nodule_tracking_id`) and its
TrackingUID is fresh, so :mod:`lungvlm.export.dicom_sr` can find a nodule's segment and reuse
its UID. Frame ``i`` of the label map is matched to ``source_datasets[i]`` pixel for pixel,
so the datasets must be in the volume's z order (``read_dicom_series`` metadata ``files``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import highdicom as hd
import numpy as np
from numpy.typing import ArrayLike
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from lungvlm import __version__
from lungvlm.export.writer import write_bytes_atomic

SEGMENTATION_STORAGE_UID = "1.2.840.10008.5.1.4.1.1.66.4"
ALGORITHM_NAME = "LungVLM"
MANUFACTURER = "LungVLM project"


def nodule_tracking_id(label: int) -> str:
    """The SegmentLabel / TrackingID of the nodule with label-map value ``label``."""
    return f"Nodule {int(label)}"


#: Type 2 Patient/General Study attributes that highdicom copies from the source images.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def checked_sources(source_datasets: Sequence[Dataset]) -> list[Dataset]:
    """Validate the CT slices of one series and fill absent Type 2 patient/study attributes.

    Type 2 attributes may be empty but must be present; phantom or anonymised series often
    omit them and highdicom would fail while copying them. Such slices are replaced by shallow
    copies with the attribute set empty; the caller's datasets are not modified.

    Raises:
        TypeError: if ``source_datasets`` is empty or holds a non-Dataset.
        ValueError: if the slices belong to several series.
    """
    sources = list(source_datasets)
    if not sources or not all(isinstance(ds, Dataset) for ds in sources):
        raise TypeError("source_datasets must be a non-empty sequence of pydicom Datasets")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in sources}
    if len(series) != 1:
        raise ValueError(f"source_datasets span {len(series)} series {sorted(series)}; expected 1")
    completed = []
    for ds in sources:
        missing = [k for k in _TYPE2_COPIED if k not in ds]
        if missing:
            original = ds
            ds = Dataset(dict(original.items()))  # new element dict; elements are shared
            if hasattr(original, "file_meta"):
                ds.file_meta = original.file_meta
            for keyword in missing:
                setattr(ds, keyword, "")
        completed.append(ds)
    return completed


def _check_labels(label_map: ArrayLike, nodule_labels: Sequence[int], sources: list[Dataset]):
    labels = np.asarray(label_map)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"label_map must hold integer labels, got dtype {labels.dtype}")
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if labels.shape != expected:
        raise ValueError(
            f"label_map has shape {labels.shape}; expected (slices, Rows, Columns) = {expected}"
        )
    values = [int(v) for v in nodule_labels]
    if not values or len(set(values)) != len(values) or min(values) < 1:
        raise ValueError(f"nodule_labels={values} must be unique integers >= 1, at least one")
    empty = [v for v in values if not np.any(labels == v)]
    if empty:
        raise ValueError(f"nodule_labels {empty} have no voxel in label_map")
    return labels, values


def build_dicom_seg(
    source_datasets: Sequence[Dataset],
    label_map: ArrayLike,
    nodule_labels: Sequence[int],
    series_number: int = 900,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    software_version: str = __version__,
    device_serial_number: str = "0",
    series_description: str = "LungVLM nodule segmentation",
) -> hd.seg.Segmentation:
    """Build the SEG instance (in memory) for the nodules of ``label_map``.

    Args:
        source_datasets: CT slices of one series, sorted in the volume's z order.
        label_map: (z, y, x) integer labels, same grid as the source slices; 0 is background.
        nodule_labels: label values to export, one segment each, in segment order.
        series_number: SeriesNumber of the new SEG series.
        instance_number: InstanceNumber of the SEG.
        series_instance_uid: new series UID; generated when None.
        sop_instance_uid: SOP instance UID; generated when None.
        software_version: written to SoftwareVersions and the algorithm version.
        device_serial_number: DeviceSerialNumber (Type 1 in the Enhanced Equipment module).
        series_description: SeriesDescription.

    Raises:
        TypeError: on non-Dataset sources or a non-integer ``label_map``.
        ValueError: on a grid mismatch, several series, bad or absent ``nodule_labels``.
    """
    sources = checked_sources(source_datasets)
    labels, values = _check_labels(label_map, nodule_labels, sources)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.DCM.ArtificialIntelligence, version=software_version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=nodule_tracking_id(value),
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=generate_uid(),
            tracking_id=nodule_tracking_id(value),
            anatomic_regions=[codes.SCT.Lung],
        )
        for number, value in enumerate(values, start=1)
    ]
    # (frames, rows, columns, segments): segment k on the last axis is label nodule_labels[k].
    pixel_array = np.stack([labels == v for v in values], axis=-1).astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=software_version,
        device_serial_number=device_serial_number,
        series_description=series_description,
        content_label="NODULES",
        content_description="Automatic nodule segmentation",
    )


def dataset_bytes(dataset: Dataset) -> bytes:
    """A DICOM Part 10 file image of ``dataset`` (preamble, file meta, data set)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_dicom_seg(
    source_datasets: Sequence[Dataset],
    label_map: ArrayLike,
    nodule_labels: Sequence[int],
    path: str | PathLike[str],
    **options,
) -> Path:
    """Build the SEG with :func:`build_dicom_seg` (``options`` are its keyword arguments)
    and write it to ``path`` atomically.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    seg = build_dicom_seg(source_datasets, label_map, nodule_labels, **options)
    return write_bytes_atomic(path, dataset_bytes(seg))
