"""Options shared by the commands, spelled once: ``--ckpt``, ``--device``, ``--no-progress``,
``--phantom-size``, ``--phantom-seeds``, ``--series-uid``, ``--keep-identifiers``.

Importing this module costs nothing (argparse only): ``lungvlm COMMAND --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from lungvlm.inference.guard import (  # constants and a dataclass: no heavy import
    DEFAULT_MAX_CANDIDATES,
    DEFAULT_MAX_MEMORY_GIB,
    MAX_FINDING_DIAMETER_MM,
    MAX_FINDING_VOLUME_MM3,
    InferenceGuard,
)
from lungvlm.labels import PHANTOM_SIZES  # a constants module: no heavy import


def add_ckpt(parser: argparse.ArgumentParser, what: str = "stage-3 checkpoint") -> None:
    """``--ckpt PATH`` (required): a checkpoint written by ``lungvlm fit``."""
    parser.add_argument(
        "--ckpt", type=Path, required=True, help=f"{what} written by `lungvlm fit` (.ckpt)"
    )


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default ``auto``: the first CUDA GPU when there is one, else the CPU)."""
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (a CUDA GPU when present, else the CPU), cpu, cuda or cuda:N",
    )


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: progress bars are on by default, on stderr."""
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="do not draw progress bars (they go to stderr)",
    )


def add_candidate_options(parser: argparse.ArgumentParser) -> None:
    """``--cascade`` and ``--keep-unconfirmed``: how a scan's nodule candidates are found and kept."""
    parser.add_argument(
        "--cascade",
        action="store_true",
        help="segment with the adaptive-resolution cascade (low-resolution triage, then the full "
        "pass near candidates) instead of the full sliding window; off by default: it saved "
        "5.5 %% of the segmentation time on phantom chests",
    )
    parser.add_argument(
        "--keep-unconfirmed",
        action="store_true",
        help="do not drop candidates whose generated findings describe no nodule (the text "
        "check used when the checkpoint has no detection threshold; a threshold from "
        "`lungvlm calibrate --detection` still applies)",
    )


def add_series_uid(parser: argparse.ArgumentParser) -> None:
    """``--series-uid``: which series of a DICOM folder holding several."""
    parser.add_argument(
        "--series-uid",
        default=None,
        help="SeriesInstanceUID to read when a DICOM folder holds several series",
    )


def add_keep_identifiers(parser: argparse.ArgumentParser) -> None:
    """``--keep-identifiers``: name cases after their input paths (off: pseudonyms)."""
    parser.add_argument(
        "--keep-identifiers",
        action="store_true",
        help="name the case after the scan's file or folder and record input paths and, for a "
        "prior of another patient, both PatientIDs (off by default: the case id is a pseudonym "
        "of the series UID or image content, because PACS exports often name folders after "
        "the patient); the report says so",
    )


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type factory: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
"""argparse type: an integer >= 1."""

non_negative_int = _int_at_least(0)
"""argparse type: an integer >= 0."""


def positive_size(unit: str) -> Callable[[str], float]:
    """argparse type of a finite size > 0 in ``unit`` (e.g. "mm", "GiB"); its errors name it."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a size in {unit}, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"expected a finite size in {unit} > 0, got {value}")
        return value

    parse.__name__ = f"size_in_{unit}"
    return parse


def add_guard_options(parser: argparse.ArgumentParser) -> None:
    """``--max-candidates``, ``--no-guard``, ``--max-memory-gb``: limits of a whole-scan run
    (:mod:`lungvlm.inference.guard`); :func:`guard_from_args` builds the guard."""
    parser.add_argument(
        "--max-candidates",
        type=positive_int,
        default=DEFAULT_MAX_CANDIDATES,
        help=f"stop when the segmentation finds more candidate components than this on one "
        f"scan (default {DEFAULT_MAX_CANDIDATES}): a checkpoint that fires on much of the chest "
        "would otherwise run the nodule heads on each of them",
    )
    parser.add_argument(
        "--no-guard",
        dest="guard",
        action="store_false",
        help=f"go on however many candidates the segmentation finds and however large they are "
        f"(by default a run stops after the segmentation when one component measures over "
        f"{MAX_FINDING_DIAMETER_MM:g} mm or {MAX_FINDING_VOLUME_MM3 / 1e6:.2f} litres, or when "
        "there are more than --max-candidates); the memory budget still applies",
    )
    parser.add_argument(
        "--max-memory-gb",
        type=positive_size("GiB"),
        default=DEFAULT_MAX_MEMORY_GIB,
        help=f"memory budget of one scan's run in GiB (default {DEFAULT_MAX_MEMORY_GIB:g}): a "
        "scan whose resampled grid would need more is refused before resampling",
    )


def guard_from_args(args: argparse.Namespace) -> InferenceGuard:
    """The :class:`InferenceGuard` of ``--max-candidates``, ``--no-guard``, ``--max-memory-gb``."""
    if not args.guard:
        return InferenceGuard.memory_only(args.max_memory_gb)
    return InferenceGuard(max_candidates=args.max_candidates, max_memory_gib=args.max_memory_gb)


def add_phantom_size(parser: argparse.ArgumentParser) -> None:
    """``--phantom-size {default,tiny}``."""
    parser.add_argument(
        "--phantom-size",
        choices=PHANTOM_SIZES,
        default="default",
        help="size of the generated phantom chests (tiny: tests and quick looks)",
    )


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA GPU is present, else ``cpu``; other values unchanged.

    Raises:
        ValueError: a CUDA device is asked for and none is available, or the name is unknown.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is available here; use cpu")
        return device
    raise ValueError(f"--device {device!r} is not auto, cpu, cuda or cuda:N")
