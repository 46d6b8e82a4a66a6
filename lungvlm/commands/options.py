"""Options shared by the commands, spelled once: ``--ckpt``, ``--device``, ``--no-progress``,
``--phantom-size``, ``--phantom-seeds``, ``--series-uid``, ``--keep-identifiers``.

Importing this module costs nothing (argparse only): ``lungvlm COMMAND --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
