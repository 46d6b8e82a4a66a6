"""``lungvlm evaluate``: whole-scan evaluation of a checkpoint on phantom chests, or inference on
one scan (DICOM folder, NIfTI or MetaImage) without a reference.

Phantom scans are whole
chests from :func:`data_modules.phantom.generate_case`; the default seeds 2,000,000..2,000,003
lie in the test range of ``PhantomDataModule`` (``SPLIT_OFFSETS["test"]`` with data seed 0),
disjoint from the training seeds. Reference nodules are the phantom's label map and each
nodule's measured Lung-RADS mean diameter (the LUNA16 hit radius is half of it).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lungvlm.commands.options import add_ckpt, add_device, add_phantom_size, add_progress

if TYPE_CHECKING:
    from lungvlm.evaluation.detection import EvaluationResult, EvaluationScan

#: Phantom chests evaluated by default: the first four seeds of the test split.
DEFAULT_N_SEEDS = 4


def default_seeds() -> str:
    """``START:STOP`` of the first :data:`DEFAULT_N_SEEDS` test-split phantom seeds."""
    from data_modules.phantom_datamodule import split_seed_base

    start = split_seed_base("test", 0)
    return f"{start}:{start + DEFAULT_N_SEEDS}"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to a ``lungvlm`` sub-parser set."""
    parser = subparsers.add_parser(
        "evaluate",
        help="whole-scan segmentation, detection FROC/CPM and Dice of a checkpoint",
        description=(
            "Segment whole phantom chests (seeds START:STOP, STOP excluded) and report per-nodule "
            "Dice, sensitivity, false positives per scan and the LUNA16 FROC/CPM; or, with "
            "a SCAN, list the nodules found in one CT (no reference)."
        ),
    )
    parser.add_argument(
        "scan", type=Path, nargs="?", default=None,
        help="one DICOM folder, .nii/.nii.gz or .mhd file to segment (no reference); "
        "without it, phantom chests are evaluated",
    )  # fmt: skip
    add_ckpt(parser, "stage-2 ('segment') or stage-3 checkpoint")
    parser.add_argument(
        "--phantom-seeds", default=None,
        help="phantom chests START:STOP, STOP excluded (default: the first 4 test-split seeds)",
    )  # fmt: skip
    add_phantom_size(parser)
    parser.add_argument("--out", type=Path, help="write OUT/evaluation.json")
    parser.add_argument("--cascade", action="store_true", help="low-resolution triage first")
    parser.add_argument("--target-spacing", type=float, default=1.0, help="model spacing, mm")
    parser.add_argument("--roi", type=int, default=32, help="window size (training crop), vox")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold")
    parser.add_argument("--no-lung-mask", action="store_true", help="segment the whole volume")
    add_device(parser)
    add_progress(parser)
    parser.set_defaults(func=run)
    return parser


def parse_seeds(text: str) -> range:
    """``"START:STOP"`` -> ``range(START, STOP)``."""
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError as err:
        raise ValueError(f"--phantom-seeds={text!r} must be START:STOP (two integers)") from err
    if not 0 <= start < stop:
        raise ValueError(f"--phantom-seeds={text!r} must satisfy 0 <= START < STOP")
    return range(start, stop)


def phantom_scans(seeds: range, size: str, with_lung_mask: bool) -> Iterator[EvaluationScan]:
    """Render whole phantom chests one at a time as evaluation rows.

    The chests come from :func:`data_modules.phantom_datamodule.phantom_chest`, the same
    rendering and label renumbering as whole-scan validation during training.
    """
    from data_modules.phantom_datamodule import phantom_chest
    from lungvlm.evaluation.detection import EvaluationScan

    for seed in seeds:
        chest = phantom_chest(seed, size, with_lung_mask=with_lung_mask)
        yield EvaluationScan(
            chest.case_id, chest.image_hu, chest.spacing_mm, chest.origin_lps_mm,
            chest.nodule_labels, list(chest.nodule_diameters_mm), chest.lung_mask,
        )  # fmt: skip


def format_table(result: EvaluationResult) -> str:
    """Per-scan rows and a summary line, as plain text."""
    import numpy as np

    rows = [
        f"{'scan':<18}{'nodules':>8}{'found':>7}{'FPs':>5}{'Dice':>7}{'windows':>9}{'seconds':>9}"
    ]
    for s in result.scans:
        dice = f"{np.mean(s.dice):.3f}" if s.dice else "-"
        seconds = sum(s.timings_s.values())
        rows.append(
            f"{s.scan_id:<18}{len(s.dice):>8}{sum(s.detected):>7}{s.n_false_positives:>5}"
            f"{dice:>7}{s.windows_fraction:>9.2f}{seconds:>9.1f}"
        )
    summary = result.to_dict()["summary"]

    def fmt(value):
        return "-" if value is None else f"{value:.3f}"

    rows.append(
        f"sensitivity {fmt(summary['sensitivity'])}  FPs/scan {summary['fps_per_scan']:.2f}  "
        f"mean Dice {fmt(summary['mean_dice'])}  CPM {fmt(summary['cpm'])}"
    )
    if summary["sensitivity_at_fps"]:
        rows.append(
            "sensitivity at FPs/scan: "
            + "  ".join(f"{k}: {v:.3f}" for k, v in summary["sensitivity_at_fps"].items())
        )
    return "\n".join(rows)


def _segment_one(model, args: argparse.Namespace) -> dict:
    import time

    from lungvlm.commands.scan_io import read_volume
    from lungvlm.imaging.lung_mask import lung_mask
    from lungvlm.inference.cascade import segment_scan_cascade
    from lungvlm.inference.scan import prepare_scan, segment_scan

    volume = read_volume(args.scan, with_headers=False).volume
    start = time.perf_counter()
    prepared = prepare_scan(
        volume.array_hu, volume.spacing_mm, args.target_spacing, model.normalization,
        affine=volume.affine_lps(),
    )  # fmt: skip
    prepare_s = time.perf_counter() - start
    lung = None if args.no_lung_mask else lung_mask(volume.array_hu, volume.spacing_mm)
    segment = segment_scan_cascade if args.cascade else segment_scan
    seg = segment(
        model, prepared, args.roi, args.overlap, args.sw_batch_size, lung,
        threshold=args.threshold,
    )  # fmt: skip
    seg.timings_s["prepare"] = prepare_s
    print(f"{'#':>3}{'score':>7}{'diameter mm':>13}{'volume mm3':>12}  world (x, y, z) mm")
    for n in seg.instances:
        world = ", ".join(f"{v:.1f}" for v in n.centroid_world_mm)
        print(
            f"{n.label:>3}{n.score:>7.3f}{n.mean_diameter_mm:>13.1f}{n.volume_mm3:>12.0f}  {world}"
        )
    return {
        "scan": str(args.scan),
        "instances": [n.to_dict() for n in seg.instances],
        "window_fraction": seg.window_fraction,
        "timings_s": seg.timings_s,
    }


def run(args: argparse.Namespace) -> int:
    """Execute ``lungvlm evaluate``; returns the exit code."""
    from lungvlm.commands.options import resolve_device
    from lungvlm.commands.progress import progress_bars
    from lungvlm.evaluation.detection import evaluate_scans
    from lungvlm.export.writer import write_text_atomic
    from lungvlm.lightning.checkpoint import load_model

    model = load_model(args.ckpt, map_location=resolve_device(args.device))
    settings = {"roi_size_vox": args.roi, "overlap": args.overlap}
    if args.scan is not None:
        if args.phantom_seeds is not None:
            raise ValueError("give a SCAN or --phantom-seeds, not both")
        with progress_bars(args.progress):
            data = _segment_one(model, args)
    else:
        seeds = parse_seeds(args.phantom_seeds or default_seeds())
        scans = phantom_scans(seeds, args.phantom_size, not args.no_lung_mask)
        with progress_bars(args.progress):
            result = evaluate_scans(
                model, scans, args.target_spacing, args.threshold, args.cascade,
                sw_batch_size=args.sw_batch_size, **settings,
            )  # fmt: skip
        print(format_table(result))
        data = result.to_dict()
    data["checkpoint"] = str(args.ckpt)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "evaluation.json", json.dumps(data, indent=2))
        print(f"wrote {args.out / 'evaluation.json'}")
    return 0
