"""DICOM SEG + SR of two nodules on a tiny CT series: read back with highdicom, dciodvfy."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from data_modules.io.dicom_series import read_dicom_series
from lungvlm.export import export_case
from lungvlm.export.dicom_seg import write_dicom_seg
from lungvlm.export.dicom_sr import write_dicom_sr
from tests.io_fixtures import write_ct_series
from tests.test_export_json import make_nodule, make_report

SHAPE = (8, 16, 16)
SPACING_MM = (2.0, 0.7, 0.8)  # write_ct_series default: one voxel is 2.0 * 0.7 * 0.8 = 1.12 mm3
VOXEL_MM3 = 1.12


def _label_map() -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2:4, 3:6, 3:6] = 1  # 2 x 3 x 3 = 18 voxels = 20.16 mm3
    labels[4:7, 10:14, 9:12] = 2  # 3 x 4 x 3 = 36 voxels = 40.32 mm3
    return labels


def _nodules():
    """Reports of the two boxes: in-plane extents 3 x 0.7 / 3 x 0.8 mm and 4 x 0.7 / 3 x 0.8 mm."""
    return [
        make_nodule(1, long_axis_mm=2.4, short_axis_mm=2.1, mean_diameter_mm=2.25,
                    volume_mm3=18 * VOXEL_MM3, attenuation="solid", lungrads_category="2",
                    malignancy_probability=0.05, solid_component_mm=None),
        make_nodule(2, long_axis_mm=2.8, short_axis_mm=2.4, mean_diameter_mm=2.6,
                    volume_mm3=36 * VOXEL_MM3, attenuation="ground_glass", side="left",
                    lobe="lower", lungrads_category="4A", malignancy_probability=0.375,
                    solid_component_mm=None),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """(volume, sorted source datasets) of a written and re-read tiny CT series."""
    folder = tmp_path_factory.mktemp("ct")
    write_ct_series(folder, np.full(SHAPE, 1000, dtype=np.int16), spacing_mm=SPACING_MM)
    volume = read_dicom_series(folder)
    return volume, [pydicom.dcmread(path) for path in volume.metadata["files"]]


@pytest.fixture(scope="module")
def written(ct, tmp_path_factory):
    volume, sources = ct
    out = tmp_path_factory.mktemp("dicom")
    seg_path = write_dicom_seg(sources, _label_map(), [1, 2], out / "seg.dcm")
    sr_path = write_dicom_sr(sources, pydicom.dcmread(seg_path), _nodules(), out / "sr.dcm")
    return seg_path, sr_path


def test_seg_reads_back_with_segments_and_frames(ct, written):
    volume, sources = ct
    seg = hd.seg.segread(written[0])
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert list(seg.segment_numbers) == [1, 2]
    assert [seg.get_segment_numbers(tracking_id=f"Nodule {k}") for k in (1, 2)] == [[1], [2]]
    assert sorted(seg.get_tracking_ids()) == [
        ("Nodule 1", hd.UID(seg.SegmentSequence[0].TrackingUID)),
        ("Nodule 2", hd.UID(seg.SegmentSequence[1].TrackingUID)),
    ]
    description = seg.get_segment_description(2)
    assert description.segmented_property_type == hd.sr.CodedConcept("27925004", "SCT", "Nodule")
    assert description.anatomic_regions[0].value == "39607008"
    assert description.algorithm_identification[0].AlgorithmName == "LungVLM"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    labels = seg.get_pixels_by_source_instance(
        volume.metadata["sop_instance_uids"], combine_segments=True
    )
    np.testing.assert_array_equal(labels, _label_map())
    assert int(seg.NumberOfFrames) == 5  # slices 2..6 hold a nodule; empty frames are omitted
    counts = [int(np.count_nonzero(labels == k)) for k in (1, 2)]
    assert counts == [18, 36]


def test_sr_reads_back_measurements_per_segment(written):
    seg = pydicom.dcmread(written[0])
    sr = hd.sr.srread(written[1])
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    for k, (group, nodule) in enumerate(zip(groups, _nodules(), strict=True)):
        assert group.tracking_identifier == f"Nodule {nodule.index}"
        assert group.tracking_uid == seg.SegmentSequence[k].TrackingUID
        reference = group.referenced_segment
        assert reference.referenced_segment_numbers == [k + 1]
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        values = {(m.name.value, m.unit.value): m.value for m in group.get_measurements()}
        assert values == pytest.approx(
            {
                ("103339001", "mm"): nodule.long_axis_mm,
                ("103340004", "mm"): nodule.short_axis_mm,
                ("RID50155", "mm"): nodule.mean_diameter_mm,
                ("118565006", "mm3"): nodule.volume_mm3,
                ("111047", "1"): nodule.malignancy_probability,
            }
        )
        evaluations = {q.name.value: q.value.value for q in group.get_qualitative_evaluations()}
        assert evaluations == {
            "C41144": {"solid": "RID50151", "ground_glass": "RID50153"}[nodule.attenuation],
            "RID50134": {"2": "RID50137", "4A": "RID50139"}[nodule.lungrads_category],
        }
        assert group.finding_sites[0].value.value == ("RID1303", "RID1338")[k]
    # Volumes agree with the SEG voxels: 18 and 36 voxels of 1.12 mm3.
    volumes = [m.value for g in groups for m in g.get_measurements() if m.name.value == "118565006"]
    assert volumes == pytest.approx([20.16, 40.32])


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not on PATH")
@pytest.mark.parametrize(("index", "iod"), [(0, "Segmentation"), (1, "Comprehensive3DSR")])
def test_dciodvfy_finds_no_error(written, index, iod):
    result = subprocess.run(
        ["dciodvfy", str(written[index])], capture_output=True, text=True, timeout=60
    )
    output = (result.stdout + result.stderr).splitlines()
    assert iod in [line.strip() for line in output]
    assert [line for line in output if line.startswith("Error")] == []


def test_seg_and_sr_reject_bad_input(ct, written, tmp_path):
    _, sources = ct
    with pytest.raises(ValueError, match=r"label_map has shape \(8, 16, 15\); expected"):
        write_dicom_seg(sources, _label_map()[:, :, :15], [1], tmp_path / "a.dcm")
    with pytest.raises(ValueError, match=r"nodule_labels \[3\] have no voxel in label_map"):
        write_dicom_seg(sources, _label_map(), [1, 3], tmp_path / "a.dcm")
    with pytest.raises(TypeError, match=r"label_map must hold integer labels, got dtype bool"):
        write_dicom_seg(sources, _label_map() > 0, [1], tmp_path / "a.dcm")
    seg = pydicom.dcmread(written[0])
    with pytest.raises(ValueError, match=r"nodule index 3 has no SEG segment with TrackingID"):
        write_dicom_sr(sources, seg, [make_nodule(3)], tmp_path / "b.dcm")
    with pytest.raises(
        ValueError, match=r"seg_dataset has SOPClassUID '1\.2\.840\.10008\.5\.1\.4\.1"
    ):
        write_dicom_sr(sources, sources[0], _nodules(), tmp_path / "b.dcm")
    assert "PatientName" not in sources[0]  # missing Type 2 attributes were filled on copies
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_export_case_with_dicom(ct, tmp_path):
    volume, sources = ct
    nodules = _nodules()
    report = make_report(nodules=nodules)
    written = export_case(tmp_path / "case", report, volume.array_hu, volume.spacing_mm,
                          _label_map(), source_datasets=sources)  # fmt: skip
    assert written.dicom_seg == tmp_path / "case" / "dicom" / "seg.dcm"
    sr = hd.sr.srread(written.dicom_sr)
    assert len(sr.content.get_volumetric_roi_measurement_groups()) == 2
    assert sorted(written.overlays) == [1, 2]
