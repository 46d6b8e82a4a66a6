"""3D building blocks shared by the encoder and heads: norm factory, conv-norm-act, residual block.

All tensors are (B, C, D, H, W) with D = z.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import torch
from torch import nn

NORM_TYPES: tuple[str, ...] = ("instance", "batch", "group")
"""Valid values of every ``norm`` argument in :mod:`lungvlm.models`."""

MAX_GROUPS = 8
"""GroupNorm uses ``gcd(MAX_GROUPS, channels)`` groups, so any channel count works."""

LEAKY_RELU_SLOPE = 0.01
"""Negative slope of the LeakyReLU used after every norm (the nnU-Net default)."""


def check_option(name: str, value: str, valid: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``valid``, else raise with the nearest valid value.

    Args:
        name: argument name, quoted in the error message.
        value: the string received.
        valid: the accepted strings.

    Returns:
        ``value`` unchanged.

    Raises:
        TypeError: if ``value`` is not a string.
        ValueError: if ``value`` is not in ``valid``; the message suggests the closest match.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {list(valid)}; got {value!r}")
    if value in valid:
        return value
    close = difflib.get_close_matches(value.lower(), list(valid), n=1, cutoff=0.0)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{name}={value!r} is not valid; expected one of {list(valid)}.{hint}")


def feature_info_by_level(feature_info: Sequence[dict]) -> dict[int, dict]:
    """Index an encoder's ``feature_info`` by level, checking every entry's keys.

    Args:
        feature_info: ``[{"channels": int, "stride": int, "level": int}, ...]``.

    Returns:
        ``{level: entry}``.

    Raises:
        ValueError: if ``feature_info`` is empty or an entry lacks a key.
    """
    if not feature_info:
        raise ValueError("feature_info must list at least one level; got an empty sequence")
    by_level = {}
    for info in feature_info:
        if not {"channels", "stride", "level"} <= set(info):
            raise ValueError(
                f"each feature_info entry needs keys channels, stride, level; got {info!r}"
            )
        by_level[int(info["level"])] = info
    return by_level


def make_norm(norm: str, channels: int) -> nn.Module:
    """Build a 3D normalisation layer.

    Args:
        norm: one of :data:`NORM_TYPES`. ``"instance"`` is affine InstanceNorm3d (the nnU-Net
            choice for small 3D batches), ``"batch"`` is BatchNorm3d, ``"group"`` is GroupNorm
            with ``gcd(8, channels)`` groups.
        channels: number of feature channels.

    Returns:
        The normalisation module.
    """
    check_option("norm", norm, NORM_TYPES)
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    return nn.GroupNorm(math.gcd(MAX_GROUPS, channels), channels)


class ConvNormAct3d(nn.Sequential):
    """Conv3d (no bias) -> norm -> LeakyReLU; 'same' padding, so size is ``ceil(size / stride)``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: cubic kernel size in voxels (odd).
        stride: stride in voxels on every axis.
        norm: one of :data:`NORM_TYPES`.
        act: apply the LeakyReLU; ``False`` gives conv -> norm only.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm: str = "instance",
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv3d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                bias=False,
            ),
            make_norm(norm, out_channels),
        ]
        if act:
            layers.append(nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True))
        super().__init__(*layers)


class ResidualBlock3d(nn.Module):
    """Residual block: conv-norm-act-conv-norm plus skip, then LeakyReLU.

    With ``stride > 1`` or a channel change the skip is a strided 1x1x1 conv + norm, so the
    block also downsamples (the encoder's only downsampling operation).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first conv (2 to halve every spatial size, rounding up).
        norm: one of :data:`NORM_TYPES`.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "instance"
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct3d(in_channels, out_channels, 3, stride, norm)
        self.conv2 = ConvNormAct3d(out_channels, out_channels, 3, 1, norm, act=False)
        if stride != 1 or in_channels != out_channels:
            self.skip: nn.Module = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                make_norm(norm, out_channels),
            )
        else:
            self.skip = nn.Identity()
        self.act = nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` of shape (B, C_in, D, H, W)."""
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))
