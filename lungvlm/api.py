"""The Python API: ``LungVLM.from_checkpoint(path, device).report / segment / ask``.

>>> from lungvlm import LungVLM
>>> model = LungVLM.from_checkpoint("runs/stage3/checkpoints/last.ckpt", device="auto")
>>> report = model.report("scans/case_0001/")            # an ExamReport
>>> report.exam.lungrads_category, [n.mean_diameter_mm for n in report.nodules]
>>> model.report("scans/case_0001/", out="reports/case_0001")   # also writes the folder

A scan is a DICOM series folder, a NIfTI (.nii/.nii.gz) or MetaImage (.mhd) path, or an
already-read :class:`~lungvlm.imaging.volume.CTVolume`. The commands ``lungvlm report``,
``predict`` and ``ask`` are thin calls of this class.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungvlm.progress import ProgressCallback, listening

if TYPE_CHECKING:
    from lungvlm.export.schema import ExamReport
    from lungvlm.imaging.volume import CTVolume
    from lungvlm.inference.ask import NoduleAnswers
    from lungvlm.inference.guard import InferenceGuard
    from lungvlm.inference.report_analysis import ReportModel
    from lungvlm.inference.report_pipeline import ReportResult
    from lungvlm.inference.scan import ScanSegmentation

#: What the API accepts as a scan: a path (DICOM folder, NIfTI, MetaImage) or a CTVolume.
ScanLike = Any


@dataclass
class _Scan:
    volume: CTVolume
    path: Path | None
    format: str
    source_datasets: list | None


def _read(scan: ScanLike, series_uid: str | None = None, with_headers: bool = True) -> _Scan:
    """A scan argument as a volume (reading a path with the commands' one reader)."""
    from lungvlm.imaging.volume import CTVolume

    if isinstance(scan, CTVolume):
        return _Scan(scan, None, "volume", None)
    if isinstance(scan, str | Path):
        from lungvlm.commands.scan_io import read_volume

        read = read_volume(scan, series_uid=series_uid, with_headers=with_headers)
        return _Scan(read.volume, read.path, read.format, read.source_datasets)
    if hasattr(scan, "array_hu") and hasattr(scan, "spacing_mm"):
        return _Scan(scan, None, "volume", None)
    raise TypeError(
        f"scan must be a path (DICOM folder, .nii/.nii.gz, .mhd) or a CTVolume; got "
        f"{type(scan).__name__}"
    )


class LungVLM:
    """A loaded stage-3 LungVLM model that segments, reports on and answers about CT scans.

    Build it with :meth:`from_checkpoint`. Each method takes a scan (a path or a CTVolume) and
    runs the same pipeline as the commands, on the model's device.
    """

    def __init__(self, report_model: ReportModel, device: str = "cpu") -> None:
        self._rm = report_model
        self.device = device

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", guard: InferenceGuard | None = None
    ) -> LungVLM:
        """Load a stage-3 (``vision_language``) checkpoint, safely (``weights_only=True``).

        Args:
            path: a checkpoint written by ``lungvlm fit`` (calibrated or not).
            device: "auto" (a CUDA GPU when present, else the CPU), "cpu", "cuda" or "cuda:N".
            guard: limits of every whole-scan run (:mod:`lungvlm.inference.guard`): a memory
                budget checked before resampling, and at most so many candidates, none larger
                than a chest finding, checked right after the segmentation (a ``GuardError``
                then stops the run before the nodule heads). None (default) checks nothing;
                ``lungvlm report`` and ``predict`` pass ``InferenceGuard()`` unless
                ``--no-guard``.

        Raises:
            ValueError: a missing or unreadable file, a checkpoint of another stage, or one
                whose contents a safe load refuses.
        """
        from lungvlm.commands.options import resolve_device
        from lungvlm.inference.report_analysis import load_report_model

        resolved = resolve_device(device)
        report_model = load_report_model(path, map_location=resolved)
        report_model.guard = guard
        return cls(report_model, resolved)

    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint file the model was loaded from."""
        return self._rm.checkpoint_path

    @property
    def calibrated(self) -> bool:
        """Whether the checkpoint carries a ``lungvlm calibrate`` calibration."""
        return self._rm.settings.calibrated

    @property
    def report_model(self) -> ReportModel:
        """The loaded model with its inference settings (crop size, spacing, calibration)."""
        return self._rm

    def segment(
        self, scan: ScanLike, series_uid: str | None = None, cascade: bool = False
    ) -> ScanSegmentation:
        """Segment a scan into measured nodule candidates (no report, no text).

        Args:
            scan: a path or a CTVolume.
            series_uid: which series of a DICOM folder holding several.
            cascade: use the adaptive-resolution cascade instead of the full sliding window.

        Returns:
            The :class:`~lungvlm.inference.scan.ScanSegmentation`: probability and label maps
            on the model's (prepared) grid and the measured instances (diameter mm, volume
            mm³, centre in voxels and LPS mm).
        """
        from lungvlm.imaging.lung_mask import lung_mask
        from lungvlm.inference.report_analysis import segment_volume

        read = _read(scan, series_uid, with_headers=False)
        volume = read.volume
        lungs = lung_mask(volume.array_hu, volume.spacing_mm)
        return segment_volume(self._rm, volume, lungs, cascade)[1]

    def report_result(
        self,
        scan: ScanLike,
        prior: ScanLike | None = None,
        *,
        interval_days: float | None = None,
        out: str | Path | None = None,
        case_id: str | None = None,
        series_uid: str | None = None,
        cascade: bool = False,
        keep_unconfirmed: bool = False,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
        keep_identifiers: bool = False,
    ) -> ReportResult:
        """Like :meth:`report`, returning the whole result (report, folder, warnings, analysis)."""
        from lungvlm.imaging.lung_mask import lung_mask
        from lungvlm.inference.report_pipeline import PriorScan, generate_report

        if prior is not None and interval_days is None:
            raise ValueError(
                "a prior scan needs interval_days (days between the prior and this scan)"
            )
        with listening(progress):
            timings: dict[str, float] = {}
            start = time.perf_counter()
            current = _read(scan, series_uid)
            prior_read = _read(prior, with_headers=False) if prior is not None else None
            timings["read"] = time.perf_counter() - start
            start = time.perf_counter()
            volume = current.volume
            lungs = lung_mask(volume.array_hu, volume.spacing_mm)
            prior_scan = None
            if prior_read is not None:
                pv = prior_read.volume
                prior_scan = PriorScan(
                    pv, lung_mask(pv.array_hu, pv.spacing_mm), float(interval_days)
                )
            timings["lung_mask"] = time.perf_counter() - start
            source = _source(current, keep_identifiers)
            return generate_report(
                self._rm, volume, lungs, out, source,
                case_id or default_case_id(volume, current.format, current.path, keep_identifiers),
                current.source_datasets, prior_scan, cascade=cascade, overwrite=overwrite,
                timings_s=timings, confirm=False if keep_unconfirmed else None,
                keep_identifiers=keep_identifiers,
            )  # fmt: skip

    def report(
        self,
        scan: ScanLike,
        prior: ScanLike | None = None,
        *,
        interval_days: float | None = None,
        out: str | Path | None = None,
        case_id: str | None = None,
        series_uid: str | None = None,
        cascade: bool = False,
        keep_unconfirmed: bool = False,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
        keep_identifiers: bool = False,
    ) -> ExamReport:
        """Find, measure and describe the nodules of a scan and grade the exam.

        Args:
            scan: a path or a CTVolume.
            prior: an earlier scan of the same patient (path or CTVolume): growth, VDT.
            interval_days: days between ``prior`` and ``scan`` (needed with ``prior``).
            out: write the case folder here (report.md/json, index.html, NIfTI label and
                probability maps, overlays, DICOM SEG/SR for DICOM input); None writes nothing.
            case_id: the case name in the report (default: a pseudonym of the series UID or,
                without one, of the image content; :mod:`lungvlm.export.identifiers`).
            series_uid: which series of a DICOM folder holding several.
            cascade: segment with the adaptive-resolution cascade.
            keep_unconfirmed: report every segmentation candidate, also those whose generated
                findings describe no nodule.
            overwrite: replace an existing ``out``.
            progress: called as ``(step, done, total)`` during long steps.
            keep_identifiers: name the case after the scan's file or folder (unless
                ``case_id``), record the input path and name the PatientIDs of a prior of
                another patient; the report says so. Off by default: paths often name the
                patient.

        Returns:
            The :class:`~lungvlm.export.schema.ExamReport` (nodules ranked by malignancy x
            volume, exam Lung-RADS category and management, narrative, review flags).
        """
        return self.report_result(
            scan, prior, interval_days=interval_days, out=out, case_id=case_id,
            series_uid=series_uid, cascade=cascade, keep_unconfirmed=keep_unconfirmed,
            overwrite=overwrite, progress=progress, keep_identifiers=keep_identifiers,
        ).report  # fmt: skip

    def ask(
        self,
        scan: ScanLike,
        questions: str | Sequence[str],
        nodule: int = 1,
        *,
        report_dir: str | Path | None = None,
        out: str | Path | None = None,
        series_uid: str | None = None,
        cascade: bool = False,
        keep_unconfirmed: bool = False,
        keep_identifiers: bool = False,
    ) -> NoduleAnswers:
        """Answer questions about one nodule of a scan, numbered as in :meth:`report`.

        Args:
            scan: a path or a CTVolume.
            questions: a question or a list of them ("What is the margin?").
            nodule: 1-based nodule number as in the report (1 = highest malignancy x volume).
            report_dir: a report folder of the same scan (skips the whole-scan segmentation).
            out: write ``answer.json`` and one heatmap PNG per answer here.
            series_uid: which series of a DICOM folder holding several.
            cascade, keep_unconfirmed: as in :meth:`report` (to number nodules the same way).
            keep_identifiers: ``answer.json`` names the scan by its path; by default only by
                its case id (the pseudonym of :meth:`report`).

        Returns:
            :class:`~lungvlm.inference.ask.NoduleAnswers`: answers with heatmaps, and the
            measured size and risk-head outputs as evidence.
        """
        from lungvlm.inference.ask import answer_questions, write_answers

        if isinstance(questions, str):
            questions = [questions]
        read = _read(scan, series_uid, with_headers=False)
        result = answer_questions(
            self._rm, read.volume, nodule, questions, report_dir=report_dir, cascade=cascade,
            confirm=False if keep_unconfirmed else None,
            scan_label=str(read.path) if read.path is not None else "the scan",
        )  # fmt: skip
        if out is not None:
            case_id = default_case_id(read.volume, read.format, read.path, keep_identifiers)
            extra = {"case_id": case_id, "checkpoint": str(self.checkpoint_path)}
            if keep_identifiers:
                extra["scan"] = str(read.path)
            write_answers(out, result, read.volume, extra)
        return result


def default_case_id(
    volume: CTVolume, source_format: str, path: Path | None, keep_identifiers: bool = False
) -> str:
    """The case id when none is given: the pseudonym of the series UID or the image content
    (:func:`lungvlm.export.identifiers.case_pseudonym`); with ``keep_identifiers``, the scan's
    file or folder name (``a.nii.gz`` -> ``a``) as before pseudonyms."""
    if keep_identifiers and path is not None:
        from lungvlm.commands.scan_io import scan_name

        return scan_name(path)
    from lungvlm.export.identifiers import case_pseudonym

    return case_pseudonym(volume, source_format)


def _source(scan: _Scan, keep_identifiers: bool):
    """The report's ``source`` (:func:`lungvlm.export.identifiers.report_source`)."""
    from lungvlm.export.identifiers import report_source

    uid = scan.volume.metadata.get("series_instance_uid")
    return report_source(scan.path, scan.format, uid, keep_identifiers)
