"""Scanner-profile subsets of an evaluation: the thick-slice, low-dose end against the rest.

Issue 15 asks for every whole-chest figure on all test chests, on the thick-slice low-dose
subset (slice thickness >= :data:`THICK_SLICE_MIN_MM` **and** exposure <=
:data:`LOW_DOSE_MAX_MAS`) and on the rest, with the subset's difference from the rest in
percentage points (target: within :data:`SUBSET_TOLERANCE_PP`).

A profile is the phantom's :class:`~data_modules.phantom.scanner.ScannerProfile` as a dict
(``slice_thickness_mm``, ``exposure_mas``, ``kernel``, ...). A record without a profile, or
without thickness or exposure, belongs to neither subset and counts only in "all".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

#: Slice thickness (mm) at or above which a scan is "thick" (issue 15).
THICK_SLICE_MIN_MM: float = 2.5
#: Tube current-time product (mAs) at or below which a scan is "low dose" (issue 15).
LOW_DOSE_MAX_MAS: float = 30.0
#: Largest |subset - rest| difference (percentage points) that meets the issue-15 target.
SUBSET_TOLERANCE_PP: float = 5.0
#: Subset names, in table order.
SUBSETS: tuple[str, ...] = ("all", "thick_low_dose", "rest")
#: Profile fields kept in a per-chest record.
PROFILE_FIELDS: tuple[str, ...] = (
    "slice_thickness_mm", "slice_spacing_mm", "exposure_mas", "kvp", "kernel",
    "convolution_kernel", "manufacturer", "pixel_spacing_mm",
)  # fmt: skip

T = TypeVar("T")


def profile_record(profile: Mapping | None) -> dict | None:
    """The :data:`PROFILE_FIELDS` of a scanner profile dict that are present (None stays None)."""
    if profile is None:
        return None
    return {k: profile[k] for k in PROFILE_FIELDS if profile.get(k) is not None}


def profile_subset(profile: Mapping | None) -> str | None:
    """ "thick_low_dose", "rest", or None when thickness or exposure is unknown.

    Example: 2.5 mm at 30 mAs is thick and low dose; 2.49 mm or 30.1 mAs is the rest.
    """
    if not profile:
        return None
    thickness, mas = profile.get("slice_thickness_mm"), profile.get("exposure_mas")
    if thickness is None or mas is None:
        return None
    thick_low = float(thickness) >= THICK_SLICE_MIN_MM and float(mas) <= LOW_DOSE_MAX_MAS
    return "thick_low_dose" if thick_low else "rest"


def split_by_profile(
    records: Sequence[T], profile_of: Callable[[T], Mapping | None]
) -> dict[str, list[T]]:
    """``{subset: records}`` for every name of :data:`SUBSETS` ("all" keeps every record)."""
    out: dict[str, list[T]] = {name: [] for name in SUBSETS}
    for record in records:
        out["all"].append(record)
        subset = profile_subset(profile_of(record))
        if subset is not None:
            out[subset].append(record)
    return out


def difference_points(
    subset: Mapping[str, float | None], rest: Mapping[str, float | None], keys: Sequence[str]
) -> dict[str, dict]:
    """``subset - rest`` of fractions in [0, 1], in percentage points, and whether it meets
    the target (|difference| <= :data:`SUBSET_TOLERANCE_PP`); None where either is undefined.
    """
    out = {}
    for key in keys:
        a, b = subset.get(key), rest.get(key)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            out[key] = {"points": None, "within_tolerance": None}
            continue
        points = 100.0 * (float(a) - float(b))
        out[key] = {"points": points, "within_tolerance": abs(points) <= SUBSET_TOLERANCE_PP}
    return out


def difference(
    subset: Mapping[str, float | None], rest: Mapping[str, float | None], keys: Sequence[str]
) -> dict[str, float | None]:
    """``subset - rest`` in the figures' own units (mm, s, ...); None where either is undefined."""
    out = {}
    for key in keys:
        a, b = subset.get(key), rest.get(key)
        out[key] = None if a is None or b is None else float(a) - float(b)
    return out
