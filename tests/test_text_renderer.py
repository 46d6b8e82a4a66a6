"""Tests for the seeded report renderer: exact canonical text, variation, spans, number formats."""

from __future__ import annotations

import re

import pytest

from lungvlm.text.parser import parse_nodule_text
from lungvlm.text.phrases import format_size_mm
from lungvlm.text.renderer import RenderStyle, render_report
from lungvlm.text.schema import ExamFindings, Impression, NoduleChange, NoduleFinding
from lungvlm.text.vocabulary import NODULE_SPAN_FIELDS

SPICULATED = NoduleFinding(
    side="right",
    lobe="upper",
    mean_diameter_mm=7.3,
    attenuation="solid",
    margin="spiculated",
    shape="irregular",
    change=NoduleChange("stable", 6.1, 12),
    slice_index=45,
)
PART_SOLID = NoduleFinding(
    side="left",
    lobe="lower",
    mean_diameter_mm=12.0,
    attenuation="part_solid",
    solid_component_mm=5.0,
    margin="smooth",
    shape="round",
    pleural_relation="juxtapleural",
    volume_mm3=905,
)
MANAGEMENT_4A = (
    "3-month LDCT; PET/CT may be considered if there is a solid nodule or solid component ≥8 mm"
)
EXAM = ExamFindings(
    nodules=[SPICULATED, PART_SOLID],
    emphysema="mild",
    laa950_percent=7.2,
    other_findings=["Small hiatal hernia."],
    impression=Impression("4A", MANAGEMENT_4A),
)

CANONICAL_TEXT = (
    "FINDINGS:\n"
    "There is a 7.3 mm solid spiculated irregular noncalcified intraparenchymal nodule in the "
    "right upper lobe (image 45), without macroscopic fat. Stable compared with prior 6.1 mm "
    "12 months ago.\n"
    "There is a 12.0 mm part-solid smooth round noncalcified juxtapleural nodule in the left "
    "lower lobe, with a 5.0 mm solid component, without macroscopic fat (volume 905 mm³).\n"
    "Mild emphysema (LAA-950 7.2%).\n"
    "Small hiatal hernia.\n"
    "\n"
    "IMPRESSION:\n"
    "Lung-RADS 4A: " + MANAGEMENT_4A + "."
)


def test_canonical_text_is_exact():
    report = render_report(EXAM, style=RenderStyle.canonical())
    assert report.text == CANONICAL_TEXT
    assert render_report(EXAM, seed=None, style=RenderStyle.canonical()).text == CANONICAL_TEXT


def test_sections_split_findings_from_impression():
    report = render_report(EXAM, seed=3)
    assert report.text == report.findings_text + "\n\n" + report.impression_text
    assert report.findings_text.startswith("FINDINGS:\n")
    assert report.impression_text.startswith("IMPRESSION:\n")
    assert "Lung-RADS" not in report.findings_text
    assert "3-month LDCT" not in report.findings_text
    for span in report.spans:
        inside_findings = span.end <= len(report.findings_text)
        assert inside_findings == (span.field not in ("category", "management"))


def test_same_seed_same_text_and_seeds_vary_wording():
    texts = [render_report(EXAM, seed=seed).text for seed in range(40)]
    assert texts[7] == render_report(EXAM, seed=7).text
    assert len(set(texts)) == 40
    joined = "\n".join(texts)
    for variant in ("RUL", "There is a", "is seen in the", "In the", " cm", "millimeter"):
        assert variant in joined, variant


def test_spans_point_at_their_values_for_many_seeds():
    expected = {
        (0, "margin"): "spiculated",
        (0, "shape"): "irregular",
        (0, "slice"): "45",
        (1, "solid_component"): "solid component",
        (1, "volume"): "905",
        (-1, "emphysema"): "7.2%",
        (-1, "other"): "Small hiatal hernia",
        (-1, "category"): "4A",
    }
    for seed in range(60):
        report = render_report(EXAM, seed=seed)
        found = {(s.nodule_index, s.field): report.text[s.start : s.end] for s in report.spans}
        assert len(found) == len(report.spans)  # one span per stated field
        for key, value in expected.items():
            assert value.lower() in found[key].lower(), (seed, key, found[key])
        assert found[(-1, "management")] == MANAGEMENT_4A
        # Synonyms ("well-circumscribed" for smooth, "0.73 cm") are checked by reading each span
        # alone back with the parser.
        for (index, field), span_text in found.items():
            if index < 0:
                continue
            truth = EXAM.nodules[index].field_values()
            read = parse_nodule_text(span_text).field_values()
            for name in NODULE_SPAN_FIELDS[field]:
                assert read[name] == truth[name], (seed, index, field, span_text)


@pytest.mark.parametrize(
    ("value_mm", "style", "text"),
    [
        (7.0, "mm", "7 mm"),
        (7.3, "mm", "7.3 mm"),
        (7.0, "mm_decimal", "7.0 mm"),
        (7.0, "cm", "0.7 cm"),
        (7.3, "cm", "0.73 cm"),
        (10.0, "cm", "1.0 cm"),
        (12.5, "cm", "1.25 cm"),
        (0.1, "cm", "0.01 cm"),
        (7.0, "millimeters", "7.0 millimeters"),
        (30.1, "mm", "30.1 mm"),
    ],
)
def test_size_formats_are_exact(value_mm, style, text):
    assert format_size_mm(value_mm, style) == text


def test_size_format_rejects_unknown_style():
    with pytest.raises(ValueError, match=r"style='inch' is not a size format"):
        format_size_mm(7.0, "inch")


def test_defaults_are_omitted_or_stated_by_style():
    exam = ExamFindings(
        nodules=[PART_SOLID], impression=Impression("3", "6-month LDCT")
    )  # calcification "none", fat False, emphysema "none"
    silent = RenderStyle(mention_defaults=0.0)
    for seed in range(20):
        report = render_report(exam, seed=seed, style=silent)
        assert not re.search(r"calcif|fat|emphysema", report.text, re.IGNORECASE)
        assert {s.field for s in report.spans} >= {"size", "attenuation", "margin", "shape"}
        assert not {"calcification", "fat", "emphysema"} & {s.field for s in report.spans}
    loud = RenderStyle(mention_defaults=1.0)
    for seed in range(20):
        fields = {s.field for s in render_report(exam, seed=seed, style=loud).spans}
        assert {"calcification", "fat", "emphysema"} <= fields


def test_change_emphysema_and_impression_sentences():
    canonical = RenderStyle.canonical()

    def render(change: NoduleChange, size_mm: float = 7.3) -> str:
        finding = NoduleFinding(
            side="right",
            lobe="middle",
            mean_diameter_mm=size_mm,
            attenuation="ground_glass",
            margin="ill_defined",
            shape="oval",
            change=change,
        )
        exam = ExamFindings(
            nodules=[finding],
            emphysema="severe",
            impression=Impression("3", "6-month LDCT"),
        )
        return render_report(exam, style=canonical).text

    assert "New since the prior exam 12 months ago." in render(NoduleChange("new", None, 12))
    assert "New since the prior exam." in render(NoduleChange("new"))
    assert "Increased from 5.0 mm over 6 months." in render(NoduleChange("growing", 5.0, 6))
    assert "Decreased from 9.5 mm over 6.5 months." in render(NoduleChange("smaller", 9.5, 6.5))
    text = render(NoduleChange("stable", 7.0, 24))
    assert "Stable compared with prior 7.0 mm 24 months ago." in text
    assert "ground-glass ill-defined oval" in text
    assert "in the right middle lobe" in text
    assert "\nSevere emphysema.\n" in text
    assert text.endswith("IMPRESSION:\nLung-RADS 3: 6-month LDCT.")


def test_no_nodule_report_and_argument_errors():
    exam = ExamFindings(impression=Impression("1", "12-month screening LDCT"))
    assert render_report(exam).text == (
        "FINDINGS:\nNo pulmonary nodules are identified.\nNo emphysema.\n\n"
        "IMPRESSION:\nLung-RADS 1: 12-month screening LDCT."
    )
    with pytest.raises(TypeError, match=r"findings=\{\} must be an ExamFindings"):
        render_report({})
    with pytest.raises(ValueError, match=r"templates=\('prose',\) must be a non-empty subset"):
        RenderStyle(templates=("prose",))
    with pytest.raises(ValueError, match=r"size_formats=\(\) must be a non-empty subset"):
        RenderStyle(size_formats=())
    with pytest.raises(ValueError, match=r"mention_defaults=1.5 must be in \[0, 1\]"):
        RenderStyle(mention_defaults=1.5)
