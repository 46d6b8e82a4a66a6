"""Scan -> nodules -> findings -> report: the whole of ``lungvlm report`` without file reading.

:func:`generate_report` takes a CTVolume-like scan (``array_hu`` (z, y, x) HU, ``spacing_mm``,
``origin_lps_mm``, ``direction``, ``metadata``) and its lung mask, so this package never reads
files itself (``lungvlm`` does not import ``data_modules``; the CLI in
:mod:`lungvlm.commands.report` reads the scan and computes the mask). Steps and
conventions: :mod:`lungvlm.inference.report_analysis` (analysis, which source wins, review
rules), :mod:`lungvlm.inference.report_findings` (assembly), :mod:`lungvlm.inference.prior`
(comparison), :mod:`lungvlm.export.case_folder` (files).

A prior from another patient (both PatientIDs known and different) is not compared: a warning
is returned and logged, and the narrative says why, without either PatientID unless
``keep_identifiers`` (:func:`lungvlm.export.identifiers.prior_mismatch_message`); the report is
still written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray

from lungvlm.export.case_folder import with_narrative, write_report_outputs
from lungvlm.export.identifiers import prior_mismatch_message
from lungvlm.export.schema import ExamReport, Source
from lungvlm.inference.prior import (
    MeasuredNodule,
    NoduleComparison,
    compare_nodules,
    compare_with_prior,
    mask_image,
    patients_differ,
)
from lungvlm.inference.report_analysis import (
    ReportModel,
    ScanAnalysis,
    analyse_scan,
    confirms_by_text,
    measure_instances_hu,
    measured_nodules,
    rank_nodules,
    ranked_label_map,
    segment_volume,
    threshold_candidates,
)
from lungvlm.inference.report_findings import assemble_report, resolved_markdown

log = logging.getLogger(__name__)


@dataclass
class PriorScan:
    """A prior scan of the same patient: volume, its lung mask and the interval (days)."""

    volume: object
    lung_mask: NDArray[np.bool_]
    interval_days: float


@dataclass
class ReportResult:
    """The report, its folder (None when not written), warnings (e.g. a skipped prior) and the
    scan analysis behind it (segmentation, per-nodule head outputs)."""

    report: ExamReport
    folder: Path | None
    warnings: list[str] = field(default_factory=list)
    analysis: ScanAnalysis | None = field(default=None, repr=False)


def _lung_image(volume, lung_mask):
    return mask_image(
        lung_mask, volume.spacing_mm, volume.origin_lps_mm, getattr(volume, "direction", None)
    )


def compare_prior(
    rm: ReportModel, current_volume, current_lungs: NDArray, current: Sequence[MeasuredNodule],
    prior: PriorScan, cascade: bool = False, confirm: bool | None = None,
) -> tuple[list[NoduleComparison], list[str]]:  # fmt: skip
    """Find the prior's nodules, register it on the lungs and compare
    (:mod:`lungvlm.inference.prior`).

    The prior's candidates are selected as the current scan's: at or above the detection
    threshold when the checkpoint has one, and, when the text confirms
    (:func:`~lungvlm.inference.report_analysis.confirms_by_text`), only those whose findings
    describe a nodule (the heads run only then). An empty lung mask makes registration
    impossible: the comparison then uses the scanner coordinates as they are, with a warning.
    """
    if confirms_by_text(rm, confirm):
        analysis = analyse_scan(rm, prior.volume, prior.lung_mask, cascade, confirm=True)
        nodules = analysis.measured_nodules()
    else:
        _, segmentation, _ = segment_volume(rm, prior.volume, prior.lung_mask, cascade)
        segmentation, _ = threshold_candidates(rm, segmentation)
        nodules = measured_nodules(segmentation.instances, measure_instances_hu(segmentation))
    try:
        comparisons, _ = compare_with_prior(
            current, nodules, _lung_image(current_volume, current_lungs),
            _lung_image(prior.volume, prior.lung_mask), prior.interval_days,
        )  # fmt: skip
        return comparisons, []
    except ValueError as err:
        message = f"prior not registered ({err}); nodules matched in scanner coordinates"
        log.warning(message)
        return compare_nodules(current, nodules, prior.interval_days), [message]


def candidate_notes(analysis: ScanAnalysis) -> list[str]:
    """Markdown lines saying which candidates were not reported, and why."""
    lines = []
    if analysis.candidate_threshold is None:
        lines.append(
            "The checkpoint has no detection threshold (run `lungvlm calibrate --detection`): "
            "candidates are not filtered by a calibrated candidate probability."
        )
    elif analysis.n_below_threshold:
        lines.append(
            f"{analysis.n_below_threshold} segmentation candidate(s) are not reported: their "
            f"candidate probability is below the detection threshold "
            f"{analysis.candidate_threshold:.3f}."
        )
    if analysis.n_unconfirmed:
        lines.append(
            f"{analysis.n_unconfirmed} segmentation candidate(s) are not reported: the model's "
            "findings for their crops describe no nodule."
        )
    return [line for text in lines for line in (text, "")]


def generate_report(
    rm: ReportModel,
    volume,
    lung_mask: NDArray,
    out_dir: str | Path | None,
    source: Source,
    case_id: str,
    source_datasets: Sequence[pydicom.Dataset] | None = None,
    prior: PriorScan | None = None,
    cascade: bool = False,
    overwrite: bool = False,
    timings_s: dict[str, float] | None = None,
    confirm: bool | None = None,
    keep_identifiers: bool = False,
) -> ReportResult:
    """Analyse a scan, compare it with a prior, assemble and write the report.

    Args:
        rm: the loaded stage-3 model (:func:`~lungvlm.inference.report_analysis.load_report_model`).
        volume: CTVolume-like scan.
        lung_mask: boolean lung mask on the scan's grid.
        out_dir: case folder to create (atomically); None writes nothing and returns the
            report (with its narrative) only.
        source: where the scan came from (path, format, series UID).
        case_id: the case name in the report.
        source_datasets: DICOM slices in z order (SEG + SR are written when given).
        prior: optional prior scan of the same patient.
        cascade: segment with the adaptive-resolution cascade.
        overwrite: replace an existing ``out_dir``.
        timings_s: seconds of steps done by the caller (e.g. "read", "lung_mask").
        confirm: report only candidates whose generated findings describe a nodule; None
            (default): only when the checkpoint has no detection threshold
            (:mod:`lungvlm.inference.report_analysis`).
        keep_identifiers: a prior of another patient is reported with both PatientIDs (by
            default neither is named).
    """
    analysis = analyse_scan(rm, volume, lung_mask, cascade, confirm)
    analysis.timings_s = {**(timings_s or {}), **analysis.timings_s}
    comparisons, warnings, extra = None, [], []
    if prior is not None:
        current_id = (getattr(volume, "metadata", None) or {}).get("patient_id")
        prior_id = (getattr(prior.volume, "metadata", None) or {}).get("patient_id")
        if patients_differ(current_id, prior_id):
            message = prior_mismatch_message(current_id, prior_id, keep_identifiers)
            log.warning(message)
            warnings.append(message)
            extra = ["### Comparison", "", f"Not compared: {message}.", ""]
        else:
            start = time.perf_counter()
            comparisons, notes = compare_prior(
                rm, volume, lung_mask, analysis.measured_nodules(), prior, cascade, confirm
            )
            warnings += notes
            analysis.timings_s["prior"] = time.perf_counter() - start
            extra = resolved_markdown(comparisons)
    extra = [*extra, *candidate_notes(analysis)]
    order = rank_nodules(analysis)
    report = assemble_report(
        rm, analysis, order, case_id, source, comparisons,
        prior.interval_days if comparisons is not None else None,
    )  # fmt: skip
    if out_dir is None:
        return ReportResult(with_narrative(report, extra), None, warnings, analysis)
    labels = ranked_label_map(analysis, order)
    written = write_report_outputs(
        out_dir, report, analysis, order, volume, labels, source_datasets, extra, overwrite
    )
    return ReportResult(written, Path(out_dir), warnings, analysis)
