"""Assemble the exam report from a :class:`~lungvlm.inference.report_analysis.ScanAnalysis`.

The conventions (which source wins for each attribute, ranking, Lung-RADS inputs and the review
rules) are listed in :mod:`lungvlm.inference.report_analysis`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import lungvlm
from lungvlm.clinical.attenuation import AttenuationMeasurement
from lungvlm.clinical.lungrads import LungRADSResult, categorize, categorize_exam
from lungvlm.export.schema import (
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
from lungvlm.inference.nodule_heads import NoduleHeadOutput
from lungvlm.inference.prior import NoduleComparison
from lungvlm.inference.report_analysis import (
    ReportModel,
    ScanAnalysis,
    instance_size,
    needs_review_reasons,
)
from lungvlm.text.parser import ParsedNodule, parse_nodule_text, parse_report

#: Lung-RADS benign calcification patterns (``lungvlm.text.vocabulary.CALCIFICATIONS``).
BENIGN_CALCIFICATIONS: tuple[str, ...] = ("central", "diffuse", "popcorn", "laminated")
#: LIDC texture rating edges: < 2.5 non-solid (ground glass), < 3.5 part-solid, else solid.
TEXTURE_EDGES: tuple[float, float] = (2.5, 3.5)


def sentence_heatmap_file(index: int, sentence: int) -> str:
    """Relative path of the overlay PNG of sentence ``sentence`` (1-based) of nodule ``index``."""
    return f"overlays/nodule_{index:02d}_sentence_{sentence:02d}.png"


def texture_attenuation(texture_unit: float) -> str:
    """Attenuation from the concept head's texture rating in [0, 1] (LIDC 1-5 rescaled)."""
    rating = 1.0 + 4.0 * float(texture_unit)
    if rating < TEXTURE_EDGES[0]:
        return "ground_glass"
    return "part_solid" if rating < TEXTURE_EDGES[1] else "solid"


@dataclass
class NoduleFindings:
    """Attributes of one nodule and where they came from (see :mod:`lungvlm.inference.report_analysis`)."""

    attenuation: str
    solid_component_mm: float | None
    parsed: ParsedNodule
    reasons: list[str] = field(default_factory=list)


def _words(attenuation: str) -> str:
    return attenuation.replace("_", "-")


def nodule_findings(
    index: int,
    head: NoduleHeadOutput,
    mean_diameter_mm: float,
    measured: AttenuationMeasurement | None = None,
) -> NoduleFindings:
    """Attributes of one nodule: attenuation and solid component from the image when measured,
    the rest from the generated text (fallbacks in :mod:`lungvlm.inference.report_analysis`).

    Args:
        index: the nodule's report index (1-based), for the review reasons.
        head: the nodule's head outputs (generated text, concept ratings).
        mean_diameter_mm: the measured total mean diameter (mm).
        measured: attenuation and solid component (mm) from the HU inside the nodule's
            (extended) mask (:func:`lungvlm.clinical.attenuation.measure_hu`); None when the
            image gave none, and the text (then the concept head) decides.
    """
    nodules = parse_report(head.text).nodules
    parsed = nodules[0] if nodules else parse_nodule_text(head.text)
    if parsed.lobe == "middle" and parsed.side == "left":
        parsed.lobe = None
    if measured is not None:
        return _image_findings(index, head, parsed, mean_diameter_mm, measured)
    reasons = []
    attenuation = parsed.attenuation
    if attenuation is None:
        attenuation = texture_attenuation(head.concepts["texture"])
        reasons.append(
            f"nodule {index}: attenuation not stated by the generated text; "
            f"{_words(attenuation)} taken from the concept head"
        )
    solid = None
    if attenuation == "part_solid":
        stated, total = parsed.solid_component_mm, parsed.mean_diameter_mm
        if stated is None:
            solid = mean_diameter_mm
            reasons.append(
                f"nodule {index}: part-solid without a stated solid component; the measured "
                "total size is used (conservative)"
            )
        else:
            scale = mean_diameter_mm / total if total else 1.0
            solid = min(mean_diameter_mm, stated * scale)
    return NoduleFindings(attenuation, solid, parsed, reasons)


def _image_findings(
    index: int,
    head: NoduleHeadOutput,
    parsed: ParsedNodule,
    mean_diameter_mm: float,
    measured: AttenuationMeasurement,
) -> NoduleFindings:
    """Image measurement first; the text (else the concept head) is checked against it."""
    attenuation = measured.attenuation
    solid = None
    if attenuation == "part_solid":
        solid = min(mean_diameter_mm, measured.solid_component_mm)
    if parsed.attenuation is not None:
        other, source = parsed.attenuation, "the generated text"
    else:
        other, source = texture_attenuation(head.concepts["texture"]), "the concept head"
    reasons = []
    if other != attenuation:
        reasons.append(
            f"nodule {index}: the image measures {_words(attenuation)} (HU inside the nodule) "
            f"but {source} says {_words(other)}; the image measurement is used"
        )
    return NoduleFindings(attenuation, solid, parsed, reasons)


def lungrads_for(findings: NoduleFindings, mean_diameter_mm: float, status: str) -> LungRADSResult:
    """Per-nodule category from the measured size and the read attributes."""
    p = findings.parsed
    juxtapleural = (
        p.pleural_relation in ("juxtapleural", "perifissural")
        and findings.attenuation == "solid"
        and p.margin == "smooth"
        and p.shape == "oval"
    )
    return categorize(
        attenuation=findings.attenuation,
        mean_diameter_mm=mean_diameter_mm,
        solid_component_mm=findings.solid_component_mm,
        status=status,
        benign_calcification=p.calcification in BENIGN_CALCIFICATIONS,
        contains_fat=bool(p.contains_fat),
        juxtapleural_benign=juxtapleural,
        suspicious_features=p.margin == "spiculated",
    )


def _comparison(comp: NoduleComparison | None, interval_days: float | None) -> Comparison | None:
    if comp is None:
        return None
    return Comparison(
        status=comp.status,
        prior_mean_diameter_mm=comp.prior_mean_diameter_mm,
        interval_days=interval_days,
        vdt_days=comp.vdt_days,
        lungrads_growth=comp.lungrads_growth,
    )


def assemble_report(
    rm: ReportModel,
    analysis: ScanAnalysis,
    order: Sequence[int],
    case_id: str,
    source: Source,
    comparisons: Sequence[NoduleComparison] | None = None,
    interval_days: float | None = None,
) -> ExamReport:
    """Build the validated :class:`ExamReport` (nodules in ``order``, index 1 first).

    Args:
        rm: the model and its settings (threshold, checkpoint path).
        analysis: the scan analysis.
        order: instance positions by rank (:func:`~lungvlm.inference.report_analysis.rank_nodules`).
        case_id: the case name.
        source: where the scan came from.
        comparisons: prior comparison; entries with ``current_index`` give each instance's change.
        interval_days: time since the prior scan.
    """
    by_current = {c.current_index: c for c in comparisons or [] if c.current_index is not None}
    threshold = rm.settings.sentence_threshold
    nodules, results, reasons = [], [], []
    for rank, position in enumerate(order, start=1):
        inst, head = analysis.segmentation.instances[position], analysis.heads[position]
        hu = analysis.hu_measurements()[position]
        diameter, volume, long_axis, short_axis = instance_size(inst, hu)
        findings = nodule_findings(rank, head, diameter, hu.attenuation)
        comp = by_current.get(position)
        status = "baseline" if comparisons is None or comp is None else comp.lungrads_status
        result = lungrads_for(findings, diameter, status)
        results.append(result)
        reasons += needs_review_reasons(rank, head, threshold) + findings.reasons
        p = findings.parsed
        nodules.append(
            NoduleReport(
                index=rank,
                centroid_world_lps_mm=inst.centroid_world_mm,
                centroid_voxel_zyx=inst.centroid_original_vox,
                long_axis_mm=long_axis,
                short_axis_mm=min(short_axis, long_axis),
                mean_diameter_mm=diameter,
                volume_mm3=volume,
                attenuation=findings.attenuation,
                malignancy_probability=head.malignancy_probability,
                lungrads_category=result.category,
                solid_component_mm=findings.solid_component_mm,
                side=p.side,
                lobe=p.lobe if p.side else None,
                attributes=NoduleAttributes(p.margin, p.calcification, dict(head.concepts)),
                lungrads_probabilities=dict(head.lungrads_probabilities),
                growth_probability_12m=head.growth_probability_12m,
                comparison=_comparison(comp, interval_days),
                sentences=[
                    Sentence(
                        s.text,
                        min(1.0, s.confidence),
                        s.confidence < threshold,
                        sentence_heatmap_file(rank, k),
                    )  # fmt: skip
                    for k, s in enumerate(head.sentences, start=1)
                ],
            )
        )
    emphysema = None
    if analysis.laa950_percent is None:
        reasons.append("no lung found by the lung mask: emphysema not measured")
    else:
        emphysema = Emphysema(analysis.laa950_percent, analysis.emphysema_grade)
    exam = categorize_exam(results)
    return ExamReport(
        case_id=case_id,
        source=source,
        model=ModelInfo(str(rm.checkpoint_path), "vision_language", lungvlm.__version__),
        exam=ExamSummary(exam.category, exam.management, bool(reasons), reasons, emphysema),
        nodules=nodules,
        timings_s=dict(analysis.timings_s),
    )


def resolved_markdown(comparisons: Sequence[NoduleComparison] | None) -> list[str]:
    """Narrative lines for prior nodules not found on the current scan."""
    resolved = [c for c in comparisons or [] if c.status == "resolved"]
    if not resolved:
        return []
    lines = ["### Prior nodules not found on this scan (resolved)", ""]
    for c in resolved:
        lines.append(
            f"- Prior nodule {c.prior_index + 1}: mean diameter "
            f"{c.prior_mean_diameter_mm:.1f} mm on the prior scan; no matching nodule now."
        )
    return lines + [""]
