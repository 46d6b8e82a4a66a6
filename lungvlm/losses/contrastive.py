"""Contrastive alignment of global visual and report embeddings (CLIP-style symmetric InfoNCE).

The visual side should be a text-free pooled visual representation (e.g. mean of the visual
tokens or the encoder's pooled features); the text side is the report decoder's text-only
``report_embedding``. Pairs in a batch are positives, all other pairings negatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_pair(visual_emb: Tensor, text_emb: Tensor) -> None:
    if visual_emb.ndim != 2 or text_emb.ndim != 2 or visual_emb.shape != text_emb.shape:
        raise ValueError(
            "visual_emb and text_emb must both be (B, E) with the same shape; got "
            f"{tuple(visual_emb.shape)} and {tuple(text_emb.shape)}"
        )


def info_nce(visual_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE over a batch of paired embeddings.

    Embeddings are L2-normalised here, ``logits = logit_scale * v @ t.T`` and the loss is the mean
    of the image->text and text->image cross-entropies with the diagonal as targets.

    Args:
        visual_emb: (B, E) visual embeddings.
        text_emb: (B, E) text embeddings; row i is paired with ``visual_emb[i]``.
        logit_scale: inverse temperature (e.g. ``1 / 0.07``), a float or 0-dim tensor.

    Returns:
        Scalar loss (nats). It is 0 for B = 1 (no negatives).
    """
    _check_pair(visual_emb, text_emb)
    v = F.normalize(visual_emb.float(), dim=-1)
    t = F.normalize(text_emb.float(), dim=-1)
    logits = logit_scale * v @ t.T  # (B, B)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


class ContrastiveAlignment(nn.Module):
    """Project both modalities to a shared space and score them with a learned temperature.

    Args:
        visual_dim: width of the global visual representation.
        text_dim: width of the report embedding.
        embed_dim: width of the shared space.
        init_temperature: initial softmax temperature (CLIP: 0.07).
        max_logit_scale: upper clamp of the inverse temperature (CLIP: 100).
    """

    def __init__(
        self,
        visual_dim: int,
        text_dim: int,
        embed_dim: int = 128,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if init_temperature <= 0:
            raise ValueError(f"init_temperature must be > 0; got {init_temperature}")
        if max_logit_scale < 1.0 / init_temperature:
            raise ValueError(
                f"max_logit_scale ({max_logit_scale}) must be >= 1 / init_temperature "
                f"({1.0 / init_temperature:.3g})"
            )
        self.visual_proj = nn.Linear(visual_dim, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_logit_scale = max_logit_scale

    def logit_scale(self) -> Tensor:
        """Inverse temperature, ``exp(log_logit_scale)`` clamped to ``[1, max_logit_scale]``."""
        return self.log_logit_scale.clamp(0.0, math.log(self.max_logit_scale)).exp()

    def embed_visual(self, visual: Tensor) -> Tensor:
        """(B, visual_dim) -> (B, embed_dim), L2-normalised."""
        return F.normalize(self.visual_proj(visual), dim=-1)

    def embed_text(self, text: Tensor) -> Tensor:
        """(B, text_dim) -> (B, embed_dim), L2-normalised."""
        return F.normalize(self.text_proj(text), dim=-1)

    def similarity(self, visual: Tensor, text: Tensor) -> Tensor:
        """Cosine similarities (B_v, B_t) between projected visual rows and text rows."""
        return self.embed_visual(visual) @ self.embed_text(text).T

    def forward(self, visual: Tensor, text: Tensor) -> Tensor:
        """Symmetric InfoNCE loss of a batch of (visual, text) pairs."""
        return info_nce(self.embed_visual(visual), self.embed_text(text), self.logit_scale())


def retrieval_recall_at_k(sim: Tensor, k: int) -> float:
    """Share of queries (rows) whose paired item (same index) is among the top-k columns.

    Rows are queries (visual -> text for ``sim = v @ t.T``; pass ``sim.T`` for text -> visual).
    Ties are broken by ``torch.topk`` order.

    Raises:
        ValueError: if ``sim`` is not square or ``k`` is not in ``[1, B]``.
    """
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square (B, B) matrix; got {tuple(sim.shape)}")
    if not 1 <= k <= sim.shape[0]:
        raise ValueError(f"k must be in [1, {sim.shape[0]}]; got {k}")
    top = sim.topk(k, dim=1).indices  # (B, k)
    hits = (top == torch.arange(sim.shape[0], device=sim.device)[:, None]).any(dim=1)
    return float(hits.float().mean())


def zero_shot_scores(
    visual_emb: Tensor, prompt_embs: Tensor, logit_scale: Tensor | float = 100.0
) -> Tensor:
    """Zero-shot class probabilities: softmax over prompts of scaled cosine similarity.

    Args:
        visual_emb: (B, E) visual embeddings.
        prompt_embs: (C, E) embeddings of one text prompt per class (e.g. "spiculated margin").
        logit_scale: inverse temperature (use the trained ``ContrastiveAlignment.logit_scale()``).

    Returns:
        (B, C) probabilities, rows summing to one.
    """
    if visual_emb.ndim != 2 or prompt_embs.ndim != 2 or visual_emb.shape[1] != prompt_embs.shape[1]:
        raise ValueError(
            "visual_emb (B, E) and prompt_embs (C, E) must share E; got "
            f"{tuple(visual_emb.shape)} and {tuple(prompt_embs.shape)}"
        )
    v = F.normalize(visual_emb.float(), dim=-1)
    p = F.normalize(prompt_embs.float(), dim=-1)
    return (logit_scale * v @ p.T).softmax(dim=-1)


__all__ = ["ContrastiveAlignment", "info_nce", "retrieval_recall_at_k", "zero_shot_scores"]
