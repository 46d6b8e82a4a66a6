"""Contrastive alignment head: projections of visual and report embeddings into one space and
a learned temperature (CLIP); the loss is :func:`lungvlm.losses.contrastive.info_nce`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lungvlm.losses.contrastive import info_nce


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
