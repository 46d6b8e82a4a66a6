"""Growth from volume and diameter (reference/lung-rads.md, reference/risk-models.md) on
hand-built sphere masks: status, VDT, new and resolved nodules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungvlm.clinical.growth import (
    VOLUME_NOISE_FRACTION,
    growth_status_volumetric,
    volume_implied_diameter_mm,
)
from lungvlm.clinical.measure import measure_nodule
from lungvlm.inference.prior import MeasuredNodule, compare_nodules


def sphere(radius_mm: float, spacing_mm: float, size: int = 32) -> np.ndarray:
    """Voxels whose centres lie within ``radius_mm`` of the centre voxel of a ``size``³ grid."""
    z, y, x = (np.mgrid[:size, :size, :size] - size // 2) * spacing_mm
    return np.sqrt(z * z + y * y + x * x) <= radius_mm


def measured(mask: np.ndarray, spacing_mm: float, x_mm: float = 0.0) -> MeasuredNodule:
    m = measure_nodule(mask, (spacing_mm,) * 3)
    return MeasuredNodule((x_mm, 0.0, 0.0), m.mean_diameter_mm, m.volume_mm3)


@pytest.mark.parametrize(
    ("d1_mm", "d2_mm", "volume_ratio", "months", "expected"),
    [
        (6.0, 7.6, 2.03, 6.0, "growing"),  # the Lung-RADS diameter rule alone
        (6.0, 6.0, (7.6 / 6.0) ** 3, 6.0, "growing"),  # implied 7.6 mm: +1.6 mm > 1.5 mm
        (6.0, 6.0, (7.5 / 6.0) ** 3, 6.0, "stable"),  # implied 7.5 mm: +1.5 mm is not > 1.5
        (30.0, 30.0, 1.2, 6.0, "stable"),  # implied +1.9 mm but 20 % is within the 25 % noise
        (30.0, 30.0, 1.3, 6.0, "growing"),  # implied +2.7 mm and 30 % > 25 %
        (6.0, 6.0, (4.4 / 6.0) ** 3, 6.0, "smaller"),  # implied -1.6 mm, volume -61 %
        (6.0, 4.4, 1.0, 6.0, "smaller"),  # the diameter rule alone
        (6.0, 7.6, (4.4 / 6.0) ** 3, 6.0, "stable"),  # diameter up, volume down: contradictory
        (6.0, 6.0, (8.0 / 6.0) ** 3, 24.0, "growing"),  # over > 12 months still growing
    ],
)
def test_growth_status_volumetric_table(d1_mm, d2_mm, volume_ratio, months, expected):
    assert growth_status_volumetric(d1_mm, d2_mm, 100.0, 100.0 * volume_ratio, months) == expected


def test_volume_implied_diameter_scales_by_the_cube_root():
    assert volume_implied_diameter_mm(6.0, 100.0, 800.0) == pytest.approx(12.0)
    assert VOLUME_NOISE_FRACTION == 0.25


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prev_volume_mm3": 0.0}, r"prev_volume_mm3=0\.0 must be a positive finite number"),
        ({"curr_volume_mm3": -1.0}, r"curr_volume_mm3=-1\.0 must be a positive finite number"),
        ({"volume_noise_fraction": -0.1}, r"volume_noise_fraction=-0\.1 must be a non-negative"),
        ({"interval_months": 0.0}, r"interval_months=0\.0 must be a positive finite number"),
    ],
)
def test_growth_status_volumetric_rejects_bad_input(kwargs, match):
    args = {
        "prev_mean_diameter_mm": 6.0, "curr_mean_diameter_mm": 6.0, "prev_volume_mm3": 100.0,
        "curr_volume_mm3": 100.0, "interval_months": 6.0,
    } | kwargs  # fmt: skip
    with pytest.raises(ValueError, match=match):
        growth_status_volumetric(**args)


def test_two_spheres_give_the_hand_computed_vdt_and_status():
    # r = 4 -> 5 voxels at 1 mm: 257 -> 515 voxels, 9 -> 11 mm (centre-to-centre + 1 pixel).
    prior, current = measured(sphere(4.0, 1.0), 1.0), measured(sphere(5.0, 1.0), 1.0)
    assert (prior.volume_mm3, current.volume_mm3) == (257.0, 515.0)
    assert (prior.mean_diameter_mm, current.mean_diameter_mm) == (9.0, 11.0)
    (comp,) = compare_nodules([current], [prior], interval_days=90.0)
    # VDT = 90 ln 2 / ln(515 / 257) = 89.75 days.
    assert comp.vdt_days == pytest.approx(90.0 * math.log(2.0) / math.log(515.0 / 257.0))
    assert comp.vdt_days == pytest.approx(89.75, abs=0.01)
    assert (comp.status, comp.lungrads_growth, comp.lungrads_status) == ("growing", True, "growing")


def test_volume_growth_the_axial_diameter_misses_is_growth():
    # At 1.5 mm voxels, r = 6 -> 6.9 mm keeps 4 voxels each side on the axes: the mean diameter
    # goes 13.5 -> 14.9 mm (+1.4 mm, not Lung-RADS growth), but 257 -> 437 voxels is x 1.70,
    # an implied 13.5 x 1.70^(1/3) = 16.1 mm (+2.6 mm > 1.5 mm) and far beyond 25 % noise.
    prior, current = measured(sphere(6.0, 1.5), 1.5), measured(sphere(6.9, 1.5), 1.5)
    assert prior.mean_diameter_mm == 13.5
    assert current.mean_diameter_mm == pytest.approx(14.9, abs=0.02)
    assert current.volume_mm3 / prior.volume_mm3 == pytest.approx(437 / 257)
    (comp,) = compare_nodules([current], [prior], interval_days=180.0)
    assert comp.lungrads_growth is False  # the strict diameter rule
    assert (comp.status, comp.lungrads_status) == ("growing", "growing")
    assert comp.vdt_days == pytest.approx(180.0 * math.log(2.0) / math.log(437 / 257))


def test_shrinking_new_and_resolved():
    shrinking_prior, shrinking_now = (
        measured(sphere(9.0, 1.5), 1.5),
        measured(sphere(6.0, 1.5), 1.5),
    )
    new = measured(sphere(4.0, 1.0), 1.0, x_mm=100.0)
    resolved = measured(sphere(5.0, 1.0), 1.0, x_mm=-100.0)
    result = compare_nodules([shrinking_now, new], [shrinking_prior, resolved], interval_days=90.0)
    shrink, fresh, gone = result
    # 19.5 -> 13.5 mm, 925 -> 257 voxels: a negative VDT (the halving time).
    assert (shrink.status, shrink.lungrads_status) == ("smaller", "stable")
    assert shrink.vdt_days == pytest.approx(90.0 * math.log(2.0) / math.log(257 / 925))
    assert shrink.vdt_days < 0
    assert (fresh.status, fresh.prior_index, fresh.vdt_days) == ("new", None, None)
    assert (gone.status, gone.current_index, gone.prior_index) == ("resolved", None, 1)
    assert gone.prior_mean_diameter_mm == 11.0
