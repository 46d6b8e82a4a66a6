"""``lungvlm ask SCAN "question" --ckpt CKPT --nodule K``: ask the model about one nodule.

A thin call of :meth:`lungvlm.LungVLM.ask` (see :mod:`lungvlm.inference.ask`). Nodule ``K`` is
numbered as in ``lungvlm report``; ``--report DIR`` reuses that report's segmentation.
Outputs (with ``--out DIR``): ``answer.json`` and ``answer_nodule_KK_qN.png``, written atomically.
"""

from __future__ import annotations

import argparse
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
    """Add the ``ask`` subcommand."""
    parser = subparsers.add_parser(
        "ask",
        help="answer a question about one reported nodule, with heatmaps",
        description="Answer questions about nodule K of a scan (numbered as in `lungvlm report`), "
        "with the heatmap of each answer and the measured size and risk as evidence.",
    )
    parser.add_argument(
        "scan", type=Path, help="DICOM series folder, NIfTI (.nii/.nii.gz) or MetaImage (.mhd)"
    )
    parser.add_argument("question", nargs="+", help="one or more questions (quote each)")
    add_ckpt(parser)
    parser.add_argument(
        "--nodule", type=int, required=True, metavar="K", help="nodule number as in the report"
    )
    parser.add_argument("--report", type=Path, help="folder of `lungvlm report` for this scan")
    parser.add_argument("--out", type=Path, help="write answer.json and heatmap PNGs here")
    add_candidate_options(parser)
    add_guard_options(parser)
    add_series_uid(parser)
    add_keep_identifiers(parser)
    add_device(parser)
    add_progress(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """The ``ask`` subcommand; prints the evidence and each question with its answer."""
    from lungvlm.api import LungVLM
    from lungvlm.commands.progress import progress_bars

    model = LungVLM.from_checkpoint(args.ckpt, device=args.device, guard=guard_from_args(args))
    with progress_bars(args.progress):
        result = model.ask(
            args.scan, args.question, args.nodule, report_dir=args.report, out=args.out,
            series_uid=args.series_uid, cascade=args.cascade,
            keep_unconfirmed=args.keep_unconfirmed, keep_identifiers=args.keep_identifiers,
        )  # fmt: skip
    ev = result.evidence
    print(
        f"Nodule {result.nodule}: measured mean diameter {ev['mean_diameter_mm']:.1f} mm, "
        f"volume {ev['volume_mm3']:.0f} mm3 (segmentation); risk head: malignancy "
        f"{100 * ev['malignancy_probability']:.1f} %, Lung-RADS {ev['lungrads_model']}"
    )
    for item in result.answers:
        print(f"Q: {item.question}\nA: {item.answer or '(no answer)'}")
    if args.out is not None:
        print(f"wrote {args.out / 'answer.json'}")
    return 0
