"""Candidate head: is a nodule centred in this crop? One logit per crop, from the shared encoder.

Whole-scan detection (DESIGN.md, "Two granularities") turns every connected component of the
sliding-window segmentation into a candidate; this head scores the crop centred on it, so that
candidates are ranked by a learned nodule probability rather than by the segmentation's peak
probability (:mod:`lungvlm.inference.scan`). Training target: :mod:`lungvlm.losses.candidate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lungvlm.models.blocks import feature_info_by_level

#: Features pooled per level: centre mean, centre max, whole-map mean.
POOLS_PER_LEVEL = 3


def centre_slices(size: Sequence[int], fraction: float) -> tuple[slice, ...]:
    """Slices of the central region of a map of spatial ``size``: per axis ``ceil(n * fraction)``
    voxels (at least 1), grown by one where needed so the region sits symmetrically in the map."""
    slices = []
    for n in size:
        side = max(1, math.ceil(n * fraction))
        if (n - side) % 2:
            side = min(n, side + 1)
        start = (n - side) // 2
        slices.append(slice(start, start + side))
    return tuple(slices)


class CandidateHead(nn.Module):
    """Pool the deepest encoder levels around the crop centre and classify with an MLP.

    For each level in ``levels`` the map (B, C, d, h, w) is reduced to ``3 * C`` numbers: the mean
    and the max over its central region (the middle ``centre_fraction`` of each axis, see
    :func:`centre_slices`) and the mean over the whole map (the surroundings: a vessel runs on,
    a nodule ends). The concatenation goes through LayerNorm, Linear, GELU, Dropout, Linear to one
    logit of "a nodule is centred in this crop".

    Args:
        feature_info: the encoder's ``feature_info`` (``[{channels, stride, level}, ...]``).
        levels: encoder levels pooled; default the two deepest.
        centre_fraction: side of the central region as a fraction of each map axis, in (0, 1].
        hidden_dim: width of the MLP.
        dropout: dropout probability in the MLP, in [0, 1).
    """

    def __init__(
        self,
        feature_info: Sequence[dict],
        levels: Sequence[int] | None = None,
        centre_fraction: float = 0.5,
        hidden_dim: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        by_level = feature_info_by_level(feature_info)
        chosen = tuple(sorted(by_level)[-2:] if levels is None else (int(v) for v in levels))
        missing = [lv for lv in chosen if lv not in by_level]
        if not chosen or missing or len(set(chosen)) != len(chosen):
            raise ValueError(
                f"levels={levels!r} must be distinct encoder levels of {sorted(by_level)}"
            )
        if not 0.0 < centre_fraction <= 1.0:
            raise ValueError(f"centre_fraction={centre_fraction!r} must be in (0, 1]")
        if not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"hidden_dim={hidden_dim!r} must be a positive int")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        self.levels = chosen
        self.centre_fraction = float(centre_fraction)
        in_features = POOLS_PER_LEVEL * sum(int(by_level[lv]["channels"]) for lv in chosen)
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_features),
            nn.Linear(in_features, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1),
        )

    def pooled(self, features: Sequence[Tensor]) -> Tensor:
        """(B, 3 * sum C) pooled features of the chosen levels (class docstring)."""
        if len(features) <= max(self.levels):
            raise ValueError(
                f"features has {len(features)} levels; the head needs level {max(self.levels)}"
            )
        parts = []
        for level in self.levels:
            fmap = features[level]  # (B, C, d, h, w)
            region = centre_slices(fmap.shape[2:], self.centre_fraction)
            centre = fmap[:, :, region[0], region[1], region[2]]
            spatial = (2, 3, 4)
            parts += [centre.mean(dim=spatial), centre.amax(dim=spatial), fmap.mean(dim=spatial)]
        return torch.cat(parts, dim=1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Map encoder features to candidate logits.

        Args:
            features: encoder outputs (B, C_l, D/s_l, H/s_l, W/s_l), indexed by level (level 0
                first), from the crop centred on the candidate.

        Returns:
            (B,) logits; ``sigmoid`` gives the probability that a nodule is centred in the crop.
        """
        return self.mlp(self.pooled(features)).squeeze(1)
