"""Stage-3 forward pass and losses: report CE, contrastive, grounding, risk and concepts.

The stage-3 metrics are :class:`lungvlm.metrics.vision_language.VisionLanguageMetrics`.

Kept out of :mod:`lungvlm.lightning.module` so the LightningModule stays small; the module owns
the weighting and calls :func:`vision_language_losses` from its shared step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lungvlm.labels import CONCEPT_NAMES, GROWTH_BINS_MONTHS
from lungvlm.losses.grounding import mention_grounding_loss_token_grid
from lungvlm.losses.risk import concept_loss, lungrads_ordinal_loss, malignancy_loss
from lungvlm.losses.survival import growth_survival_loss
from lungvlm.models.generation import greedy_generate
from lungvlm.models.grounding import average_attention, token_heatmaps
from lungvlm.models.report_decoder import IGNORE_INDEX
from lungvlm.models.vision_language import VisionLanguageHeads

#: Prompts of the zero-shot spiculation classifier (positive first).
ZERO_SHOT_PROMPTS: tuple[str, str] = ("A spiculated nodule.", "A smooth nodule.")
#: A nodule counts as spiculated for zero-shot AUROC when its rating is >= 2 of 5 (unit >= 0.25).
SPICULATED_UNIT_THRESHOLD = 0.25


@dataclass
class VLForward:
    """Intermediate tensors of one stage-3 forward pass (for losses and metrics)."""

    pooled: Tensor
    text_embedding: Tensor
    cross_attentions: tuple[Tensor, ...]
    geometry: object
    visual_tokens: Tensor
    risk: object
    concepts: object


@dataclass(frozen=True)
class RiskTextSchedule:
    """Which findings text the risk head reads in a training batch (one draw per batch).

    Attributes:
        dropout: probability of no text (trains the head's visual-only input).
        generated: probability of the decoder's own greedy findings for the crop instead of the
            reference (the inference setting: the head learns how far to trust generated text).
        max_new_tokens: length limit of that generation, tokens.
    """

    dropout: float = 0.0
    generated: float = 0.0
    max_new_tokens: int = 90

    def draw(self) -> str:
        """ "none", "generated" or "reference" for one batch."""
        u = float(torch.rand(()))
        if u < self.dropout:
            return "none"
        return "generated" if u < self.dropout + self.generated else "reference"


def generated_report_embedding(
    heads: VisionLanguageHeads, visual_tokens: Tensor, max_new_tokens: int
) -> Tensor:
    """Report embedding (B, d) of the decoder's greedy findings for ``visual_tokens``.

    Generation runs without gradients in eval mode (no dropout); the embedding of the generated
    ids is differentiable, as for reference text.
    """
    decoder = heads.decoder
    was_training = decoder.training
    decoder.eval()
    try:
        out = greedy_generate(decoder, visual_tokens.detach(), max_new_tokens)
    finally:
        decoder.train(was_training)
    b = visual_tokens.shape[0]
    bos = torch.full((b, 1), decoder.bos_token_id, dtype=torch.long, device=visual_tokens.device)
    ids = torch.cat([bos, out.token_ids], 1)
    attention = torch.cat([torch.ones_like(bos), out.token_mask.long()], 1)
    return decoder.report_embedding(ids, attention)


def vision_language_forward(
    heads: VisionLanguageHeads,
    features: list[Tensor],
    batch,
    risk_text: RiskTextSchedule | None = None,
    seg_logits: Tensor | None = None,
) -> VLForward:
    """Teacher-forced forward of the stage-3 heads on encoder ``features`` and ``batch``.

    In training, ``risk_text`` picks per batch what the risk head reads: the reference
    findings, no text (so visual-only risk is meaningful) or the decoder's own generated
    findings (so risk from generated text, the inference setting, is trained).
    ``seg_logits`` (the finest segmentation logits) feed the heads' mask pooling, if enabled.
    """
    tokens, geometry, pooled = heads.encode(features, seg_logits)
    dec = heads.decoder(batch.report_tokens, batch.report_attention, tokens, output_attentions=True)
    choice = risk_text.draw() if (heads.training and risk_text is not None) else "reference"
    # The risk head reads the findings text (never the impression, which names the category).
    text = heads.decoder.report_embedding(batch.report_tokens, batch.report_attention)
    risk_input = {"reference": text, "none": None}.get(choice)
    if choice == "generated":
        max_new = min(risk_text.max_new_tokens, heads.max_length - 1)
        risk_input = generated_report_embedding(heads, tokens, max_new)
    forward = VLForward(
        pooled=pooled,
        text_embedding=text,
        cross_attentions=dec.cross_attentions,
        geometry=geometry,
        visual_tokens=tokens,
        risk=heads.risk_head(pooled, risk_input),
        concepts=heads.concept_head(pooled),
    )
    forward.report_loss = dec.loss
    return forward


def question_answer_loss(heads: VisionLanguageHeads, visual_tokens: Tensor, batch) -> Tensor:
    """Cross-entropy (nats/token) of the reference answers given ``Q: ... A:`` and the crop.

    Only answer tokens (and their [EOS]) are targets; rows without a question are ignored.
    Returns 0 (with a graph) when the batch has no question.
    """
    zero = visual_tokens.sum() * 0.0
    mask = getattr(batch, "qa_answer_mask", None)
    if mask is None or not bool(mask.any()):
        return zero
    length = int(batch.qa_attention.sum(1).max())
    ids, attention = batch.qa_tokens[:, :length], batch.qa_attention[:, :length]
    rows = mask.any(1)
    dec = heads.decoder(ids[rows], attention[rows], visual_tokens[rows], output_attentions=False)
    targets = ids[rows][:, 1:].masked_fill(~mask[rows][:, 1:length], IGNORE_INDEX)
    return F.cross_entropy(
        dec.logits[:, :-1].reshape(-1, dec.logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def vision_language_losses(
    heads: VisionLanguageHeads,
    features: list[Tensor],
    batch,
    risk_text: RiskTextSchedule | None = None,
    seg_logits: Tensor | None = None,
):
    """Named stage-3 losses (segmentation excluded) and the forward outputs.

    Returns:
        (losses, forward): ``losses`` maps "report", "qa", "contrastive", "grounding",
        "malignancy", "lungrads", "growth", "concepts" to scalars; absent labels are masked.
    """
    fwd = vision_language_forward(heads, features, batch, risk_text, seg_logits)
    risk = fwd.risk
    zero = fwd.pooled.sum() * 0.0
    losses = {
        "report": fwd.report_loss if fwd.report_loss is not None else zero,
        "qa": question_answer_loss(heads, fwd.visual_tokens, batch),
        "contrastive": heads.contrastive(fwd.pooled, fwd.text_embedding)
        if fwd.pooled.shape[0] > 1
        else zero,
        "grounding": mention_grounding_loss_token_grid(
            fwd.cross_attentions,
            fwd.geometry,
            batch.token_nodule,
            batch.seg_mask,
            batch.seg_present,
        ),
        "malignancy": malignancy_loss(
            risk.malignancy_logit, batch.malignancy, batch.malignancy_present
        ),
        "lungrads": lungrads_ordinal_loss(
            risk.lungrads_cumulative_logits, batch.lungrads, batch.lungrads_present
        ),
        "growth": growth_survival_loss(
            risk.growth_hazard_logits,
            batch.growth_time_months,
            batch.growth_event,
            batch.growth_present,
            GROWTH_BINS_MONTHS,
        ),
        "concepts": concept_loss(
            fwd.concepts.concept_logits, batch.concepts, batch.concepts_present
        ),
    }
    return losses, fwd


def sentence_heatmaps(
    fwd: VLForward, batch, input_shape: tuple[int, int, int]
) -> tuple[Tensor, Tensor]:
    """Teacher-forced heatmap of each nodule mention, averaged over its tokens.

    Query t produces token t + 1, so a mention's heatmap averages the attention of the queries
    that wrote its tokens. Returns (heatmaps (N, D, H, W), masks (N, D, H, W)) over the samples
    with a present, non-empty mask and at least one mention token.
    """
    attention = average_attention(fwd.cross_attentions, "mean", "mean")  # (B, T, N)
    labels = torch.full_like(batch.token_nodule, -1)
    labels[:, :-1] = batch.token_nodule[:, 1:]
    maps, masks = [], []
    for i in range(attention.shape[0]):
        mention = labels[i] == 0
        if not bool(batch.seg_present[i]) or not bool(mention.any()):
            continue
        if not bool(batch.seg_mask[i].any()):
            continue
        pooled = attention[i : i + 1, mention].mean(dim=1, keepdim=True)  # (1, 1, N)
        heat = token_heatmaps(pooled, fwd.geometry, input_shape)[0, 0]
        maps.append(heat)
        masks.append(batch.seg_mask[i, 0] > 0.5)
    if not maps:
        empty = torch.zeros((0, *input_shape), device=attention.device)
        return empty, empty.bool()
    return torch.stack(maps), torch.stack(masks)


def concept_index(name: str) -> int:
    """Index of concept ``name`` in :data:`CONCEPT_NAMES`."""
    return CONCEPT_NAMES.index(name)
