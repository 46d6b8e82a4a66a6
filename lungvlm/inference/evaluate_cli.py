"""``lungvlm evaluate``: whole-scan evaluation of a checkpoint on phantom chests, or inference on
one scan (DICOM folder, NIfTI or MetaImage) without a reference.

This module is CLI wiring: it is the only part of :mod:`lungvlm.inference` that imports
``data_modules`` (phantom generator, readers, classical lung mask). Phantom scans are whole
chests from :func:`data_modules.phantom.generate_case`; the default seeds 2,000,000..2,000,003
lie in the test range of ``PhantomDataModule`` (``SPLIT_OFFSETS["test"]`` with data seed 0),
disjoint from the training seeds. Reference nodules are the phantom's label map and each
nodule's measured Lung-RADS mean diameter (the LUNA16 hit radius is half of it).
Register it with ``register(subparsers)`` from ``lungvlm/cli.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from data_modules.io import read_dicom_series, read_metaimage, read_nifti
from data_modules.lung_mask import lung_mask
from data_modules.phantom import PhantomConfig, generate_case
from data_modules.phantom_datamodule import split_seed_base
from lungvlm.inference.cascade import segment_scan_cascade
from lungvlm.inference.evaluate import EvaluationResult, EvaluationScan, evaluate_scans
from lungvlm.inference.scan import load_model, prepare_scan, segment_scan

PHANTOM_SIZES = ("default", "tiny")
DEFAULT_SEEDS = f"{split_seed_base('test', 0)}:{split_seed_base('test', 0) + 4}"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to a ``lungvlm`` sub-parser set."""
    parser = subparsers.add_parser(
        "evaluate",
        help="whole-scan segmentation, detection FROC/CPM and Dice of a checkpoint",
        description=(
            "Segment whole phantom chests (seeds START:STOP, STOP excluded) and report per-nodule "
            "Dice, sensitivity, false positives per scan and the LUNA16 FROC/CPM; or, with "
            "--scan, list the nodules found in one CT (no reference)."
        ),
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="segment/vision_language ckpt")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--phantom-seeds", default=DEFAULT_SEEDS, help="START:STOP (test split)")
    source.add_argument("--scan", type=Path, help="DICOM folder, .nii/.nii.gz or .mhd file")
    parser.add_argument("--phantom-size", choices=PHANTOM_SIZES, default="default")
    parser.add_argument("--out", type=Path, help="write OUT/evaluation.json")
    parser.add_argument("--cascade", action="store_true", help="low-resolution triage first")
    parser.add_argument("--target-spacing", type=float, default=1.0, help="model spacing, mm")
    parser.add_argument("--roi", type=int, default=32, help="window size (training crop), vox")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold")
    parser.add_argument("--no-lung-mask", action="store_true", help="segment the whole volume")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--progress", action="store_true", help="show a window progress bar")
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
    """Render whole phantom chests one at a time as evaluation rows."""
    config = PhantomConfig.tiny() if size == "tiny" else PhantomConfig()
    for seed in seeds:
        case = generate_case(seed, PhantomConfig(**{**config.__dict__, "with_report": False}))
        # Keep labels present after rendering and renumber them 1..N in order.
        present = [n for n in range(1, len(case.nodules) + 1) if (case.nodule_labels == n).any()]
        labels = np.zeros(case.nodule_labels.shape, np.int16)
        for new, old in enumerate(present, start=1):
            labels[case.nodule_labels == old] = new
        diameters = [case.nodules[old - 1].mean_diameter_mm for old in present]
        lung = lung_mask(case.image_hu, case.spacing_mm) if with_lung_mask else None
        yield EvaluationScan(
            f"phantom-{seed}", case.image_hu, case.spacing_mm, case.origin_lps_mm, labels,
            diameters, lung,
        )  # fmt: skip


def read_scan(path: Path):
    """Read a DICOM folder, NIfTI or MetaImage file into a ``CTVolume``."""
    if path.is_dir():
        return read_dicom_series(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    if name.endswith(".mhd"):
        return read_metaimage(path)
    raise ValueError(f"--scan {path} is not a folder, .nii/.nii.gz or .mhd file")


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(data, f, indent=2)
        tmp = f.name
    os.replace(tmp, path)


def format_table(result: EvaluationResult) -> str:
    """Per-scan rows and a summary line, as plain text."""
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
    volume = read_scan(args.scan)
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
        threshold=args.threshold, progress=args.progress,
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
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.ckpt, map_location=device)
    settings = {"roi_size_vox": args.roi, "overlap": args.overlap}
    if args.scan is not None:
        data = _segment_one(model, args)
    else:
        scans = phantom_scans(
            parse_seeds(args.phantom_seeds), args.phantom_size, not args.no_lung_mask
        )
        result = evaluate_scans(
            model, scans, args.target_spacing, args.threshold, args.cascade,
            sw_batch_size=args.sw_batch_size, progress=args.progress, **settings,
        )  # fmt: skip
        print(format_table(result))
        data = result.to_dict()
    data["checkpoint"] = str(args.ckpt)
    if args.out is not None:
        write_json_atomic(args.out / "evaluation.json", data)
        print(f"wrote {args.out / 'evaluation.json'}")
    return 0
