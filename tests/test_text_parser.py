"""Tests for the rule-based report parser on hand-written radiologist phrasing."""

from __future__ import annotations

import pytest

from lungvlm.text.parser import (
    ParsedNodule,
    parse_findings_fields,
    parse_nodule_text,
    parse_report,
)

# (sentence, exact stated fields of the one nodule it describes)
NODULE_CASES = [
    (
        "8 x 6 mm solid nodule in the RLL.",
        dict(side="right", lobe="lower", mean_diameter_mm=7.0, attenuation="solid"),
    ),
    (
        "Part-solid nodule measuring 12 mm with a 5 mm solid component in the right upper lobe.",
        dict(
            side="right",
            lobe="upper",
            mean_diameter_mm=12.0,
            attenuation="part_solid",
            solid_component_mm=5.0,
        ),
    ),
    (
        "Semi-solid lingular nodule, 0.9 cm, with a solid component of 4 mm.",
        dict(
            side="left",
            lobe="upper",
            mean_diameter_mm=9.0,
            attenuation="part_solid",
            solid_component_mm=4.0,
        ),
    ),
    # "subsolid" alone does not say part-solid or ground-glass: attenuation stays unknown.
    (
        "Subsolid nodule in the lingula measuring 1.25 cm.",
        dict(side="left", lobe="upper", mean_diameter_mm=12.5),
    ),
    (
        "Noncalcified 4 mm nodule in the left lower lobe, series 3 image 125.",
        dict(
            side="left", lobe="lower", mean_diameter_mm=4.0, calcification="none", slice_index=125
        ),
    ),
    (
        "A 1.5 x 1.1 cm spiculated mass in the upper lobe of the left lung abutting the pleura.",
        dict(
            side="left",
            lobe="upper",
            mean_diameter_mm=13.0,
            margin="spiculated",
            pleural_relation="juxtapleural",
        ),
    ),
    (
        "5 mm perifissural nodule along the right minor fissure, RUL, well-defined, ovoid, "
        "no calcification or fat.",
        dict(
            side="right",
            lobe="upper",
            mean_diameter_mm=5.0,
            margin="smooth",
            calcification="none",
            shape="oval",
            pleural_relation="perifissural",
            contains_fat=False,
        ),
    ),
    (
        "Calcified granuloma in the middle lobe measuring 3 mm.",
        dict(side="right", lobe="middle", mean_diameter_mm=3.0, calcification="diffuse"),
    ),
    (
        "Fat-containing smoothly marginated 14 mm nodule in the LLL with popcorn calcification, "
        "consistent with hamartoma.",
        dict(
            side="left",
            lobe="lower",
            mean_diameter_mm=14.0,
            margin="smooth",
            calcification="popcorn",
            contains_fat=True,
        ),
    ),
    (
        "There is a 6 mm pure ground-glass nodule in the RUL. It is unchanged compared to prior "
        "(6 mm on 1/2020), 12 months.",
        dict(
            side="right",
            lobe="upper",
            mean_diameter_mm=6.0,
            attenuation="ground_glass",
            change_status="stable",
            prior_mean_diameter_mm=6.0,
            interval_months=12.0,
        ),
    ),
    (
        "6 mm solid nodule in the RML has increased from 4 mm one year ago, without spiculation.",
        dict(
            side="right",
            lobe="middle",
            mean_diameter_mm=6.0,
            attenuation="solid",
            change_status="growing",
            prior_mean_diameter_mm=4.0,
            interval_months=12.0,
        ),
    ),
    (
        "Irregular nodule with irregular margins and partially calcified rim, right lower lobe, "
        "8.4 mm (volume 310 mm3), not seen on the prior exam.",
        dict(
            side="right",
            lobe="lower",
            mean_diameter_mm=8.4,
            shape="irregular",
            change_status="new",
            volume_mm3=310.0,
        ),
    ),
    (
        "Right upper lobe: 6.2 mm solid nodule (series 2, image 54), previously 4.1 mm on "
        "3/2021, increased.",
        dict(
            side="right",
            lobe="upper",
            mean_diameter_mm=6.2,
            attenuation="solid",
            change_status="growing",
            prior_mean_diameter_mm=4.1,
            slice_index=54,
        ),
    ),
    (
        "Part solid nodule in the right lower lobe measuring 15 x 13 mm, solid component 7 x 5 mm.",
        dict(
            side="right",
            lobe="lower",
            mean_diameter_mm=14.0,
            attenuation="part_solid",
            solid_component_mm=6.0,
        ),
    ),
    (
        "A 6 mm nodule along the left major fissure is likely an intrapulmonary lymph node.",
        dict(mean_diameter_mm=6.0, pleural_relation="perifissural"),
    ),
    (
        "Nonsolid GGN in the left upper lobe, 2.1 cm, poorly circumscribed, intraparenchymal.",
        dict(
            side="left",
            lobe="upper",
            mean_diameter_mm=21.0,
            attenuation="ground_glass",
            margin="ill_defined",
            pleural_relation="none",
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), NODULE_CASES)
def test_radiologist_phrasing_parses_exactly(text, expected):
    report = parse_report(text)
    assert [n.stated_fields() for n in report.nodules] == [expected]


def test_full_report_with_sections_lists_and_modifier():
    text = (
        "TECHNIQUE: Low-dose CT, 1.25 mm slices.\n"
        "COMPARISON: CT 12 months ago.\n"
        "FINDINGS:\n"
        "1. 7 mm RUL nodule, stable.\n"
        "2. 4.5 mm LLL nodule, new. No calcification.\n"
        "No pleural effusion. Trace centrilobular emphysema, LAA 3.4%.\n"
        "\n"
        "IMPRESSION:\n"
        "LR 4B. Recommend: PET/CT.\n"
    )
    report = parse_report(text)
    assert [n.stated_fields() for n in report.nodules] == [
        dict(side="right", lobe="upper", mean_diameter_mm=7.0, change_status="stable"),
        dict(
            side="left",
            lobe="lower",
            mean_diameter_mm=4.5,
            calcification="none",
            change_status="new",
        ),
    ]
    assert report.other_findings == ["No pleural effusion"]
    assert (report.emphysema, report.laa950_percent) == ("mild", 3.4)
    assert (report.category, report.s_modifier, report.management) == ("4B", False, "PET/CT")


@pytest.mark.parametrize(
    ("text", "category", "s_modifier", "management"),
    [
        (
            "Impression: Lung-RADS 2S, 12-month screening LDCT.",
            "2",
            True,
            "12-month screening LDCT",
        ),
        ("IMPRESSION:\nLung-RADS category 4A", "4A", False, None),
        (
            "IMPRESSION: Lung-RADS v2022 category 4x; management: diagnostic CT.",
            "4X",
            False,
            "diagnostic CT",
        ),
        ("Small nodule. Lung RADS 3: 6-month LDCT.", "3", False, "6-month LDCT"),
        ("IMPRESSION: Lung-RADS 4 nodule.", None, False, None),
        ("IMPRESSION: Benign-appearing nodule.", None, False, None),
    ],
)
def test_category_and_management(text, category, s_modifier, management):
    report = parse_report(text)
    assert (report.category, report.s_modifier, report.management) == (
        category,
        s_modifier,
        management,
    )


@pytest.mark.parametrize(
    ("sentence", "grade", "laa"),
    [
        ("No emphysema.", "none", None),
        ("No evidence of emphysema (LAA-950 1.2%).", "none", 1.2),
        ("Moderate emphysema, LAA-950 12.3%.", "moderate", 12.3),
        ("Emphysema: severe; LAA-950 25.0%.", "severe", 25.0),
        ("Advanced destructive emphysema.", "severe", None),
        ("7.2% of lung volume below -950 HU.", None, 7.2),
    ],
)
def test_emphysema(sentence, grade, laa):
    report = parse_report(sentence)
    assert (report.emphysema, report.laa950_percent, report.nodules) == (grade, laa, [])


def test_segmentation_keeps_nodules_apart_and_ignores_negatives():
    text = (
        "A 5 mm solid nodule in the RUL. Centrally calcified.\n"
        "No new nodules. Mild coronary artery calcification.\n"
        "A 9 mm ground-glass nodule in the left lower lobe; it is larger, previously 7 mm."
    )
    report = parse_report(text)
    assert parse_findings_fields(text) == [
        dict(
            side="right",
            lobe="upper",
            mean_diameter_mm=5.0,
            attenuation="solid",
            calcification="central",
        ),
        dict(
            side="left",
            lobe="lower",
            mean_diameter_mm=9.0,
            attenuation="ground_glass",
            change_status="growing",
            prior_mean_diameter_mm=7.0,
        ),
    ]
    assert report.other_findings == ["Mild coronary artery calcification"]


def test_defaults_and_argument_errors():
    report = parse_report("A 5 mm solid nodule in the RUL.")
    filled = report.with_defaults()
    assert filled.emphysema == "none"
    nodule = filled.nodules[0]
    assert (nodule.calcification, nodule.pleural_relation, nodule.contains_fat) == (
        "none",
        "none",
        False,
    )
    assert report.nodules[0].calcification is None  # the original is not modified
    assert parse_nodule_text("no calcification").stated_fields() == {"calcification": "none"}
    assert ParsedNodule().stated_fields() == {}
    with pytest.raises(TypeError, match=r"text=None must be a string"):
        parse_report(None)
