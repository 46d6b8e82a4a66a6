"""Prior comparison: Hungarian matching, growth status, VDT and lung-driven registration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungvlm.inference.prior import (
    MeasuredNodule,
    NoduleComparison,
    compare_nodules,
    compare_with_prior,
    map_prior_points,
    mask_image,
    match_nodules,
    patients_differ,
    register_lungs,
)


def sphere_mm3(diameter_mm: float) -> float:
    return math.pi / 6.0 * diameter_mm**3


def nodule(x_mm: float, diameter_mm: float, volume_mm3: float | None = None) -> MeasuredNodule:
    volume = sphere_mm3(diameter_mm) if volume_mm3 is None else volume_mm3
    return MeasuredNodule((x_mm, 0.0, 0.0), diameter_mm, volume)


def test_statuses_diameter_change_and_vdt_on_hand_built_centres():
    current = [nodule(0.0, 8.0), nodule(50.0, 5.0), nodule(100.0, 6.0, 113.0)]
    prior = [nodule(2.0, 6.0), nodule(-60.0, 4.0), nodule(112.0, 6.1, 120.0)]
    result = compare_nodules(current, prior, interval_days=90.0)
    a, b, d, c = result
    # 6 -> 8 mm in 90 days: +2.0 mm > 1.5 mm within 12 months; sphere VDT = 90 ln2 / (3 ln 4/3).
    assert (a.status, a.prior_index, a.lungrads_growth, a.lungrads_status) == (
        "growing", 0, True, "growing")  # fmt: skip
    assert a.diameter_change_mm == pytest.approx(2.0)
    assert a.vdt_days == pytest.approx(90.0 * math.log(2) / (3 * math.log(8 / 6)))
    assert a.vdt_days == pytest.approx(72.3, abs=0.05)  # reference check value: about 72 days
    assert a.distance_mm == pytest.approx(2.0)
    assert (b.status, b.prior_index, b.vdt_days, b.lungrads_status) == ("new", None, None, "new")
    # 12 mm apart, allowed up to 10 mm + 3.05 mm radius; 6.1 -> 6.0 mm is stable; shrinking
    # volume gives a negative VDT (a halving time).
    assert (d.status, d.prior_index, d.lungrads_growth) == ("stable", 2, False)
    assert d.vdt_days == pytest.approx(90.0 * math.log(2) / math.log(113.0 / 120.0))
    assert (c.status, c.current_index, c.prior_index) == ("resolved", None, 1)
    assert c.prior_mean_diameter_mm == 4.0


@pytest.mark.parametrize(("prior_x_mm", "matched"), [(13.99, True), (14.01, False)])
def test_match_distance_is_10_mm_plus_the_larger_radius(prior_x_mm, matched):
    pairs = match_nodules([nodule(0.0, 8.0)], [nodule(prior_x_mm, 6.0)])
    assert (len(pairs) == 1) is matched


def test_hungarian_minimises_the_total_distance():
    # Greedy nearest-first would pair current 1 with prior 0 (1 mm), then current 0 with
    # prior 1 (5 mm): 6 mm in all. The optimum pairs 0-0 (2 mm) and 1-1 (2 mm): 4 mm.
    pairs = match_nodules(
        [nodule(0.0, 4.0), nodule(3.0, 4.0)], [nodule(2.0, 4.0), nodule(5.0, 4.0)]
    )
    assert [(i, j) for i, j, _ in pairs] == [(0, 0), (1, 1)]
    assert sum(d for *_, d in pairs) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("status", "lungrads"),
    [("new", "new"), ("growing", "growing"), ("stable", "stable"), ("smaller", "stable")],
)
def test_status_passed_to_lungrads(status, lungrads):
    assert NoduleComparison(0, 0, status).lungrads_status == lungrads


@pytest.mark.parametrize(
    ("current", "prior", "differ"),
    [("A", "B", True), ("A", "A", False), ("A", None, False), (None, "B", False), (" A", "A ", False)],
)  # fmt: skip
def test_patients_differ_only_when_both_ids_are_known(current, prior, differ):
    assert patients_differ(current, prior) is differ


def two_lungs(shape=(40, 48, 48)) -> np.ndarray:
    """Two ellipsoids of different size (right and left lung), voxels of 2.5 mm."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    right = ((z - 20) / 14) ** 2 + ((y - 24) / 14) ** 2 + ((x - 14) / 8) ** 2 <= 1
    left = ((z - 22) / 11) ** 2 + ((y - 22) / 12) ** 2 + ((x - 34) / 7) ** 2 <= 1
    return right | left


def test_lung_registration_recovers_a_shift_and_maps_prior_nodules():
    spacing, shift = (2.5, 2.5, 2.5), np.array([6.0, -4.0, 3.0])  # (x, y, z) mm
    lungs = two_lungs()
    current = mask_image(lungs, spacing, (0.0, 0.0, 0.0))
    prior = mask_image(lungs, spacing, tuple(shift))  # same anatomy, scanner moved by `shift`
    fitted = register_lungs(current, prior)
    q = np.array([40.0, 55.0, 50.0])  # a prior nodule (world mm)
    mapped = np.asarray(map_prior_points(fitted, [tuple(q)])[0])
    np.testing.assert_allclose(mapped, q - shift, atol=1.0)
    # Without registration the 7.8 mm offset would still match, but a growth call needs the
    # mapped centre: the same 6 mm nodule 90 days later is stable at ~0 mm distance.
    comparisons, _ = compare_with_prior(
        [MeasuredNodule(tuple(q - shift), 6.0, sphere_mm3(6.0))],
        [MeasuredNodule(tuple(q), 6.0, sphere_mm3(6.0))],
        current, prior, interval_days=90.0,
    )  # fmt: skip
    assert [c.status for c in comparisons] == ["stable"]
    assert comparisons[0].distance_mm < 1.0 and comparisons[0].vdt_days is None


def test_registration_refuses_an_empty_lung_mask():
    empty = mask_image(np.zeros((8, 8, 8), bool), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    full = mask_image(two_lungs((16, 16, 16)), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="lung mask is empty"):
        register_lungs(full, empty)
    with pytest.raises(ValueError, match="transform='elastic' is not valid"):
        register_lungs(full, full, "elastic")
