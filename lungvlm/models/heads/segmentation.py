"""Segmentation head: one 1x1x1 conv of logits per deep-supervision level."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lungvlm.models.blocks import feature_info_by_level


class SegmentationHead(nn.Module):
    """Per-level 1x1x1 conv logits for deep supervision, reading channels from ``feature_info``.

    Args:
        feature_info: the encoder's ``feature_info`` (``[{channels, stride, level}, ...]``).
        num_classes: output channels (1 = binary nodule mask, used with a sigmoid).
        deep_supervision_levels: encoder levels that get a logit map, strictly increasing and
            starting at 0 (full resolution).
    """

    def __init__(
        self,
        feature_info: Sequence[dict],
        num_classes: int = 1,
        deep_supervision_levels: Sequence[int] = (0, 1, 2),
    ) -> None:
        super().__init__()
        by_level = feature_info_by_level(feature_info)
        levels = tuple(deep_supervision_levels)
        if (
            not levels
            or levels[0] != 0
            or any(levels[i + 1] <= levels[i] for i in range(len(levels) - 1))
        ):
            raise ValueError(
                "deep_supervision_levels must be strictly increasing and start at 0; "
                f"got {deep_supervision_levels!r}"
            )
        missing = [lv for lv in levels if lv not in by_level]
        if missing:
            raise ValueError(
                f"deep_supervision_levels {missing} are not in feature_info levels "
                f"{sorted(by_level)}"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
        self.levels = levels
        self.strides = tuple(int(by_level[lv]["stride"]) for lv in levels)
        self.convs = nn.ModuleList(
            nn.Conv3d(int(by_level[lv]["channels"]), num_classes, 1) for lv in levels
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Map encoder features to logits.

        Args:
            features: encoder outputs, indexed by level (level 0 first).

        Returns:
            Logits (B, num_classes, ceil(D/s), ceil(H/s), ceil(W/s)) for each level in
            ``deep_supervision_levels``, level 0 (full resolution) first.
        """
        if len(features) <= self.levels[-1]:
            raise ValueError(
                f"features has {len(features)} levels; the head needs level {self.levels[-1]}"
            )
        return [conv(features[lv]) for conv, lv in zip(self.convs, self.levels, strict=True)]
