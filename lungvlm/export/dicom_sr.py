"""DICOM Comprehensive 3D SR (TID 1500 Measurement Report) of the nodules in a LungVLM SEG.

One TID 1411 Volumetric ROI group per nodule references the nodule's SEG segment and carries:

=========================  ==================================  =========================
Measurement                Concept name                        Unit (UCUM)
=========================  ==================================  =========================
long axis                  SCT 103339001 "Long axis"           mm
short axis                 SCT 103340004 "Short axis"          mm
mean diameter              RADLEX RID50155 "Average diameter"  mm
volume                     SCT 118565006 "Volume"              mm3
malignancy probability     DCM 111047 "Probability of cancer"  1 ("no units", 0 to 1)
=========================  ==================================  =========================

Codes come from ``reference/report-language.md`` and ``reference/dicom-ct.md`` (lidc2dicom).
Choices made here, documented as project conventions: the mean diameter uses RadLex RID50155
(highdicom accepts the RADLEX scheme, so SCT 81827009 "Diameter" is not needed); malignancy
probability is a dimensionless measurement in [0, 1] (UCUM "1"), the same number as
``report.json``. Qualitative evaluations: attenuation as lidc2dicom codes LIDC texture
(name NCIt C41144 "Texture"; values RID50151 solid, RID50152 part-solid, RID50153 non-solid
pulmonary nodule) and the Lung-RADS category (name RID50134; values RID50135 to RID50141 for
0, 1, 2, 3, 4A, 4B, 4X). The reference lists those RadLex codes without their display names,
so the code meanings written here are our wording. Finding type SCT 27925004 "Nodule"; finding
site the lobe (RID1303 ... RID1338), else the lung side (RID1302/RID1326), else SCT 39607008
"Lung". The observer is a device, "LungVLM", with a UID derived from the name and version.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from lungvlm import __version__
from lungvlm.export.dicom_seg import (
    ALGORITHM_NAME,
    MANUFACTURER,
    SEGMENTATION_STORAGE_UID,
    checked_sources,
    dataset_bytes,
    nodule_tracking_id,
)
from lungvlm.export.schema import NoduleReport
from lungvlm.export.writer import write_bytes_atomic

MEAN_DIAMETER = Code("RID50155", "RADLEX", "Average diameter")
MALIGNANCY_PROBABILITY = codes.DCM.ProbabilityOfCancer
ATTENUATION = Code("C41144", "NCIt", "Texture")
ATTENUATION_VALUES: dict[str, Code] = {
    "solid": Code("RID50151", "RADLEX", "solid pulmonary nodule"),
    "part_solid": Code("RID50152", "RADLEX", "part-solid pulmonary nodule"),
    "ground_glass": Code("RID50153", "RADLEX", "non-solid pulmonary nodule"),
}
LUNGRADS_ASSESSMENT = Code("RID50134", "RADLEX", "Lung-RADS assessment")
LUNGRADS_VALUES: dict[str, Code] = {
    category: Code(f"RID{50135 + i}", "RADLEX", f"Lung-RADS category {category}")
    for i, category in enumerate(("0", "1", "2", "3", "4A", "4B", "4X"))
}
FINDING_SITES: dict[tuple[str | None, str | None], Code] = {
    ("right", "upper"): Code("RID1303", "RADLEX", "right upper lobe"),
    ("right", "middle"): Code("RID1310", "RADLEX", "right middle lobe"),
    ("right", "lower"): Code("RID1315", "RADLEX", "right lower lobe"),
    ("left", "upper"): Code("RID1327", "RADLEX", "left upper lobe"),
    ("left", "lower"): Code("RID1338", "RADLEX", "left lower lobe"),
    ("right", None): Code("RID1302", "RADLEX", "right lung"),
    ("left", None): Code("RID1326", "RADLEX", "left lung"),
}


def _finding_site(nodule: NoduleReport) -> Code:
    site = FINDING_SITES.get((nodule.side, nodule.lobe)) or FINDING_SITES.get((nodule.side, None))
    return site or codes.SCT.Lung


def _segment_lookup(seg_dataset: Dataset) -> dict[str, tuple[int, str]]:
    """TrackingID -> (SegmentNumber, TrackingUID) of each segment of a SEG."""
    if str(seg_dataset.get("SOPClassUID", "")) != SEGMENTATION_STORAGE_UID:
        raise ValueError(
            f"seg_dataset has SOPClassUID {seg_dataset.get('SOPClassUID')!r}; expected "
            f"Segmentation Storage {SEGMENTATION_STORAGE_UID}"
        )
    return {
        str(item.get("TrackingID", item.SegmentLabel)): (
            int(item.SegmentNumber),
            str(item.get("TrackingUID", "")) or generate_uid(),
        )
        for item in seg_dataset.SegmentSequence
    }


def _nodule_group(
    nodule: NoduleReport, seg_dataset: Dataset, segment_number: int, tracking_uid: str
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    mm, mm3 = codes.UCUM.Millimeter, codes.UCUM.CubicMillimeter
    measurements = [
        hd.sr.Measurement(name=codes.SCT.LongAxis, value=nodule.long_axis_mm, unit=mm),
        hd.sr.Measurement(name=codes.SCT.ShortAxis, value=nodule.short_axis_mm, unit=mm),
        hd.sr.Measurement(name=MEAN_DIAMETER, value=nodule.mean_diameter_mm, unit=mm),
        hd.sr.Measurement(name=codes.SCT.Volume, value=nodule.volume_mm3, unit=mm3),
        hd.sr.Measurement(
            name=MALIGNANCY_PROBABILITY,
            value=nodule.malignancy_probability,
            unit=codes.UCUM.NoUnits,
        ),
    ]
    evaluations = [
        hd.sr.QualitativeEvaluation(ATTENUATION, ATTENUATION_VALUES[nodule.attenuation]),
        hd.sr.QualitativeEvaluation(LUNGRADS_ASSESSMENT, LUNGRADS_VALUES[nodule.lungrads_category]),
    ]
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=SEGMENTATION_STORAGE_UID,
        sop_instance_uid=str(seg_dataset.SOPInstanceUID),
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(
            str(seg_dataset.ReferencedSeriesSequence[0].SeriesInstanceUID)
        ),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier=nodule_tracking_id(nodule.index)
        ),
        referenced_segment=segment,
        finding_type=codes.SCT.Nodule,
        finding_sites=[hd.sr.FindingSite(_finding_site(nodule))],
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def build_dicom_sr(
    source_datasets: Sequence[Dataset],
    seg_dataset: Dataset,
    nodules: Sequence[NoduleReport],
    series_number: int = 901,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    software_version: str = __version__,
) -> hd.sr.Comprehensive3DSR:
    """Build the SR instance (in memory) of ``nodules``, each matched to its SEG segment.

    A nodule with ``index`` i is matched to the segment whose TrackingID is
    ``nodule_tracking_id(i)``, i.e. the SEG must have been built with label values equal to
    the nodule indices (``build_dicom_seg(..., nodule_labels=[n.index for n in nodules])``).
    The SR reuses that segment's TrackingUID, so SEG and SR identify the nodule alike.

    Args:
        source_datasets: CT slices of the series (evidence), any order.
        seg_dataset: the SEG written by :mod:`lungvlm.export.dicom_seg` (a pydicom Dataset).
        nodules: the nodules to report, in report order.
        series_number: SeriesNumber of the SR series.
        instance_number: InstanceNumber of the SR.
        series_instance_uid: new series UID; generated when None.
        sop_instance_uid: SOP instance UID; generated when None.
        software_version: device observer model version and SoftwareVersions.

    Raises:
        TypeError: if a nodule is not a :class:`NoduleReport`.
        ValueError: if ``seg_dataset`` is not a SEG or lacks a nodule's segment.
    """
    sources = checked_sources(source_datasets)
    if not all(isinstance(n, NoduleReport) for n in nodules):
        raise TypeError("nodules must be a sequence of NoduleReport")
    segments = _segment_lookup(seg_dataset)
    groups = []
    for nodule in nodules:
        key = nodule_tracking_id(nodule.index)
        if key not in segments:
            raise ValueError(
                f"nodule index {nodule.index} has no SEG segment with TrackingID {key!r}; "
                f"segments are {sorted(segments)}"
            )
        groups.append(_nodule_group(nodule, seg_dataset, *segments[key]))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[ALGORITHM_NAME, software_version]),
            name=ALGORITHM_NAME,
            manufacturer_name=MANUFACTURER,
            model_name=f"{ALGORITHM_NAME} {software_version}",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg_dataset],
        content=report,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        series_description="LungVLM nodule measurements",
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=software_version,
    )


def write_dicom_sr(
    source_datasets: Sequence[Dataset],
    seg_dataset: Dataset,
    nodules: Sequence[NoduleReport],
    path: str | PathLike[str],
    **options,
) -> Path:
    """Build the SR with :func:`build_dicom_sr` (``options`` are its keyword arguments) and
    write it to ``path`` atomically.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    sr = build_dicom_sr(source_datasets, seg_dataset, nodules, **options)
    return write_bytes_atomic(path, dataset_bytes(sr))
