"""NIfTI round trip through SimpleITK, cross-checked against nibabel's RAS affine."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from data_modules.io import CTVolume, NiftiError, read_nifti, write_nifti


def _rotated_volume() -> CTVolume:
    a = np.deg2rad(30.0)
    rot_z = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    direction = rot_z @ np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # oblique coronal
    array = (np.arange(4 * 5 * 6, dtype=np.float32) - 60.5).reshape(4, 5, 6)
    return CTVolume(array, (2.5, 0.7, 0.8), (-12.0, 34.5, -100.25), direction)


def test_round_trip_non_identity_direction(tmp_path):
    vol = _rotated_volume()
    path = write_nifti(vol, tmp_path / "ct.nii.gz")
    back = read_nifti(path)
    np.testing.assert_array_equal(back.array_hu, vol.array_hu)
    np.testing.assert_allclose(back.spacing_mm, vol.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(back.origin_lps_mm, vol.origin_lps_mm, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-5)
    assert back.metadata["source_path"] == str(path)


def test_nibabel_sees_ras_affine(tmp_path):
    vol = _rotated_volume()
    path = write_nifti(vol, tmp_path / "ct.nii")
    image = nib.load(path)
    itk_affine = vol.affine_lps()[:, [2, 1, 0, 3]]  # index order (x, y, z) as NIfTI stores
    np.testing.assert_allclose(
        image.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ itk_affine, atol=1e-4
    )
    np.testing.assert_array_equal(np.asarray(image.dataobj), vol.array_hu.transpose(2, 1, 0))
    k, j, i = 3, 1, 4  # a voxel lands on the same world point through both libraries
    ras = image.affine @ [i, j, k, 1]
    np.testing.assert_allclose(ras[:3] * [-1, -1, 1], vol.voxel_to_world([k, j, i]), atol=1e-4)


def test_write_mask_array(tmp_path):
    mask = np.zeros((3, 4, 5), dtype=bool)
    mask[1, 2, 3] = True
    path = write_nifti(
        mask, tmp_path / "mask.nii.gz", spacing_mm=(2.0, 1.0, 0.5), origin=(1.0, 2.0, 3.0)
    )
    assert nib.load(path).get_data_dtype() == np.uint8
    back = read_nifti(path)
    assert np.argwhere(back.array_hu == 1.0).tolist() == [[1, 2, 3]] and back.array_hu.sum() == 1
    assert back.spacing_mm == (2.0, 1.0, 0.5)
    np.testing.assert_allclose(back.voxel_to_world([1, 2, 3]), [2.5, 4.0, 5.0])


def test_bad_arguments_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"spacing_mm \(z, y, x\) in mm is required"):
        write_nifti(np.zeros((2, 2, 2)), tmp_path / "a.nii")
    with pytest.raises(ValueError, match="must be None when writing a CTVolume"):
        write_nifti(_rotated_volume(), tmp_path / "a.nii", spacing_mm=(1, 1, 1))
    with pytest.raises(ValueError, match="direction must be an orthonormal 3x3"):
        write_nifti(np.zeros((2, 2, 2)), tmp_path / "a.nii", (1, 1, 1), direction=np.ones((3, 3)))
    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(b"\x00" * 20)
    with pytest.raises(NiftiError, match="cannot read NIfTI .*garbage.nii") as info:
        read_nifti(garbage)
    assert info.value.path == garbage
