"""Tests for the findings schema: validation, rounding to reporting resolution, JSON round trip."""

from __future__ import annotations

import json

import pytest

from lungvlm.text.schema import (
    ExamFindings,
    Impression,
    NoduleChange,
    NoduleFinding,
    round_half_up,
)
from lungvlm.text.vocabulary import NODULE_VALUE_FIELDS, OMISSION_DEFAULTS
from lungvlm.types import ReportSpan


def nodule(**overrides) -> NoduleFinding:
    values = dict(
        side="right",
        lobe="upper",
        mean_diameter_mm=7.3,
        attenuation="solid",
        margin="spiculated",
        shape="irregular",
    )
    values.update(overrides)
    return NoduleFinding(**values)


def test_round_half_up_rounds_halves_away_from_zero():
    assert round_half_up(7.25, 1) == 7.3
    assert round_half_up(7.24999, 1) == 7.2
    assert round_half_up(267.5, 0) == 268.0
    assert round(7.25, 1) == 7.2  # why Python's round is not used: halves go to even


def test_measurements_are_rounded_to_reporting_resolution():
    finding = nodule(
        mean_diameter_mm=7.25,
        attenuation="part_solid",
        solid_component_mm=3.04,
        volume_mm3=267.5,
        change=NoduleChange("growing", 5.05, 6.04),
    )
    assert finding.mean_diameter_mm == 7.3
    assert finding.solid_component_mm == 3.0
    assert finding.volume_mm3 == 268.0
    assert finding.change.prior_mean_diameter_mm == 5.1
    assert finding.change.interval_months == 6.0
    exam = ExamFindings(laa950_percent=7.25, impression=Impression("2", "12-month screening LDCT."))
    assert exam.laa950_percent == 7.3
    assert exam.impression.management == "12-month screening LDCT"


def test_defaults_match_omission_defaults():
    finding = nodule()
    assert finding.calcification == OMISSION_DEFAULTS["calcification"] == "none"
    assert finding.pleural_relation == OMISSION_DEFAULTS["pleural_relation"] == "none"
    assert finding.contains_fat is OMISSION_DEFAULTS["contains_fat"] is False
    assert ExamFindings(impression=Impression("1", "x")).emphysema == "none"


@pytest.mark.parametrize(
    ("overrides", "error", "pattern"),
    [
        ({"side": "center"}, ValueError, r"side='center' is not allowed"),
        ({"lobe": "lingula"}, ValueError, r"lobe='lingula' is not allowed"),
        ({"side": "left", "lobe": "middle"}, ValueError, r"only the right lung has one"),
        ({"mean_diameter_mm": 0.04}, ValueError, r"mean_diameter_mm=0.04 must be > 0"),
        ({"mean_diameter_mm": float("nan")}, ValueError, r"mean_diameter_mm=nan"),
        ({"mean_diameter_mm": "7"}, TypeError, r"mean_diameter_mm='7' must be a real number"),
        ({"attenuation": "part_solid"}, ValueError, r"solid_component_mm=None with attenuation"),
        (
            {"solid_component_mm": 3.0},
            ValueError,
            r"solid_component_mm=3.0 with attenuation='solid'",
        ),
        (
            {"attenuation": "part_solid", "solid_component_mm": 8.0},
            ValueError,
            r"solid_component_mm=8.0 exceeds mean_diameter_mm=7.3",
        ),
        ({"margin": "irregular"}, ValueError, r"margin='irregular' is not allowed"),
        ({"calcification": "eccentric"}, ValueError, r"calcification='eccentric'"),
        ({"shape": "triangular"}, ValueError, r"shape='triangular'"),
        ({"pleural_relation": "subpleural"}, ValueError, r"pleural_relation='subpleural'"),
        ({"contains_fat": 0}, TypeError, r"contains_fat=0 must be a bool"),
        ({"change": "stable"}, TypeError, r"change='stable' must be a NoduleChange"),
        (
            {"change": NoduleChange("growing", 7.3)},
            ValueError,
            r"growing from 7.3 mm to mean_diameter_mm=7.3",
        ),
        (
            {"change": NoduleChange("smaller", 7.0)},
            ValueError,
            r"smaller from 7.0 mm to mean_diameter_mm=7.3",
        ),
        ({"volume_mm3": -1.0}, ValueError, r"volume_mm3=-1.0 must be > 0"),
        ({"slice_index": -3}, ValueError, r"slice_index=-3 must be >= 0"),
        ({"slice_index": 4.0}, TypeError, r"slice_index=4.0 must be an int"),
    ],
)
def test_nodule_validation_errors(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        nodule(**overrides)


def test_change_validation_errors():
    with pytest.raises(ValueError, match=r"status='bigger' is not allowed"):
        NoduleChange("bigger", 5.0)
    with pytest.raises(ValueError, match=r"prior_mean_diameter_mm=5.0 must be None for a new"):
        NoduleChange("new", 5.0)
    with pytest.raises(ValueError, match=r"a 'stable' nodule needs its prior size"):
        NoduleChange("stable")
    with pytest.raises(ValueError, match=r"interval_months=0 must be > 0"):
        NoduleChange("new", None, 0)


def test_exam_validation_errors():
    impression = Impression("2", "12-month screening LDCT")
    with pytest.raises(ValueError, match=r"category='4' is not allowed"):
        Impression("4", "3-month LDCT")
    with pytest.raises(ValueError, match=r"management='  ' must be non-empty"):
        Impression("2", "  ")
    with pytest.raises(ValueError, match=r"management='a\\nb' must be non-empty single-line"):
        Impression("2", "a\nb")
    with pytest.raises(ValueError, match=r"emphysema='panlobular' is not allowed"):
        ExamFindings(emphysema="panlobular", impression=impression)
    with pytest.raises(ValueError, match=r"laa950_percent=101 must be a number in \[0, 100\]"):
        ExamFindings(laa950_percent=101, impression=impression)
    with pytest.raises(ValueError, match=r"other_findings\[1\]='\.' must be non-empty"):
        ExamFindings(other_findings=["Hiatal hernia", "."], impression=impression)
    with pytest.raises(TypeError, match=r"nodules\[0\]='RUL nodule' must be a NoduleFinding"):
        ExamFindings(nodules=["RUL nodule"], impression=impression)
    with pytest.raises(TypeError, match=r"impression='2' must be an Impression"):
        ExamFindings(impression="2")


def test_text_span_validation():
    assert ReportSpan(3, 9, 0, "margin").end == 9
    with pytest.raises(ValueError, match=r"start=5, end=2"):
        ReportSpan(5, 2, 0, "margin")
    with pytest.raises(ValueError, match=r"nodule_index=-2 must be >= -1"):
        ReportSpan(0, 2, -2, "margin")
    with pytest.raises(ValueError, match=r"field='texture' is not one of"):
        ReportSpan(0, 2, 0, "texture")


def test_field_values_flattens_change():
    values = nodule(change=NoduleChange("stable", 7.0, 12), slice_index=40).field_values()
    assert tuple(values) == NODULE_VALUE_FIELDS
    assert values["change_status"] == "stable"
    assert values["prior_mean_diameter_mm"] == 7.0
    assert values["interval_months"] == 12.0
    assert values["slice_index"] == 40
    assert nodule().field_values()["change_status"] is None


def test_json_round_trip():
    exam = ExamFindings(
        nodules=[
            nodule(change=NoduleChange("new", None, 12), volume_mm3=204.0, slice_index=45),
            nodule(
                side="left",
                lobe="lower",
                attenuation="part_solid",
                solid_component_mm=4.0,
                calcification="central",
                contains_fat=True,
            ),
        ],
        emphysema="moderate",
        laa950_percent=12.3,
        other_findings=["Small hiatal hernia"],
        impression=Impression("4A", "3-month LDCT"),
    )
    data = json.loads(json.dumps(exam.to_dict()))
    assert data["nodules"][0]["change"] == {
        "status": "new",
        "prior_mean_diameter_mm": None,
        "interval_months": 12.0,
    }
    assert ExamFindings.from_dict(data) == exam


def test_from_dict_rejects_unknown_and_missing_keys():
    data = ExamFindings(nodules=[nodule()], impression=Impression("3", "6-month LDCT")).to_dict()
    data["nodules"][0]["texture"] = 5
    with pytest.raises(ValueError, match=r"nodules\[0\] has unknown keys \['texture'\]"):
        ExamFindings.from_dict(data)
    del data["nodules"][0]["texture"]
    del data["nodules"][0]["margin"]
    with pytest.raises(ValueError, match=r"nodules\[0\] is missing required keys \['margin'\]"):
        ExamFindings.from_dict(data)
    with pytest.raises(ValueError, match=r"findings is missing required keys \['impression'\]"):
        ExamFindings.from_dict({"nodules": []})
