"""Back-projection of decoder cross-attention onto the input volume: token -> voxel heatmaps.

The cross-attention of query position ``q`` over the N visual tokens is averaged over heads and
layers, split by encoder level with :class:`~lungvlm.models.visual_tokens.TokenGeometry`,
reshaped to each level's (d, h, w) grid, upsampled to the input (D, H, W), rescaled so each
level keeps its attention mass, and summed over levels. Because the attention over the N tokens
sums to one, every heatmap sums to one over the voxels: it is a distribution over the input.
A level of ``n`` cells with stride ``s`` covers voxels ``[0, n * s)`` of each axis (encoders pad
the input at the end); mass falling on padded voxels beyond the input is dropped and the map
renormalised.

Which token a heatmap grounds: the report decoder's query ``q`` produces token ``q + 1``
(see :mod:`lungvlm.models.report_decoder`); generation already stores, for each generated token,
the attention of the query that produced it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lungvlm.models.visual_tokens import TokenGeometry

LAYER_OPTIONS = ("last", "mean")
HEAD_OPTIONS = ("mean", "max")
UPSAMPLE_MODES = ("trilinear", "nearest")


def _check_option(name: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        close = difflib.get_close_matches(str(value), options, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{name} must be one of {tuple(options)}; got {value!r}{hint}")


def average_attention(
    cross_attentions: Sequence[Tensor] | Tensor,
    layers: str | int = "mean",
    heads: str | int = "mean",
) -> Tensor:
    """Reduce per-layer cross-attention (B, heads, T, N) to one map per query (B, T, N).

    Args:
        cross_attentions: one (B, heads, T, N) tensor per decoder layer, or an already reduced
            (B, T, N) tensor (returned unchanged).
        layers: "mean" over layers, "last" layer, or an int layer index.
        heads: "mean" over heads, "max" over heads (renormalised to sum to one), or an int head.

    Raises:
        ValueError: on an unknown option, an empty sequence or a wrongly shaped tensor.
    """
    if isinstance(cross_attentions, Tensor):
        if cross_attentions.ndim != 3:
            raise ValueError(
                f"a tensor cross_attentions must be (B, T, N); got {tuple(cross_attentions.shape)}"
            )
        return cross_attentions
    if len(cross_attentions) == 0:
        raise ValueError("cross_attentions is empty; expected one (B, heads, T, N) per layer")
    for i, att in enumerate(cross_attentions):
        if att.ndim != 4:
            raise ValueError(
                f"cross_attentions[{i}] must be (B, heads, T, N); got {tuple(att.shape)}"
            )
    if isinstance(layers, int):
        stacked = cross_attentions[layers].unsqueeze(0)
    else:
        _check_option("layers", layers, LAYER_OPTIONS)
        chosen = cross_attentions[-1:] if layers == "last" else cross_attentions
        stacked = torch.stack(tuple(chosen))  # (L, B, heads, T, N)
    if isinstance(heads, int):
        per_layer = stacked[:, :, heads]
    else:
        _check_option("heads", heads, HEAD_OPTIONS)
        if heads == "mean":
            per_layer = stacked.mean(2)
        else:
            per_layer = stacked.amax(2)
            per_layer = per_layer / per_layer.sum(-1, keepdim=True).clamp_min(1e-12)
    return per_layer.mean(0)


def fit_to_shape(volume: Tensor, size_dhw: Sequence[int]) -> Tensor:
    """Zero-pad at the end or crop the last three axes of ``volume`` to ``size_dhw``.

    Matches encoders that pad their input at the end of each axis to a multiple of the coarsest
    stride: a level of ``n`` cells with stride ``s`` covers voxels ``[0, n * s)`` of the input.
    """
    d, h, w = (int(n) for n in size_dhw)
    volume = volume[..., :d, :h, :w]
    pads = (0, w - volume.shape[-1], 0, h - volume.shape[-2], 0, d - volume.shape[-3])
    return F.pad(volume, pads) if any(pads) else volume


def attention_level_grids(attention: Tensor, geometry: TokenGeometry) -> list[Tensor]:
    """Split (B, T, N) attention by level and reshape to grids: one (B, T, d, h, w) per level.

    Raises:
        ValueError: if N does not match ``geometry.num_tokens``.
    """
    if attention.ndim != 3 or attention.shape[-1] != geometry.num_tokens:
        raise ValueError(
            f"attention must be (B, T, N={geometry.num_tokens}); got {tuple(attention.shape)}"
        )
    b, t, _ = attention.shape
    return [
        attention[..., geometry.level_slice(i)].reshape(b, t, *shape)
        for i, shape in enumerate(geometry.level_shapes)
    ]


def token_heatmaps(
    cross_attentions: Sequence[Tensor] | Tensor,
    geometry: TokenGeometry,
    input_shape_dhw: Sequence[int],
    layers: str | int = "mean",
    heads: str | int = "mean",
    mode: str = "trilinear",
) -> Tensor:
    """Per-query heatmaps over the input volume, each summing to one over voxels.

    Memory is B * T * D * H * W floats; for training use the token-grid grounding loss in
    :mod:`lungvlm.losses.grounding`, which never builds these maps.

    Args:
        cross_attentions: per layer (B, heads, T, N), or a reduced (B, T, N) tensor.
        geometry: token geometry from the visual tokenizer.
        input_shape_dhw: (D, H, W) of the encoder input, voxels.
        layers: see :func:`average_attention`.
        heads: see :func:`average_attention`.
        mode: "trilinear" (smooth display maps; mass spreads up to half a cell into neighbour
            blocks) or "nearest" (each token's mass stays exactly in its voxel block).

    Returns:
        (B, T, D, H, W) float32 heatmaps.
    """
    _check_option("mode", mode, UPSAMPLE_MODES)
    if len(input_shape_dhw) != 3 or min(input_shape_dhw) < 1:
        raise ValueError(
            f"input_shape_dhw must be 3 positive ints (D, H, W); got {input_shape_dhw}"
        )
    size = tuple(int(s) for s in input_shape_dhw)
    attention = average_attention(cross_attentions, layers, heads).float()
    b, t, _ = attention.shape
    heatmap = attention.new_zeros((b * t, 1, *size))
    grids = attention_level_grids(attention, geometry)
    for grid, stride in zip(grids, geometry.level_strides, strict=True):
        cells = grid.reshape(b * t, 1, *grid.shape[2:])  # (B*T, 1, d, h, w)
        extent = tuple(n * s for n, s in zip(cells.shape[2:], stride, strict=True))
        kwargs = {"align_corners": False} if mode == "trilinear" else {}
        up = F.interpolate(cells, size=extent, mode=mode, **kwargs)
        # Interpolation changes the total (each cell covers stride^3 voxels); rescale so the
        # level keeps the attention mass it had over its tokens.
        mass = cells.sum(dim=(2, 3, 4), keepdim=True)
        up_mass = up.sum(dim=(2, 3, 4), keepdim=True)
        heatmap = heatmap + fit_to_shape(up * (mass / up_mass.clamp_min(1e-12)), size)
    # Mass on voxels the encoder padded beyond the input is dropped; renormalise to one.
    heatmap = heatmap / heatmap.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1e-12)
    return heatmap.reshape(b, t, *size)


__all__ = [
    "HEAD_OPTIONS",
    "LAYER_OPTIONS",
    "UPSAMPLE_MODES",
    "attention_level_grids",
    "average_attention",
    "fit_to_shape",
    "token_heatmaps",
]
