"""Visual tokens for the report decoder: multi-scale encoder features -> (B, N, d_model).

Each chosen encoder level (B, C, d, h, w) is projected to ``d_model`` channels by a linear layer,
given a learned level embedding and a fixed 3D sinusoidal position embedding, flattened in
(z, y, x) order and concatenated over levels. :class:`TokenGeometry` records how to map token
``n`` back to its level and voxel block, which grounding uses to back-project attention.

Position convention (chosen here): the position of a cell is the centre of its voxel block in
input-voxel units, ``(index + 0.5) * stride - 0.5`` per axis, so cells of different levels that
cover the same voxels get nearby position codes, whatever the crop size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def _as_triple(stride: int | Sequence[int], name: str) -> tuple[int, int, int]:
    values = (stride,) * 3 if isinstance(stride, int) else tuple(int(s) for s in stride)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(
            f"{name} must be a positive int or 3 positive ints (z, y, x); got {stride}"
        )
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class TokenGeometry:
    """Where each visual token comes from.

    Attributes:
        level_shapes: per chosen level, the token grid (d, h, w) in (z, y, x) order.
        level_strides: per chosen level, the voxel block size (z, y, x) of one token, in input voxels.
        offsets: per chosen level, the index of its first token in the concatenated sequence.
    """

    level_shapes: tuple[tuple[int, int, int], ...]
    level_strides: tuple[tuple[int, int, int], ...]
    offsets: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        """Total number of visual tokens N."""
        return self.offsets[-1] + math.prod(self.level_shapes[-1])

    def level_slice(self, level: int) -> slice:
        """Token indices of the ``level``-th chosen level (0-based position in ``level_shapes``)."""
        return slice(self.offsets[level], self.offsets[level] + math.prod(self.level_shapes[level]))

    def token_position(self, token: int) -> tuple[int, int, int, int]:
        """Return ``(level, z, y, x)`` of token ``token``: the level position and its grid cell.

        Raises:
            ValueError: if ``token`` is not in ``[0, num_tokens)``.
        """
        if not 0 <= token < self.num_tokens:
            raise ValueError(f"token must be in [0, {self.num_tokens}); got {token}")
        level = max(i for i, off in enumerate(self.offsets) if off <= token)
        _, h, w = self.level_shapes[level]
        local = token - self.offsets[level]
        return level, local // (h * w), (local // w) % h, local % w


def sinusoidal_position_3d(
    grid_dhw: Sequence[int], stride_zyx: Sequence[int], dim: int, device: torch.device | None = None
) -> Tensor:
    """Fixed 3D sinusoidal embedding of the voxel-block centres of a token grid.

    ``dim`` is split into three equal even parts for z, y and x (each half sine, half cosine,
    frequencies ``1 / 10000 ** (2 i / part)``); leftover channels (``dim mod 6``) are zero.

    Returns:
        (d * h * w, dim) float32, rows in (z, y, x) raster order.
    """
    part = 2 * (dim // 6)
    if part == 0:
        raise ValueError(f"dim must be >= 6 for a 3D sinusoidal embedding; got {dim}")
    freqs = 1.0 / (10000.0 ** (torch.arange(0, part, 2, device=device, dtype=torch.float32) / part))
    axes = []
    for size, stride in zip(grid_dhw, stride_zyx, strict=True):
        centre = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * stride - 0.5
        angles = centre[:, None] * freqs[None, :]
        axes.append(torch.cat([angles.sin(), angles.cos()], dim=1))  # (size, part)
    d, h, w = grid_dhw
    emb = torch.cat(
        [
            axes[0][:, None, None, :].expand(d, h, w, part),
            axes[1][None, :, None, :].expand(d, h, w, part),
            axes[2][None, None, :, :].expand(d, h, w, part),
        ],
        dim=-1,
    ).reshape(d * h * w, 3 * part)
    return nn.functional.pad(emb, (0, dim - 3 * part))


class VisualTokenizer(nn.Module):
    """Project chosen encoder levels to a sequence of ``d_model`` visual tokens.

    Args:
        feature_info: one dict per encoder level (finest first) with ``channels`` (int) and
            ``stride`` (int or (z, y, x) ints, input voxels per feature cell), as published by the
            encoder.
        levels: indices into ``feature_info`` of the levels turned into tokens.
        d_model: token width (the report decoder's width).
    """

    def __init__(
        self,
        feature_info: Sequence[Mapping[str, int | Sequence[int]]],
        levels: Sequence[int] = (2, 3, 4),
        d_model: int = 128,
    ) -> None:
        super().__init__()
        if not levels:
            raise ValueError("levels is empty; expected at least one encoder level index")
        if len(set(levels)) != len(levels):
            raise ValueError(f"levels must be distinct; got {tuple(levels)}")
        for level in levels:
            if not 0 <= level < len(feature_info):
                raise ValueError(
                    f"level {level} is outside feature_info, which has {len(feature_info)} levels"
                )
        for i, info in enumerate(feature_info):
            if "channels" not in info or "stride" not in info:
                raise ValueError(
                    f"feature_info[{i}] must have 'channels' and 'stride'; got keys {sorted(info)}"
                )
        if d_model < 6:
            raise ValueError(f"d_model must be >= 6; got {d_model}")
        self.levels = tuple(int(level) for level in levels)
        self.d_model = d_model
        self.channels = tuple(int(feature_info[level]["channels"]) for level in self.levels)
        self.strides = tuple(
            _as_triple(feature_info[level]["stride"], f"feature_info[{level}]['stride']")
            for level in self.levels
        )
        self.projections = nn.ModuleList(nn.Linear(c, d_model) for c in self.channels)
        self.level_embedding = nn.Parameter(torch.zeros(len(self.levels), d_model))
        nn.init.normal_(self.level_embedding, std=0.02)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, TokenGeometry]:
        """Turn encoder feature maps into tokens.

        Args:
            features: all encoder levels, ``features[i]`` of shape (B, C_i, d_i, h_i, w_i).

        Returns:
            tokens: (B, N, d_model), levels in the order of ``levels``, each in (z, y, x) raster
                order; N = sum of d_i * h_i * w_i over the chosen levels.
            geometry: the token -> (level, z, y, x) map.

        Raises:
            ValueError: if a chosen level is missing or has the wrong channel count.
        """
        if len(features) <= max(self.levels):
            raise ValueError(
                f"features has {len(features)} levels; levels {self.levels} need {max(self.levels) + 1}"
            )
        tokens, shapes, offsets = [], [], []
        offset = 0
        for i, (level, proj) in enumerate(zip(self.levels, self.projections, strict=True)):
            fmap = features[level]
            if fmap.ndim != 5 or fmap.shape[1] != self.channels[i]:
                raise ValueError(
                    f"features[{level}] must be (B, {self.channels[i]}, d, h, w); "
                    f"got {tuple(fmap.shape)}"
                )
            d, h, w = (int(s) for s in fmap.shape[2:])
            x = proj(fmap.flatten(2).transpose(1, 2))  # (B, C, d, h, w) -> (B, d*h*w, d_model)
            pos = sinusoidal_position_3d((d, h, w), self.strides[i], self.d_model, fmap.device)
            tokens.append(x + pos.to(x.dtype) + self.level_embedding[i].to(x.dtype))
            shapes.append((d, h, w))
            offsets.append(offset)
            offset += d * h * w
        geometry = TokenGeometry(tuple(shapes), self.strides, tuple(offsets))
        return self.norm(torch.cat(tokens, dim=1)), geometry


__all__ = ["TokenGeometry", "VisualTokenizer", "sinusoidal_position_3d"]
