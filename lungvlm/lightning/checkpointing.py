"""Loading weights across stages (``init_from``) and the inference metadata of a checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lungvlm.labels import CONCEPT_NAMES, CONCEPT_SCALE_MAX, GROWTH_BINS_MONTHS, LUNGRADS_CATEGORIES

log = logging.getLogger(__name__)

#: Key under which LungVLM stores its own metadata in a Lightning checkpoint.
CHECKPOINT_KEY = "lungvlm"
#: Version of the metadata layout below; bump on incompatible changes.
CHECKPOINT_FORMAT_VERSION = 1


@dataclass
class InitReport:
    """What :func:`load_weights_non_strict` did, key by key."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line with the counts, for logs."""
        return (
            f"loaded {len(self.loaded)} tensors, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape mismatch {len(self.shape_mismatch)}"
        )


def read_checkpoint(path: str | Path) -> dict:
    """Read a Lightning checkpoint on the CPU.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a readable checkpoint with a ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt file
        raise ValueError(
            f"checkpoint {path} is not readable ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"checkpoint {path} has no 'state_dict'; is it a Lightning checkpoint?")
    return checkpoint


def load_weights_non_strict(
    module: nn.Module, state_dict: dict[str, torch.Tensor], prefixes: tuple[str, ...] = ("",)
) -> InitReport:
    """Copy every tensor of ``state_dict`` whose name and shape match into ``module``.

    Args:
        module: the model receiving the weights.
        state_dict: source weights (e.g. a previous stage's ``checkpoint["state_dict"]``).
        prefixes: only keys starting with one of these are considered ("" = all).

    Returns:
        An :class:`InitReport` listing loaded, missing, unexpected and shape-mismatched keys.
    """
    own = module.state_dict()
    report = InitReport()
    usable: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefixes):
            continue
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.shape_mismatch.append(key)
        else:
            usable[key] = value
            report.loaded.append(key)
    report.missing = [key for key in own if key not in usable]
    module.load_state_dict(usable, strict=False)
    return report


def inference_metadata(stage: str, normalization: dict[str, float], tasks: list[str]) -> dict:
    """Everything inference needs besides the weights, stored in every checkpoint.

    Args:
        stage: "pretrain", "segment" or "vision_language".
        normalization: HU normalisation parameters used by the data (``hu_min``, ``hu_max``).
        tasks: the tasks the model was trained on.

    Returns:
        A JSON-serialisable dict.
    """
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "stage": stage,
        "normalization": dict(normalization),
        "tasks": list(tasks),
        "labels": {
            "lungrads_categories": list(LUNGRADS_CATEGORIES),
            "concept_names": list(CONCEPT_NAMES),
            "concept_scale_max": dict(CONCEPT_SCALE_MAX),
            "growth_bins_months": list(GROWTH_BINS_MONTHS),
        },
    }
