"""``lungvlm phantom``: write phantom cases to disk (NIfTI volumes, labels, reports).

Per case ``phantom-<seed>`` (and ``phantom-<seed>-fu<months>m`` for a follow-up): ``.nii.gz``
image (HU, int16), ``_nodules.nii.gz`` label map, ``_labels.json`` and ``_report.txt``. Volumes
are written with SimpleITK from the (z, y, x) array with spacing (x, y, z), the LPS origin of
voxel (0, 0, 0) and the identity direction. Every file is written to a temporary name and then
renamed, so an interrupted run never leaves a partial file.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lungvlm.commands.options import add_progress
from lungvlm.commands.phantom_formats import add_format_arguments, write_phantom_set

if TYPE_CHECKING:
    import numpy as np

    from data_modules.phantom.generator import PhantomCase


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{path.suffix if path.suffix != '.gz' else '.nii.gz'}")
    write(tmp)
    os.replace(tmp, path)


def write_volume(array: np.ndarray, case: PhantomCase, path: Path) -> None:
    """Write a (z, y, x) array on ``case``'s grid as NIfTI (LPS origin, identity direction)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in case.spacing_mm[::-1]))
    image.SetOrigin(tuple(float(v) for v in case.origin_lps_mm))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    _atomic(path, lambda p: sitk.WriteImage(image, str(p), useCompression=True))


def write_case(case: PhantomCase, out_dir: Path, stem: str) -> list[Path]:
    """Write one case's files into ``out_dir``; returns their paths."""
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    image = np.clip(np.rint(case.image_hu), -32768, 32767).astype(np.int16)
    paths = [
        out_dir / f"{stem}.nii.gz",
        out_dir / f"{stem}_nodules.nii.gz",
        out_dir / f"{stem}_labels.json",
        out_dir / f"{stem}_report.txt",
    ]
    write_volume(image, case, paths[0])
    write_volume(case.nodule_labels.astype(np.int16), case, paths[1])
    _atomic(
        paths[2], lambda p: p.write_text(json.dumps(case.labels_dict(), indent=1, default=float))
    )
    _atomic(paths[3], lambda p: p.write_text(case.report_text + "\n"))
    return paths


#: ``--shape-source`` choices, spelled here so that ``--help`` imports nothing (a test checks
#: they equal ``data_modules.phantom.generator.SHAPE_SOURCES``).
SHAPE_SOURCE_CHOICES: tuple[str, ...] = ("procedural", "lidc")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``phantom`` subcommand to a ``lungvlm`` sub-parser set."""
    parser = subparsers.add_parser(
        "phantom", help="write synthetic chest CTs with nodules, labels and reports"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--n", type=int, default=1, help="number of cases")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the first case (cases use seed, seed+1, ...)"
    )
    parser.add_argument(
        "--follow-up",
        type=float,
        default=None,
        metavar="MONTHS",
        help="also write a follow-up scan MONTHS later",
    )
    parser.add_argument(
        "--shape-source", choices=SHAPE_SOURCE_CHOICES, default="procedural", help="nodule shapes"
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="grid size (default 160 256 256)",
    )
    parser.add_argument(
        "--preview",
        type=Path,
        default=None,
        metavar="PNG",
        help="write a preview montage of the first case",
    )
    add_progress(parser)
    add_format_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``lungvlm phantom`` with parsed ``args``; returns the exit code."""
    from data_modules.phantom.generator import PhantomConfig, generate_case, generate_follow_up

    if args.format != "nifti":
        return write_phantom_set(args)
    if args.n < 1:
        raise ValueError(f"--n={args.n} must be >= 1")
    if args.follow_up is not None and args.follow_up <= 0:
        raise ValueError(f"--follow-up={args.follow_up} must be a positive number of months")
    kwargs = {"shape_source": args.shape_source}
    if args.shape is not None:
        kwargs["shape_zyx"] = tuple(args.shape)
    config = PhantomConfig(**kwargs)
    from lungvlm import progress
    from lungvlm.commands.progress import progress_bars

    with progress_bars(args.progress):
        progress.update("phantom cases", 0, args.n)
        for i in range(args.n):
            seed = args.seed + i
            case = generate_case(seed, config)
            write_case(case, args.out, f"phantom-{seed}")
            if args.follow_up is not None:
                fu = generate_follow_up(case, args.follow_up, seed=seed + 7919)
                write_case(fu, args.out, f"phantom-{seed}-fu{args.follow_up:g}m")
            if i == 0 and args.preview is not None:
                from data_modules.phantom.preview import write_preview

                write_preview(case, args.preview)
            progress.update("phantom cases", i + 1, args.n)
    return 0
