"""Fairness audit: metrics per acquisition subgroup, with bootstrap CIs and the largest gap.

Subgroup axes of a scanner profile (the phantom's ``ScannerProfile`` dict, or a DICOM series'
equivalent fields):

- ``vendor``: ``manufacturer``;
- ``kernel``: ``kernel`` ("soft"/"sharp");
- ``slice_thickness``: bands of ``slice_thickness_mm`` split at :data:`THICKNESS_EDGES_MM`
  (``< 1.5 mm``, ``1.5-2.5 mm``, ``>= 2.5 mm``; the last is issue 15's thick-slice end);
- ``dose``: bands of ``exposure_mas`` split at :data:`DOSE_EDGES_MAS` (``<= 30 mAs``, issue
  15's low-dose end; ``30-100 mAs``; ``> 100 mAs``).

A metric is a function of a list of records (crops or chests) that returns a number or None.
Its confidence interval is the percentile bootstrap over the records of the subgroup
(:func:`bootstrap_ci`, fixed seed: the audit is reproducible). The *largest gap* of an axis is
the maximum minus the minimum of the metric over its subgroups with at least ``min_records``
records (and a defined value), with the two subgroups named.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

#: Slice-thickness band edges (mm): bands [0, 1.5), [1.5, 2.5), [2.5, inf).
THICKNESS_EDGES_MM: tuple[float, ...] = (1.5, 2.5)
#: Exposure band edges (mAs): bands (0, 30], (30, 100], (100, inf).
DOSE_EDGES_MAS: tuple[float, ...] = (30.0, 100.0)
#: Bootstrap resamples of a confidence interval.
DEFAULT_BOOTSTRAP = 1000
#: Fewest records a subgroup needs to count in the largest gap.
DEFAULT_MIN_RECORDS = 3
#: Subgroup axes in table order.
AXES: tuple[str, ...] = ("vendor", "kernel", "slice_thickness", "dose")

Metric = Callable[[Sequence[Any]], "float | None"]


def thickness_band(thickness_mm: float) -> str:
    """Band name of a slice thickness (mm): "<1.5 mm", "1.5-2.5 mm" or ">=2.5 mm"."""
    low, high = THICKNESS_EDGES_MM
    if thickness_mm < low:
        return f"<{low:g} mm"
    return f"{low:g}-{high:g} mm" if thickness_mm < high else f">={high:g} mm"


def dose_band(exposure_mas: float) -> str:
    """Band name of an exposure (mAs): "<=30 mAs", "30-100 mAs" or ">100 mAs"."""
    low, high = DOSE_EDGES_MAS
    if exposure_mas <= low:
        return f"<={low:g} mAs"
    return f"{low:g}-{high:g} mAs" if exposure_mas <= high else f">{high:g} mAs"


def subgroup_of(profile: Mapping | None, axis: str) -> str | None:
    """The record's subgroup on ``axis`` (:data:`AXES`), or None when the profile lacks it."""
    if axis not in AXES:
        raise ValueError(f"axis={axis!r} is not one of {AXES}")
    if not profile:
        return None
    if axis == "vendor":
        return profile.get("manufacturer")
    if axis == "kernel":
        return profile.get("kernel")
    if axis == "slice_thickness":
        value = profile.get("slice_thickness_mm")
        return None if value is None else thickness_band(float(value))
    value = profile.get("exposure_mas")
    return None if value is None else dose_band(float(value))


def bootstrap_ci(
    records: Sequence[Any],
    metric: Metric,
    n_boot: int = DEFAULT_BOOTSTRAP,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap (1 - alpha) interval of ``metric`` over resampled ``records``.

    Resamples where the metric is undefined (None or NaN, e.g. AUROC of one class) are
    dropped; with fewer than half of them defined, or under 2 records, returns (None, None).
    """
    n = len(records)
    if n < 2 or n_boot < 1:
        return None, None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, n, n)
        value = metric([records[i] for i in pick])
        if value is not None and math.isfinite(value):
            values.append(value)
    if len(values) < n_boot / 2:
        return None, None
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def subgroup_table(
    records: Sequence[Any],
    profile_of: Callable[[Any], Mapping | None],
    metrics: Mapping[str, Metric],
    n_boot: int = DEFAULT_BOOTSTRAP,
    min_records: int = DEFAULT_MIN_RECORDS,
    axes: Sequence[str] = AXES,
) -> dict:
    """Every metric on every subgroup of every axis, with CIs and the largest gap per axis.

    Returns:
        ``{"overall": {metric: {value, ci}}, "axes": {axis: {"groups": {name: {"n": .., metric:
        {"value", "ci"}}}, "gaps": {metric: {"gap", "high", "low"}}}}}``; a gap is None with
        fewer than two qualifying subgroups.
    """

    def scored(group: Sequence[Any], seed: int) -> dict:
        out = {"n": len(group)}
        for name, metric in metrics.items():
            value = metric(group) if group else None
            if value is not None and not math.isfinite(value):
                value = None
            ci = (
                bootstrap_ci(group, metric, n_boot, seed=seed)
                if value is not None
                else (None, None)
            )
            out[name] = {"value": value, "ci": list(ci)}
        return out

    table: dict = {"overall": scored(list(records), 0), "axes": {}}
    for a_index, axis in enumerate(axes):
        groups: dict[str, list] = {}
        for record in records:
            name = subgroup_of(profile_of(record), axis)
            if name is not None:
                groups.setdefault(str(name), []).append(record)
        rows = {
            name: scored(members, seed=1000 * (a_index + 1) + g)
            for g, (name, members) in enumerate(sorted(groups.items()))
        }
        gaps = {}
        for metric in metrics:
            values = {
                name: row[metric]["value"]
                for name, row in rows.items()
                if row["n"] >= min_records and row[metric]["value"] is not None
            }
            if len(values) < 2:
                gaps[metric] = None
                continue
            high, low = max(values, key=values.get), min(values, key=values.get)
            gaps[metric] = {"gap": values[high] - values[low], "high": high, "low": low}
        table["axes"][axis] = {"groups": rows, "gaps": gaps}
    return table


def largest_gaps(table: Mapping) -> dict[str, dict | None]:
    """Per metric, the largest gap over all axes of a :func:`subgroup_table` (with its axis)."""
    best: dict[str, dict | None] = {}
    for axis, entry in table["axes"].items():
        for metric, gap in entry["gaps"].items():
            best.setdefault(metric, None)
            if gap is not None and (best[metric] is None or gap["gap"] > best[metric]["gap"]):
                best[metric] = {**gap, "axis": axis}
    return best
