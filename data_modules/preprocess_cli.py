"""``lungvlm preprocess {lidc,luna16,dicom}``: build the training cache from raw data.

Registered in ``lungvlm/cli.py`` through :func:`register`. Exit code 0 when every case was
written or already cached, 1 when some failed (they are listed in ``<dst>/failures.json``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_modules.cache import IMAGE_DTYPES, CacheSpec
from data_modules.io import MALIGNANCY_RULES
from data_modules.preprocess import FORMATS, LUNA16_MASKS, PreprocessOptions, preprocess


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``preprocess`` subcommand to a ``lungvlm`` sub-parser set."""
    parser = subparsers.add_parser(
        "preprocess",
        help="resample, normalise and lung-crop LIDC-IDRI / LUNA16 / DICOM data into a cache",
        description=(
            "Read every case of SRC, resample it to isotropic SPACING mm, clip and normalise "
            "HU to [0, 1], crop to the lungs and write it to DST (resumable; failures go to "
            "DST/failures.json)."
        ),
    )
    parser.add_argument("format", choices=FORMATS, help="layout of the source data")
    parser.add_argument("--src", type=Path, required=True, help="raw data root")
    parser.add_argument("--dst", type=Path, required=True, help="cache folder")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--spacing", type=float, default=1.0, help="isotropic voxel size, mm")
    parser.add_argument("--hu-min", type=float, default=-1000.0, help="lower HU clip (-> 0)")
    parser.add_argument("--hu-max", type=float, default=400.0, help="upper HU clip (-> 1)")
    parser.add_argument("--margin-mm", type=float, default=10.0, help="margin around the lungs")
    parser.add_argument("--dtype", choices=IMAGE_DTYPES, default="float16", help="image dtype")
    parser.add_argument(
        "--malignancy-rule", choices=MALIGNANCY_RULES, default="mean_gt3",
        help="LIDC: reader ratings -> binary malignancy (recorded per nodule)",
    )  # fmt: skip
    parser.add_argument(
        "--luna16-mask", choices=LUNA16_MASKS, default="none",
        help="LUNA16: no mask, or a ball of the annotated diameter (an approximation)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``lungvlm preprocess`` with parsed ``args``; returns the exit code."""
    spec = CacheSpec(
        spacing_mm=args.spacing,
        hu_min=args.hu_min,
        hu_max=args.hu_max,
        margin_mm=args.margin_mm,
        image_dtype=args.dtype,
    )
    options = PreprocessOptions(args.malignancy_rule, args.luna16_mask)
    result = preprocess(
        args.format, args.src, args.dst, spec, options, args.workers, not args.no_progress
    )
    print(
        f"preprocess {args.format}: {len(result.written)} written, {len(result.skipped)} "
        f"already cached, {len(result.failed)} failed -> {args.dst}"
    )
    for failure in result.failed:
        print(f"  FAILED {failure['case']}: {failure['error']}")
    return 1 if result.failed else 0
