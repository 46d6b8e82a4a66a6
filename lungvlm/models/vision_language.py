"""Stage-3 heads on the shared encoder: visual tokens, report decoder, alignment, risk, concepts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lungvlm.models.contrastive import ContrastiveAlignment
from lungvlm.models.heads.concepts import ConceptHead
from lungvlm.models.heads.risk import RiskHead
from lungvlm.models.report_decoder import ReportDecoder
from lungvlm.models.visual_tokens import VisualTokenizer
from lungvlm.text.tokenizer import SPECIAL_TOKENS

#: Size features of :meth:`VisionLanguageHeads.nodule_summary`.
NODULE_SIZE_FEATURES = 3


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
        mask_pooling: condition on the segmented nodule (see :meth:`nodule_summary`): its
            mask-weighted features and measured size are appended to the pooled visual
            representation and added to every visual token of the decoder.
        mask_levels: encoder levels pooled under the predicted mask.
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
        mask_pooling: bool = False,
        mask_levels: Sequence[int] = (2, 3),
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
        self.mask_pooling = bool(mask_pooling)
        self.mask_levels = tuple(int(lv) for lv in mask_levels)
        if self.mask_pooling:
            if not self.mask_levels or any(
                not 0 <= lv < len(feature_info) for lv in self.mask_levels
            ):
                raise ValueError(
                    f"mask_levels must index feature_info (0..{len(feature_info) - 1}); "
                    f"got {tuple(mask_levels)}"
                )
            summary_dim = (
                sum(int(feature_info[lv]["channels"]) for lv in self.mask_levels)
                + NODULE_SIZE_FEATURES
            )
            self.summary_to_tokens = nn.Sequential(
                nn.Linear(summary_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model)
            )
            # Zero-initialised: a model initialised from stage 2 / language starts unchanged.
            nn.init.zeros_(self.summary_to_tokens[2].weight)
            nn.init.zeros_(self.summary_to_tokens[2].bias)
            self.visual_dim += summary_dim
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
        """Global average of the pooled levels, concatenated: (B, sum of their channels)."""
        return torch.cat([features[lv].float().mean(dim=(2, 3, 4)) for lv in self.pooled_levels], 1)

    def nodule_summary(self, features: Sequence[Tensor], seg_logits: Tensor) -> Tensor:
        """What the segmentation says about the crop's nodule: (B, summary_dim).

        The predicted probability ``p = sigmoid(seg_logits)`` (no gradient: a measurement) is
        average-pooled to each of ``mask_levels`` and weights that level's features
        (``sum(f p) / (sum(p) + 1e-3)``: the nodule's own features, not the crop's); then three
        size features of the crop grid (training spacing): the equivalent-sphere diameter
        ``(6 V / pi)^(1/3)`` / 10 voxels, ``log(1 + V)`` / 5 with ``V = sum(p)`` voxels, and
        ``max(p)``.
        """
        prob = torch.sigmoid(seg_logits.detach().float())
        if prob.ndim != 5 or prob.shape[1] != 1:
            raise ValueError(f"seg_logits must be (B, 1, D, H, W); got {tuple(seg_logits.shape)}")
        parts = []
        for lv in self.mask_levels:
            f = features[lv].float()
            p = F.adaptive_avg_pool3d(prob, f.shape[2:])
            parts.append((f * p).sum(dim=(2, 3, 4)) / (p.sum(dim=(2, 3, 4)) + 1e-3))
        volume = prob.sum(dim=(1, 2, 3, 4))
        diameter = (6.0 * volume / math.pi).clamp_min(0).pow(1.0 / 3.0)
        size = torch.stack([diameter / 10.0, torch.log1p(volume) / 5.0, prob.amax((1, 2, 3, 4))], 1)
        return torch.cat([*parts, size], 1)

    def encode(
        self, features: Sequence[Tensor], seg_logits: Tensor | None = None
    ) -> tuple[Tensor, object, Tensor]:
        """Decoder visual tokens, their geometry and the pooled visual representation.

        Args:
            features: encoder feature maps, finest first.
            seg_logits: (B, 1, D, H, W) finest segmentation logits; needed with ``mask_pooling``.

        Returns:
            (tokens (B, N, d_model), geometry, pooled (B, ``visual_dim``)).
        """
        tokens, geometry = self.visual_tokens(features)
        pooled = self.pooled_visual(features)
        if self.mask_pooling:
            if seg_logits is None:
                raise ValueError("mask_pooling=True needs the segmentation logits (seg_logits)")
            summary = self.nodule_summary(features, seg_logits)
            tokens = tokens + self.summary_to_tokens(summary).to(tokens.dtype)[:, None, :]
            pooled = torch.cat([pooled, summary], 1)
        return tokens, geometry, pooled
