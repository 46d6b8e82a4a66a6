"""Mention grounding loss: attention of nodule-naming tokens should fall inside the nodule mask.

For every report token inside a nodule span (``token_nodule >= 0``) the loss is
``-log(mass inside the mask + eps)``, averaged over such tokens, where the mass is the share of
the heatmap (or cross-attention) that lies inside the mask of that nodule.

Two versions compute the same idea:

- :func:`mention_grounding_loss_token_grid` (**the one training uses**): the mask is average-pooled
  onto each level's token grid (the fraction of each cell inside the mask) and the mass is
  ``sum_n attention[n] * fraction[n]``; no full-resolution heatmap is built. It equals the
  full-resolution mass of "nearest" heatmaps when the input is a multiple of every stride.
- :func:`mention_grounding_loss` on full-resolution heatmaps from
  :func:`lungvlm.models.grounding.token_heatmaps` (evaluation, small inputs).

Conventions chosen here:

- ``token_nodule[b, t]`` labels *tokens*; the attention that produced token t is at query
  ``t - query_offset`` (1 for the report decoder, whose query t predicts token t + 1).
- ``masks`` is (B, K, D, H, W): K = 1 means one mask (the union of the nodules the report names)
  used for every labelled token; K > 1 means channel k is the mask of nodule k.
- A sample whose mask is absent (``mask_present`` False) or empty contributes nothing, and with no
  labelled token left the loss is an exact zero that keeps the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lungvlm.models.grounding import average_attention, fit_to_shape
from lungvlm.models.visual_tokens import TokenGeometry


def query_labels(token_nodule: Tensor, query_offset: int = 1) -> Tensor:
    """Move token labels (B, T) onto the query positions that produced the tokens.

    ``out[:, q] = token_nodule[:, q + query_offset]``; queries with no such token get -1.
    """
    if query_offset < 0:
        raise ValueError(f"query_offset must be >= 0; got {query_offset}")
    if query_offset == 0:
        return token_nodule
    out = torch.full_like(token_nodule, -1)
    out[:, : max(token_nodule.shape[1] - query_offset, 0)] = token_nodule[:, query_offset:]
    return out


def mask_fractions(masks: Tensor, geometry: TokenGeometry) -> Tensor:
    """Fraction of each visual token's cell inside each mask: (B, K, D, H, W) -> (B, K, N).

    Each level's fraction is the block average of the mask over the cell's stride block; a level
    of ``n`` cells with stride ``s`` covers voxels ``[0, n * s)`` (the mask is zero-padded at the
    end, as encoders pad their input, so padded voxels count as outside the mask).
    """
    if masks.ndim != 5:
        raise ValueError(f"masks must be (B, K, D, H, W); got {tuple(masks.shape)}")
    masks = masks.float()
    fractions = []
    for shape, stride in zip(geometry.level_shapes, geometry.level_strides, strict=True):
        extent = [n * s for n, s in zip(shape, stride, strict=True)]
        block = F.avg_pool3d(fit_to_shape(masks, extent), kernel_size=stride, stride=stride)
        fractions.append(block.flatten(2))
    return torch.cat(fractions, dim=2)


def _nll_of_mass(
    mass_per_nodule: Tensor,
    token_nodule: Tensor,
    masks: Tensor,
    mask_present: Tensor,
    query_offset: int,
    eps: float,
    anchor: Tensor,
) -> Tensor:
    """Average ``-log(mass + eps)`` over labelled queries; ``mass_per_nodule`` is (B, T, K)."""
    b, t, k = mass_per_nodule.shape
    if token_nodule.shape != (b, t):
        raise ValueError(f"token_nodule must be (B={b}, T={t}); got {tuple(token_nodule.shape)}")
    if mask_present.shape != (b,):
        raise ValueError(f"mask_present must be (B={b},); got {tuple(mask_present.shape)}")
    labels = query_labels(token_nodule.long(), query_offset)
    if k > 1 and int(labels.max()) >= k:
        raise ValueError(
            f"token_nodule names nodule {int(labels.max())} but masks has only K={k} channels"
        )
    channel = labels.clamp_min(0) if k > 1 else torch.zeros_like(labels)
    mass = mass_per_nodule.gather(2, channel.unsqueeze(-1)).squeeze(-1)  # (B, T)
    nonempty = masks.flatten(2).sum(-1) > 0  # (B, K)
    usable = mask_present.bool()[:, None] & nonempty.gather(1, channel)
    selected = (labels >= 0) & usable
    if not bool(selected.any()):
        return anchor.sum() * 0.0
    return -torch.log(mass[selected] + eps).mean()


def mention_grounding_loss_token_grid(
    cross_attentions: Sequence[Tensor] | Tensor,
    geometry: TokenGeometry,
    token_nodule: Tensor,
    masks: Tensor,
    mask_present: Tensor,
    layers: str | int = "mean",
    heads: str | int = "mean",
    query_offset: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    """Grounding loss at token-grid resolution (used in training).

    Args:
        cross_attentions: per decoder layer (B, heads, T, N), or a reduced (B, T, N).
        geometry: visual token geometry.
        token_nodule: (B, T) int64 nodule index per token, -1 for none.
        masks: (B, K, D, H, W) nodule masks on the encoder input grid.
        mask_present: (B,) bool, whether the mask is a real label.
        layers: layer reduction (see :func:`lungvlm.models.grounding.average_attention`).
        heads: head reduction.
        query_offset: query ``t - query_offset`` produced token ``t``.
        eps: added to the mass inside ``log``.

    Returns:
        Scalar loss (nats).
    """
    attention = average_attention(cross_attentions, layers, heads).float()  # (B, T, N)
    fractions = mask_fractions(masks, geometry)  # (B, K, N)
    if fractions.shape[0] != attention.shape[0]:
        raise ValueError(
            f"masks has batch {fractions.shape[0]} but attention has batch {attention.shape[0]}"
        )
    mass = torch.einsum("btn,bkn->btk", attention, fractions)
    return _nll_of_mass(mass, token_nodule, masks, mask_present, query_offset, eps, attention)


def mention_grounding_loss(
    heatmaps: Tensor,
    token_nodule: Tensor,
    masks: Tensor,
    mask_present: Tensor,
    query_offset: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    """Grounding loss on full-resolution heatmaps (evaluation and small inputs).

    Args:
        heatmaps: (B, T, D, H, W) per-query heatmaps summing to one over voxels.
        token_nodule: (B, T) int64 nodule index per token, -1 for none.
        masks: (B, K, D, H, W) nodule masks in {0, 1}.
        mask_present: (B,) bool.
        query_offset: query ``t - query_offset`` produced token ``t``.
        eps: added to the mass inside ``log``.

    Returns:
        Scalar loss (nats).
    """
    if heatmaps.ndim != 5 or masks.ndim != 5 or heatmaps.shape[2:] != masks.shape[2:]:
        raise ValueError(
            f"heatmaps (B, T, D, H, W) and masks (B, K, D, H, W) must share (D, H, W); got "
            f"{tuple(heatmaps.shape)} and {tuple(masks.shape)}"
        )
    mass = torch.einsum("btdhw,bkdhw->btk", heatmaps.float(), masks.float())
    return _nll_of_mass(mass, token_nodule, masks, mask_present, query_offset, eps, heatmaps)


__all__ = [
    "mask_fractions",
    "mention_grounding_loss",
    "mention_grounding_loss_token_grid",
    "query_labels",
]
