"""Reconstruction head for stage-1 masked-volume pretraining."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lungvlm.models.blocks import NORM_TYPES, ConvNormAct3d, check_option, feature_info_by_level


class ReconstructionHead(nn.Module):
    """Predict the HU-normalised intensity at full resolution from encoder levels 0 (and 1).

    Level 1 is nearest-upsampled to level 0's size and added before a 3x3x3 conv-norm-act and a
    1x1x1 output conv. The output is linear (no activation), in the same normalised units as the
    network input.

    Args:
        feature_info: the encoder's ``feature_info``; must contain levels 0 (stride 1) and, with
            ``use_level1``, level 1.
        out_channels: predicted channels (1 for CT).
        use_level1: also use the stride-2 level.
        norm: one of :data:`~lungvlm.models.blocks.NORM_TYPES`.
    """

    def __init__(
        self,
        feature_info: Sequence[dict],
        out_channels: int = 1,
        use_level1: bool = True,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        by_level = feature_info_by_level(feature_info)
        check_option("norm", norm, NORM_TYPES)
        if 0 not in by_level or int(by_level[0]["stride"]) != 1:
            raise ValueError(f"feature_info needs a level 0 with stride 1; got {feature_info!r}")
        if use_level1 and 1 not in by_level:
            raise ValueError("use_level1=True but feature_info has no level 1")
        channels = int(by_level[0]["channels"])
        self.use_level1 = use_level1
        self.level1_proj = (
            nn.Conv3d(int(by_level[1]["channels"]), channels, 1) if use_level1 else None
        )
        self.refine = ConvNormAct3d(channels, channels, 3, 1, norm)
        self.out = nn.Conv3d(channels, out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return the predicted intensity (B, out_channels, D, H, W) at level 0's size."""
        x = features[0]
        if self.level1_proj is not None:
            x = x + F.interpolate(self.level1_proj(features[1]), size=x.shape[2:], mode="nearest")
        return self.out(self.refine(x))
