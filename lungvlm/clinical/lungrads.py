"""ACR Lung-RADS v2022 assessment categories for screening LDCT nodules.

Rules and management wording follow ``reference/lung-rads.md`` (ACR Lung-RADS v2022, released
November 2022, as reproduced by the ACR/RSNA RadElement set RDES267 and public v2022 calculators).
Only the nodule rules are implemented: airway nodules, cysts, infection/inflammation (category 0)
and the S modifier need findings this module does not see. Where the reference leaves a case
open, the choice made here is marked "Project choice" in the docstrings.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from lungvlm.labels import ATTENUATIONS, LUNGRADS_CATEGORIES

#: Nodule status relative to prior screening CTs.
STATUSES: tuple[str, ...] = ("baseline", "new", "growing", "stable")

#: Management of each category, worded as in the v2022 table of ``reference/lung-rads.md``.
MANAGEMENT: dict[str, str] = {
    "0": (
        "Comparison to prior and/or extra screening images; 1–3-month LDCT for suspected "
        "infection or inflammation"
    ),
    "1": "12-month screening LDCT",
    "2": "12-month screening LDCT",
    "3": "6-month LDCT",
    "4A": (
        "3-month LDCT; PET/CT may be considered if there is a solid nodule or solid component ≥8 mm"
    ),
    "4B": (
        "Diagnostic chest CT with or without contrast; PET/CT may be considered if there is a "
        "solid nodule or solid component ≥8 mm; tissue sampling; and/or referral for further "
        "clinical evaluation. Management depends on clinical evaluation, patient preference and "
        "probability of malignancy"
    ),
    "4X": (
        "Work-up as for 4B: diagnostic chest CT with or without contrast; PET/CT may be "
        "considered if there is a solid nodule or solid component ≥8 mm; tissue sampling; "
        "and/or referral for further clinical evaluation. Management depends on clinical "
        "evaluation, patient preference and probability of malignancy"
    ),
}

#: Exam-level priority, least to most suspicious, used by :func:`categorize_exam`.
#: Project choice for "0" (incomplete): it outranks 1 and 2, because an exam that still needs
#: comparison or short-interval imaging cannot be called negative or benign, and is outranked by
#: 3, 4A, 4B and 4X, because those are suspicious findings in their own right (the v2022 notes
#: allow a cancer-like nodule to be called 4B straight away and say to reclassify by the most
#: suspicious nodule). :data:`lungvlm.labels.LUNGRADS_CATEGORIES` keeps "0" first as a label order.
EXAM_PRIORITY: tuple[str, ...] = ("1", "2", "0", "3", "4A", "4B", "4X")

_SUSPICIOUS_UPGRADABLE = ("3", "4A", "4B")


@dataclass(frozen=True)
class LungRADSResult:
    """A Lung-RADS v2022 assessment.

    Attributes:
        category: One of "0", "1", "2", "3", "4A", "4B", "4X".
        management: The category's management text (:data:`MANAGEMENT`).
        reason: Short text naming the rule that fired.
    """

    category: str
    management: str
    reason: str


def management_for(category: str) -> str:
    """Return the Lung-RADS v2022 management text of ``category`` ("0" ... "4X").

    Raises:
        ValueError: if ``category`` is not a Lung-RADS category.
    """
    if category not in MANAGEMENT:
        raise ValueError(_option_error("category", category, LUNGRADS_CATEGORIES))
    return MANAGEMENT[category]


def round_diameter_mm(value_mm: float) -> float:
    """Round a diameter to 0.1 mm, halves up, as Lung-RADS v2022 reports mean diameters.

    Rounds the shortest decimal representation of the float with ``Decimal`` so that binary
    float artefacts do not decide the boundary: 5.95 -> 6.0 and 5.94 -> 5.9 (plain ``round``
    gives 5.9 for 5.95).
    """
    return float(Decimal(repr(float(value_mm))).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def _option_error(name: str, value: object, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), list(options), n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{name}={value!r} is not valid; expected one of {tuple(options)}{hint}"


def _look_up(name: str, value: object, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(_option_error(name, value, options))
    return value


def _positive_mm(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}={value!r} must be a number of mm")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name}={value!r} must be a positive finite size in mm")
    return number


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}={value!r} must be True or False")
    return bool(value)


def _band(value_mm: float, edges_mm: Sequence[float], categories: Sequence[str]) -> tuple[str, str]:
    """Category of the half-open size band [edge_i, edge_i+1) containing ``value_mm``."""
    for i, edge in enumerate(edges_mm):
        if value_mm < edge:
            low = f">={edges_mm[i - 1]:g} to " if i > 0 else ""
            return categories[i], f"{value_mm:.1f} mm, {low}<{edge:g} mm"
    return categories[-1], f"{value_mm:.1f} mm, >={edges_mm[-1]:g} mm"


def _solid(total_mm: float, status: str, juxtapleural_benign: bool) -> tuple[str, str]:
    if status == "stable":
        return "2", "stable solid nodule (project choice: stable -> 2)"
    if juxtapleural_benign and status in ("baseline", "new") and total_mm < 10.0:
        return "2", f"juxtapleural benign-appearing solid nodule, {total_mm:.1f} mm, <10 mm"
    if status == "baseline":
        category, band = _band(total_mm, (6.0, 8.0, 15.0), ("2", "3", "4A", "4B"))
    elif status == "new":
        category, band = _band(total_mm, (4.0, 6.0, 8.0), ("2", "3", "4A", "4B"))
    else:
        category, band = _band(total_mm, (8.0,), ("4A", "4B"))
    return category, f"solid nodule, {status}, mean diameter {band}"


def _part_solid(total_mm: float, solid_mm: float, status: str) -> tuple[str, str]:
    if status == "stable":
        return "2", "stable part-solid nodule (project choice: stable -> 2)"
    if status in ("baseline", "new") and total_mm < 6.0:
        category = "2" if status == "baseline" else "3"
        return category, f"part-solid nodule, {status}, total {total_mm:.1f} mm, <6 mm"
    if status == "baseline":
        category, band = _band(solid_mm, (6.0, 8.0), ("3", "4A", "4B"))
        return category, f"part-solid nodule, baseline, total >=6 mm, solid component {band}"
    category, band = _band(solid_mm, (4.0,), ("4A", "4B"))
    return category, f"part-solid nodule, {status} solid component {band}"


def _ground_glass(total_mm: float, status: str) -> tuple[str, str]:
    if total_mm < 30.0:
        return "2", f"ground-glass nodule, {status}, {total_mm:.1f} mm, <30 mm"
    if status == "stable":
        return "2", f"ground-glass nodule, stable, {total_mm:.1f} mm, >=30 mm"
    note = " (project choice: growing treated as new)" if status == "growing" else ""
    return "3", f"ground-glass nodule, {status}, {total_mm:.1f} mm, >=30 mm{note}"


def categorize(
    *,
    attenuation: str,
    mean_diameter_mm: float,
    solid_component_mm: float | None = None,
    status: str = "baseline",
    benign_calcification: bool = False,
    contains_fat: bool = False,
    juxtapleural_benign: bool = False,
    suspicious_features: bool = False,
) -> LungRADSResult:
    """Lung-RADS v2022 category of one nodule (ACR Lung-RADS v2022, ``reference/lung-rads.md``).

    Mean diameters (and the solid component) are rounded to 0.1 mm with
    :func:`round_diameter_mm` before comparison. Size bands are half-open: "6 to <8 mm"
    contains 6.0 and 7.9 but not 8.0. Rules, in order:

    1. Benign calcification or fat -> 1 (never upgraded to 4X).
    2. Solid: stable -> 2 (project choice, below); juxtapleural_benign (solid, smooth,
       oval/lentiform/triangular, attached to pleura) <10 mm at baseline or new -> 2;
       baseline <6 -> 2, 6 to <8 -> 3, 8 to <15 -> 4A, >=15 -> 4B; new <4 -> 2, 4 to <6 -> 3,
       6 to <8 -> 4A, >=8 -> 4B; growing <8 -> 4A, >=8 -> 4B.
    3. Part-solid (total = ``mean_diameter_mm``, solid = ``solid_component_mm``): stable -> 2
       (project choice); baseline total <6 -> 2, total >=6 with solid <6 -> 3, solid 6 to <8 ->
       4A, solid >=8 -> 4B; new total <6 -> 3. A new nodule of total >=6 mm has, by definition,
       a new solid component, so the table's "new or growing solid component" rule applies:
       solid <4 -> 4A, >=4 -> 4B. Growing (taken to mean the solid component grows): solid <4
       -> 4A, >=4 -> 4B whatever the total, since v2022 lists "<6 mm total -> 3" for new only.
    4. Ground glass: <30 -> 2 at baseline, new, growing or stable; >=30 baseline or new -> 3;
       >=30 stable -> 2. Project choice: >=30 growing -> 3 (the reference gives 2 only for
       "stable or slowly growing" and names no other category).
    5. ``suspicious_features`` upgrades 3, 4A and 4B to 4X, but not 1 or 2 (4X is "a category 3
       or 4 nodule with additional features ... that increase suspicion").

    Project choice for ``status="stable"`` of solid and part-solid nodules: the reference has no
    per-size rule for stable nodules, only stepped management (a category 3 nodule stable or
    smaller at 6 months -> 2; a 4A nodule stable or smaller at 3 months -> 3) and v1.1's
    "category 3 or 4 unchanged for >=3 months -> 2". Without the prior category this function
    returns 2; a caller that knows the prior category should apply the stepped rule instead.
    A nodule that became smaller should be passed as "stable". Category 0 is never returned
    here (it describes an incomplete exam, not a nodule).

    Args:
        attenuation: "solid", "part_solid" or "ground_glass".
        mean_diameter_mm: Mean of long and short axis (mm); the total size if part-solid.
        solid_component_mm: Mean diameter of the solid component (mm); required for
            "part_solid" and forbidden otherwise.
        status: "baseline", "new", "growing" (Lung-RADS growth, >1.5 mm within 12 months)
            or "stable".
        benign_calcification: Complete, central, popcorn or concentric-ring calcification.
        contains_fat: The nodule contains fat.
        juxtapleural_benign: Solid, smooth, oval/lentiform/triangular nodule attached to pleura.
        suspicious_features: Features that increase suspicion (e.g. spiculation,
            lymphadenopathy).

    Returns:
        The nodule's category, its management text and the rule that fired.

    Raises:
        ValueError: unknown ``attenuation`` or ``status`` (with the nearest valid option);
            a size that is not positive and finite; ``solid_component_mm`` missing for a
            part-solid nodule, given for another type, or larger than ``mean_diameter_mm``.
        TypeError: a size that is not a number or a flag that is not a bool.
    """
    attenuation = _look_up("attenuation", attenuation, ATTENUATIONS)
    status = _look_up("status", status, STATUSES)
    total_mm = _positive_mm("mean_diameter_mm", mean_diameter_mm)
    if attenuation == "part_solid":
        if solid_component_mm is None:
            raise ValueError(
                "solid_component_mm=None: a part_solid nodule needs the mean diameter of its "
                "solid component in mm"
            )
        solid_mm = _positive_mm("solid_component_mm", solid_component_mm)
        if solid_mm > total_mm:
            raise ValueError(
                f"solid_component_mm={solid_component_mm!r} exceeds "
                f"mean_diameter_mm={mean_diameter_mm!r}; the solid part lies inside the nodule"
            )
    elif solid_component_mm is not None:
        raise ValueError(
            f"solid_component_mm={solid_component_mm!r} was given for attenuation="
            f"{attenuation!r}; only part_solid nodules have a solid component"
        )
    calcified = _flag("benign_calcification", benign_calcification)
    fat = _flag("contains_fat", contains_fat)
    juxtapleural = _flag("juxtapleural_benign", juxtapleural_benign)
    suspicious = _flag("suspicious_features", suspicious_features)

    if calcified or fat:
        what = "benign calcification" if calcified else "fat"
        return LungRADSResult("1", MANAGEMENT["1"], f"nodule with {what}")
    total_mm = round_diameter_mm(total_mm)
    if attenuation == "solid":
        category, reason = _solid(total_mm, status, juxtapleural)
    elif attenuation == "part_solid":
        category, reason = _part_solid(total_mm, round_diameter_mm(solid_mm), status)
    else:
        category, reason = _ground_glass(total_mm, status)
    if suspicious and category in _SUSPICIOUS_UPGRADABLE:
        reason = f"{reason}; suspicious features upgrade {category} to 4X"
        category = "4X"
    return LungRADSResult(category, MANAGEMENT[category], reason)


def categorize_exam(results: Sequence[LungRADSResult]) -> LungRADSResult:
    """Exam-level Lung-RADS category: the category of the most suspicious finding.

    "Each exam gets the category of its most suspicious finding" (Lung-RADS v2022 general
    rules). Suspicion follows :data:`EXAM_PRIORITY` (1 < 2 < 0 < 3 < 4A < 4B < 4X; see there for
    where "0" sits and why). On ties the first such result is returned.

    Args:
        results: Per-finding results, e.g. from :func:`categorize`.

    Returns:
        The winning result itself, or category "1" with reason "no nodules" if ``results``
        is empty.

    Raises:
        TypeError: if an element is not a :class:`LungRADSResult`.
        ValueError: if an element's category is not a Lung-RADS category.
    """
    if len(results) == 0:
        return LungRADSResult("1", MANAGEMENT["1"], "no nodules")
    for i, result in enumerate(results):
        if not isinstance(result, LungRADSResult):
            raise TypeError(f"results[{i}]={result!r} is not a LungRADSResult")
        if result.category not in EXAM_PRIORITY:
            raise ValueError(
                _option_error(f"results[{i}].category", result.category, EXAM_PRIORITY)
            )
    return max(results, key=lambda result: EXAM_PRIORITY.index(result.category))
