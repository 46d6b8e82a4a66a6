"""Brock / PanCan full model with spiculation (McWilliams NEJM 2013; reference/risk-models.md)."""

from __future__ import annotations

import math

import pytest

from lungvlm.clinical.brock import brock_logit, malignancy_probability

BASE = {
    "age_years": 62.0,
    "female": False,
    "family_history": False,
    "emphysema": False,
    "nodule_size_mm": 4.0,
    "nodule_type": "solid",
    "upper_lobe": False,
    "nodule_count": 4,
    "spiculation": False,
}


def test_reference_vector_centred_patient() -> None:
    # All centred terms vanish: x is the intercept.
    assert brock_logit(**BASE) == pytest.approx(-6.7892, abs=1e-6)
    assert malignancy_probability(**BASE) == pytest.approx(0.00112, abs=5e-6)


def test_reference_vector_high_risk() -> None:
    # x = 0.0287*3 + 0.6011 + 0.2961 + 0.2953 - 5.3854*(1.5**-0.5 - 1.58113883) + 0.3770
    #     + 0.6581 - 0.0824*(1 - 4) + 0.7729 - 6.7892 = 0.66250; p = 0.65982 (reference: ~0.660)
    case = {
        "age_years": 65.0,
        "female": True,
        "family_history": True,
        "emphysema": True,
        "nodule_size_mm": 15.0,
        "nodule_type": "part_solid",
        "upper_lobe": True,
        "nodule_count": 1,
        "spiculation": True,
    }
    assert brock_logit(**case) == pytest.approx(0.66250, abs=1e-4)
    assert malignancy_probability(**case) == pytest.approx(0.65982, abs=1e-4)


@pytest.mark.parametrize(
    ("change", "delta_logit"),
    [
        ({"age_years": 72.0}, 0.0287 * 10),
        ({"female": True}, 0.6011),
        ({"family_history": True}, 0.2961),
        ({"emphysema": True}, 0.2953),
        ({"nodule_type": "part_solid"}, 0.3770),
        ({"nodule_type": "ground_glass"}, -0.1276),
        ({"upper_lobe": True}, 0.6581),
        ({"nodule_count": 6}, -0.0824 * 2),
        ({"spiculation": True}, 0.7729),
        ({"nodule_size_mm": 10.0}, -5.3854 * (1.0 - 1.58113883)),
    ],
)
def test_each_coefficient(change: dict, delta_logit: float) -> None:
    assert brock_logit(**{**BASE, **change}) - brock_logit(**BASE) == pytest.approx(
        delta_logit, abs=1e-9
    )


def test_probability_is_logistic_of_logit() -> None:
    case = {**BASE, "nodule_size_mm": 9.0, "upper_lobe": True}
    x = brock_logit(**case)
    assert malignancy_probability(**case) == pytest.approx(1.0 / (1.0 + math.exp(-x)))


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        ({"age_years": 0.0}, ValueError, r"age_years=0.0 must be a positive finite age"),
        ({"age_years": -5.0}, ValueError, r"age_years=-5.0"),
        ({"age_years": math.nan}, ValueError, r"age_years=nan"),
        ({"nodule_size_mm": 0.0}, ValueError, r"nodule_size_mm=0.0 must be a positive finite size"),
        ({"nodule_size_mm": math.inf}, ValueError, r"nodule_size_mm=inf"),
        ({"age_years": "62"}, TypeError, r"age_years='62' must be a number"),
        ({"nodule_count": 0}, ValueError, r"nodule_count=0 must be >= 1"),
        ({"nodule_count": 2.5}, TypeError, r"nodule_count=2.5 must be an integer"),
        (
            {"nodule_type": "nonsolid"},
            ValueError,
            r"nodule_type='nonsolid' is not valid.*did you mean 'solid'",
        ),
        ({"nodule_type": "part-solid"}, ValueError, r"did you mean 'part_solid'"),
        ({"spiculation": 1}, TypeError, r"spiculation=1 must be True or False"),
        ({"female": "yes"}, TypeError, r"female='yes' must be True or False"),
    ],
)
def test_brock_errors(change: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        malignancy_probability(**{**BASE, **change})
