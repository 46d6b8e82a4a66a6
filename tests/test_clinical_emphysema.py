"""%LAA-950 emphysema measure and the HU windowing / normalisation it relies on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungvlm.clinical import hu
from lungvlm.clinical.emphysema import (
    EMPHYSEMA_LAA_THRESHOLD_HU,
    emphysema_severity,
    laa950_percent,
)


def test_laa950_hand_worked() -> None:
    image_hu = np.full((4, 4, 4), -850.0)
    lung_mask = np.zeros((4, 4, 4), dtype=bool)
    lung_mask[:2] = True  # 32 lung voxels
    image_hu[0, 0, :3] = -950.0  # at the threshold: counted (<= -950 HU)
    image_hu[1, 1, :2] = -951.0
    image_hu[1, 2, 0] = -949.0  # above the threshold: not counted
    image_hu[3, 3, 3] = -1000.0  # outside the lung: not counted
    assert EMPHYSEMA_LAA_THRESHOLD_HU == -950.0
    assert laa950_percent(image_hu, lung_mask) == pytest.approx(100.0 * 5 / 32)  # 15.625 %
    assert laa950_percent(image_hu, lung_mask.astype(np.uint8)) == pytest.approx(15.625)


@pytest.mark.parametrize(
    ("laa_percent", "expected"),
    [
        (0.0, "none"),
        (4.99, "none"),
        (5.0, "mild"),
        (14.99, "mild"),
        (15.0, "moderate"),
        (24.99, "moderate"),
        (25.0, "severe"),
        (100.0, "severe"),
    ],
)
def test_emphysema_severity_display_scale(laa_percent: float, expected: str) -> None:
    assert emphysema_severity(laa_percent) == expected


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (
            lambda: laa950_percent(np.zeros((2, 2, 2)), np.zeros((2, 2, 2), dtype=bool)),
            r"lung_mask is empty",
        ),
        (
            lambda: laa950_percent(np.zeros((2, 2, 2)), np.ones((2, 2, 3), dtype=bool)),
            r"image_hu has shape \(2, 2, 2\) but lung_mask has shape \(2, 2, 3\)",
        ),
        (lambda: emphysema_severity(-0.1), r"laa_percent=-0.1 must be a finite percentage"),
        (lambda: emphysema_severity(100.5), r"laa_percent=100.5"),
        (lambda: emphysema_severity(math.nan), r"laa_percent=nan"),
    ],
)
def test_emphysema_errors(call, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        call()


def test_hu_constants_are_ordered() -> None:
    ordered = [
        hu.HU_AIR,
        hu.HU_LUNG,
        hu.HU_GROUND_GLASS,
        hu.HU_FAT,
        hu.HU_WATER,
        hu.HU_SOFT_TISSUE,
        hu.HU_BLOOD,
        hu.HU_SOLID_NODULE,
        hu.HU_CALCIFIED_NODULE,
        hu.HU_BONE_TRABECULAR,
        hu.HU_BONE_CORTICAL,
    ]
    assert ordered == sorted(ordered)
    assert (hu.HU_AIR, hu.HU_WATER) == (-1000.0, 0.0)
    assert hu.LUNG_WINDOW == (-600.0, 1500.0)


@pytest.mark.parametrize(
    ("value_hu", "expected"),
    [(-2000.0, 0.0), (-1350.0, 0.0), (-975.0, 0.25), (-600.0, 0.5), (150.0, 1.0), (900.0, 1.0)],
)
def test_lung_window(value_hu: float, expected: float) -> None:
    windowed = hu.window_hu(np.array([value_hu]), *hu.LUNG_WINDOW)
    assert windowed.dtype == np.float32
    assert windowed[0] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value_hu", "expected"),
    [(-3024.0, 0.0), (-1000.0, 0.0), (-300.0, 0.5), (50.0, 0.75), (400.0, 1.0), (1500.0, 1.0)],
)
def test_normalize_hu_default_range(value_hu: float, expected: float) -> None:
    normalized = hu.normalize_hu(np.array([[value_hu]]))
    assert normalized.dtype == np.float32
    assert normalized[0, 0] == pytest.approx(expected)


def test_normalize_matches_monai_and_inverts() -> None:
    from monai.transforms import ScaleIntensityRange

    rng = np.random.default_rng(0)
    image_hu = rng.uniform(-1200.0, 600.0, size=(4, 5, 6)).astype(np.float32)
    ours = hu.normalize_hu(image_hu, hu_min=-1000.0, hu_max=400.0)
    monai = ScaleIntensityRange(a_min=-1000.0, a_max=400.0, b_min=0.0, b_max=1.0, clip=True)
    np.testing.assert_allclose(ours, np.asarray(monai(image_hu)), atol=1e-6)
    back_hu = hu.denormalize_hu(ours, hu_min=-1000.0, hu_max=400.0)
    np.testing.assert_allclose(back_hu, np.clip(image_hu, -1000.0, 400.0), atol=1e-3)


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: hu.window_hu(np.zeros(2), -600.0, 0.0), r"width_hu=0.0 must be a positive"),
        (lambda: hu.window_hu(np.zeros(2), -600.0, -10.0), r"width_hu=-10.0"),
        (lambda: hu.window_hu(np.zeros(2), math.nan, 1500.0), r"center_hu=nan must be a finite"),
        (
            lambda: hu.normalize_hu(np.zeros(2), 400.0, -1000.0),
            r"hu_max=-1000.0 must be greater than hu_min=400.0",
        ),
        (lambda: hu.normalize_hu(np.zeros(2), -1000.0, -1000.0), r"hu_max=-1000.0 must be greater"),
        (
            lambda: hu.denormalize_hu(np.zeros(2), -1000.0, math.inf),
            r"hu_min=-1000.0 and hu_max=inf must be finite",
        ),
    ],
)
def test_hu_errors(call, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        call()
