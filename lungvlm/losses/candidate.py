"""Loss of the candidate head (:mod:`lungvlm.models.heads.candidate`): masked binary cross-entropy.

Target of a crop (project convention): 1 when its nodule mask has a voxel inside the central cube
of side ``crop size * CANDIDATE_CENTRE_FRACTION`` (a nodule-centred crop: the phantom's positive
crops put the nodule centre within a few millimetres of the crop centre), 0 otherwise (a
nodule-free crop, a vessel-centred hard negative, a nodule only at the crop's edge). Crops whose
mask is not a real label (``seg_present`` False) are present-but-masked (DESIGN.md): they add
nothing to the loss.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lungvlm.losses.risk import masked_mean

#: Side of the central cube, as a fraction of the crop side (8 voxels of a 32-voxel crop).
CANDIDATE_CENTRE_FRACTION = 0.25


def central_cube(shape: tuple[int, ...], fraction: float = CANDIDATE_CENTRE_FRACTION) -> tuple:
    """Slices (z, y, x) of the central cube of a crop of spatial ``shape``: per axis
    ``max(1, round(n * fraction))`` voxels starting at ``(n - side) // 2``."""
    slices = []
    for n in shape:
        side = max(1, round(n * fraction))
        start = (n - side) // 2
        slices.append(slice(start, start + side))
    return tuple(slices)


def candidate_targets(seg_mask: Tensor, fraction: float = CANDIDATE_CENTRE_FRACTION) -> Tensor:
    """(B,) float targets: 1.0 where the (B, 1, D, H, W) mask has a voxel > 0.5 in the central
    cube (:func:`central_cube`), else 0.0."""
    if seg_mask.ndim != 5:
        raise ValueError(f"seg_mask must be (B, 1, D, H, W); got {tuple(seg_mask.shape)}")
    z, y, x = central_cube(tuple(seg_mask.shape[2:]), fraction)
    centre = seg_mask[:, :, z, y, x]
    return (centre > 0.5).flatten(1).any(dim=1).to(seg_mask.dtype)


def candidate_loss(
    logits: Tensor,
    seg_mask: Tensor,
    seg_present: Tensor,
    fraction: float = CANDIDATE_CENTRE_FRACTION,
) -> Tensor:
    """Masked binary cross-entropy of the candidate logits against :func:`candidate_targets`.

    Args:
        logits: (B,) candidate logits.
        seg_mask: (B, 1, D, H, W) nodule masks of the crops.
        seg_present: (B,) bool, whether each mask is a real label.
        fraction: side of the central cube as a fraction of the crop side.

    Returns:
        Scalar mean BCE over the crops with a real mask; exactly 0 (attached to the graph of
        ``logits``) when there is none.
    """
    if logits.ndim != 1 or logits.shape[0] != seg_mask.shape[0]:
        raise ValueError(f"logits must be (B={seg_mask.shape[0]},); got {tuple(logits.shape)}")
    target = candidate_targets(seg_mask, fraction).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return masked_mean(bce, seg_present.to(logits.device))
