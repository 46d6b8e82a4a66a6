"""Candidate score at inference: the candidate head on the crop centred on each component.

Every connected component of the whole-scan segmentation is a candidate; its nodule probability
is the sigmoid of :class:`~lungvlm.models.heads.candidate.CandidateHead` on the crops training
used: the fine crop of ``crop_size_vox`` voxels of the prepared grid centred on the component's
centroid, and (when the encoder has a context branch and ``context_scale > 0``) the context crop
covering ``context_scale`` times that field of view. Both come from
:func:`lungvlm.inference.nodule_heads.sample_crop`, the crops the nodule-level heads see; voxels
outside the scan take the normalised value of air. Crops go through the encoder
``batch_size`` at a time.

Flip test-time augmentation (``flips=True``): the probability is the mean over the crops as
sampled and mirrored along each of the three axes (fine and context crop mirrored together), 4
encoder passes per candidate (``views`` picks a subset: :func:`lungvlm.inference.scan.score_candidates`
reuses the single-pass score and runs only the 3 mirrorings). The head's single-pass probability saturates (true nodules and
the hardest false positives both sit at 0.96-0.99 on phantom validation chests); averaging over
mirrored views separates them better at 4x the cost, so :func:`lungvlm.inference.scan.segment_scan`
spends it only on the ``tta_top_k`` best candidates of a scan.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from lungvlm.clinical.hu import HU_AIR, default_normalization, normalize_hu
from lungvlm.inference.nodule_heads import sample_crop
from lungvlm.progress import update as progress_update

#: Mirrorings of flip test-time augmentation: none, then each spatial axis (z, y, x) of a crop.
FLIP_DIMS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))


def has_candidate_head(model: nn.Module) -> bool:
    """Whether ``model`` carries a candidate head (``model.candidate_head`` is not None)."""
    return getattr(model, "candidate_head", None) is not None


@torch.no_grad()
def candidate_probabilities(
    model: nn.Module,
    image: NDArray[np.float32],
    centres_vox: Sequence[Sequence[float]],
    crop_size_vox: int,
    context_scale: float = 2.0,
    batch_size: int = 4,
    normalization: dict[str, float] | None = None,
    flips: bool = False,
    views: Sequence[tuple[int, ...]] | None = None,
) -> list[float]:
    """Nodule probability of the crop centred on each of ``centres_vox`` (module docstring).

    Args:
        model: has ``encoder`` and ``candidate_head``, in eval mode on its device.
        image: normalised prepared scan (z, y, x).
        centres_vox: candidate centres (z, y, x) on that grid, voxels.
        crop_size_vox: training crop edge (voxels), the sliding-window size.
        context_scale: training context field-of-view factor; 0 feeds no context.
        batch_size: crops per forward pass.
        normalization: the ``hu_min``/``hu_max`` of the scan's normalisation (air padding).
        flips: mean probability over the crop and its three axis mirrorings (module docstring).
        views: the mirrorings to average instead (each a tuple of tensor dims, ``()`` the crop
            as sampled), e.g. ``FLIP_DIMS[1:]`` when the single-pass score is already known.

    Returns:
        One probability per centre, in the order given.

    Raises:
        ValueError: a model without a candidate head, or a batch size < 1.
    """
    if not has_candidate_head(model):
        raise ValueError("the model has no candidate_head")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    if views is None:
        views = FLIP_DIMS if flips else FLIP_DIMS[:1]
    if not views:
        raise ValueError("views must name at least one mirroring (() for the crop as sampled)")
    norm = {**default_normalization(), **(normalization or {})}
    pad = float(normalize_hu(np.float32(HU_AIR), norm["hu_min"], norm["hu_max"]))
    use_context = context_scale > 0 and bool(getattr(model.encoder, "use_context", False))
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    probabilities: list[float] = []
    progress_update("candidate scores", 0, len(centres_vox))
    for first in range(0, len(centres_vox), batch_size):
        centres = centres_vox[first : first + batch_size]
        fine = np.stack([sample_crop(image, c, crop_size_vox, 1.0, pad) for c in centres])
        context = None
        if use_context:
            wide = [sample_crop(image, c, crop_size_vox, context_scale, pad) for c in centres]
            context = torch.from_numpy(np.stack(wide))[:, None].to(device)
        fine_t = torch.from_numpy(fine)[:, None].to(device)
        scores = []
        for dims in views:
            f = torch.flip(fine_t, dims) if dims else fine_t
            c = None if context is None else (torch.flip(context, dims) if dims else context)
            scores.append(torch.sigmoid(model.candidate_head(model.encoder(f, c)).float()))
        probabilities += torch.stack(scores).mean(0).cpu().tolist()
        progress_update("candidate scores", len(probabilities), len(centres_vox))
    return probabilities
