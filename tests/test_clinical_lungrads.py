"""Lung-RADS v2022 rules (reference/lung-rads.md): both sides of every size threshold."""

from __future__ import annotations

import math

import pytest

from lungvlm.clinical.lungrads import (
    EXAM_PRIORITY,
    MANAGEMENT,
    LungRADSResult,
    categorize,
    categorize_exam,
    management_for,
    round_diameter_mm,
)
from lungvlm.labels import LUNGRADS_CATEGORIES

# (status, mean diameter mm, expected category)
SOLID_CASES = [
    ("baseline", 5.9, "2"),
    ("baseline", 6.0, "3"),
    ("baseline", 5.94, "2"),  # rounds to 5.9
    ("baseline", 5.95, "3"),  # rounds half up to 6.0
    ("baseline", 7.9, "3"),
    ("baseline", 8.0, "4A"),
    ("baseline", 14.9, "4A"),
    ("baseline", 15.0, "4B"),
    ("baseline", 14.95, "4B"),
    ("new", 3.9, "2"),
    ("new", 4.0, "3"),
    ("new", 5.9, "3"),
    ("new", 6.0, "4A"),
    ("new", 7.9, "4A"),
    ("new", 8.0, "4B"),
    ("growing", 3.0, "4A"),
    ("growing", 7.9, "4A"),
    ("growing", 8.0, "4B"),
    ("growing", 7.95, "4B"),
    ("stable", 5.0, "2"),  # project choice: stable -> 2
    ("stable", 20.0, "2"),
]


@pytest.mark.parametrize(("status", "diameter_mm", "expected"), SOLID_CASES)
def test_solid(status: str, diameter_mm: float, expected: str) -> None:
    result = categorize(attenuation="solid", mean_diameter_mm=diameter_mm, status=status)
    assert result.category == expected
    assert result.management == MANAGEMENT[expected]


# (status, total mm, solid component mm, expected category)
PART_SOLID_CASES = [
    ("baseline", 5.9, 5.0, "2"),
    ("baseline", 5.9, 5.9, "2"),
    ("baseline", 6.0, 2.0, "3"),
    ("baseline", 10.0, 5.9, "3"),
    ("baseline", 10.0, 6.0, "4A"),
    ("baseline", 10.0, 7.9, "4A"),
    ("baseline", 10.0, 8.0, "4B"),
    ("baseline", 10.0, 5.95, "4A"),  # solid component rounds to 6.0
    ("new", 5.9, 1.0, "3"),
    ("new", 5.9, 5.0, "3"),  # "new <6 mm total" wins over the solid-component rule
    ("new", 6.0, 3.9, "4A"),  # new nodule >=6 mm: new solid component <4 mm
    ("new", 6.0, 4.0, "4B"),
    ("new", 20.0, 3.9, "4A"),
    ("new", 20.0, 4.0, "4B"),
    ("growing", 5.0, 3.9, "4A"),
    ("growing", 12.0, 3.9, "4A"),
    ("growing", 12.0, 4.0, "4B"),
    ("stable", 12.0, 9.0, "2"),  # project choice: stable -> 2
]


@pytest.mark.parametrize(("status", "total_mm", "solid_mm", "expected"), PART_SOLID_CASES)
def test_part_solid(status: str, total_mm: float, solid_mm: float, expected: str) -> None:
    result = categorize(
        attenuation="part_solid",
        mean_diameter_mm=total_mm,
        solid_component_mm=solid_mm,
        status=status,
    )
    assert result.category == expected


GROUND_GLASS_CASES = [
    ("baseline", 29.9, "2"),
    ("baseline", 30.0, "3"),
    ("new", 29.9, "2"),
    ("new", 30.0, "3"),
    ("growing", 29.9, "2"),
    ("growing", 30.0, "3"),  # project choice: growing >=30 mm treated as new
    ("stable", 29.9, "2"),
    ("stable", 30.0, "2"),
    ("stable", 45.0, "2"),
]


@pytest.mark.parametrize(("status", "diameter_mm", "expected"), GROUND_GLASS_CASES)
def test_ground_glass(status: str, diameter_mm: float, expected: str) -> None:
    result = categorize(attenuation="ground_glass", mean_diameter_mm=diameter_mm, status=status)
    assert result.category == expected


JUXTAPLEURAL_CASES = [
    ("baseline", 9.9, "2"),
    ("baseline", 10.0, "4A"),  # falls back to the solid baseline rule (8 to <15 mm)
    ("baseline", 9.95, "4A"),  # rounds to 10.0
    ("new", 9.9, "2"),
    ("new", 10.0, "4B"),  # solid new >=8 mm
    ("growing", 7.0, "4A"),  # only baseline or new juxtapleural nodules are category 2
]


@pytest.mark.parametrize(("status", "diameter_mm", "expected"), JUXTAPLEURAL_CASES)
def test_juxtapleural(status: str, diameter_mm: float, expected: str) -> None:
    result = categorize(
        attenuation="solid", mean_diameter_mm=diameter_mm, status=status, juxtapleural_benign=True
    )
    assert result.category == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"benign_calcification": True}, "1"),
        ({"contains_fat": True}, "1"),
        ({"benign_calcification": True, "suspicious_features": True}, "1"),
        ({"contains_fat": True, "status": "growing"}, "1"),
    ],
)
def test_benign_features_give_category_1(kwargs: dict, expected: str) -> None:
    result = categorize(attenuation="solid", mean_diameter_mm=20.0, **kwargs)
    assert result.category == expected
    assert result.management == "12-month screening LDCT"


@pytest.mark.parametrize(
    ("attenuation", "diameter_mm", "solid_mm", "status", "base", "expected"),
    [
        ("solid", 5.9, None, "baseline", "2", "2"),
        ("solid", 6.0, None, "baseline", "3", "4X"),
        ("solid", 8.0, None, "baseline", "4A", "4X"),
        ("solid", 15.0, None, "baseline", "4B", "4X"),
        ("solid", 5.0, None, "stable", "2", "2"),
        ("part_solid", 10.0, 8.0, "baseline", "4B", "4X"),
        ("ground_glass", 30.0, None, "new", "3", "4X"),
        ("ground_glass", 29.9, None, "new", "2", "2"),
    ],
)
def test_suspicious_features_upgrade_3_and_4_only(
    attenuation: str,
    diameter_mm: float,
    solid_mm: float | None,
    status: str,
    base: str,
    expected: str,
) -> None:
    common = {
        "attenuation": attenuation,
        "mean_diameter_mm": diameter_mm,
        "solid_component_mm": solid_mm,
        "status": status,
    }
    assert categorize(**common).category == base
    upgraded = categorize(**common, suspicious_features=True)
    assert upgraded.category == expected
    assert ("4X" in upgraded.reason) == (expected == "4X")


def test_reason_names_the_rule() -> None:
    result = categorize(attenuation="solid", mean_diameter_mm=7.04, status="baseline")
    assert result.reason == "solid nodule, baseline, mean diameter 7.0 mm, >=6 to <8 mm"


@pytest.mark.parametrize(
    ("value_mm", "expected_mm"),
    [(5.95, 6.0), (5.94, 5.9), (0.05, 0.1), (7.25, 7.3), (14.949, 14.9), (2.675, 2.7)],
)
def test_round_diameter_half_up(value_mm: float, expected_mm: float) -> None:
    assert round_diameter_mm(value_mm) == expected_mm


def test_management_table_matches_reference() -> None:
    assert tuple(MANAGEMENT) == LUNGRADS_CATEGORIES
    assert management_for("3") == "6-month LDCT"
    assert management_for("4A").startswith("3-month LDCT")
    assert management_for("4X").startswith("Work-up as for 4B")
    with pytest.raises(ValueError, match=r"category='4C' is not valid.*did you mean '4"):
        management_for("4C")


def _result(category: str) -> LungRADSResult:
    return LungRADSResult(category, MANAGEMENT[category], f"finding {category}")


@pytest.mark.parametrize(
    ("categories", "expected"),
    [
        ((), "1"),
        (("2",), "2"),
        (("2", "3", "2"), "3"),
        (("4A", "4B", "3"), "4B"),
        (("4B", "4X"), "4X"),
        (("1", "2"), "2"),
        (("2", "0"), "0"),  # incomplete outranks benign findings
        (("0", "3"), "3"),  # a suspicious finding outranks "incomplete"
        (("0", "4B"), "4B"),
    ],
)
def test_categorize_exam_most_suspicious(categories: tuple[str, ...], expected: str) -> None:
    result = categorize_exam([_result(c) for c in categories])
    assert result.category == expected
    assert result.management == MANAGEMENT[expected]


def test_categorize_exam_empty_and_ties() -> None:
    empty = categorize_exam([])
    assert (empty.category, empty.reason) == ("1", "no nodules")
    first, second = (
        LungRADSResult("3", MANAGEMENT["3"], "a"),
        LungRADSResult("3", MANAGEMENT["3"], "b"),
    )
    assert categorize_exam([first, second]) is first
    assert sorted(EXAM_PRIORITY) == sorted(LUNGRADS_CATEGORIES)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (
            {"attenuation": "solidd"},
            ValueError,
            r"attenuation='solidd' is not valid.*did you mean 'solid'",
        ),
        ({"attenuation": "partsolid"}, ValueError, r"did you mean 'part_solid'"),
        ({"status": "grown"}, ValueError, r"status='grown' is not valid.*did you mean 'growing'"),
        (
            {"mean_diameter_mm": -1.0},
            ValueError,
            r"mean_diameter_mm=-1.0 must be a positive finite",
        ),
        ({"mean_diameter_mm": 0.0}, ValueError, r"mean_diameter_mm=0.0 must be a positive finite"),
        ({"mean_diameter_mm": math.nan}, ValueError, r"mean_diameter_mm=nan must be a positive"),
        ({"mean_diameter_mm": math.inf}, ValueError, r"mean_diameter_mm=inf must be a positive"),
        ({"mean_diameter_mm": "6"}, TypeError, r"mean_diameter_mm='6' must be a number of mm"),
        (
            {"solid_component_mm": 3.0},
            ValueError,
            r"solid_component_mm=3.0 was given for attenuation='solid'",
        ),
        ({"suspicious_features": 1}, TypeError, r"suspicious_features=1 must be True or False"),
    ],
)
def test_categorize_errors(kwargs: dict, error: type, pattern: str) -> None:
    arguments = {"attenuation": "solid", "mean_diameter_mm": 6.0, **kwargs}
    with pytest.raises(error, match=pattern):
        categorize(**arguments)


@pytest.mark.parametrize(
    ("solid_mm", "pattern"),
    [
        (None, r"solid_component_mm=None: a part_solid nodule needs"),
        (-2.0, r"solid_component_mm=-2.0 must be a positive finite"),
        (math.nan, r"solid_component_mm=nan must be a positive finite"),
        (8.1, r"solid_component_mm=8.1 exceeds mean_diameter_mm=8.0"),
    ],
)
def test_part_solid_component_errors(solid_mm: float | None, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        categorize(attenuation="part_solid", mean_diameter_mm=8.0, solid_component_mm=solid_mm)


def test_categorize_exam_rejects_bad_elements() -> None:
    with pytest.raises(TypeError, match=r"results\[1\]='3' is not a LungRADSResult"):
        categorize_exam([_result("2"), "3"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"results\[0\].category='5' is not valid"):
        categorize_exam([LungRADSResult("5", "", "")])
