"""Multi-scale 3D residual encoder with path aggregation (PANet) and an optional context branch.

Tensors are (B, C, D, H, W) with D = z. Level ``i`` has stride ``2**i``; level 0 is at full
resolution. Every level is returned with ``fpn_channels`` channels and spatial size
``ceil(size / stride)``: the input is zero-padded at the far end of each axis to a multiple of
the coarsest stride and the outputs are cropped back, so odd sizes work and output voxel ``i``
of a level with stride ``s`` always covers input voxels ``[i*s, (i+1)*s)``.

Context fusion (a design choice): the context crop is a wider, coarser view around the same
centre, so its voxels are not aligned with the fine crop's and the encoder does not know the
scale ratio. It therefore goes through a small separate strided-conv branch, is summarised by
global average + max pooling into one vector per sample, projected to ``fpn_channels`` by a
zero-initialised linear layer and added to the coarsest lateral (stride 16) before the
top-down path, which carries it to every level. Zero initialisation makes an untrained context
branch a no-op, and ``context=None`` skips the fusion (same as a zero context contribution).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lungvlm.models.blocks import NORM_TYPES, ConvNormAct3d, ResidualBlock3d, check_option

TINY_ENCODER_CONFIG: dict = {
    "widths": (4, 8, 8, 16, 16),
    "depths": (1, 1, 1, 1, 1),
    "fpn_channels": 8,
}
"""CPU test configuration (about 62 k parameters with the context branch)."""

BASE_ENCODER_CONFIG: dict = {
    "widths": (16, 32, 64, 128, 256),
    "depths": (1, 1, 2, 2, 2),
    "fpn_channels": 64,
}
"""GPU training configuration (the constructor defaults, about 10.0 M parameters)."""


def _check_int_tuple(name: str, value: Sequence[int], minimum: int) -> tuple[int, ...]:
    values = tuple(value)
    if not values or not all(isinstance(v, int) and v >= minimum for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of ints >= {minimum}; got {value!r}")
    return values


class ContextBranch3d(nn.Module):
    """Light strided-conv branch: context crop (B, C, D, H, W) -> pooled vector (B, 2 * C_last).

    Args:
        in_channels: input channels.
        widths: channels after each stride-2 conv (one per halving).
        norm: one of :data:`~lungvlm.models.blocks.NORM_TYPES`.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], norm: str) -> None:
        super().__init__()
        chans = [in_channels, *widths]
        self.convs = nn.Sequential(
            *(ConvNormAct3d(chans[i], chans[i + 1], 3, 2, norm) for i in range(len(widths)))
        )
        self.out_features = 2 * chans[-1]

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """Return the concatenated global average and max of the strided features, (B, 2C)."""
        feats = self.convs(context)
        return torch.cat([feats.mean(dim=(2, 3, 4)), feats.amax(dim=(2, 3, 4))], dim=1)


class MultiScaleEncoder3D(nn.Module):
    """Residual 3D encoder + PANet path aggregation, returning one map per stride.

    Args:
        in_channels: input image channels (1 for CT).
        widths: backbone channels per level; level ``i`` has stride ``2**i``.
        depths: residual blocks per level; the first block of levels > 0 downsamples by a
            strided conv.
        norm: ``"instance"``, ``"batch"`` or ``"group"``.
        fpn_channels: channels of every output level.
        use_context: build the context branch (see module docstring).
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        depths: Sequence[int] = (1, 1, 2, 2, 2),
        norm: str = "instance",
        fpn_channels: int = 64,
        use_context: bool = True,
    ) -> None:
        super().__init__()
        widths = _check_int_tuple("widths", widths, 1)
        depths = _check_int_tuple("depths", depths, 1)
        if len(widths) != len(depths) or len(widths) < 2:
            raise ValueError(
                f"widths and depths must have the same length >= 2; got widths={widths}, "
                f"depths={depths}"
            )
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int; got {in_channels!r}")
        if not isinstance(fpn_channels, int) or fpn_channels < 1:
            raise ValueError(f"fpn_channels must be a positive int; got {fpn_channels!r}")
        self.norm = check_option("norm", norm, NORM_TYPES)
        self.in_channels = in_channels
        self.fpn_channels = fpn_channels
        self.use_context = use_context
        n_levels = len(widths)
        self._strides = tuple(2**i for i in range(n_levels))

        self.stem = ConvNormAct3d(in_channels, widths[0], 3, 1, norm)
        self.stages = nn.ModuleList()
        prev = widths[0]
        for level, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = [ResidualBlock3d(prev, width, 1 if level == 0 else 2, norm)]
            blocks += [ResidualBlock3d(width, width, 1, norm) for _ in range(depth - 1)]
            self.stages.append(nn.Sequential(*blocks))
            prev = width

        self.laterals = nn.ModuleList(nn.Conv3d(w, fpn_channels, 1) for w in widths)
        self.td_smooth = nn.ModuleList(
            ConvNormAct3d(fpn_channels, fpn_channels, 3, 1, norm) for _ in widths
        )
        self.bu_down = nn.ModuleList(
            ConvNormAct3d(fpn_channels, fpn_channels, 3, 2, norm) for _ in widths[1:]
        )
        self.bu_smooth = nn.ModuleList(
            ConvNormAct3d(fpn_channels, fpn_channels, 3, 1, norm) for _ in widths[1:]
        )

        if use_context:
            self.context_branch: ContextBranch3d | None = ContextBranch3d(
                in_channels, widths[: n_levels - 1], norm
            )
            self.context_proj: nn.Linear | None = nn.Linear(
                self.context_branch.out_features, fpn_channels
            )
            nn.init.zeros_(self.context_proj.weight)
            nn.init.zeros_(self.context_proj.bias)
        else:
            self.context_branch = None
            self.context_proj = None

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each output level in voxels, finest first: (1, 2, 4, 8, 16)."""
        return self._strides

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each output level (all equal to ``fpn_channels``)."""
        return (self.fpn_channels,) * len(self._strides)

    @property
    def feature_info(self) -> list[dict[str, int]]:
        """timm-style description of the outputs: ``[{channels, stride, level}, ...]``."""
        return [
            {"channels": c, "stride": s, "level": i}
            for i, (c, s) in enumerate(zip(self.out_channels, self.strides, strict=True))
        ]

    def _check_input(self, name: str, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{name} must be a (B, {self.in_channels}, D, H, W) tensor; got {shape}"
            )
        coarse = [-(-n // self._strides[-1]) for n in x.shape[2:]]
        per_channel = (
            coarse[0] * coarse[1] * coarse[2] * (x.shape[0] if self.norm == "batch" else 1)
        )
        if self.training and self.norm != "group" and per_channel < 2:
            raise ValueError(
                f"{name} of shape {tuple(x.shape)} leaves a single value per channel at stride "
                f"{self._strides[-1]}, which {self.norm} norm cannot normalise in training; use "
                f"a side > {self._strides[-1]} voxels, a larger batch, or norm='group'"
            )

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        multiple = self._strides[-1]
        pads: list[int] = []
        for n in reversed(x.shape[2:]):  # F.pad takes the last axis (x) first
            pads += [0, (-n) % multiple]
        return F.pad(x, pads) if any(pads) else x

    def forward(
        self, image: torch.Tensor, context: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Encode a fine crop, optionally with its context crop.

        Args:
            image: fine crop (B, C_in, D, H, W), any size.
            context: context crop (B, C_in, D', H', W') with the same B, usually the same grid
                size as ``image``; ignored when the encoder has no context branch.

        Returns:
            One map per level, finest first: (B, fpn_channels, ceil(D/s), ceil(H/s), ceil(W/s))
            for s in :attr:`strides`.
        """
        self._check_input("image", image)
        use_context = context is not None and self.context_branch is not None
        if use_context:
            self._check_input("context", context)
            if context.shape[0] != image.shape[0]:
                raise ValueError(
                    f"context batch size {context.shape[0]} != image batch size {image.shape[0]}"
                )
        out_sizes = [[-(-n // s) for n in image.shape[2:]] for s in self._strides]
        x = self.stem(self._pad(image))
        backbone = []
        for stage in self.stages:
            x = stage(x)
            backbone.append(x)

        lat = [conv(f) for conv, f in zip(self.laterals, backbone, strict=True)]
        if use_context:
            ctx = self.context_proj(self.context_branch(self._pad(context)))  # (B, fpn)
            lat[-1] = lat[-1] + ctx[:, :, None, None, None]

        # Top-down: coarse semantics flow to fine levels (nearest upsampling to the exact size).
        td = [lat[-1]]
        for f in reversed(lat[:-1]):
            td.append(f + F.interpolate(td[-1], size=f.shape[2:], mode="nearest"))
        td = [smooth(f) for smooth, f in zip(self.td_smooth, reversed(td), strict=True)]

        # Bottom-up: fine localisation flows back to coarse levels through strided convs.
        outs = [td[0]]
        for i, (down, smooth) in enumerate(zip(self.bu_down, self.bu_smooth, strict=True)):
            outs.append(smooth(td[i + 1] + down(outs[-1])))
        return [
            f[:, :, : size[0], : size[1], : size[2]]
            for f, size in zip(outs, out_sizes, strict=True)
        ]
