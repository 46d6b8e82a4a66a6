"""``lungvlm preprocess {lidc,luna16,dicom}``: build the training cache from raw data.

Registered in ``lungvlm/cli.py`` through :func:`register`. Exit code 0 when every case was
written or already cached, 1 when some case or source file failed (listed in
``<dst>/failures.json``), 2 on bad input that stops the run (one line naming the file and the
problem: no case at all under ``--src``, a bad LUNA16 CSV, a bad option). Warnings on data
that is not used are logged to stderr and counted in the summary line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lungvlm.commands.options import add_progress, positive_int, positive_size

#: Choices spelled here so that ``--help`` imports nothing; ``tests/test_preprocess.py`` checks
#: they equal the data modules' own (``FORMATS``, ``LUNA16_MASKS``, ``IMAGE_DTYPES``,
#: ``MALIGNANCY_RULES``).
FORMAT_CHOICES: tuple[str, ...] = ("lidc", "luna16", "dicom")
LUNA16_MASK_CHOICES: tuple[str, ...] = ("none", "sphere")
DTYPE_CHOICES: tuple[str, ...] = ("float16", "float32")
MALIGNANCY_RULE_CHOICES: tuple[str, ...] = ("mean_gt3", "mean_le2_ge4", "median_high")


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
    parser.add_argument("format", choices=FORMAT_CHOICES, help="layout of the source data")
    parser.add_argument("--src", type=Path, required=True, help="raw data root")
    parser.add_argument("--dst", type=Path, required=True, help="cache folder")
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="worker processes (default 1)"
    )
    parser.add_argument(
        "--spacing", type=positive_size("mm"), default=1.0, help="isotropic voxel size, mm"
    )
    parser.add_argument(
        "--hu-min", type=float, default=None, help="lower HU clip (-> 0; default -1000 HU)"
    )
    parser.add_argument(
        "--hu-max", type=float, default=None, help="upper HU clip (-> 1; default 400 HU)"
    )
    parser.add_argument("--margin-mm", type=float, default=10.0, help="margin around the lungs")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="float16", help="image dtype")
    parser.add_argument(
        "--malignancy-rule", choices=MALIGNANCY_RULE_CHOICES, default="mean_gt3",
        help="LIDC: reader ratings -> binary malignancy (recorded per nodule)",
    )  # fmt: skip
    parser.add_argument(
        "--luna16-mask", choices=LUNA16_MASK_CHOICES, default="none",
        help="LUNA16: no mask, or a ball of the annotated diameter (an approximation)",
    )  # fmt: skip
    add_progress(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``lungvlm preprocess`` with parsed ``args``; returns the exit code."""
    from data_modules.cache import CacheSpec
    from data_modules.preprocess import PreprocessOptions, preprocess
    from lungvlm.clinical.hu import DEFAULT_NORMALIZATION_RANGE_HU

    hu_min, hu_max = DEFAULT_NORMALIZATION_RANGE_HU
    spec = CacheSpec(
        spacing_mm=args.spacing,
        hu_min=hu_min if args.hu_min is None else args.hu_min,
        hu_max=hu_max if args.hu_max is None else args.hu_max,
        margin_mm=args.margin_mm,
        image_dtype=args.dtype,
    )
    options = PreprocessOptions(args.malignancy_rule, args.luna16_mask)
    result = preprocess(args.format, args.src, args.dst, spec, options, args.workers, args.progress)
    print(
        f"preprocess {args.format}: {len(result.written)} written, {len(result.skipped)} "
        f"already cached, {len(result.failed)} failed, {len(result.warnings)} warning(s) "
        f"-> {args.dst}"
    )
    for failure in result.failed:
        print(f"  FAILED {failure['case']} ({failure['source']}): {failure['error']}")
    return 1 if result.failed else 0
