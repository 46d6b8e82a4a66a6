"""Report findings of a phantom scan, built from its measured labels with :mod:`lungvlm.text`."""

from __future__ import annotations

from data_modules.phantom.labels import NoduleLabels
from lungvlm.clinical.emphysema import emphysema_severity
from lungvlm.clinical.lungrads import LungRADSResult, categorize_exam
from lungvlm.text.renderer import RenderedReport, RenderStyle, render_report
from lungvlm.text.schema import ExamFindings, Impression, NoduleChange, NoduleFinding
from lungvlm.types import ReportSpan


def nodule_finding(labels: NoduleLabels, with_slice: bool = True) -> NoduleFinding:
    """The report finding of one nodule (values as measured).

    Args:
        labels: the nodule's measured labels.
        with_slice: state the axial slice ("image 103"); off for crops, where the whole
            scan's slice number cannot be read from the image.
    """
    change = None
    if labels.change is not None:
        change = NoduleChange(
            status=labels.change["status"],
            prior_mean_diameter_mm=labels.change["prior_mean_diameter_mm"],
            interval_months=labels.change["interval_months"],
        )
    return NoduleFinding(
        side=labels.side,
        lobe=labels.lobe,
        mean_diameter_mm=labels.mean_diameter_mm,
        attenuation=labels.attenuation,
        solid_component_mm=labels.solid_component_mm,
        margin=labels.margin,
        calcification=labels.calcification,
        shape=labels.shape,
        pleural_relation=labels.pleural_relation,
        contains_fat=labels.contains_fat,
        change=change,
        volume_mm3=labels.volume_mm3,
        slice_index=int(labels.axial_slice) if with_slice else None,
    )


def exam_findings(
    nodules: list[NoduleLabels], laa950_percent: float | None, with_slice: bool = True
) -> ExamFindings:
    """Findings of a whole exam: nodules, emphysema (graded from LAA-950) and the impression.

    ``with_slice`` is passed to :func:`nodule_finding`.
    """
    results = [
        LungRADSResult(n.lungrads_category, n.lungrads_management, "phantom") for n in nodules
    ]
    exam = categorize_exam(results)
    emphysema = "none" if laa950_percent is None else emphysema_severity(laa950_percent)
    return ExamFindings(
        nodules=[nodule_finding(n, with_slice) for n in nodules],
        emphysema=emphysema,
        laa950_percent=laa950_percent,
        impression=Impression(category=exam.category, management=exam.management),
    )


def render(findings: ExamFindings, seed: int, *, state_defaults: bool = False) -> RenderedReport:
    """Render the report text and its spans (wording varies with ``seed``).

    Args:
        findings: what to report.
        seed: wording seed.
        state_defaults: always state default findings ("no pulmonary nodules", "no
            emphysema"); used for nodule-free crops, whose text would otherwise be empty.
    """
    style = RenderStyle(mention_defaults=1.0) if state_defaults else None
    return render_report(findings, seed=seed, style=style)


def findings_spans(report: RenderedReport) -> list[ReportSpan]:
    """Spans that lie in the FINDINGS section, as :class:`lungvlm.types.ReportSpan`."""
    limit = len(report.findings_text)
    return [s for s in report.spans if s.end <= limit]
