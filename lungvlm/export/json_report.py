"""``report.json`` and the narrative ``report.md`` of one case.

The narrative is rendered from the validated :class:`~lungvlm.export.schema.ExamReport`, so
every number it states is the one in the JSON. Display rounding follows Lung-RADS v2022
(``reference/report-language.md``): diameters to 0.1 mm, volumes to the nearest mm³.
Sentences the model is unsure of are kept but marked with :data:`UNCERTAIN_MARKER` and set in
italics with their confidence, never stated as fact; a flagged case opens with
:data:`REVIEW_BANNER`.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from lungvlm.clinical.lungrads import round_diameter_mm
from lungvlm.export.schema import ExamReport, NoduleReport
from lungvlm.export.writer import write_text_atomic
from lungvlm.text.schema import round_half_up

UNCERTAIN_MARKER = "⚠ uncertain:"
REVIEW_BANNER = "⚠ NEEDS RADIOLOGIST REVIEW"
_ATTENUATION_WORDS = {"solid": "solid", "part_solid": "part-solid", "ground_glass": "ground-glass"}
_MARGIN_WORDS = {"ill_defined": "ill-defined"}


def write_report_json(report: ExamReport, path: str | PathLike[str]) -> Path:
    """Write ``report`` as UTF-8 JSON to ``path`` atomically (temporary file + rename).

    Raises:
        TypeError: if ``report`` is not an :class:`ExamReport`.
    """
    if not isinstance(report, ExamReport):
        raise TypeError(f"report must be an ExamReport, got {type(report).__name__}")
    return write_text_atomic(path, report.to_json() + "\n")


def read_report_json(path: str | PathLike[str]) -> ExamReport:
    """Read and validate a ``report.json`` (ValueError naming the bad field)."""
    return ExamReport.from_json(Path(path).read_text(encoding="utf-8"))


def format_mm(value_mm: float) -> str:
    """A length for display: rounded half up to 0.1 mm (Lung-RADS v2022), e.g. "7.3 mm"."""
    return f"{round_diameter_mm(value_mm):.1f} mm"


def format_percent(probability: float) -> str:
    """A probability in [0, 1] as a percentage with one decimal, e.g. "12.5 %"."""
    return f"{round_half_up(100.0 * probability, 1):.1f} %"


def nodule_location(nodule: NoduleReport) -> str:
    """Where the nodule is, in words: "right upper lobe", "left lung" or "location not stated"."""
    if nodule.side and nodule.lobe:
        return f"{nodule.side} {nodule.lobe} lobe"
    return f"{nodule.side} lung" if nodule.side else "location not stated"


def _size_line(n: NoduleReport) -> str:
    line = (
        f"- Size: mean diameter {format_mm(n.mean_diameter_mm)} (long axis {format_mm(n.long_axis_mm)}, "
        f"short axis {format_mm(n.short_axis_mm)}); volume {round_half_up(n.volume_mm3, 0):.0f} mm³"
    )
    if n.solid_component_mm is not None:
        line += f"; solid component {format_mm(n.solid_component_mm)}"
    return line


def _comparison_line(n: NoduleReport) -> str:
    c = n.comparison
    if c is None:
        return "- Comparison: no prior scan compared"
    parts = [f"- Comparison: {c.status} since the prior scan"]
    if c.prior_mean_diameter_mm is not None:
        parts.append(f"prior mean diameter {format_mm(c.prior_mean_diameter_mm)}")
    if c.interval_days is not None:
        parts.append(f"interval {round_half_up(c.interval_days, 0):.0f} days")
    if c.vdt_days is not None:
        parts.append(f"volume doubling time {round_half_up(c.vdt_days, 0):.0f} days")
    met = "met" if c.lungrads_growth else "not met"
    parts.append(f"Lung-RADS growth criterion (>1.5 mm in 12 months) {met}")
    return "; ".join(parts)


def sentence_markdown(text: str, confidence: float, uncertain: bool) -> str:
    """One generated sentence as a Markdown bullet; uncertain ones are marked and italic."""
    body = text.strip()
    if uncertain:
        return f"- {UNCERTAIN_MARKER} *{body}* (low confidence {confidence:.2f})"
    return f"- {body} (confidence {confidence:.2f})"


def _nodule_section(n: NoduleReport) -> list[str]:
    attributes = [f"attenuation {_ATTENUATION_WORDS[n.attenuation]}"]
    if n.attributes.margin is not None:
        attributes.append(f"margin {_MARGIN_WORDS.get(n.attributes.margin, n.attributes.margin)}")
    if n.attributes.calcification is not None:
        attributes.append(f"calcification {n.attributes.calcification}")
    x, y, z = n.centroid_world_lps_mm
    kz, ky, kx = n.centroid_voxel_zyx
    lines = [
        f"### Nodule {n.index}: {nodule_location(n)}",
        _size_line(n),
        f"- Features: {', '.join(attributes)}",
        f"- Centre: LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm; voxel (z, y, x) ({kz:.0f}, {ky:.0f}, {kx:.0f})",
        f"- Lung-RADS category {n.lungrads_category}; model malignancy estimate "
        f"{format_percent(n.malignancy_probability)}"
        + (
            f"; model 12-month growth estimate {format_percent(n.growth_probability_12m)}"
            if n.growth_probability_12m is not None
            else ""
        ),
        _comparison_line(n),
    ]
    if n.sentences:
        lines += ["", "Generated description:"]
        lines += [sentence_markdown(s.text, s.confidence, s.uncertain) for s in n.sentences]
    return lines + [""]


def report_markdown(report: ExamReport) -> str:
    """Render the narrative report (``report.md``) of ``report``.

    Sections: optional review banner, FINDINGS (one subsection per nodule, in the report's
    order, then emphysema), IMPRESSION (exam category and its management) and a provenance line.

    Raises:
        TypeError: if ``report`` is not an :class:`ExamReport`.
    """
    if not isinstance(report, ExamReport):
        raise TypeError(f"report must be an ExamReport, got {type(report).__name__}")
    exam = report.exam
    lines = [f"# Screening chest CT report: {report.case_id}", ""]
    if exam.needs_review:
        lines += [f"> **{REVIEW_BANNER}**", ">"]
        lines += [f"> - {reason}" for reason in exam.review_reasons]
        lines.append("")
    lines += ["## FINDINGS", ""]
    if not report.nodules:
        lines += ["No pulmonary nodule was detected.", ""]
    for nodule in report.nodules:
        lines += _nodule_section(nodule)
    lines += ["### Emphysema", ""]
    if exam.emphysema is None:
        lines.append("Not measured.")
    else:
        e = exam.emphysema
        lines.append(
            f"%LAA-950: {round_half_up(e.laa950_percent, 1):.1f} % of lung voxels at or below "
            f"-950 HU ({e.severity}; display word is a project convention)."
        )
    lines += ["", "## IMPRESSION", ""]
    lines.append(f"- Lung-RADS v2022 category {exam.lungrads_category}.")
    lines.append(f"- Management: {exam.management}.")
    if report.nodules:
        top = max(report.nodules, key=lambda n: n.malignancy_probability)
        lines.append(
            f"- Highest model malignancy estimate: nodule {top.index}, "
            f"{format_percent(top.malignancy_probability)} (a model estimate, not a diagnosis)."
        )
    if exam.needs_review:
        lines.append("- This draft needs radiologist review before use.")
    lines += [
        "",
        "---",
        f"Generated by LungVLM {report.model.lungvlm_version} (stage {report.model.stage}, "
        f"checkpoint {report.model.checkpoint_path or 'none'}); report schema "
        f"{report.schema_version}. {identifiers_note(report)}",
        "",
    ]
    return "\n".join(lines)


def identifiers_note(report: ExamReport) -> str:
    """One sentence saying whether the input's path and name (which may name the patient) were
    withheld or kept (``--keep-identifiers``); :mod:`lungvlm.export.identifiers`."""
    if report.source.identifiers == "kept":
        return (
            "Identifiers kept (--keep-identifiers): the case ID and source path come from the "
            "input and may name the patient."
        )
    return "Input path and patient identifiers withheld."
