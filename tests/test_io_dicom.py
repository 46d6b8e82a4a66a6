"""DICOM series reader: geometry and HU against SimpleITK/GDCM, and every malformed input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import MPEG2MPML, RLELossless, generate_uid

from data_modules.io import (
    CTVolume,
    DataError,
    DicomReadError,
    MultipleSeriesError,
    NoDicomError,
    NotCTError,
    SliceGeometryError,
    UnsupportedTransferSyntaxError,
    list_series,
    read_dicom_series,
)
from tests.io_fixtures import (
    AXIAL_IOP,
    CORONAL_IOP,
    oblique_iop,
    ramp_volume,
    write_ct_series,
)


def _sitk_read(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("iop", [AXIAL_IOP, CORONAL_IOP, oblique_iop(25.0)])
def test_volume_and_geometry_match_simpleitk(tmp_path, iop):
    stored = ramp_volume((6, 16, 20))
    written = write_ct_series(tmp_path, stored, spacing_mm=(1.5, 0.7, 0.8), iop=iop, seed=3)
    # file names and InstanceNumbers are shuffled, so neither can give the slice order
    assert [p.name for p in written.paths] != sorted(p.name for p in written.paths)
    vol = read_dicom_series(tmp_path)
    image = _sitk_read(tmp_path)
    np.testing.assert_array_equal(vol.array_hu, sitk.GetArrayFromImage(image).astype(np.float32))
    np.testing.assert_allclose(vol.origin_lps_mm, image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(vol.spacing_mm, image.GetSpacing()[::-1], atol=1e-5)
    np.testing.assert_allclose(vol.direction.reshape(-1), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(vol.direction, written.direction, atol=1e-6)
    zyx = np.array([4.0, 7.5, 13.0])
    np.testing.assert_allclose(
        vol.voxel_to_world(zyx),
        image.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()),
        atol=1e-5,
    )
    np.testing.assert_allclose(vol.world_to_voxel(vol.voxel_to_world(zyx)), zyx, atol=1e-9)
    assert vol.metadata["sop_instance_uids"] == written.sop_uids


def test_affine_maps_zyx_index_to_lps(tmp_path):
    write_ct_series(
        tmp_path,
        ramp_volume((3, 16, 16)),
        spacing_mm=(2.0, 0.5, 0.25),
        origin=(-10.0, -20.0, 30.0),
        iop=CORONAL_IOP,
    )
    vol = read_dicom_series(tmp_path)
    # coronal: x index -> +x (L), y index (rows) -> -z (foot), z index (slices) -> +y (P)
    np.testing.assert_allclose(
        vol.affine_lps() @ [2, 4, 8, 1], [-10 + 8 * 0.25, -20 + 2 * 2.0, 30 - 4 * 0.5, 1], atol=1e-6
    )
    round_trip = CTVolume.from_sitk(vol.to_sitk())
    np.testing.assert_allclose(round_trip.affine_lps(), vol.affine_lps(), atol=1e-9)
    np.testing.assert_array_equal(round_trip.array_hu, vol.array_hu)


def test_uint16_stored_values_rescaled_without_overflow(tmp_path):
    stored = ramp_volume((4, 16, 16), high=4000, dtype=np.uint16)
    write_ct_series(tmp_path, stored, slope=1.0, intercept=-1024.0)
    vol = read_dicom_series(tmp_path)
    assert vol.array_hu.dtype == np.float32
    assert vol.array_hu.min() == -1024.0 and vol.array_hu.max() == 4000.0 - 1024.0
    np.testing.assert_array_equal(vol.array_hu, stored.astype(np.float32) - 1024.0)


def test_int16_stored_values_with_slope(tmp_path):
    stored = np.full((3, 16, 16), -500, dtype=np.int16)
    stored[1, 2, 3] = 700
    write_ct_series(tmp_path, stored, slope=2.0, intercept=-24.0)
    vol = read_dicom_series(tmp_path)
    assert vol.array_hu[1, 2, 3] == 1376.0 and vol.array_hu[0, 0, 0] == -1024.0


def test_metadata(tmp_path):
    written = write_ct_series(
        tmp_path, ramp_volume((4, 16, 16)), spacing_mm=(2.5, 0.7, 0.7), origin=(0.0, 0.0, -100.0)
    )
    meta = read_dicom_series(tmp_path).metadata
    assert meta["z_positions_mm"] == [-100.0, -97.5, -95.0, -92.5]
    assert meta["series_instance_uid"] == written.series_uid
    assert meta["study_instance_uid"] == written.study_uid
    assert (meta["convolution_kernel"], meta["kvp"], meta["slice_thickness_mm"]) == (
        "B30f",
        120.0,
        2.5,
    )
    assert meta["files"] == [str(p) for p in written.paths]


def test_rle_compressed_series_decodes(tmp_path):
    stored = ramp_volume((3, 16, 16), high=3000)
    write_ct_series(tmp_path, stored, syntax=RLELossless)
    np.testing.assert_array_equal(read_dicom_series(tmp_path).array_hu, stored - 1024.0)


def test_undecodable_transfer_syntax_names_file_and_syntax(tmp_path):
    written = write_ct_series(tmp_path, ramp_volume((2, 16, 16)), syntax=MPEG2MPML)
    with pytest.raises(UnsupportedTransferSyntaxError, match=r"MPEG2 Main Profile") as info:
        read_dicom_series(tmp_path)
    assert info.value.path in written.paths


def test_several_series_need_a_choice(tmp_path):
    a = write_ct_series(tmp_path, ramp_volume((3, 16, 16)), prefix="a")
    b = write_ct_series(tmp_path, ramp_volume((2, 16, 16), high=10), prefix="b")
    assert {k: len(v) for k, v in list_series(tmp_path).items()} == {
        a.series_uid: 3,
        b.series_uid: 2,
    }
    with pytest.raises(MultipleSeriesError, match=re.escape(str(tmp_path)) + ".*2 series") as info:
        read_dicom_series(tmp_path)
    assert a.series_uid in str(info.value) and b.series_uid in str(info.value)
    assert read_dicom_series(tmp_path, series_uid=b.series_uid).shape == (2, 16, 16)
    with pytest.raises(NoDicomError, match="no file of series 1.2.3"):
        read_dicom_series(tmp_path, series_uid="1.2.3")


def test_non_ct_modality(tmp_path):
    write_ct_series(tmp_path, ramp_volume((2, 16, 16)), modality="MR")
    with pytest.raises(NotCTError, match=r"Modality 'MR'; expected 'CT'"):
        read_dicom_series(tmp_path)


def test_mixed_orientation(tmp_path):
    uid, study = generate_uid(), generate_uid()
    write_ct_series(tmp_path, ramp_volume((2, 16, 16)), series_uid=uid, study_uid=study)
    write_ct_series(
        tmp_path,
        ramp_volume((1, 16, 16)),
        series_uid=uid,
        study_uid=study,
        iop=oblique_iop(10.0),
        origin=(-10.0, -20.0, 40.0),
        prefix="x",
    )
    with pytest.raises(SliceGeometryError, match="ImageOrientationPatient differs"):
        read_dicom_series(tmp_path)


def test_duplicate_positions(tmp_path):
    stored = ramp_volume((4, 16, 16))
    positions = [(0, 0, 0), (0, 0, 2), (0, 0, 2), (0, 0, 4)]
    written = write_ct_series(tmp_path, stored, positions=positions, instance_numbers=[1, 3, 2, 4])
    with pytest.raises(SliceGeometryError, match="same position 2.000 mm") as info:
        read_dicom_series(tmp_path)
    message = str(info.value)
    assert str(written.paths[1]) in message and str(written.paths[2]) in message
    vol = read_dicom_series(tmp_path, duplicates="keep_first")
    assert vol.shape == (3, 16, 16) and vol.spacing_mm[0] == 2.0
    np.testing.assert_array_equal(vol.array_hu[1], stored[2] - 1024.0)  # InstanceNumber 2 kept
    assert vol.metadata["dropped_duplicate_files"] == [str(written.paths[1])]
    with pytest.raises(ValueError, match="duplicates must be one of"):
        read_dicom_series(tmp_path, duplicates="last")


def test_gap_names_the_two_files(tmp_path):
    positions = [(0, 0, z) for z in (0.0, 2.0, 4.0, 8.0, 10.0)]
    written = write_ct_series(tmp_path, ramp_volume((5, 16, 16)), positions=positions)
    pattern = (
        f"gap of 4.000 mm between {re.escape(str(written.paths[2]))} and "
        f"{re.escape(str(written.paths[3]))}"
    )
    with pytest.raises(SliceGeometryError, match=pattern):
        read_dicom_series(tmp_path)


@pytest.mark.parametrize(
    ("keep_bytes", "reason"),
    [(-200, "cannot decode pixel data"), (300, "no SeriesInstanceUID: truncated")],
)
def test_truncated_file(tmp_path, keep_bytes, reason):
    written = write_ct_series(tmp_path, ramp_volume((3, 16, 16)))
    data = written.paths[1].read_bytes()
    written.paths[1].write_bytes(data[:keep_bytes])  # cut in the pixels, or in the header
    with pytest.raises(DicomReadError, match=reason) as info:
        read_dicom_series(tmp_path)
    assert str(written.paths[1]) in str(info.value) and info.value.path == written.paths[1]


def test_garbage_dcm_file(tmp_path):
    write_ct_series(tmp_path, ramp_volume((2, 16, 16)))
    (tmp_path / "broken.dcm").write_bytes(b"not a dicom file")
    with pytest.raises(DicomReadError, match=r"broken\.dcm has a \.dcm name but no DICOM"):
        read_dicom_series(tmp_path)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "069.xml").write_text("<LidcReadMessage/>")
    with pytest.raises(
        NoDicomError, match="no DICOM image files found in folder " + re.escape(str(tmp_path))
    ) as info:
        read_dicom_series(tmp_path)
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)
    assert info.value.path == tmp_path
    with pytest.raises(NoDicomError, match="does not exist"):
        list_series(tmp_path / "missing")
