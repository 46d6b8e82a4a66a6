"""Stage-3 losses and metrics: report CE, contrastive, grounding, risk and concepts.

Kept out of :mod:`lungvlm.lightning.module` so the LightningModule stays small; the module owns
the weighting and calls :func:`vision_language_losses` from its shared step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import CatMetric
from torchmetrics.classification import BinaryAUROC

from lungvlm.labels import CONCEPT_NAMES, GROWTH_BINS_MONTHS
from lungvlm.losses.grounding import mention_grounding_loss_token_grid
from lungvlm.losses.risk import concept_loss, lungrads_ordinal_loss, malignancy_loss
from lungvlm.losses.survival import growth_survival_loss, probability_event_by
from lungvlm.metrics.grounding import HeatmapMassInMask, PointingGame
from lungvlm.metrics.report import ClinicalConceptF1, QuestionAnswerAccuracy, ReportTextMetrics
from lungvlm.metrics.risk import ConcordanceIndex, lungrads_metrics, malignancy_metrics
from lungvlm.models.generation import greedy_generate
from lungvlm.models.grounding import average_attention, token_heatmaps
from lungvlm.models.report_decoder import IGNORE_INDEX
from lungvlm.models.vlm import VisionLanguageHeads

#: Prompts of the zero-shot spiculation classifier (positive first).
ZERO_SHOT_PROMPTS: tuple[str, str] = ("A spiculated nodule.", "A smooth nodule.")
#: A nodule counts as spiculated for zero-shot AUROC when its rating is >= 2 of 5 (unit >= 0.25).
SPICULATED_UNIT_THRESHOLD = 0.25
#: Risk variants evaluated: which text the risk head sees.
RISK_VARIANTS: tuple[str, ...] = ("risk", "risk_generated", "risk_visual")


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


class VisionLanguageMetrics(nn.Module):
    """One set of stage-3 metrics for one split (val or test)."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ReportTextMetrics()
        self.concept_f1 = ClinicalConceptF1()
        self.pointing = PointingGame()
        self.mass = HeatmapMassInMask()
        self.growth_cindex = ConcordanceIndex()
        self.risk = nn.ModuleDict()
        for variant in RISK_VARIANTS:
            self.risk[f"{variant}_malignancy"] = malignancy_metrics()
            self.risk[f"{variant}_lungrads"] = lungrads_metrics()
        self.visual_embeddings = CatMetric()
        self.text_embeddings = CatMetric()
        self.zero_shot = BinaryAUROC()
        self.qa = QuestionAnswerAccuracy()

    def compute(self) -> dict[str, Tensor]:
        """All values keyed ``task/metric`` (the caller adds the split)."""
        out: dict[str, Tensor] = {}
        text = self.text.compute()
        out.update({f"report/{k}": v for k, v in text.items()})
        f1 = self.concept_f1.compute()
        for key, value in f1.items():  # "micro_f1" -> concept_f1, "margin/f1" -> concept_margin_f1
            name = key.removeprefix("micro_").replace("/", "_")
            out[f"report/concept_{name}"] = value
        out["grounding/pointing_game"] = self.pointing.compute()
        out["grounding/mass_in_mask"] = self.mass.compute()
        out["risk/growth_cindex"] = self.growth_cindex.compute()
        for name, metric in self.risk.items():
            variant, task = name.rsplit("_", 1)
            for key, value in metric.compute().items():
                out[f"{variant}/{task}_{key}"] = value
        visual, text_emb = self.visual_embeddings.compute(), self.text_embeddings.compute()
        if visual.ndim == 2 and visual.shape[0] > 1:
            from lungvlm.metrics.report import retrieval_recall_at_k

            sim = visual @ text_emb.T
            out["retrieval/recall_at_1"] = retrieval_recall_at_k(sim, 1)
            out["retrieval/recall_at_5"] = retrieval_recall_at_k(sim, min(5, sim.shape[0]))
        if bool(self.qa.total.sum() > 0):
            out.update({f"qa/accuracy_{k}": v for k, v in self.qa.compute().items()})
        try:
            out["zero_shot/spiculation_auroc"] = self.zero_shot.compute()
        except (ValueError, RuntimeError):
            pass  # no samples with both classes
        return out

    def reset(self) -> None:
        """Reset every metric."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset") and hasattr(module, "_defaults"):
                module.reset()


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


def risk_update(metrics: VisionLanguageMetrics, variant: str, risk, batch) -> None:
    """Update the malignancy and Lung-RADS metrics of one risk variant."""
    metrics.risk[f"{variant}_malignancy"].update(
        torch.sigmoid(risk.malignancy_logit.float()),
        batch.malignancy.long(),
        batch.malignancy_present,
    )
    metrics.risk[f"{variant}_lungrads"].update(
        risk.lungrads_prediction(), batch.lungrads, batch.lungrads_present
    )


def growth_risk_score(risk) -> Tensor:
    """P(growth by 12 months) from the hazard logits: the C-index risk score (B,)."""
    return probability_event_by(risk.growth_hazard_logits.float(), 12.0, GROWTH_BINS_MONTHS)
