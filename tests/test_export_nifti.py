"""NIfTI label, probability and heatmap maps: values and LPS geometry read back by SimpleITK and
nibabel, and a cropped heatmap landing on the scan's world position of its box corner."""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from lungvlm.export.nifti import write_heatmap_nifti, write_label_nifti, write_probability_nifti
from lungvlm.imaging.volume import CTVolume

SHAPE_ZYX = (6, 7, 8)
SPACING_ZYX = (2.5, 0.7, 0.8)
ORIGIN_LPS = (-12.0, 34.5, -100.25)
Z_FLIP = np.diag([1.0, 1.0, -1.0])  # slices run feet-to-head reversed (superior first)
_A = np.deg2rad(30.0)
OBLIQUE = np.array(
    [[np.cos(_A), -np.sin(_A), 0.0], [np.sin(_A), np.cos(_A), 0.0], [0.0, 0.0, 1.0]]
) @ np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # rotated coronal acquisition


def _volume(direction=None) -> CTVolume:
    array = np.linspace(-1000, 400, np.prod(SHAPE_ZYX), dtype=np.float32).reshape(SHAPE_ZYX)
    return CTVolume(array, SPACING_ZYX, ORIGIN_LPS, np.eye(3) if direction is None else direction)


def _nib_lps_affine(path) -> np.ndarray:
    """nibabel's RAS affine of (x, y, z, 1) indices, turned back into LPS."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ nib.load(path).affine


@pytest.mark.parametrize("direction", [np.eye(3), Z_FLIP, OBLIQUE], ids=["eye", "zflip", "oblique"])
def test_label_map_round_trips_with_scan_geometry(tmp_path, direction):
    vol = _volume(direction)
    labels = np.zeros(SHAPE_ZYX, dtype=np.int64)
    labels[1:3, 2:5, 3:6] = 1
    labels[4, 6, 7] = 300  # beyond uint8: the map must be uint16
    path = write_label_nifti(labels, vol, tmp_path / "seg" / "labels.nii.gz")

    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkUInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)
    np.testing.assert_allclose(image.GetSpacing(), SPACING_ZYX[::-1], atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN_LPS, atol=1e-4)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), direction, atol=1e-5)

    loaded = nib.load(path)
    assert loaded.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), labels.transpose(2, 1, 0))
    itk_affine = vol.affine_lps()[:, [2, 1, 0, 3]]  # columns in NIfTI index order (x, y, z)
    np.testing.assert_allclose(_nib_lps_affine(path), itk_affine, atol=1e-4)


def test_volume_without_direction_uses_identity(tmp_path):
    vol = SimpleNamespace(
        array_hu=np.zeros(SHAPE_ZYX, np.float32), spacing_mm=SPACING_ZYX, origin_lps_mm=ORIGIN_LPS
    )
    path = write_label_nifti(np.ones(SHAPE_ZYX, bool), vol, tmp_path / "labels.nii")
    image = sitk.ReadImage(str(path))
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    # World point of voxel (x, y, z) = (7, 6, 5): origin + spacing * index along each axis.
    np.testing.assert_allclose(
        image.TransformIndexToPhysicalPoint((7, 6, 5)),
        [-12.0 + 7 * 0.8, 34.5 + 6 * 0.7, -100.25 + 5 * 2.5],
        atol=1e-4,
    )
    assert sitk.GetArrayFromImage(image).sum() == np.prod(SHAPE_ZYX)


def test_probability_map_is_compressed_float32(tmp_path):
    vol = _volume(Z_FLIP)
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.0, 1.0, SHAPE_ZYX)  # float64 in: stored as float32
    prob[0, 0, 0], prob[-1, -1, -1] = 0.0, 1.0
    path = write_probability_nifti(prob, vol, tmp_path / "prob.nii.gz")
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip magic: compressed
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), prob.astype(np.float32))
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN_LPS, atol=1e-4)
    loaded = nib.load(path)
    assert loaded.get_data_dtype() == np.float32
    np.testing.assert_array_equal(loaded.get_fdata().transpose(2, 1, 0), prob.astype(np.float32))
    np.testing.assert_allclose(
        np.diag(_nib_lps_affine(path))[:3], [0.8, 0.7, -2.5], atol=1e-5
    )  # z flipped: index z walks toward -z (inferior) in LPS
    assert not list(tmp_path.glob(".*partial*"))  # the temporary file was renamed away


@pytest.mark.parametrize("direction", [np.eye(3), Z_FLIP, OBLIQUE], ids=["eye", "zflip", "oblique"])
def test_heatmap_box_lands_on_the_scan_box_corner(tmp_path, direction):
    vol = _volume(direction)
    box = (slice(2, 5), slice(1, 6), slice(3, 7))  # (z, y, x)
    heat = np.arange(3 * 5 * 4, dtype=np.float32).reshape(3, 5, 4) / 60.0
    path = write_heatmap_nifti(heat, box, vol, tmp_path / "heat.nii.gz")
    image = sitk.ReadImage(str(path))
    scan = vol.to_sitk()

    assert image.GetSize() == (4, 5, 3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), heat)
    np.testing.assert_allclose(image.GetSpacing(), scan.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), scan.GetDirection(), atol=1e-5)
    corner = scan.TransformIndexToPhysicalPoint((3, 1, 2))  # ITK index order (x, y, z)
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((0, 0, 0)), corner, atol=1e-4)
    # Every heatmap voxel overlays the scan voxel it was computed for, not only the corner.
    far = scan.TransformIndexToPhysicalPoint((3 + 3, 1 + 4, 2 + 2))
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((3, 4, 2)), far, atol=1e-4)
    np.testing.assert_allclose(vol.voxel_to_world([2, 1, 3]), corner, atol=1e-4)

    lps = _nib_lps_affine(path)
    np.testing.assert_allclose(lps[:3, 3], corner, atol=1e-4)
    np.testing.assert_array_equal(nib.load(path).get_fdata().transpose(2, 1, 0), heat)


def test_bad_inputs_name_the_shapes(tmp_path):
    vol = _volume()
    with pytest.raises(ValueError, match=r"label_map has shape \(6, 7\); expected .* \(6, 7, 8\)"):
        write_label_nifti(np.zeros((6, 7)), vol, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=r"integers in \[0, 65535\].*\[-1, -1\] of dtype int64"):
        write_label_nifti(-np.ones(SHAPE_ZYX, int), vol, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=r"prob_zyx has shape \(8, 7, 6\); expected .*\(6, 7, 8\)"):
        write_probability_nifti(np.zeros((8, 7, 6)), vol, tmp_path / "p.nii.gz")
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]; got values in \[0.0, 1.5\]"):
        write_probability_nifti(
            np.full(SHAPE_ZYX, 1.5) * (np.arange(8) > 0), vol, tmp_path / "p.nii.gz"
        )
    box = (slice(2, 5), slice(1, 6), slice(3, 7))
    with pytest.raises(ValueError, match=r"heatmap_zyx has shape \(3, 5, 5\); .* \(3, 5, 4\)"):
        write_heatmap_nifti(np.zeros((3, 5, 5)), box, vol, tmp_path / "h.nii.gz")
    with pytest.raises(ValueError, match=r"box\[2\]=slice\(3, 9, None\) .* stop <= 8"):
        write_heatmap_nifti(
            np.zeros((3, 5, 6)), box[:2] + (slice(3, 9),), vol, tmp_path / "h.nii.gz"
        )
    with pytest.raises(ValueError, match=r"must end with one of \['.nii.gz', '.nii'\]"):
        write_label_nifti(np.zeros(SHAPE_ZYX), vol, tmp_path / "labels.mha")
    assert not list(tmp_path.iterdir())  # nothing written on a rejected input
