"""The contrastive loss: CLIP-style symmetric InfoNCE of paired visual and report embeddings.

The projection heads and the learned temperature are :class:`lungvlm.models.contrastive.
ContrastiveAlignment`. The visual side should be a text-free pooled visual representation (e.g. mean of the visual
tokens or the encoder's pooled features); the text side is the report decoder's text-only
``report_embedding``. Pairs in a batch are positives, all other pairings negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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


__all__ = ["info_nce"]
