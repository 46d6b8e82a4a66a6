"""Brock (PanCan) malignancy probability of a screen-detected nodule.

McWilliams et al., "Probability of cancer in pulmonary nodules detected on first screening CT",
NEJM 2013;369:910-919: the full model with spiculation (the usual "Brock calculator").
Coefficients from ``reference/risk-models.md`` (a public implementation and Table 2 of
Eur Radiol 2019;29:5367, PMC6717521, agree). The model was built on nodules at the first
screening CT; its output is a model estimate, not a diagnosis.
"""

from __future__ import annotations

import difflib
import math

import numpy as np

from lungvlm.labels import ATTENUATIONS

#: Full-model coefficients (McWilliams NEJM 2013), centred at age 62, 4 mm and 4 nodules.
BROCK_INTERCEPT: float = -6.7892
BROCK_AGE_PER_YEAR: float = 0.0287
BROCK_AGE_CENTER_YEARS: float = 62.0
BROCK_FEMALE: float = 0.6011
BROCK_FAMILY_HISTORY: float = 0.2961
BROCK_EMPHYSEMA: float = 0.2953
BROCK_SIZE: float = -5.3854
#: (4 mm / 10) ** -0.5, which centres the size term at 4 mm.
BROCK_SIZE_CENTER: float = 1.58113883
BROCK_PART_SOLID: float = 0.3770
BROCK_NON_SOLID: float = -0.1276
BROCK_UPPER_LOBE: float = 0.6581
BROCK_NODULE_COUNT: float = -0.0824
BROCK_NODULE_COUNT_CENTER: float = 4.0
BROCK_SPICULATION: float = 0.7729

_TYPE_COEFFICIENT: dict[str, float] = {
    "solid": 0.0,
    "part_solid": BROCK_PART_SOLID,
    "ground_glass": BROCK_NON_SOLID,
}


def _flag(name: str, value: object) -> float:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}={value!r} must be True or False")
    return 1.0 if value else 0.0


def _check_positive(name: str, value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}={value!r} must be a number ({what})")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} must be a positive finite {what}")


def brock_logit(
    *,
    age_years: float,
    female: bool,
    family_history: bool,
    emphysema: bool,
    nodule_size_mm: float,
    nodule_type: str,
    upper_lobe: bool,
    nodule_count: int,
    spiculation: bool,
) -> float:
    """Linear predictor x of the Brock full model with spiculation (McWilliams NEJM 2013).

    ``x = 0.0287 (age - 62) + 0.6011 female + 0.2961 family_history + 0.2953 emphysema
    - 5.3854 ((size / 10) ** -0.5 - 1.58113883) + 0.3770 part_solid - 0.1276 non_solid
    + 0.6581 upper_lobe - 0.0824 (nodule_count - 4) + 0.7729 spiculation - 6.7892``.

    The sources do not confirm whether "size" is the longest or the mean diameter; LungVLM
    passes the Lung-RADS mean diameter (project choice).

    Args:
        age_years: Age (years), > 0.
        female: Female sex.
        family_history: Family history of lung cancer.
        emphysema: Emphysema on CT.
        nodule_size_mm: Nodule diameter (mm), > 0.
        nodule_type: "solid", "part_solid" or "ground_glass" (non-solid).
        upper_lobe: Nodule in an upper lobe.
        nodule_count: Number of nodules on the scan, >= 1.
        spiculation: Spiculated nodule.

    Returns:
        The logit x; the probability is ``1 / (1 + exp(-x))``.

    Raises:
        ValueError: age or size not positive and finite, ``nodule_count`` < 1, or an unknown
            ``nodule_type``.
        TypeError: a flag that is not a bool, an age or size that is not a number, or a
            ``nodule_count`` that is not an integer.
    """
    _check_positive("age_years", age_years, "age in years")
    _check_positive("nodule_size_mm", nodule_size_mm, "size in mm")
    if isinstance(nodule_count, bool) or not isinstance(nodule_count, (int, np.integer)):
        raise TypeError(f"nodule_count={nodule_count!r} must be an integer")
    if nodule_count < 1:
        raise ValueError(f"nodule_count={nodule_count!r} must be >= 1 (this nodule counts)")
    if not isinstance(nodule_type, str) or nodule_type not in _TYPE_COEFFICIENT:
        close = difflib.get_close_matches(str(nodule_type), ATTENUATIONS, n=1, cutoff=0.0)
        raise ValueError(
            f"nodule_type={nodule_type!r} is not valid; expected one of {ATTENUATIONS}; "
            f"did you mean {close[0]!r}?"
        )
    size_term = (nodule_size_mm / 10.0) ** -0.5 - BROCK_SIZE_CENTER
    return (
        BROCK_AGE_PER_YEAR * (age_years - BROCK_AGE_CENTER_YEARS)
        + BROCK_FEMALE * _flag("female", female)
        + BROCK_FAMILY_HISTORY * _flag("family_history", family_history)
        + BROCK_EMPHYSEMA * _flag("emphysema", emphysema)
        + BROCK_SIZE * size_term
        + _TYPE_COEFFICIENT[nodule_type]
        + BROCK_UPPER_LOBE * _flag("upper_lobe", upper_lobe)
        + BROCK_NODULE_COUNT * (nodule_count - BROCK_NODULE_COUNT_CENTER)
        + BROCK_SPICULATION * _flag("spiculation", spiculation)
        + BROCK_INTERCEPT
    )


def malignancy_probability(
    *,
    age_years: float,
    female: bool,
    family_history: bool,
    emphysema: bool,
    nodule_size_mm: float,
    nodule_type: str,
    upper_lobe: bool,
    nodule_count: int,
    spiculation: bool,
) -> float:
    """Brock full-model malignancy probability ``1 / (1 + exp(-x))`` (McWilliams NEJM 2013).

    See :func:`brock_logit` for the formula, the arguments and the errors. Reference test
    vectors (``reference/risk-models.md``): age 62, male, no family history, no emphysema,
    4 mm solid, not upper lobe, 4 nodules, not spiculated -> 0.00112.

    Returns:
        Probability of malignancy in (0, 1), a model estimate.
    """
    x = brock_logit(
        age_years=age_years,
        female=female,
        family_history=family_history,
        emphysema=emphysema,
        nodule_size_mm=nodule_size_mm,
        nodule_type=nodule_type,
        upper_lobe=upper_lobe,
        nodule_count=nodule_count,
        spiculation=spiculation,
    )
    return 1.0 / (1.0 + math.exp(-x))
