"""Nodule growth: the Lung-RADS growth definition and volume doubling time (VDT).

Sources (``reference/lung-rads.md``, ``reference/risk-models.md``): Lung-RADS v2022 growth is a
mean-diameter increase of >1.5 mm within 12 months; VDT is the modified Schwartz formula
``VDT = t ln 2 / ln(V2 / V1)`` (t in days), or with a spherical nodule (V ∝ D³)
``VDT = t ln 2 / (3 ln(D2 / D1))``.
"""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np

from lungvlm.clinical.lungrads import round_diameter_mm

#: Lung-RADS v2022 growth: mean diameter up by more than this (mm) ...
LUNGRADS_GROWTH_MM: float = 1.5
#: ... within this many months.
LUNGRADS_GROWTH_WINDOW_MONTHS: float = 12.0


def _positive(name: str, value: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}={value!r} must be a number ({unit})")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name}={value!r} must be a positive finite number ({unit})")
    return number


def _change_mm(previous_mm: float, current_mm: float) -> Decimal:
    """Change of the 0.1 mm-rounded mean diameters, exact in decimal (no float artefacts)."""
    previous = Decimal(repr(round_diameter_mm(previous_mm)))
    current = Decimal(repr(round_diameter_mm(current_mm)))
    return current - previous


def is_lungrads_growth(
    previous_mean_diameter_mm: float, current_mean_diameter_mm: float, interval_months: float
) -> bool:
    """Whether a nodule meets the Lung-RADS v2022 growth definition.

    Growth is a mean-diameter increase of >1.5 mm within 12 months (Lung-RADS v2022). Both
    diameters are rounded to 0.1 mm first, as Lung-RADS reports them, so 6.0 -> 7.5 mm is not
    growth and 6.0 -> 7.6 mm is. Over an interval of more than 12 months this returns False:
    v2022 handles slow growth over several screens with a separate category 4B rule, which
    needs the whole history (see :func:`growth_status`).

    Args:
        previous_mean_diameter_mm: Mean diameter on the prior CT (mm), > 0.
        current_mean_diameter_mm: Mean diameter on the current CT (mm), > 0.
        interval_months: Time between the two CTs (months), > 0.

    Raises:
        ValueError: if a diameter or the interval is not positive and finite.
    """
    _positive("previous_mean_diameter_mm", previous_mean_diameter_mm, "mm")
    _positive("current_mean_diameter_mm", current_mean_diameter_mm, "mm")
    interval = _positive("interval_months", interval_months, "months")
    if interval > LUNGRADS_GROWTH_WINDOW_MONTHS:
        return False
    change = _change_mm(previous_mean_diameter_mm, current_mean_diameter_mm)
    return change > Decimal(repr(LUNGRADS_GROWTH_MM))


def growth_status(prev_mm: float, curr_mm: float, interval_months: float) -> str:
    """Classify the change of a nodule's mean diameter as "growing", "stable" or "smaller".

    Rule (diameters rounded to 0.1 mm first):

    - "growing": increase >1.5 mm (the Lung-RADS v2022 growth amount). Within 12 months this
      is Lung-RADS growth (:func:`is_lungrads_growth`). Project choice: a longer interval with
      the same increase is also "growing", so that a grown nodule is never called stable;
      v2022 calls growth over several screens "slow growth" (category 4B), which needs the
      history of every screen and is left to the caller.
    - "smaller": decrease >1.5 mm. Project choice, symmetric to growth; the reference defines
      no threshold for shrinkage. For :func:`lungvlm.clinical.lungrads.categorize` pass a
      smaller nodule as status "stable" (the v2022 stepped rules read "stable or smaller").
    - "stable": anything else.

    Args:
        prev_mm: Mean diameter on the prior CT (mm), > 0.
        curr_mm: Mean diameter on the current CT (mm), > 0.
        interval_months: Time between the two CTs (months), > 0.

    Raises:
        ValueError: if a diameter or the interval is not positive and finite.
    """
    _positive("prev_mm", prev_mm, "mm")
    _positive("curr_mm", curr_mm, "mm")
    _positive("interval_months", interval_months, "months")
    change = _change_mm(prev_mm, curr_mm)
    threshold = Decimal(repr(LUNGRADS_GROWTH_MM))
    if change > threshold:
        return "growing"
    if change < -threshold:
        return "smaller"
    return "stable"


#: Volumetric growth also needs the volume to change by more than this fraction. Project choice
#: (the reference gives no volumetric threshold): a margin above repeat-scan volume noise, which
#: a one-voxel change of a small nodule's outline already makes large.
VOLUME_NOISE_FRACTION: float = 0.25


def volume_implied_diameter_mm(
    prev_mean_diameter_mm: float, prev_volume_mm3: float, curr_volume_mm3: float
) -> float:
    """Current mean diameter (mm) implied by the volume change at constant shape.

    A nodule that keeps its shape scales every length by ``(V2 / V1) ** (1/3)``, so its mean
    diameter becomes ``D1 (V2 / V1) ** (1/3)`` (the sphere relation V ∝ D³ of
    ``reference/risk-models.md``, applied to the measured Lung-RADS mean diameter).

    Raises:
        ValueError: if a diameter or volume is not positive and finite.
    """
    d1 = _positive("prev_mean_diameter_mm", prev_mean_diameter_mm, "mm")
    v1 = _positive("prev_volume_mm3", prev_volume_mm3, "mm³")
    v2 = _positive("curr_volume_mm3", curr_volume_mm3, "mm³")
    return d1 * (v2 / v1) ** (1.0 / 3.0)


def growth_status_volumetric(
    prev_mean_diameter_mm: float,
    curr_mean_diameter_mm: float,
    prev_volume_mm3: float,
    curr_volume_mm3: float,
    interval_months: float,
    volume_noise_fraction: float = VOLUME_NOISE_FRACTION,
) -> str:
    """ "growing", "stable" or "smaller" from both the mean diameters and the volumes.

    Volume is more reproducible than a diameter read on one slice, but Lung-RADS v2022 defines
    growth by the mean diameter (>1.5 mm within 12 months, ``reference/lung-rads.md``). Rule:

    - "growing": the diameter rule holds (:func:`growth_status` says "growing"), or the volume
      change implies it (:func:`volume_implied_diameter_mm` is more than 1.5 mm above the prior
      mean diameter, both rounded to 0.1 mm) **and** the volume grew by more than
      ``volume_noise_fraction``. The second arm is a project choice: it catches growth that
      the diameter of one axial slice misses, at the same 1.5 mm amount, never a smaller one.
    - "smaller": symmetric (diameter decrease >1.5 mm, or implied decrease >1.5 mm with the
      volume down by more than the noise fraction); project choice, as in
      :func:`growth_status`. A nodule that meets both "growing" and "smaller" arms is
      "stable" (contradictory evidence).
    - "stable": anything else.

    As in :func:`growth_status`, a longer interval than 12 months with the same increase is still
    "growing" (project choice); :func:`is_lungrads_growth` tells whether the 12-month rule holds.

    Args:
        prev_mean_diameter_mm: Mean diameter on the prior CT (mm), > 0.
        curr_mean_diameter_mm: Mean diameter on the current CT (mm), > 0.
        prev_volume_mm3: Volume on the prior CT (mm³), > 0.
        curr_volume_mm3: Volume on the current CT (mm³), > 0.
        interval_months: Time between the two CTs (months), > 0.
        volume_noise_fraction: Relative volume change (>= 0) that measurement noise can explain.

    Raises:
        ValueError: if a diameter, volume or the interval is not positive and finite, or
            ``volume_noise_fraction`` is negative.
    """
    by_diameter = growth_status(prev_mean_diameter_mm, curr_mean_diameter_mm, interval_months)
    implied = volume_implied_diameter_mm(prev_mean_diameter_mm, prev_volume_mm3, curr_volume_mm3)
    if not (math.isfinite(volume_noise_fraction) and volume_noise_fraction >= 0):
        raise ValueError(
            f"volume_noise_fraction={volume_noise_fraction!r} must be a non-negative fraction"
        )
    ratio = curr_volume_mm3 / prev_volume_mm3
    threshold = Decimal(repr(LUNGRADS_GROWTH_MM))
    change = _change_mm(prev_mean_diameter_mm, implied)
    grows = by_diameter == "growing" or (change > threshold and ratio > 1 + volume_noise_fraction)
    shrinks = by_diameter == "smaller" or (
        change < -threshold and ratio < 1 / (1 + volume_noise_fraction)
    )
    if grows == shrinks:
        return "stable"
    return "growing" if grows else "smaller"


def volume_doubling_time_days(
    volume1_mm3: float, volume2_mm3: float, interval_days: float
) -> float:
    """Volume doubling time ``t ln 2 / ln(V2 / V1)`` in days (modified Schwartz formula).

    Source: ``reference/risk-models.md`` (as quoted by several calculators). VDT <400 days is in
    the range of most malignancies and >600 days typical of benign lesions (quoted thresholds,
    not confirmed from the BTS guideline); VDT from small changes is very sensitive to
    measurement error.

    Args:
        volume1_mm3: Volume on the earlier CT (mm³), > 0.
        volume2_mm3: Volume on the later CT (mm³), > 0.
        interval_days: Time between the CTs (days), > 0.

    Returns:
        VDT in days; ``math.inf`` for equal volumes; negative for a shrinking nodule (its
        magnitude is then the volume halving time).

    Raises:
        ValueError: if a volume or the interval is not positive and finite.
    """
    v1 = _positive("volume1_mm3", volume1_mm3, "mm³")
    v2 = _positive("volume2_mm3", volume2_mm3, "mm³")
    days = _positive("interval_days", interval_days, "days")
    if v1 == v2:
        return math.inf
    return days * math.log(2.0) / math.log(v2 / v1)


def volume_doubling_time_from_diameters_days(
    d1_mm: float, d2_mm: float, interval_days: float
) -> float:
    """VDT in days from two diameters, treating the nodule as a sphere (V ∝ D³).

    ``VDT = t ln 2 / (3 ln(D2 / D1))`` (``reference/risk-models.md``); e.g. 6 -> 8 mm in 90 days
    gives 72.3 days. Diameters are used as given (not rounded). Equal diameters give
    ``math.inf``; shrinking gives a negative value.

    Raises:
        ValueError: if a diameter or the interval is not positive and finite.
    """
    d1 = _positive("d1_mm", d1_mm, "mm")
    d2 = _positive("d2_mm", d2_mm, "mm")
    days = _positive("interval_days", interval_days, "days")
    if d1 == d2:
        return math.inf
    return days * math.log(2.0) / (3.0 * math.log(d2 / d1))


def volume_after_days(volume_mm3: float, vdt_days: float, days: float) -> float:
    """Volume (mm³) after ``days`` of exponential growth: ``V · 2 ** (days / vdt_days)``.

    The exponential model behind the Schwartz VDT formula (``reference/risk-models.md``); used
    to grow phantom nodules. ``vdt_days=math.inf`` keeps the volume; a negative VDT shrinks it;
    negative ``days`` goes back in time.

    Raises:
        ValueError: if ``volume_mm3`` is not positive and finite, ``vdt_days`` is 0 or NaN,
            or ``days`` is not finite.
    """
    volume = _positive("volume_mm3", volume_mm3, "mm³")
    if math.isnan(vdt_days) or vdt_days == 0:
        raise ValueError(
            f"vdt_days={vdt_days!r} must be a non-zero number of days (math.inf for no growth)"
        )
    if not math.isfinite(days):
        raise ValueError(f"days={days!r} must be a finite number of days")
    return volume * 2.0 ** (days / vdt_days)
