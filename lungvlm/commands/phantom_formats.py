"""``lungvlm phantom --format {dicom,lidc,luna16}``: phantom cases in the real on-disk formats.

The phantom CLI (:mod:`lungvlm.commands.phantom`) calls :func:`add_format_arguments` on its
parser and hands the parsed arguments to :func:`write_phantom_set` when ``--format`` is not
``nifti`` (its own writer). Layouts:

- ``dicom``: ``OUT/<patient>/<series-uid>/1-NNN.dcm``;
- ``lidc``: ``OUT/<patient>/<study>/<series>/1-NNN.dcm`` + one LIDC XML per series;
- ``luna16``: ``OUT/subset<k>/<uid>.mhd/.raw`` (case i in subset ``i % --luna16-subsets``)
  with ``OUT/annotations.csv`` and ``OUT/candidates_V2.csv``.

A ``--follow-up`` scan is written as a second series of the same patient.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PHANTOM_FORMATS = ("nifti", "dicom", "lidc", "luna16")


def add_format_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--format`` and ``--luna16-subsets`` to the phantom CLI's parser."""
    parser.add_argument(
        "--format", choices=PHANTOM_FORMATS, default="nifti",
        help="nifti (default), a DICOM series, an LIDC-IDRI tree (DICOM + XML) or a LUNA16 tree",
    )  # fmt: skip
    parser.add_argument(
        "--luna16-subsets", type=int, default=10, metavar="K",
        help="luna16: spread cases over subset0..subset{K-1} (default 10)",
    )  # fmt: skip


def _write(case, fmt: str, out: Path, index: int, subsets: int) -> Path:
    from data_modules.phantom.writers import (
        default_patient_id,
        phantom_uid,
        write_dicom_series,
        write_lidc_tree,
        write_luna16_tree,
    )

    if fmt == "lidc":
        return write_lidc_tree(case, out)
    if fmt == "luna16":
        return write_luna16_tree(case, out, subset=index % subsets)
    folder = out / default_patient_id(case) / phantom_uid(case, "series")
    write_dicom_series(case, folder)
    return folder


def write_phantom_set(args: argparse.Namespace) -> int:
    """Generate ``args.n`` cases from ``args.seed`` and write them in ``args.format``.

    Uses ``args.out``, ``args.n``, ``args.seed``, ``args.shape`` (or None),
    ``args.shape_source``, ``args.follow_up`` (months or None), ``args.format`` and
    ``args.luna16_subsets``.

    Returns:
        0 (the exit code).

    Raises:
        ValueError: ``--format nifti`` (written by the phantom CLI itself) or bad counts.
    """
    from data_modules.phantom.generator import PhantomConfig, generate_case, generate_follow_up

    if args.format not in PHANTOM_FORMATS[1:]:
        raise ValueError(f"--format={args.format!r} must be one of {PHANTOM_FORMATS[1:]} here")
    if args.n < 1 or not 1 <= args.luna16_subsets <= 10:
        raise ValueError(f"need --n >= 1 and 1 <= --luna16-subsets <= 10, got {args.n}, "
                         f"{args.luna16_subsets}")  # fmt: skip
    kwargs = {"shape_source": args.shape_source}
    if args.shape is not None:
        kwargs["shape_zyx"] = tuple(args.shape)
    config = PhantomConfig(**kwargs)
    out = Path(args.out)
    from lungvlm import progress
    from lungvlm.commands.progress import progress_bars

    with progress_bars(args.progress):
        progress.update(f"phantom cases ({args.format})", 0, args.n)
        for i in range(args.n):
            case = generate_case(args.seed + i, config)
            _write(case, args.format, out, i, args.luna16_subsets)
            if args.follow_up is not None:
                follow_up = generate_follow_up(case, args.follow_up, seed=args.seed + i + 7919)
                _write(follow_up, args.format, out, i, args.luna16_subsets)
            progress.update(f"phantom cases ({args.format})", i + 1, args.n)
    return 0
