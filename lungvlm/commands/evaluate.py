"""``lungvlm evaluate``: whole-scan evaluation of a checkpoint on phantom chests, or inference on
one scan (DICOM folder, NIfTI or MetaImage) without a reference.

Phantom scans are whole chests from :func:`data_modules.phantom.generate_case`; the default
seeds 2,000,000..2,000,019 (:data:`DEFAULT_N_SEEDS`) lie in the test range of
``PhantomDataModule`` (``SPLIT_OFFSETS["test"]`` with data seed 0), disjoint from the training
and validation seeds. Reference nodules are the phantom's label map and each nodule's measured
Lung-RADS mean diameter (the LUNA16 hit radius is half of it). Every chest carries its scanner
profile, so the figures are also given for the thick-slice low-dose chests and the rest
(:mod:`lungvlm.evaluation.subsets`).

The operating point (sensitivity, sensitivity >= 6 mm, FPs/scan) is at the checkpoint's
calibrated candidate threshold (``lungvlm calibrate --detection``) when it has one, else at the
segmentation probability threshold; the summary names the one used. Window size, spacing and
context scale default to the checkpoint's training data, as in ``lungvlm calibrate``.

Outputs with ``--out``: ``OUT/evaluation.json`` (summary, settings, every chest),
``OUT/evaluation.md`` and one ``OUT/chests/<case>.json`` per finished chest (its evaluation at
the segmentation threshold, and its hits and false positives at the operating point), all
written atomically. Resume: a chest whose file holds the same settings (checkpoint file and
modification time, size, segmentation settings) is not segmented again.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lungvlm.commands.options import (
    add_ckpt,
    add_device,
    add_phantom_size,
    add_progress,
    non_negative_int,
)

if TYPE_CHECKING:
    from lungvlm.evaluation.detection import EvaluationResult, EvaluationScan, ScanEvaluation

log = logging.getLogger(__name__)

#: Phantom chests evaluated by default: the first twenty seeds of the test split (issue 15).
DEFAULT_N_SEEDS = 20
#: Thick-slice low-dose chests (issue 15's subset) the default evaluation holds at least.
DEFAULT_MIN_THICK_LOW_DOSE = 5
#: Seeds after STOP searched for thick-slice low-dose chests.
MAX_SUBSET_SEARCH = 2000
#: Folder of the per-chest records under ``--out``.
CHEST_DIR = "chests"


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
            "Dice, sensitivity, false positives per scan and the LUNA16 FROC/CPM, for all chests "
            "and for the thick-slice low-dose ones against the rest; or, with a SCAN, list the "
            "nodules found in one CT (no reference)."
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
        help=f"phantom chests START:STOP, STOP excluded (default: the first {DEFAULT_N_SEEDS} "
        "test-split seeds)",
    )  # fmt: skip
    add_min_thick_low_dose(parser)
    add_phantom_size(parser)
    parser.add_argument(
        "--out", type=Path,
        help="write OUT/evaluation.json, OUT/evaluation.md and OUT/chests/ (resumable)",
    )  # fmt: skip
    parser.add_argument("--cascade", action="store_true", help="low-resolution triage first")
    parser.add_argument("--target-spacing", type=float, default=None,
                        help="model spacing, mm (default: the checkpoint's training spacing)")  # fmt: skip
    parser.add_argument("--roi", type=int, default=None,
                        help="window size, vox (default: the checkpoint's training crop)")  # fmt: skip
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold")
    parser.add_argument(
        "--tta-top-k", type=non_negative_int, default=None,
        help="candidates per scan re-scored by the candidate head with flip test-time "
        "augmentation (0: none; default: what `lungvlm report` uses, "
        "lungvlm.inference.scan.DEFAULT_TTA_TOP_K)",
    )  # fmt: skip
    parser.add_argument(
        "--candidate-floor", type=float, default=None,
        help="probability floor of the weak candidates, below --threshold, used with a "
        "candidate head (default: what `lungvlm report` uses, "
        "lungvlm.inference.scan.DEFAULT_CANDIDATE_FLOOR; 0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--candidate-threshold", type=float, default=None,
        help="operating-point candidate threshold (default: the checkpoint's calibrated one; "
        "without one, every instance above --threshold counts)",
    )  # fmt: skip
    parser.add_argument("--no-lung-mask", action="store_true", help="segment the whole volume")
    add_device(parser)
    add_progress(parser)
    parser.set_defaults(func=run)
    return parser


def add_min_thick_low_dose(parser: argparse.ArgumentParser) -> None:
    """Add ``--min-thick-low-dose`` (:func:`phantom_seed_list`) to a phantom-evaluation parser."""
    parser.add_argument(
        "--min-thick-low-dose", type=int, default=None,
        help="add the next seeds after STOP with a thick-slice (>= 2.5 mm) low-dose "
        "(<= 30 mAs) profile until at least this many chests are in that subset "
        f"(default: {DEFAULT_MIN_THICK_LOW_DOSE} with the default seeds, 0 with --phantom-seeds)",
    )  # fmt: skip


def parse_seeds(text: str) -> range:
    """``"START:STOP"`` -> ``range(START, STOP)``."""
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError as err:
        raise ValueError(f"--phantom-seeds={text!r} must be START:STOP (two integers)") from err
    if not 0 <= start < stop:
        raise ValueError(f"--phantom-seeds={text!r} must satisfy 0 <= START < STOP")
    return range(start, stop)


def phantom_profile(seed: int, size: str = "default") -> dict:
    """The scanner profile of phantom chest ``seed`` as a dict, drawn as
    :func:`data_modules.phantom.generate_case` draws it
    (:func:`~data_modules.phantom.generator.draw_case_setup`), without rendering the chest."""
    from data_modules.phantom import PhantomConfig
    from data_modules.phantom.generator import draw_case_setup

    config = PhantomConfig.tiny() if size == "tiny" else PhantomConfig()
    return draw_case_setup(int(seed), config)[1].to_dict()


def phantom_seed_list(
    text: str | None, min_thick_low_dose: int | None = None, size: str = "default"
) -> list[int]:
    """The phantom seeds to evaluate: ``START:STOP`` (default :func:`default_seeds`), then the
    next seeds after STOP whose scanner profile is thick-slice low-dose
    (:func:`lungvlm.evaluation.subsets.profile_subset`) until the list holds at least
    ``min_thick_low_dose`` of them, so that the subset's figures rest on more than a chest or two
    (about 1 chest in 20 of the profile range is in it). ``min_thick_low_dose=None``:
    :data:`DEFAULT_MIN_THICK_LOW_DOSE` with the default seeds, 0 with ``text`` given.

    Raises:
        ValueError: a malformed range, a negative minimum, or no such seed among the next
            :data:`MAX_SUBSET_SEARCH` seeds.
    """
    from lungvlm.evaluation.subsets import profile_subset

    if min_thick_low_dose is None:
        min_thick_low_dose = DEFAULT_MIN_THICK_LOW_DOSE if text is None else 0
    if min_thick_low_dose < 0:
        raise ValueError(f"--min-thick-low-dose={min_thick_low_dose} must be >= 0")
    seeds = list(parse_seeds(text or default_seeds()))

    def thick_low(seed: int) -> bool:
        return profile_subset(phantom_profile(seed, size)) == "thick_low_dose"

    need = min_thick_low_dose - sum(thick_low(s) for s in seeds)
    candidate, limit = seeds[-1] + 1, seeds[-1] + 1 + MAX_SUBSET_SEARCH
    while need > 0:
        if candidate >= limit:
            raise ValueError(
                f"--min-thick-low-dose={min_thick_low_dose}: only "
                f"{min_thick_low_dose - need} thick-slice low-dose chests among seeds "
                f"{seeds[0]}..{limit - 1}; lower it or pass other --phantom-seeds"
            )
        if thick_low(candidate):
            seeds.append(candidate)
            need -= 1
        candidate += 1
    return seeds


def phantom_scan(seed: int, size: str, with_lung_mask: bool) -> EvaluationScan:
    """Render whole phantom chest ``seed`` as an evaluation row with its scanner profile.

    The chest comes from :func:`data_modules.phantom_datamodule.phantom_chest`, the same
    rendering and label renumbering as whole-scan validation during training.
    """
    from data_modules.phantom_datamodule import phantom_chest
    from lungvlm.evaluation.detection import EvaluationScan
    from lungvlm.evaluation.subsets import profile_record

    chest = phantom_chest(seed, size, with_lung_mask=with_lung_mask)
    return EvaluationScan(
        chest.case_id, chest.image_hu, chest.spacing_mm, chest.origin_lps_mm,
        chest.nodule_labels, list(chest.nodule_diameters_mm), chest.lung_mask,
        profile_record(phantom_profile(seed, size)),
    )  # fmt: skip


def phantom_scans(seeds: range, size: str, with_lung_mask: bool) -> Iterator[EvaluationScan]:
    """:func:`phantom_scan` of each seed, one at a time."""
    for seed in seeds:
        yield phantom_scan(seed, size, with_lung_mask)


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


#: Rows of the subset table: (summary key, label, format, difference in points).
_SUBSET_ROWS: tuple[tuple[str, str, str, bool], ...] = (
    ("n_scans", "chests", "d", False),
    ("n_nodules", "reference nodules", "d", False),
    ("cpm", "CPM", ".3f", True),
    *((f"sensitivity_at_{k}_fps", f"sensitivity at {k} FPs/scan", ".3f", True)
      for k in ("0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0")),
    ("sensitivity", "sensitivity at the operating point", ".3f", True),
    ("sensitivity_ge_6mm", "sensitivity >= 6 mm at the operating point", ".3f", True),
    ("fps_per_scan", "FPs/scan at the operating point", ".2f", False),
)  # fmt: skip


def operating_point_text(summary: dict) -> str:
    """Which threshold the operating point used, in words."""
    point = summary["operating_point"]
    if point["kind"] == "candidate_threshold":
        return f"candidate threshold {point['candidate_threshold']:.4g} (calibrated)"
    return (
        f"segmentation probability threshold {point['probability_threshold']:g} "
        "(no calibrated candidate threshold)"
    )


def format_markdown(data: dict) -> str:
    """Markdown of an evaluation: the subset table, step seconds and one line per chest."""
    from lungvlm.evaluation.detection import ScanEvaluation
    from lungvlm.evaluation.operating_point import scan_operating_point
    from lungvlm.evaluation.subsets import LOW_DOSE_MAX_MAS, THICK_SLICE_MIN_MM

    summary, subsets = data["summary"], data["summary"]["subsets"]
    diff = subsets["thick_low_dose_minus_rest"]
    lines = ["# Whole-chest detection on phantom chests", "",
             f"Checkpoint `{data.get('checkpoint')}`; {summary['n_scans']} chest(s), "
             f"{summary['n_nodules']} reference nodule(s); mean Dice "
             f"{_fmt(summary['mean_dice'])}.", "",
             f"Operating point: {operating_point_text(summary)}.", "",
             f"thick/low-dose: slice thickness >= {THICK_SLICE_MIN_MM:g} mm and <= "
             f"{LOW_DOSE_MAX_MAS:g} mAs; difference = thick/low-dose - rest, in percentage "
             "points.", "",
             "| figure | all | thick/low-dose | rest | difference (points) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for key, label, spec, points in _SUBSET_ROWS:
        cells = [_fmt(subsets[name][key], spec) for name in ("all", "thick_low_dose", "rest")]
        d = _fmt(diff[key]["points"], "+.1f") if points else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {d} |")
    lines += ["", "## Seconds per chest", "", "| step | mean s |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in summary["seconds_per_scan"].items()]
    total = sum(summary["seconds_per_scan"].values())
    lines += [f"| total | {total:.2f} |", "", "## Chests", "",
              "| chest | slice mm | mAs | kernel | nodules | found | FPs | Dice | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    threshold = summary["operating_point"]["candidate_threshold"]
    for row in data["scans"]:
        scan = ScanEvaluation.from_dict(row)
        found, fps = scan_operating_point(scan, threshold)
        profile = scan.profile or {}
        dice = sum(scan.dice) / len(scan.dice) if scan.dice else None
        lines.append(
            f"| {scan.scan_id} | {_fmt(profile.get('slice_thickness_mm'), '.2f')} | "
            f"{_fmt(profile.get('exposure_mas'), '.1f')} | {profile.get('kernel', '-')} | "
            f"{len(found)} | {sum(found)} | {fps} | {_fmt(dice)} | "
            f"{sum(scan.timings_s.values()):.1f} |"
        )
    return "\n".join(lines) + "\n"


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
        context_scale=args.context_scale, threshold=args.threshold, tta_top_k=args.tta_top_k,
        candidate_floor=args.candidate_floor,
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


def _stored_chest(path: Path, settings: dict) -> ScanEvaluation | None:
    """The stored evaluation of a finished chest with the same settings, else None."""
    from lungvlm.evaluation.detection import ScanEvaluation

    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("settings") != settings:
            return None
        return ScanEvaluation.from_dict(data["evaluation"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("%s is unreadable (%s); the chest is evaluated again", path, err)
        return None


def chest_operating_point(evaluation, candidate_threshold: float | None) -> dict:
    """One chest at the evaluation's operating point, for its ``OUT/chests/<case>.json``.

    The record's ``evaluation.detected`` and ``evaluation.n_false_positives`` count every
    instance above the segmentation probability threshold; these count only the candidates the
    operating point keeps (scoring ``>= candidate_threshold``; all of them when None), as the
    summary's sensitivity and FPs per scan do.
    """
    from lungvlm.evaluation.operating_point import scan_operating_point

    detected, n_fp = scan_operating_point(evaluation, candidate_threshold)
    return {
        "candidate_threshold": candidate_threshold,
        "detected": detected,
        "n_false_positives": n_fp,
    }


def evaluate_phantoms(model, args: argparse.Namespace, settings: dict) -> EvaluationResult:
    """Evaluate the phantom chests of ``args`` one at a time, storing and resuming each under
    ``OUT/chests/`` when ``args.out`` is given."""
    from lungvlm import progress as lungvlm_progress
    from lungvlm.evaluation.detection import evaluate_scan, segmentation_settings, summarize
    from lungvlm.export.writer import write_text_atomic

    seeds = phantom_seed_list(args.phantom_seeds, args.min_thick_low_dose, args.phantom_size)
    segment_kwargs = {"roi_size_vox": args.roi, "overlap": args.overlap,
                      "sw_batch_size": args.sw_batch_size, "context_scale": args.context_scale,
                      "tta_top_k": args.tta_top_k, "candidate_floor": args.candidate_floor}  # fmt: skip
    evaluations, n_resumed = [], 0
    lungvlm_progress.update("phantom chests", 0, len(seeds))
    for index, seed in enumerate(seeds):
        path = None if args.out is None else args.out / CHEST_DIR / f"phantom-{seed}.json"
        evaluation = None if path is None else _stored_chest(path, settings)
        resumed = evaluation is not None
        if evaluation is None:
            scan = phantom_scan(seed, args.phantom_size, not args.no_lung_mask)
            evaluation = evaluate_scan(
                model, scan, args.target_spacing, args.threshold, args.cascade, **segment_kwargs
            )
            if path is not None:
                record = {
                    "settings": settings,
                    "evaluation": evaluation.to_dict(),
                    "operating_point": chest_operating_point(evaluation, args.candidate_threshold),
                }
                write_text_atomic(path, json.dumps(record, indent=2))
        n_resumed += resumed
        log.info("phantom-%d: %s", seed, "resumed" if resumed else "evaluated")
        evaluations.append(evaluation)
        lungvlm_progress.update("phantom chests", index + 1, len(seeds))
    result = summarize(
        evaluations, args.threshold,
        segmentation_settings(args.target_spacing, args.cascade, **segment_kwargs),
        args.candidate_threshold,
    )  # fmt: skip
    result.settings["n_resumed"] = n_resumed
    return result


def _resolve_settings(args: argparse.Namespace, checkpoint: dict) -> None:
    """Fill the window size, spacing, context scale and candidate threshold from the
    checkpoint where the command line left them out."""
    from lungvlm.inference.report_analysis import settings_from_checkpoint

    s = settings_from_checkpoint(checkpoint)
    args.roi = s.crop_size_vox if args.roi is None else args.roi
    args.target_spacing = s.spacing_mm if args.target_spacing is None else args.target_spacing
    args.context_scale = s.context_scale
    if args.candidate_threshold is None:
        args.candidate_threshold = s.candidate_threshold


def run(args: argparse.Namespace) -> int:
    """Execute ``lungvlm evaluate``; returns the exit code."""
    from lungvlm.commands.options import resolve_device
    from lungvlm.commands.progress import progress_bars
    from lungvlm.export.writer import write_text_atomic
    from lungvlm.inference.scan import DEFAULT_CANDIDATE_FLOOR, DEFAULT_TTA_TOP_K
    from lungvlm.lightning.checkpoint import load_model, read_checkpoint

    if args.tta_top_k is None:
        args.tta_top_k = DEFAULT_TTA_TOP_K
    if args.candidate_floor is None:
        args.candidate_floor = DEFAULT_CANDIDATE_FLOOR
    if args.candidate_floor == 0:
        args.candidate_floor = None
    elif not 0 < args.candidate_floor < args.threshold:
        raise ValueError(
            f"--candidate-floor {args.candidate_floor:g} must be 0 (none) or lie between 0 and "
            f"--threshold {args.threshold:g}"
        )
    if args.scan is not None and args.phantom_seeds is not None:
        raise ValueError("give a SCAN or --phantom-seeds, not both")
    seeds = (
        None
        if args.scan is not None
        else phantom_seed_list(args.phantom_seeds, args.min_thick_low_dose, args.phantom_size)
    )
    try:
        checkpoint = read_checkpoint(args.ckpt)
    except FileNotFoundError as err:
        raise ValueError(f"checkpoint {args.ckpt} does not exist") from err
    model = load_model(args.ckpt, map_location=resolve_device(args.device), checkpoint=checkpoint)
    _resolve_settings(args, checkpoint)
    if seeds is None:
        with progress_bars(args.progress):
            data = _segment_one(model, args)
        data["checkpoint"] = str(args.ckpt)
        if args.out is not None:
            write_text_atomic(args.out / "evaluation.json", json.dumps(data, indent=2))
            print(f"wrote {args.out / 'evaluation.json'}")
        return 0
    settings = {
        "checkpoint": str(Path(args.ckpt).resolve()),
        "checkpoint_mtime_ns": Path(args.ckpt).stat().st_mtime_ns,
        "size": args.phantom_size, "cascade": args.cascade, "roi_size_vox": args.roi,
        "overlap": args.overlap, "target_spacing_mm": args.target_spacing,
        "context_scale": args.context_scale, "threshold": args.threshold,
        "lung_mask": not args.no_lung_mask, "tta_top_k": args.tta_top_k,
        "candidate_floor": args.candidate_floor,
    }  # fmt: skip
    with progress_bars(args.progress):
        result = evaluate_phantoms(model, args, settings)
    data = {**result.to_dict(), "checkpoint": str(args.ckpt)}
    markdown = format_markdown(data)
    print(markdown)
    if args.out is not None:
        write_text_atomic(args.out / "evaluation.json", json.dumps(data, indent=2))
        write_text_atomic(args.out / "evaluation.md", markdown)
        print(f"wrote {args.out / 'evaluation.json'} and {args.out / 'evaluation.md'}")
    return 0
