"""report.json schema (round trip, validation), report.md rendering and atomic writes."""

from __future__ import annotations

import json

import pytest

from lungvlm.clinical.lungrads import MANAGEMENT
from lungvlm.export.json_report import (
    REVIEW_BANNER,
    UNCERTAIN_MARKER,
    read_report_json,
    report_markdown,
    write_report_json,
)
from lungvlm.export.schema import (
    REPORT_SCHEMA_VERSION,
    Comparison,
    Emphysema,
    ExamReport,
    ExamSummary,
    ModelInfo,
    NoduleAttributes,
    NoduleReport,
    Sentence,
    Source,
)
from lungvlm.export.writer import atomic_output_dir, write_text_atomic


def make_nodule(index: int = 1, **overrides) -> NoduleReport:
    """A part-solid right-upper-lobe nodule with two sentences, the second uncertain."""
    values = dict(
        index=index,
        centroid_world_lps_mm=(-12.5, 30.25, -101.0),
        centroid_voxel_zyx=(3.0, 4.0, 5.0),
        long_axis_mm=8.2,
        short_axis_mm=6.3,
        mean_diameter_mm=7.25,
        volume_mm3=523.6,
        attenuation="part_solid",
        solid_component_mm=4.0,
        side="right",
        lobe="upper",
        attributes=NoduleAttributes(
            margin="spiculated", calcification="none", concepts={"spiculation": 0.8}
        ),
        malignancy_probability=0.125,
        lungrads_category="4A",
        lungrads_probabilities={"3": 0.25, "4A": 0.75},
        growth_probability_12m=0.3,
        comparison=Comparison("growing", 5.0, 365.0, 180.0, True),
        sentences=[
            Sentence("Part-solid nodule in the right upper lobe.", 0.93, False, "hm/s0.npy"),
            Sentence("Margin is spiculated.", 0.41, True, None),
        ],
    )
    values.update(overrides)
    return NoduleReport(**values)


def make_report(needs_review: bool = True, nodules: list[NoduleReport] | None = None):
    """A flagged two-nodule report (category 4A)."""
    return ExamReport(
        case_id="case-001",
        source=Source("/data/case-001", "dicom", "1.2.3.4"),
        model=ModelInfo("runs/stage3/last.ckpt", "vision_language", "0.1.0"),
        exam=ExamSummary(
            lungrads_category="4A",
            management=MANAGEMENT["4A"],
            needs_review=needs_review,
            review_reasons=["nodule 1 sentence 2 confidence 0.41 < 0.60"] if needs_review else [],
            emphysema=Emphysema(7.25, "mild"),
        ),
        nodules=[make_nodule(1), make_nodule(2, comparison=None)] if nodules is None else nodules,
        narrative="",
        timings_s={"segment": 1.5, "report": 0.25},
    )


def test_round_trip_through_json_file(tmp_path):
    report = make_report()
    path = write_report_json(report, tmp_path / "out" / "report.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert list(data)[0] == "schema_version"
    assert data["schema_version"] == REPORT_SCHEMA_VERSION == "1.1.0"
    assert data["nodules"][0]["centroid_world_lps_mm"] == [-12.5, 30.25, -101.0]
    assert data["nodules"][0]["comparison"]["vdt_days"] == 180.0
    assert data["nodules"][1]["comparison"] is None
    assert read_report_json(path) == report
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def _mutate(data: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("dotted", "value", "error", "pattern"),
    [
        ("nodules.1.volume_mm3", -3.0, ValueError, r"nodules\[1\]\.volume_mm3=-3\.0 must lie in"),
        (
            "nodules.0.long_axis_mm",
            "7",
            TypeError,
            r"nodules\[0\]\.long_axis_mm='7' must be a real",
        ),
        ("nodules.0.short_axis_mm", 9.0, ValueError, r"nodules\[0\]\.short_axis_mm=9\.0 must not"),
        ("nodules.0.attenuation", "mixed", ValueError, r"nodules\[0\]\.attenuation='mixed' is not"),
        ("nodules.0.lungrads_probabilities", {"3": 0.2, "4A": 0.7}, ValueError, r"sums to 0\.9"),
        ("nodules.0.lungrads_probabilities", {"5": 1.0}, ValueError, r"key='5' is not allowed"),
        ("nodules.0.sentences.1.confidence", 1.5, ValueError, r"sentences\[1\]\.confidence=1\.5"),
        ("nodules.0.comparison.status", "bigger", ValueError, r"comparison\.status='bigger'"),
        ("nodules.0.comparison.vdt_days", 0.0, ValueError, r"comparison\.vdt_days=0\.0 must be"),
        ("nodules.0.attributes.concepts", {"colour": 0.5}, ValueError, r"concepts key='colour'"),
        ("nodules.1.index", 1, ValueError, r"duplicate index values \[1, 1\]"),
        ("exam.management", KeyError, ValueError, r"^exam\.management is missing$"),
        ("exam.review_reasons", [], ValueError, r"exam\.review_reasons=\[\] must name"),
        ("exam.emphysema.laa950_percent", 101.0, ValueError, r"exam\.emphysema\.laa950_percent"),
        ("exam.colour", "red", ValueError, r"exam has unknown field\(s\) \['colour'\]"),
        ("source.format", "png", ValueError, r"source\.format='png' is not allowed"),
        ("schema_version", "2.0.0", ValueError, r"schema_version='2\.0\.0' is not readable"),
        ("timings_s", {"segment": -1.0}, ValueError, r"timings_s\['segment'\]=-1\.0"),
        ("nodules", {"a": 1}, TypeError, r"nodules=\{'a': 1\} must be a list"),
    ],
)
def test_validation_errors_name_the_field(dotted, value, error, pattern):
    data = _mutate(make_report().to_dict(), dotted, value)
    with pytest.raises(error, match=pattern):
        ExamReport.from_dict(data)


def test_minor_version_is_accepted_and_invalid_json_rejected():
    data = make_report().to_dict()
    data["schema_version"] = "1.3.0"
    assert ExamReport.from_dict(data).schema_version == "1.3.0"
    with pytest.raises(ValueError, match="not valid JSON"):
        ExamReport.from_json("{not json")


def test_direct_construction_validates():
    with pytest.raises(ValueError, match=r"^index=0 must be an integer >= 1$"):
        make_nodule(0)
    with pytest.raises(TypeError, match=r"needs_review='yes' must be true or false"):
        ExamSummary("2", MANAGEMENT["2"], "yes")
    with pytest.raises(ValueError, match=r"lobe='middle' exists only with side='right'"):
        make_nodule(side="left", lobe="middle")


def test_markdown_marks_uncertain_sentences_and_review_banner():
    text = report_markdown(make_report())
    lines = text.splitlines()
    assert lines[2] == f"> **{REVIEW_BANNER}**"
    assert "> - nodule 1 sentence 2 confidence 0.41 < 0.60" in lines
    assert f"- {UNCERTAIN_MARKER} *Margin is spiculated.* (low confidence 0.41)" in lines
    assert "- Part-solid nodule in the right upper lobe. (confidence 0.93)" in lines
    # 7.25 mm rounds half up to 7.3 mm; 523.6 mm3 to 524 mm3 (Lung-RADS v2022 resolution).
    assert (
        "- Size: mean diameter 7.3 mm (long axis 8.2 mm, short axis 6.3 mm); volume 524 mm³; "
        "solid component 4.0 mm"
    ) in lines
    assert "### Nodule 1: right upper lobe" in lines
    assert (
        "- Comparison: growing since the prior scan; prior mean diameter 5.0 mm; interval 365 "
        "days; volume doubling time 180 days; Lung-RADS growth criterion (>1.5 mm in 12 months) met"
    ) in lines
    assert "- Comparison: no prior scan compared" in lines
    assert "%LAA-950: 7.3 % of lung voxels" in text
    impression = lines[lines.index("## IMPRESSION") :]
    assert "- Lung-RADS v2022 category 4A." in impression
    assert f"- Management: {MANAGEMENT['4A']}." in impression
    assert "- Highest model malignancy estimate: nodule 1, 12.5 %" in "\n".join(impression)


def test_markdown_without_review_or_nodules():
    report = make_report(needs_review=False, nodules=[])
    text = report_markdown(report)
    assert REVIEW_BANNER not in text
    assert UNCERTAIN_MARKER not in text
    assert "No pulmonary nodule was detected." in text


def test_atomic_output_dir_commits_replaces_or_discards(tmp_path):
    target = tmp_path / "case"
    with atomic_output_dir(target) as tmp:
        write_text_atomic(tmp / "a.txt", "first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        with atomic_output_dir(target):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(target, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("second")
            raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]
    with pytest.raises(TypeError, match="text must be a string, got bytes"):
        write_text_atomic(tmp_path / "c.txt", b"x")
