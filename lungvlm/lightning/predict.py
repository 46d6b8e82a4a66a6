"""Batch reports through Lightning's predict loop: one scan per step, a summary CSV, resumable.

``lungvlm predict`` feeds :class:`ScanItem` objects (read by a DataLoader, so scans are read by
worker processes while the model works) to :class:`ReportPredictor`, whose ``predict_step`` runs
the whole report pipeline of one scan on the trainer's device and precision (bf16-mixed on a
GPU by default) and writes its report folder. :class:`ReportSummaryWriter` keeps
``summary.csv`` (one row per scan, rewritten atomically after every scan, so a crash never
leaves a half-written file) and ``failures.json``. A scan that cannot be read or reported is a
``failed`` row; the run goes on with the next one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from lungvlm.export.writer import write_text_atomic
from lungvlm.inference.report_analysis import ReportModel
from lungvlm.progress import update as progress_update

log = logging.getLogger(__name__)

#: Columns of ``summary.csv``.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "case_id",
    "scan",
    "status",
    "n_nodules",
    "lungrads_category",
    "needs_review",
    "max_malignancy_probability",
    "largest_diameter_mm",
    "seconds",
    "report_folder",
    "error",
)
SUMMARY_FILE = "summary.csv"
FAILURES_FILE = "failures.json"


@dataclass
class ScanItem:
    """One scan to report: its case id and path, and the read volume or the read error.

    Attributes:
        case_id: the case's name, also its folder under the output folder (a pseudonym unless
            given or identifiers are kept: :mod:`lungvlm.export.identifiers`).
        path: the scan's folder or file.
        volume: the CTVolume, or None when it could not be read (``error`` says why).
        format: "dicom", "nifti" or "metaimage".
        source_datasets: DICOM slice headers in z order (SEG/SR export), else None.
        error: the reading error, one line (naming the scan by ``label``).
        read_seconds: seconds spent reading.
        label: how the outputs (summary, failures, log) name the scan: its path, or, with
            identifiers withheld, its position in the input (``#3``); empty: the path.
    """

    case_id: str
    path: Path
    volume: Any = None
    format: str = ""
    source_datasets: list | None = field(default=None, repr=False)
    error: str | None = None
    read_seconds: float = 0.0
    label: str = ""

    @property
    def shown(self) -> str:
        """The scan as the outputs name it (``label``, else the path)."""
        return self.label or str(self.path)


def summary_row(case_id: str, scan: str, status: str, report: dict | None = None, **extra) -> dict:
    """A ``summary.csv`` row from a report's JSON dict (``report.json``) or None; ``scan`` is
    the scan as the outputs name it (:attr:`ScanItem.shown`)."""
    row = {name: "" for name in SUMMARY_COLUMNS}
    row.update(case_id=case_id, scan=str(scan), status=status)
    if report is not None:
        nodules = report.get("nodules") or []
        exam = report.get("exam") or {}
        row.update(
            n_nodules=len(nodules),
            lungrads_category=exam.get("lungrads_category", ""),
            needs_review=exam.get("needs_review", ""),
            max_malignancy_probability=max(
                (n.get("malignancy_probability", 0.0) for n in nodules), default=""
            ),
            largest_diameter_mm=max((n.get("mean_diameter_mm", 0.0) for n in nodules), default=""),
        )
    row.update({k: v for k, v in extra.items() if k in row})
    return row


class ReportPredictor(L.LightningModule):
    """Wraps a loaded stage-3 model so that Lightning's predict loop writes one report per scan.

    Args:
        report_model: the loaded model and its inference settings.
        out_dir: the folder receiving one report folder per case.
        cascade: segment with the adaptive-resolution cascade.
        keep_unconfirmed: report every candidate (as ``lungvlm report --keep-unconfirmed``).
        overwrite: redo cases whose report folder exists (else they are skipped).
        keep_identifiers: record each scan's path in its report (``--keep-identifiers``).

    Two scans with the same case id in one run (the same series twice) get ``_2``, ``_3``, ...
    in input order, so a rerun gives them the same folders.
    """

    def __init__(
        self,
        report_model: ReportModel,
        out_dir: str | Path,
        cascade: bool = False,
        keep_unconfirmed: bool = False,
        overwrite: bool = False,
        keep_identifiers: bool = False,
    ) -> None:
        super().__init__()
        self.model = report_model.model  # a submodule: Lightning moves it to the device
        self.report_model = report_model
        self.out_dir = Path(out_dir)
        self.cascade = cascade
        self.keep_unconfirmed = keep_unconfirmed
        self.overwrite = overwrite
        self.keep_identifiers = keep_identifiers
        self._seen: dict[str, int] = {}

    def transfer_batch_to_device(self, batch: ScanItem, device, dataloader_idx: int) -> ScanItem:
        """Scans stay in host memory (NumPy): the pipeline moves windows and crops itself."""
        return batch

    def predict_step(self, item: ScanItem, batch_idx: int = 0) -> dict:
        """Report one scan; returns its ``summary.csv`` row (status ok, skipped or failed)."""
        from lungvlm.export.identifiers import report_source, withhold_path
        from lungvlm.imaging.lung_mask import lung_mask
        from lungvlm.inference.report_pipeline import generate_report

        count = self._seen.get(item.case_id, 0)
        self._seen[item.case_id] = count + 1
        case_id = item.case_id if count == 0 else f"{item.case_id}_{count + 1}"
        folder = self.out_dir / case_id
        if (folder / "report.json").is_file() and not self.overwrite:
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
            return summary_row(case_id, item.shown, "skipped", report, report_folder=folder)
        if item.error is not None:
            return summary_row(case_id, item.shown, "failed", error=item.error)
        start = time.perf_counter()
        try:
            volume = item.volume
            timings = {"read": item.read_seconds}
            lungs = lung_mask(volume.array_hu, volume.spacing_mm)
            timings["lung_mask"] = time.perf_counter() - start
            source = report_source(
                item.path, item.format, volume.metadata.get("series_instance_uid"),
                self.keep_identifiers,
            )  # fmt: skip
            result = generate_report(
                self.report_model, volume, lungs, folder, source, case_id,
                item.source_datasets, None, cascade=self.cascade, overwrite=self.overwrite,
                timings_s=timings, confirm=False if self.keep_unconfirmed else None,
                keep_identifiers=self.keep_identifiers,
            )  # fmt: skip
        except (ValueError, OSError, RuntimeError) as err:
            error = _one_line(err)
            if not self.keep_identifiers:
                error = withhold_path(error, item.path, f"<input {item.shown}>")
            log.warning("%s (%s): %s", case_id, item.shown, error)
            return summary_row(case_id, item.shown, "failed", error=error)
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        seconds = round(item.read_seconds + time.perf_counter() - start, 2)
        return summary_row(
            case_id, item.shown, "ok", report, seconds=seconds, report_folder=result.folder
        )


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"


class ReportSummaryWriter(BasePredictionWriter):
    """Writes ``summary.csv`` after every scan and ``failures.json`` at the end (atomically).

    Args:
        out_dir: the output folder.
        n_scans: scans in all (for progress).
    """

    def __init__(self, out_dir: str | Path, n_scans: int) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.n_scans = n_scans
        self.rows: list[dict] = []

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        """Add the scan's row, rewrite ``summary.csv`` and report progress."""
        self.rows.append(prediction)
        self.write_summary()
        progress_update("scans", len(self.rows), self.n_scans)
        status = prediction["status"]
        detail = prediction["error"] if status == "failed" else (
            f"{prediction['n_nodules']} nodule(s), Lung-RADS {prediction['lungrads_category']}"
        )  # fmt: skip
        log.info("%s: %s (%s)", prediction["case_id"], status, detail)

    def write_summary(self) -> Path:
        """Write ``summary.csv`` (header + one row per scan so far); returns its path."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return write_text_atomic(self.out_dir / SUMMARY_FILE, buffer.getvalue())

    def on_predict_end(self, trainer, pl_module) -> None:
        """Write ``failures.json``: every failed scan with its error."""
        failures = [
            {"case_id": r["case_id"], "scan": r["scan"], "error": r["error"]}
            for r in self.rows
            if r["status"] == "failed"
        ]
        write_text_atomic(self.out_dir / FAILURES_FILE, json.dumps(failures, indent=2))


def predict_trainer(
    device: str, precision: str | None, callbacks: list, progress: bool = False
) -> L.Trainer:
    """A one-device Trainer for :class:`ReportPredictor`.

    Args:
        device: "cpu", "cuda" or "cuda:N".
        precision: Lightning precision; None: "bf16-mixed" on a GPU, "32-true" on the CPU.
        callbacks: e.g. the :class:`ReportSummaryWriter`.
        progress: Lightning's own progress bar (the commands draw their own).
    """
    if device.startswith("cuda"):
        accelerator, index = "gpu", int(device.split(":")[1]) if ":" in device else 0
        devices: Any = [index]
    else:
        accelerator, devices = "cpu", 1
    if precision is None:
        precision = "bf16-mixed" if accelerator == "gpu" else "32-true"
    from lungvlm.lightning.quiet import quiet_lightning_tips

    quiet_lightning_tips()
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        enable_checkpointing=False,
        inference_mode=True,
    )


def collate_one(items: list[ScanItem]) -> ScanItem:
    """DataLoader collate for one scan per step (scans differ in size)."""
    if len(items) != 1:
        raise ValueError(f"predict takes one scan per step; got a batch of {len(items)}")
    return items[0]
