"""``lungvlm report SCAN --ckpt CKPT --out DIR``: the report folder of one chest CT.

A thin call of :meth:`lungvlm.LungVLM.report`. Bad input raises ``ValueError`` (``DataError`` for
scans) naming the file and the problem; ``lungvlm.cli.main`` prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
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


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand."""
    parser = subparsers.add_parser(
        "report",
        help="write the report folder of one CT (md, json, HTML, NIfTI, DICOM SEG/SR)",
        description=(
            "Segment a chest CT, measure and describe each nodule, grade the exam (Lung-RADS) "
            "and write the case folder: report.md, report.json, index.html, segmentation and "
            "probability maps as NIfTI, per-sentence heatmaps, overlays, and DICOM SEG + SR "
            "for DICOM input."
        ),
    )
    parser.add_argument(
        "scan", type=Path, help="DICOM series folder, NIfTI (.nii/.nii.gz) or MetaImage (.mhd)"
    )
    add_ckpt(parser)
    parser.add_argument("--out", type=Path, required=True, help="case folder to create")
    parser.add_argument("--prior", type=Path, default=None, help="prior scan of the same patient")
    parser.add_argument("--interval-days", type=float, default=None,
                        help="days between the prior and this scan (needed with --prior)")  # fmt: skip
    add_candidate_options(parser)
    add_guard_options(parser)
    parser.add_argument("--case-id", default=None,
                        help="case name in the report (default: a pseudonym such as "
                        "case-1a2b3c4d5e6f from the series UID, or from the image content for "
                        "NIfTI/MetaImage; never the scan's path)")  # fmt: skip
    add_keep_identifiers(parser)
    add_series_uid(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_device(parser)
    add_progress(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """The ``report`` subcommand; prints the folder, nodule count and exam category."""
    from lungvlm.api import LungVLM
    from lungvlm.commands.progress import progress_bars

    if args.prior is not None and args.interval_days is None:
        raise ValueError("--prior needs --interval-days (days between the prior and this scan)")
    model = LungVLM.from_checkpoint(args.ckpt, device=args.device, guard=guard_from_args(args))
    if model.report_model.settings.candidate_threshold is None:
        print(
            f"note: {args.ckpt} has no detection threshold; candidates are kept when their "
            "generated findings describe a nodule (run `lungvlm calibrate --detection`)",
            file=sys.stderr,
        )
    if not model.calibrated:
        print(
            f"note: {args.ckpt} is not calibrated; sentences below confidence "
            f"{model.report_model.settings.sentence_threshold} are marked uncertain "
            "(run `lungvlm calibrate`)",
            file=sys.stderr,
        )
    with progress_bars(args.progress):
        result = model.report_result(
            args.scan, args.prior, interval_days=args.interval_days, out=args.out,
            case_id=args.case_id, series_uid=args.series_uid, cascade=args.cascade,
            keep_unconfirmed=args.keep_unconfirmed, overwrite=args.overwrite,
            keep_identifiers=args.keep_identifiers,
        )  # fmt: skip
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    exam = result.report.exam
    review = " - NEEDS RADIOLOGIST REVIEW" if exam.needs_review else ""
    print(
        f"{result.folder}: {len(result.report.nodules)} nodule(s), Lung-RADS "
        f"{exam.lungrads_category}{review}"
    )
    return 0
