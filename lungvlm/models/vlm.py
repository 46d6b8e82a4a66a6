"""Stage-3 heads on the shared encoder: visual tokens, report decoder, alignment, risk, concepts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lungvlm.losses.contrastive import ContrastiveAlignment
from lungvlm.models.heads.concepts import ConceptHead
from lungvlm.models.heads.risk import RiskHead
from lungvlm.models.report_decoder import ReportDecoder
from lungvlm.models.visual_tokens import VisualTokenizer
from lungvlm.text.tokenizer import SPECIAL_TOKENS


class VisionLanguageHeads(nn.Module):
    """Everything stage 3 adds to the encoder and segmentation head.

    - ``visual_tokens`` turns encoder levels ``visual_levels`` into decoder tokens (with level and
      3D position embeddings);
    - ``decoder`` is a GPT-2 report decoder cross-attending to them (per-token heatmaps come
      from its cross-attention, see :mod:`lungvlm.models.grounding`);
    - ``contrastive`` aligns the pooled visual representation with the report embedding;
    - ``risk_head`` decodes malignancy, Lung-RADS (ordinal) and growth hazards from the pooled
      visual representation concatenated with the findings-text embedding;
    - ``concept_head`` aligns latent dimensions with radiological attributes.

    The pooled visual representation concatenates the global average of the ``pooled_levels``
    feature maps (B, sum of their channels).

    Args:
        feature_info: the encoder's ``feature_info``.
        vocab_size: decoder vocabulary (an upper bound for the trained tokenizer's size).
        d_model: decoder and visual-token width.
        n_layers: decoder blocks.
        n_heads: decoder attention heads.
        max_length: longest report in tokens, [BOS] and [EOS] included.
        dropout: decoder dropout.
        visual_levels: encoder levels turned into visual tokens.
        pooled_levels: encoder levels averaged into the pooled visual representation.
        embed_dim: width of the contrastive space.
        risk_hidden_dim: hidden width of the risk head.
        risk_use_text: feed the findings-text embedding to the risk head.
        concept_free_dims: latent dimensions of the concept head not tied to a concept.
    """

    def __init__(
        self,
        feature_info: Sequence[dict],
        vocab_size: int = 512,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        max_length: int = 96,
        dropout: float = 0.1,
        visual_levels: Sequence[int] = (2, 3, 4),
        pooled_levels: Sequence[int] = (3, 4),
        embed_dim: int = 64,
        risk_hidden_dim: int = 64,
        risk_use_text: bool = True,
        concept_free_dims: int = 8,
    ) -> None:
        super().__init__()
        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(
                f"vocab_size must hold the 256 byte symbols and {len(SPECIAL_TOKENS)} special "
                f"tokens; got {vocab_size}"
            )
        levels = [int(level) for level in pooled_levels]
        if not levels or any(not 0 <= lv < len(feature_info) for lv in levels):
            raise ValueError(
                f"pooled_levels must index feature_info (0..{len(feature_info) - 1}); "
                f"got {tuple(pooled_levels)}"
            )
        self.pooled_levels = tuple(levels)
        self.visual_dim = sum(int(feature_info[lv]["channels"]) for lv in levels)
        self.max_length = max_length
        self.visual_tokens = VisualTokenizer(feature_info, tuple(visual_levels), d_model)
        self.decoder = ReportDecoder(
            vocab_size=vocab_size,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            max_length=max_length,
            dropout=dropout,
            pad_token_id=SPECIAL_TOKENS.index("[PAD]"),
            bos_token_id=SPECIAL_TOKENS.index("[BOS]"),
            eos_token_id=SPECIAL_TOKENS.index("[EOS]"),
        )
        self.contrastive = ContrastiveAlignment(self.visual_dim, d_model, embed_dim)
        self.risk_head = RiskHead(
            self.visual_dim, d_model, hidden_dim=risk_hidden_dim, use_text=risk_use_text
        )
        self.concept_head = ConceptHead(self.visual_dim, num_free_dims=concept_free_dims)

    def pooled_visual(self, features: Sequence[Tensor]) -> Tensor:
        """Global average of the pooled levels, concatenated: (B, ``visual_dim``)."""
        return torch.cat([features[lv].float().mean(dim=(2, 3, 4)) for lv in self.pooled_levels], 1)
