"""Per-crop predictions of a stage-3 model, as plain records for the audit.

:func:`collect_crop_records` runs the model as ``lungvlm report`` runs it on one nodule:
encoder, segmentation, greedy report generation, then the risk head on the pooled visual
representation and the embedding of the *generated* text. Each crop becomes one JSON-able
record (:class:`CropRecord` fields as a dict) carrying the predictions, the reference labels
that are present (absent labels stay None, never made up), the crop's scanner profile and its
phantom nodule labels when the data set has them. ``perturb`` (optional) changes the input
image batch before the forward pass (robustness curves, :mod:`lungvlm.evaluation.robustness`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from lungvlm.evaluation.saliency import DEFAULT_GRADCAM_LAYERS, gradcam_maps, heatmap_scores
from lungvlm.evaluation.zero_shot import ATTRIBUTES
from lungvlm.inference.calibration import sentence_correct
from lungvlm.labels import CONCEPT_NAMES, GROWTH_BINS_MONTHS
from lungvlm.losses.survival import probability_event_by
from lungvlm.models.contrastive import zero_shot_scores
from lungvlm.models.generation import generated_token_offsets, greedy_generate, sentence_confidence
from lungvlm.models.grounding import average_attention, token_heatmaps
from lungvlm.progress import update as progress_update
from lungvlm.text.tokenizer import encode_reports

#: Probability threshold of the crop segmentation.
SEG_THRESHOLD = 0.5


@dataclass
class CropRecord:
    """Predictions and references of one crop (see the module docstring).

    Attributes:
        crop_id: the data set's id of the crop (``patient_id``).
        profile: scanner profile dict (``meta["scanner"]``) or None.
        nodule: phantom nodule label dict (``meta["labels"]``) or None.
        malignancy_logit: raw logit (before calibration).
        malignant: reference 0/1 or None when absent.
        lungrads_probabilities: (C,) class probabilities, ``LUNGRADS_CATEGORIES`` order.
        lungrads: reference category index or None.
        growth_probability_12m: P(growth by 12 months).
        growth_time_months / growth_event: reference survival pair, None when absent.
        dice: crop Dice of the thresholded segmentation (None without a reference mask or with
            an empty reference and prediction).
        sentences: (confidence, correct) per generated sentence.
        text: the generated findings text.
        grounding: per heatmap kind ("attention": the mean cross-attention map of the generated
            text; "gradcam:<layer>": Grad-CAM of the malignancy logit), the (pointing hit, mass
            in mask) of :func:`lungvlm.evaluation.saliency.heatmap_scores` against the crop's
            reference mask, None without a mask (only with ``saliency=True``).
        concept_probabilities: concept-head outputs in [0, 1] by concept name.
        zero_shot: P(yes) of each :data:`lungvlm.evaluation.zero_shot.ATTRIBUTES` prompt pair.
    """

    crop_id: str
    profile: dict | None
    nodule: dict | None
    malignancy_logit: float
    malignant: int | None
    lungrads_probabilities: list[float]
    lungrads: int | None
    growth_probability_12m: float
    growth_time_months: float | None
    growth_event: int | None
    dice: float | None
    sentences: list[tuple[float, bool]] = field(default_factory=list)
    text: str = ""
    grounding: dict[str, list | None] = field(default_factory=dict)
    concept_probabilities: dict[str, float] = field(default_factory=dict)
    zero_shot: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return asdict(self)


def _prompt_embeddings(model, device) -> dict[str, Tensor]:
    """Contrastive text embeddings (2, E) of each zero-shot attribute's prompt pair."""
    heads, tokenizer = model.vl_heads, model.vl.tokenizer
    out = {}
    for attribute in ATTRIBUTES:
        ids, mask = encode_reports(tokenizer, list(attribute.prompts), heads.max_length)
        text = heads.decoder.report_embedding(ids.to(device), mask.to(device))
        out[attribute.name] = heads.contrastive.embed_text(text)
    return out


def _scores(heatmap: Tensor, mask: Tensor, present: bool) -> list | None:
    """[hit, mass] of a (D, H, W) map against a (1, D, H, W) or (D, H, W) mask, or None."""
    if not present:
        return None
    reference = mask.reshape(heatmap.shape) if mask.numel() == heatmap.numel() else None
    if reference is None:
        return None
    scores = heatmap_scores(heatmap.float().numpy(), reference.numpy())
    return None if scores is None else [scores[0], scores[1]]


def crop_dice(probability: Tensor, reference: Tensor) -> float | None:
    """Dice of ``probability >= SEG_THRESHOLD`` against a binary reference (same shape);
    None when both are empty."""
    pred = probability >= SEG_THRESHOLD
    ref = reference > 0.5
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return None
    return 2.0 * int((pred & ref).sum()) / total


@torch.no_grad()
def collect_crop_records(
    model,
    batches: Iterable,
    max_new_tokens: int | None = None,
    max_samples: int | None = None,
    perturb: Callable[[Tensor, object], Tensor] | None = None,
    generate: bool = True,
    saliency: bool = False,
    gradcam_layers: Sequence[str] = DEFAULT_GRADCAM_LAYERS,
) -> list[dict]:
    """Run a stage-3 model over crop batches and return one record dict per crop.

    Args:
        model: stage-3 ``LungVLMModule`` in eval mode.
        batches: ``LungBatch``-like objects.
        max_new_tokens: longest generated report (default: the model's validation setting).
        max_samples: stop after this many crops.
        perturb: ``perturb(image, batch)`` returns the (B, 1, D, H, W) image the model sees
            (it may compute gradients: it runs with autograd enabled).
        generate: generate text (sentences and text-conditioned risk); False feeds the risk
            head without text (its learned "no text" slot), which is faster.
        saliency: score the cross-attention heatmap of the generated text (needs ``generate``)
            and Grad-CAM at ``gradcam_layers`` against the reference masks (``grounding``).

    Returns:
        :meth:`CropRecord.to_dict` dicts, in data order.
    """
    heads, tokenizer = model.vl_heads, model.vl.tokenizer
    limit = heads.decoder.max_length - 1
    max_new = min(limit, max_new_tokens or model.vl_config.generation_max_new_tokens)
    device = next(model.parameters()).device
    records: list[dict] = []
    prompts = _prompt_embeddings(model, device)
    total = len(getattr(batches, "dataset", ())) or None
    if max_samples is not None and total is not None:
        total = min(total, max_samples)
    for batch in batches:
        image = batch.image.to(device)
        if perturb is not None:
            with torch.enable_grad():
                image = perturb(image, batch).detach()
        context = batch.context.to(device) if model.encoder.use_context else None
        features = model.encoder(image, context)
        seg_logits = model.seg_head(features)[0]
        tokens, geometry, pooled = heads.encode(features, seg_logits)
        texts = [""] * tokens.shape[0]
        sentences: list[list[tuple[float, bool]]] = [[] for _ in texts]
        grounding: list[dict[str, list | None]] = [{} for _ in texts]
        masks = batch.seg_mask.cpu()
        emb = None
        if saliency:
            for layer in gradcam_layers:
                maps = gradcam_maps(model, image, context, layer).cpu()
                for i in range(len(texts)):
                    scores = _scores(maps[i], masks[i], bool(batch.seg_present[i]))
                    grounding[i][f"gradcam:{layer}"] = scores
        if generate:
            gen = greedy_generate(heads.decoder, tokens, max_new, tokenizer=tokenizer)
            attention = (
                average_attention(gen.cross_attentions, "mean", "mean") if saliency else None
            )
            for i in range(tokens.shape[0]):
                length = int(gen.token_mask[i].sum())
                if attention is not None:
                    grounding[i]["attention"] = None
                    if length > 0:
                        mean = attention[i : i + 1, :length].mean(dim=1, keepdim=True)
                        heat = token_heatmaps(mean, geometry, image.shape[2:])[0, 0].cpu()
                        grounding[i]["attention"] = _scores(
                            heat, masks[i], bool(batch.seg_present[i])
                        )
                ids = gen.token_ids[i, :length].tolist()
                texts[i], offsets = generated_token_offsets(tokenizer, ids)
                for sentence, conf in sentence_confidence(
                    texts[i], offsets, gen.token_entropies[i, :length]
                ):
                    sentences[i].append(
                        (float(conf), bool(sentence_correct(sentence, batch.report_text[i])))
                    )
            ids, mask = encode_reports(tokenizer, texts, heads.max_length)
            emb = heads.decoder.report_embedding(ids.to(device), mask.to(device))
        risk = heads.risk_head(pooled, emb)
        concepts = heads.concept_head(pooled).concept_probabilities().float().cpu()
        visual = heads.contrastive.embed_visual(pooled)
        scale = heads.contrastive.logit_scale()
        shots = {
            name: zero_shot_scores(visual, pair, scale)[:, 0].float().cpu()
            for name, pair in prompts.items()
        }
        lungrads = risk.lungrads_probabilities().float().cpu().double()
        lungrads = lungrads / lungrads.sum(dim=1, keepdim=True)
        growth = probability_event_by(risk.growth_hazard_logits.float(), 12.0, GROWTH_BINS_MONTHS)
        seg_prob = torch.sigmoid(seg_logits.float()).cpu()
        for i in range(tokens.shape[0]):
            meta = batch.meta[i] if getattr(batch, "meta", None) else {}
            dice = None
            if bool(batch.seg_present[i]) and seg_prob[i].shape == batch.seg_mask[i].shape:
                dice = crop_dice(seg_prob[i], batch.seg_mask[i].cpu())
            growth_present = bool(batch.growth_present[i])
            records.append(
                CropRecord(
                    crop_id=str(batch.patient_id[i]),
                    profile=meta.get("scanner"),
                    nodule=meta.get("labels"),
                    malignancy_logit=float(risk.malignancy_logit.float()[i]),
                    malignant=int(batch.malignancy[i])
                    if bool(batch.malignancy_present[i])
                    else None,
                    lungrads_probabilities=[float(v) for v in lungrads[i]],
                    lungrads=int(batch.lungrads[i]) if bool(batch.lungrads_present[i]) else None,
                    growth_probability_12m=float(growth[i].clamp(0.0, 1.0)),
                    growth_time_months=float(batch.growth_time_months[i])
                    if growth_present
                    else None,
                    growth_event=int(batch.growth_event[i] > 0.5) if growth_present else None,
                    dice=dice,
                    sentences=sentences[i],
                    text=texts[i],
                    grounding=grounding[i],
                    concept_probabilities={
                        n: float(v) for n, v in zip(CONCEPT_NAMES, concepts[i], strict=True)
                    },
                    zero_shot={name: float(p[i]) for name, p in shots.items()},
                ).to_dict()
            )
            if max_samples is not None and len(records) >= max_samples:
                break
        progress_update("audit crops", len(records), total)
        if max_samples is not None and len(records) >= max_samples:
            break
    return records


def records_array(records: list[dict], key: str, present: str | None = None) -> np.ndarray:
    """``np.array`` of ``record[key]`` over the records whose ``present`` key is not None."""
    chosen = [r for r in records if present is None or r.get(present) is not None]
    return np.asarray([r[key] for r in chosen])
