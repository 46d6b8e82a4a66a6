"""``lungvlm predict INPUT --ckpt CKPT --out DIR``: reports for many scans, with a summary CSV.

INPUT is a folder or a CSV file:

- a **folder**: every NIfTI (``.nii``/``.nii.gz``) and MetaImage (``.mhd``) file in it, and every
  sub-folder holding DICOM files (searched recursively; a folder with several series is one
  failure naming them, unless ``--series-uid`` picks one), sorted by path;
- a **CSV** with a header and a ``path`` column (relative paths are relative to the CSV), and
  optionally ``case_id``.

A scan without a ``case_id`` is named by its pseudonym (``case-`` + 12 hex digits from the series
UID, or from the image content for NIfTI/MetaImage: :mod:`lungvlm.export.identifiers`), and the
summary names it by its position in the input (``#3``: the third CSV row, or the third scan in
path order), never by its path; ``--keep-identifiers`` names cases after their files or folders
and lists the paths.

Each scan goes through Lightning's predict loop (:mod:`lungvlm.lightning.predict`) on
``--device`` (bf16-mixed on a GPU unless ``--precision`` says otherwise) and gets
``DIR/<case_id>/`` (the folder of ``lungvlm report``). ``DIR/summary.csv`` has one row per scan
(status ok / skipped / failed, nodule count, exam Lung-RADS, review flag, seconds, error) and
``DIR/failures.json`` lists the failures; a failure never stops the run. Rerunning skips the
cases whose ``report.json`` exists (``--overwrite`` redoes them).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from lungvlm.commands.options import (
    add_candidate_options,
    add_ckpt,
    add_device,
    add_guard_options,
    add_keep_identifiers,
    add_progress,
    add_series_uid,
    guard_from_args,
)

#: Precision choices of ``--precision`` (Lightning's names); auto: bf16-mixed on a GPU.
PRECISIONS: tuple[str, ...] = ("auto", "32-true", "bf16-mixed", "16-mixed")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``predict`` subcommand."""
    parser = subparsers.add_parser(
        "predict",
        help="reports for many CTs (a folder or a CSV) with a summary CSV; resumes",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=Path, help="folder of scans, or a CSV with a 'path' column")
    add_ckpt(parser)
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (one folder per case)"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="numeric precision (auto: bf16-mixed on a GPU, 32-true on the CPU)")  # fmt: skip
    parser.add_argument("--num-workers", type=int, default=1,
                        help="processes reading scans ahead of the model (0: read in the main process)")  # fmt: skip
    add_candidate_options(parser)
    add_guard_options(parser)
    add_series_uid(parser)
    add_keep_identifiers(parser)
    parser.add_argument("--overwrite", action="store_true", help="redo cases that have a report")
    add_device(parser)
    add_progress(parser)
    parser.set_defaults(func=run)
    return parser


def _case_ids(
    paths: list[Path], given: list[str | None], keep_identifiers: bool = False
) -> list[str | None]:
    """Case ids: the given ones, else the scan names with ``keep_identifiers``, else None (the
    pseudonym, known once the scan is read); names made unique with a numeric suffix."""
    from lungvlm.commands.scan_io import scan_name

    ids: list[str | None] = []
    seen: dict[str, int] = {}
    for index, (path, case_id) in enumerate(zip(paths, given, strict=True)):
        name = case_id or (scan_name(path) if keep_identifiers else None)
        if name is None:
            ids.append(None)
            continue
        if "/" in name or name in ("", ".", ".."):
            where = path if keep_identifiers else f"scan #{index + 1}"
            raise ValueError(f"case_id {name!r} of {where} is not a folder name")
        count = seen.get(name, 0)
        seen[name] = count + 1
        ids.append(name if count == 0 else f"{name}_{count + 1}")
    return ids


def list_scans(source: Path, keep_identifiers: bool = False) -> list[tuple[str | None, Path]]:
    """(case_id, path) of every scan named by a folder or a CSV (module docstring).

    The case id is the CSV's ``case_id``, else with ``keep_identifiers`` the scan's file or
    folder name, else None: the pseudonym, set when the scan is read (:class:`ScanListDataset`).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a CSV without a ``path`` column, or a folder without any scan.
    """
    from lungvlm.commands.scan_io import METAIMAGE_SUFFIXES, NIFTI_SUFFIXES

    if not source.exists():
        raise FileNotFoundError(f"predict input {source} does not exist")
    if source.is_file():
        with source.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError(
                    f"CSV {source} needs a header with a 'path' column; found "
                    f"{reader.fieldnames or 'no header'}"
                )
            rows = list(reader)
        paths = [(source.parent / r["path"]).resolve() if not Path(r["path"]).is_absolute()
                 else Path(r["path"]) for r in rows]  # fmt: skip
        given = [r.get("case_id") or None for r in rows]
        return list(zip(_case_ids(paths, given, keep_identifiers), paths, strict=True))
    suffixes = NIFTI_SUFFIXES + METAIMAGE_SUFFIXES
    files = sorted(
        p for p in source.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)
    )
    dicom_dirs = sorted(
        {p.parent for p in source.rglob("*") if p.is_file() and _looks_like_dicom(p)}
    )
    paths = sorted([*files, *dicom_dirs])
    if not paths:
        raise ValueError(
            f"predict input {source} holds no scan: looked for DICOM files (any depth) and "
            f"{', '.join(suffixes)} files"
        )
    return list(zip(_case_ids(paths, [None] * len(paths), keep_identifiers), paths, strict=True))


def _looks_like_dicom(path: Path) -> bool:
    """A DICOM Part 10 file (``DICM`` at byte 128) or a ``.dcm`` file."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


class ScanListDataset:
    """A map-style dataset of :class:`~lungvlm.lightning.predict.ScanItem` (read on access).

    Reading errors become items with ``error`` set, so one bad scan never stops the run. A scan
    without a case id gets its pseudonym once read; one that cannot be read is ``input-N``.
    Unless ``keep_identifiers``, items name their scan by its position (``#N``), also in errors.
    """

    def __init__(
        self,
        scans: list[tuple[str | None, Path]],
        series_uid: str | None = None,
        keep_identifiers: bool = False,
    ) -> None:
        self.scans = scans
        self.series_uid = series_uid
        self.keep_identifiers = keep_identifiers

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, index: int):
        import time

        from data_modules.io import DataError
        from lungvlm.api import default_case_id
        from lungvlm.commands.scan_io import read_volume
        from lungvlm.export.identifiers import withhold_path
        from lungvlm.lightning.predict import ScanItem

        case_id, path = self.scans[index]
        label = str(path) if self.keep_identifiers else f"#{index + 1}"
        start = time.perf_counter()
        try:
            read = read_volume(path, series_uid=self.series_uid)
        except (DataError, ValueError, OSError) as err:
            error = f"{type(err).__name__}: {' '.join(str(err).split())}"
            if not self.keep_identifiers:
                error = withhold_path(error, path, f"<input {label}>")
            return ScanItem(case_id or f"input-{index + 1}", path, error=error, label=label)
        case_id = case_id or default_case_id(read.volume, read.format, path)
        return ScanItem(
            case_id, path, read.volume, read.format, read.source_datasets,
            read_seconds=time.perf_counter() - start, label=label,
        )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """The ``predict`` subcommand; returns 0 when every scan was reported or skipped, else 1."""
    from torch.utils.data import DataLoader

    from lungvlm.api import LungVLM
    from lungvlm.commands.progress import progress_bars
    from lungvlm.lightning.predict import (
        FAILURES_FILE,
        SUMMARY_FILE,
        ReportPredictor,
        ReportSummaryWriter,
        collate_one,
        predict_trainer,
    )

    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0; got {args.num_workers}")
    scans = list_scans(args.input, args.keep_identifiers)
    model = LungVLM.from_checkpoint(args.ckpt, device=args.device, guard=guard_from_args(args))
    args.out.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(
        ScanListDataset(scans, args.series_uid, args.keep_identifiers), batch_size=1,
        shuffle=False,
        num_workers=args.num_workers, collate_fn=collate_one,
    )  # fmt: skip
    writer = ReportSummaryWriter(args.out, len(scans))
    predictor = ReportPredictor(
        model.report_model, args.out, args.cascade, args.keep_unconfirmed, args.overwrite,
        args.keep_identifiers,
    )  # fmt: skip
    precision = None if args.precision == "auto" else args.precision
    trainer = predict_trainer(model.device, precision, [writer])
    with progress_bars(args.progress):
        trainer.predict(predictor, dataloaders=loader, return_predictions=False)
    counts = {s: sum(r["status"] == s for r in writer.rows) for s in ("ok", "skipped", "failed")}
    print(
        f"{len(scans)} scan(s): {counts['ok']} reported, {counts['skipped']} skipped (done "
        f"before), {counts['failed']} failed -> {args.out / SUMMARY_FILE}"
        + (f", failures in {args.out / FAILURES_FILE}" if counts["failed"] else "")
    )
    return 1 if counts["failed"] else 0
