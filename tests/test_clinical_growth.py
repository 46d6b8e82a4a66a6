"""Lung-RADS growth definition and volume doubling time (reference/risk-models.md)."""

from __future__ import annotations

import math

import pytest

from lungvlm.clinical.growth import (
    growth_status,
    is_lungrads_growth,
    volume_after_days,
    volume_doubling_time_days,
    volume_doubling_time_from_diameters_days,
)


@pytest.mark.parametrize(
    ("previous_mm", "current_mm", "interval_months", "expected"),
    [
        (6.0, 7.5, 6.0, False),  # +1.5 mm is not > 1.5 mm
        (6.0, 7.6, 6.0, True),
        (6.0, 7.54, 6.0, False),  # 7.54 rounds to 7.5
        (6.0, 7.55, 6.0, True),  # 7.55 rounds half up to 7.6
        (5.96, 7.5, 6.0, False),  # 5.96 rounds to 6.0
        (4.2, 5.7, 6.0, False),  # float 5.7 - 4.2 = 1.5000000000000004; decimal is exactly 1.5
        (6.0, 8.0, 12.0, True),  # 12 months is within 12 months
        (6.0, 8.0, 12.01, False),  # beyond the 12-month window
        (6.0, 20.0, 24.0, False),
        (8.0, 6.0, 3.0, False),
    ],
)
def test_is_lungrads_growth(
    previous_mm: float, current_mm: float, interval_months: float, expected: bool
) -> None:
    assert is_lungrads_growth(previous_mm, current_mm, interval_months) is expected


@pytest.mark.parametrize(
    ("previous_mm", "current_mm", "interval_months", "expected"),
    [
        (6.0, 7.6, 6.0, "growing"),
        (6.0, 7.5, 6.0, "stable"),
        (4.2, 5.7, 6.0, "stable"),
        (6.0, 4.5, 6.0, "stable"),  # -1.5 mm is not < -1.5 mm
        (6.0, 4.4, 6.0, "smaller"),
        (6.0, 6.0, 36.0, "stable"),
        (6.0, 8.0, 24.0, "growing"),  # project choice: growth over >12 months is still growing
    ],
)
def test_growth_status(
    previous_mm: float, current_mm: float, interval_months: float, expected: str
) -> None:
    assert growth_status(previous_mm, current_mm, interval_months) == expected


@pytest.mark.parametrize(
    ("volume1_mm3", "volume2_mm3", "interval_days", "expected_days"),
    [
        (100.0, 200.0, 90.0, 90.0),
        (100.0, 400.0, 100.0, 50.0),
        (200.0, 100.0, 90.0, -90.0),  # shrinking: negative (halving time)
        (100.0, 100.0, 30.0, math.inf),
    ],
)
def test_volume_doubling_time(
    volume1_mm3: float, volume2_mm3: float, interval_days: float, expected_days: float
) -> None:
    assert volume_doubling_time_days(volume1_mm3, volume2_mm3, interval_days) == pytest.approx(
        expected_days
    )


def test_vdt_from_diameters_reference_check_value() -> None:
    # 6 -> 8 mm in 90 days: 90 ln2 / (3 ln(8/6)) = 72.2826... days (reference: about 72 days).
    vdt_days = volume_doubling_time_from_diameters_days(6.0, 8.0, 90.0)
    assert vdt_days == pytest.approx(72.2826, abs=1e-4)
    assert round(vdt_days, 1) == 72.3
    # Same value from the sphere volumes.
    sphere = [math.pi / 6 * d**3 for d in (6.0, 8.0)]
    assert volume_doubling_time_days(sphere[0], sphere[1], 90.0) == pytest.approx(vdt_days)


@pytest.mark.parametrize(
    ("d1_mm", "d2_mm", "interval_days", "expected_days"),
    [
        (10.0, 10.0 * 2 ** (1 / 3), 100.0, 100.0),  # 26% larger diameter = one doubling
        (8.0, 6.0, 90.0, -72.2826),
        (5.0, 5.0, 90.0, math.inf),
    ],
)
def test_vdt_from_diameters(
    d1_mm: float, d2_mm: float, interval_days: float, expected_days: float
) -> None:
    assert volume_doubling_time_from_diameters_days(d1_mm, d2_mm, interval_days) == pytest.approx(
        expected_days, abs=1e-4
    )


@pytest.mark.parametrize(
    ("volume_mm3", "vdt_days", "days", "expected_mm3"),
    [
        (100.0, 90.0, 90.0, 200.0),
        (100.0, 90.0, 180.0, 400.0),
        (100.0, 90.0, -90.0, 50.0),
        (100.0, -90.0, 90.0, 50.0),
        (100.0, math.inf, 365.0, 100.0),
        (100.0, 90.0, 0.0, 100.0),
    ],
)
def test_volume_after_days(
    volume_mm3: float, vdt_days: float, days: float, expected_mm3: float
) -> None:
    assert volume_after_days(volume_mm3, vdt_days, days) == pytest.approx(expected_mm3)


def test_volume_after_days_inverts_vdt() -> None:
    grown_mm3 = volume_after_days(113.0, 250.0, 60.0)
    assert volume_doubling_time_days(113.0, grown_mm3, 60.0) == pytest.approx(250.0)


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda: is_lungrads_growth(0.0, 6.0, 6.0),
            ValueError,
            r"previous_mean_diameter_mm=0.0 must be a positive",
        ),
        (lambda: is_lungrads_growth(6.0, -1.0, 6.0), ValueError, r"current_mean_diameter_mm=-1.0"),
        (
            lambda: is_lungrads_growth(6.0, 7.0, 0.0),
            ValueError,
            r"interval_months=0.0 must be a positive",
        ),
        (lambda: is_lungrads_growth(6.0, 7.0, math.nan), ValueError, r"interval_months=nan"),
        (lambda: growth_status(6.0, math.inf, 6.0), ValueError, r"curr_mm=inf must be a positive"),
        (lambda: growth_status("6", 7.0, 6.0), TypeError, r"prev_mm='6' must be a number"),
        (
            lambda: volume_doubling_time_days(0.0, 10.0, 30.0),
            ValueError,
            r"volume1_mm3=0.0 must be a positive",
        ),
        (lambda: volume_doubling_time_days(10.0, -5.0, 30.0), ValueError, r"volume2_mm3=-5.0"),
        (lambda: volume_doubling_time_days(10.0, 20.0, 0.0), ValueError, r"interval_days=0.0"),
        (lambda: volume_doubling_time_days(10.0, 20.0, -3.0), ValueError, r"interval_days=-3.0"),
        (
            lambda: volume_doubling_time_from_diameters_days(-6.0, 8.0, 90.0),
            ValueError,
            r"d1_mm=-6.0",
        ),
        (
            lambda: volume_doubling_time_from_diameters_days(6.0, 8.0, 0.0),
            ValueError,
            r"interval_days=0.0",
        ),
        (
            lambda: volume_after_days(0.0, 90.0, 10.0),
            ValueError,
            r"volume_mm3=0.0 must be a positive",
        ),
        (
            lambda: volume_after_days(10.0, 0.0, 10.0),
            ValueError,
            r"vdt_days=0.0 must be a non-zero",
        ),
        (lambda: volume_after_days(10.0, math.nan, 10.0), ValueError, r"vdt_days=nan"),
        (lambda: volume_after_days(10.0, 90.0, math.inf), ValueError, r"days=inf must be a finite"),
    ],
)
def test_growth_errors(call, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        call()
