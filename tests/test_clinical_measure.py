"""Nodule measurement from masks: hand-worked masks and rasterised ellipsoids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungvlm.clinical.measure import (
    equivalent_sphere_diameter_mm,
    measure_nodule,
    solid_component_diameter_mm,
)


def _ellipsoid(
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    semi_axes_mm: tuple[float, float, float],
    angle_deg: float = 0.0,
) -> np.ndarray:
    """Voxels whose centre lies in an ellipsoid (semi-axes z, long in-plane, short in-plane),
    centred slightly off the grid, its long axis rotated by ``angle_deg`` from x towards y."""
    centre = [(n - 1) / 2 + 0.3 for n in shape]
    z, y, x = ((np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing_mm, strict=True))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    theta = math.radians(angle_deg)
    along = xx * math.cos(theta) + yy * math.sin(theta)
    across = -xx * math.sin(theta) + yy * math.cos(theta)
    a_z, a_long, a_short = semi_axes_mm
    return (zz / a_z) ** 2 + (along / a_long) ** 2 + (across / a_short) ** 2 <= 1.0


def test_single_voxel_measures_one_pixel() -> None:
    mask = np.zeros((3, 4, 5), dtype=bool)
    mask[1, 2, 3] = True
    m = measure_nodule(mask, (2.0, 0.7, 0.8))
    assert m.long_axis_mm == pytest.approx(0.8)
    assert m.short_axis_mm == pytest.approx(0.7)
    assert m.mean_diameter_mm == pytest.approx(0.75)
    assert m.volume_mm3 == pytest.approx(2.0 * 0.7 * 0.8)
    assert m.axial_slice == 1
    assert m.centroid_voxel == (1.0, 2.0, 3.0)


def test_line_of_voxels_collinear() -> None:
    mask = np.zeros((1, 3, 8), dtype=bool)
    mask[0, 1, 1:6] = True  # five voxels in a row, 0.5 mm apart
    m = measure_nodule(mask, (1.0, 0.5, 0.5))
    assert m.long_axis_mm == pytest.approx(4 * 0.5 + 0.5)
    assert m.short_axis_mm == pytest.approx(0.5)


def test_cross_hand_worked() -> None:
    # Slice 2: a row of 9 voxels (x 0..8 at y 3) crossed by a column of 5 (y 1..5 at x 4),
    # 1 mm pixels. Long axis: 8 mm between end centres + 1 pixel = 9 mm along x. Longest
    # chord along y: the column, 4 mm + 1 pixel = 5 mm.
    mask = np.zeros((4, 7, 10), dtype=bool)
    mask[2, 3, 0:9] = True
    mask[2, 1:6, 4] = True
    mask[1, 3, 3:6] = True  # a smaller slice: not the slice of greatest area
    m = measure_nodule(mask, (2.0, 1.0, 1.0))
    assert m.axial_slice == 2
    assert m.long_axis_mm == pytest.approx(9.0)
    assert m.short_axis_mm == pytest.approx(5.0)
    assert m.mean_diameter_mm == pytest.approx(7.0)
    assert m.volume_mm3 == pytest.approx(16 * 2.0)
    assert m.centroid_voxel[0] == pytest.approx((2 * 13 + 1 * 3) / 16)


def test_square_measures_its_diagonals() -> None:
    # A 3 x 3 square: long axis along a diagonal, 2 sqrt(2) + 1 mm; the perpendicular chord
    # through the centre runs along the other diagonal, also 2 sqrt(2) + 1 mm.
    mask = np.zeros((1, 5, 5), dtype=bool)
    mask[0, 1:4, 1:4] = True
    m = measure_nodule(mask, (1.0, 1.0, 1.0))
    assert m.long_axis_mm == pytest.approx(2 * math.sqrt(2) + 1)
    assert m.short_axis_mm == pytest.approx(2 * math.sqrt(2) + 1)


@pytest.mark.parametrize("angle_deg", [0.0, 30.0, 45.0, 60.0, 90.0, 135.0])
@pytest.mark.parametrize("spacing_mm", [(1.0, 0.7, 0.7), (2.5, 0.6, 0.9)])  # 2nd: anisotropic
def test_ellipsoid_axes_within_one_voxel(
    spacing_mm: tuple[float, float, float], angle_deg: float
) -> None:
    # In-plane axes 10 mm and 6 mm (semi-axes 5 and 3 mm); tolerance: one in-plane voxel,
    # the largest in-plane spacing.
    shape = (7, int(14 / spacing_mm[1]), int(14 / spacing_mm[2]))
    mask = _ellipsoid(shape, spacing_mm, (3.0, 5.0, 3.0), angle_deg)
    m = measure_nodule(mask, spacing_mm)
    tolerance_mm = max(spacing_mm[1:])
    assert m.long_axis_mm == pytest.approx(10.0, abs=tolerance_mm)
    assert m.short_axis_mm == pytest.approx(6.0, abs=tolerance_mm)
    assert m.mean_diameter_mm == pytest.approx(8.0, abs=tolerance_mm)
    assert m.axial_slice == int(np.argmax(mask.sum(axis=(1, 2))))


@pytest.mark.parametrize("spacing_mm", [(0.5, 0.5, 0.5), (1.0, 0.5, 0.6)])
def test_sphere_volume_within_three_percent(spacing_mm: tuple[float, float, float]) -> None:
    shape = tuple(int(14 / s) for s in spacing_mm)
    mask = _ellipsoid(shape, spacing_mm, (6.0, 6.0, 6.0))
    m = measure_nodule(mask, spacing_mm)
    true_volume_mm3 = 4.0 / 3.0 * math.pi * 6.0**3  # 904.8 mm3
    assert m.volume_mm3 == pytest.approx(true_volume_mm3, rel=0.03)
    assert equivalent_sphere_diameter_mm(m.volume_mm3) == pytest.approx(12.0, rel=0.01)


def test_solid_component_largest_connected_part() -> None:
    image_hu = np.full((16, 16, 16), -850.0)
    mask = np.zeros(image_hu.shape, dtype=bool)
    mask[2:13, 2:13, 2:13] = True
    image_hu[mask] = -700.0
    image_hu[4:7, 4:7, 4:7] = 50.0  # 3 x 3 x 3 solid core
    image_hu[10, 10, 10:12] = 50.0  # a smaller solid part elsewhere
    image_hu[10, 4, 4] = -300.0  # at the threshold: not solid (strictly above)
    diameter_mm = solid_component_diameter_mm(mask, image_hu, (1.0, 1.0, 1.0))
    # 3 x 3 square on its axial slice: diagonal 2 sqrt(2) + 1 both ways.
    assert diameter_mm == pytest.approx(2 * math.sqrt(2) + 1.0)
    image_hu[image_hu > -300.0] = -700.0
    assert solid_component_diameter_mm(mask, image_hu, (1.0, 1.0, 1.0)) == 0.0


@pytest.mark.parametrize(
    ("volume_mm3", "diameter_mm"),
    [(113.097, 6.0), (268.083, 8.0), (1767.146, 15.0), (14137.17, 30.0), (0.0, 0.0)],
)
def test_equivalent_sphere_matches_lungrads_volume_bands(
    volume_mm3: float, diameter_mm: float
) -> None:
    assert equivalent_sphere_diameter_mm(volume_mm3) == pytest.approx(diameter_mm, abs=1e-4)


@pytest.mark.parametrize(
    ("mask", "spacing_mm", "pattern"),
    [
        (np.zeros((4, 4, 4), dtype=bool), (1.0, 1.0, 1.0), r"mask is empty"),
        (np.ones((4, 4), dtype=bool), (1.0, 1.0, 1.0), r"mask has shape \(4, 4\); expected a 3-D"),
        (
            np.ones((2, 2, 2), dtype=bool),
            (1.0, 0.0, 1.0),
            r"spacing_mm=\(1.0, 0.0, 1.0\) must be three positive",
        ),
        (np.ones((2, 2, 2), dtype=bool), (1.0, -0.7, 0.7), r"spacing_mm=\(1.0, -0.7, 0.7\)"),
        (np.ones((2, 2, 2), dtype=bool), (0.7, 0.7), r"spacing_mm=\(0.7, 0.7\) must be three"),
        (np.ones((2, 2, 2), dtype=bool), (1.0, math.nan, 1.0), r"spacing_mm=\(1.0, nan, 1.0\)"),
        (np.ones((2, 2, 2), dtype=bool), None, r"spacing_mm=None must be three numbers"),
    ],
)
def test_measure_errors(mask: np.ndarray, spacing_mm: object, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        measure_nodule(mask, spacing_mm)  # type: ignore[arg-type]


def test_solid_component_errors() -> None:
    mask = np.ones((3, 3, 3), dtype=bool)
    with pytest.raises(
        ValueError, match=r"image_hu has shape \(3, 3, 4\) but mask has shape \(3, 3, 3\)"
    ):
        solid_component_diameter_mm(mask, np.zeros((3, 3, 4)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"mask is empty"):
        solid_component_diameter_mm(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"threshold_hu=nan must be a finite"):
        solid_component_diameter_mm(mask, np.zeros((3, 3, 3)), (1.0, 1.0, 1.0), math.nan)
    with pytest.raises(ValueError, match=r"volume_mm3=-1.0 must be a non-negative"):
        equivalent_sphere_diameter_mm(-1.0)


@pytest.mark.parametrize("shift", [0, 1, 2, 3])
def test_axes_do_not_depend_on_where_the_mask_sits(shift):
    # Regression: short-axis bands were counted on absolute coordinates, so padding one row
    # changed the short axis of this slice from 14.71 mm to 18.18 mm.
    base = np.array([[1, 1, 1], [0, 1, 1]], dtype=bool)
    mask = np.zeros((1, 8, 8), dtype=bool)
    mask[0, shift : shift + 2, shift : shift + 3] = base
    reference = np.zeros((1, 8, 8), dtype=bool)
    reference[0, :2, :3] = base
    spacing = (4.0, 8.21, 8.21)
    got, expected = measure_nodule(mask, spacing), measure_nodule(reference, spacing)
    assert got.short_axis_mm == pytest.approx(expected.short_axis_mm)
    assert got.long_axis_mm == pytest.approx(expected.long_axis_mm)
