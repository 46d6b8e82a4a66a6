"""Dice + Hausdorff (distance-transform) segmentation loss with deep supervision.

Tensors are (B, C, D, H, W). Logit maps come from
:class:`~lungvlm.models.heads.segmentation.SegmentationHead`, finest (full resolution) first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, HausdorffDTLoss
from torch import nn

from lungvlm.models.blocks import check_option

TARGET_DOWNSAMPLING = ("max", "nearest")


def infer_stride(full_size: Sequence[int], level_size: Sequence[int]) -> int:
    """Smallest power-of-two stride ``s`` with ``ceil(full_size / s) == level_size`` on every axis.

    This is the size rule of :class:`~lungvlm.models.encoder.MultiScaleEncoder3D`.

    Args:
        full_size: full-resolution spatial size (D, H, W) in voxels.
        level_size: spatial size of one deep-supervision level.

    Returns:
        The stride in voxels.

    Raises:
        ValueError: if no power of two maps ``full_size`` to ``level_size``.
    """
    full, level = tuple(int(n) for n in full_size), tuple(int(n) for n in level_size)
    if len(full) != len(level):
        raise ValueError(f"level size {level} and target size {full} have different dimensions")
    stride = 1
    while stride <= 2 * max(full):
        if all(-(-n // stride) == m for n, m in zip(full, level, strict=True)):
            return stride
        stride *= 2
    raise ValueError(
        f"level size {level} is not ceil(size / 2**k) of the target size {full} for any k"
    )


def downsample_target(target: torch.Tensor, size: Sequence[int], mode: str = "max") -> torch.Tensor:
    """Downsample a binary mask (B, C, D, H, W) to a deep-supervision level's size.

    Output voxel ``i`` covers input voxels ``[i*s, (i+1)*s)`` (the encoder's convention).

    Args:
        target: binary mask, float.
        size: spatial size (D, H, W) of the level.
        mode: ``"max"`` marks a coarse voxel foreground if any covered voxel is (small nodules
            do not vanish at coarse levels); ``"nearest"`` takes the first covered voxel.

    Returns:
        The mask at ``size``.
    """
    check_option("mode", mode, TARGET_DOWNSAMPLING)
    stride = infer_stride(target.shape[2:], size)
    if stride == 1:
        return target
    if mode == "nearest":
        return target[:, :, ::stride, ::stride, ::stride]
    pads: list[int] = []
    for n in reversed(target.shape[2:]):  # F.pad takes the last axis first
        pads += [0, (-n) % stride]
    return F.max_pool3d(F.pad(target, pads), kernel_size=stride, stride=stride)


class DiceHausdorffLoss(nn.Module):
    """Weighted sum of MONAI's soft Dice loss and Hausdorff distance-transform loss.

    Both use a sigmoid on the logits and average over the present samples and channels.
    The Hausdorff term (Karimi & Salcudean 2019, as implemented by MONAI's
    ``HausdorffDTLoss``) is in voxel units raised to ``hausdorff_alpha`` and is zero for a
    sample whose target is empty. Deep-supervision weights are normalised to sum to 1 over the
    levels actually passed, so the loss scale does not depend on how many levels are used.

    Args:
        dice_weight: weight of the Dice term in ``total``.
        hausdorff_weight: weight of the Hausdorff term in ``total``.
        deep_supervision_weights: weight per logit level, finest first.
        hausdorff_alpha: exponent of the distances in the Hausdorff term.
        target_downsampling: ``"max"`` or ``"nearest"``, see :func:`downsample_target`.
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        hausdorff_weight: float = 0.5,
        deep_supervision_weights: Sequence[float] = (1.0, 0.5, 0.25),
        hausdorff_alpha: float = 2.0,
        target_downsampling: str = "max",
    ) -> None:
        super().__init__()
        for name, value in (("dice_weight", dice_weight), ("hausdorff_weight", hausdorff_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0; got {value}")
        weights = tuple(float(w) for w in deep_supervision_weights)
        if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                "deep_supervision_weights must be non-negative with a positive sum; "
                f"got {deep_supervision_weights!r}"
            )
        self.dice_weight = dice_weight
        self.hausdorff_weight = hausdorff_weight
        self.deep_supervision_weights = weights
        self.target_downsampling = check_option(
            "target_downsampling", target_downsampling, TARGET_DOWNSAMPLING
        )
        self.dice = DiceLoss(sigmoid=True)
        # Sigmoid outputs are independent foreground channels: none of them is a background.
        self.hausdorff = HausdorffDTLoss(
            alpha=hausdorff_alpha, include_background=True, sigmoid=True
        )

    def forward(
        self,
        logits: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        present: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the loss.

        Args:
            logits: one logit map (B, C, D, H, W) or a list of them, full resolution first.
            target: binary mask (B, C, D, H, W) at full resolution.
            present: bool (B,); samples with ``False`` have no mask and are skipped. ``None``
                means all present.

        Returns:
            ``{"dice", "hausdorff", "total"}`` scalars; all zero (still attached to the graph)
            when no sample is present.
        """
        levels = [logits] if isinstance(logits, torch.Tensor) else list(logits)
        if not levels or len(levels) > len(self.deep_supervision_weights):
            raise ValueError(
                f"got {len(levels)} logit levels; expected 1 to "
                f"{len(self.deep_supervision_weights)} (one per deep_supervision_weights entry)"
            )
        if target.ndim != 5 or target.shape[:2] != levels[0].shape[:2]:
            raise ValueError(
                f"target must be (B, C, D, H, W) matching logits {tuple(levels[0].shape)}; "
                f"got {tuple(target.shape)}"
            )
        if target.shape[2:] != levels[0].shape[2:]:
            raise ValueError(
                f"target spatial size {tuple(target.shape[2:])} != full-resolution logits "
                f"{tuple(levels[0].shape[2:])}"
            )
        if present is not None:
            if present.dtype != torch.bool or present.shape != (target.shape[0],):
                raise ValueError(
                    f"present must be a bool tensor of shape ({target.shape[0]},); got "
                    f"{present.dtype} {tuple(present.shape)}"
                )
            if not bool(present.any()):
                zero = sum(level.sum() for level in levels) * 0.0
                return {"dice": zero, "hausdorff": zero, "total": zero}
            levels = [level[present] for level in levels]
            target = target[present]

        target = target.float()
        weights = self.deep_supervision_weights[: len(levels)]
        dice = hausdorff = levels[0].new_zeros((), dtype=torch.float32)
        for weight, level in zip(weights, levels, strict=True):
            level_target = downsample_target(target, level.shape[2:], self.target_downsampling)
            dice = dice + weight * self.dice(level.float(), level_target)
            hausdorff = hausdorff + weight * self.hausdorff(level.float(), level_target)
        dice, hausdorff = dice / sum(weights), hausdorff / sum(weights)
        total = self.dice_weight * dice + self.hausdorff_weight * hausdorff
        return {"dice": dice, "hausdorff": hausdorff, "total": total}
