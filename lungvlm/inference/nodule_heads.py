"""Nodule level: crops around one nodule through the encoder, risk, concept and report heads.

For each detected nodule (a centre on the prepared grid, see :mod:`lungvlm.inference.scan`):

1. Crops, as training built them (``data_modules/sampling.py``): the fine crop is
   ``crop_size_vox`` voxels of the prepared (training-spacing) grid whose centre voxel is the
   one nearest the nodule centre (index ``size // 2`` of the crop); the context crop samples the
   same grid at ``round(centre) + (i - size // 2) * context_scale`` (linear interpolation) so it
   covers ``context_scale`` times the field of view on the same grid size. Voxels outside the
   scan take the normalised value of air (-1000 HU).
2. Encoder -> visual tokens -> greedy report generation with a KV cache
   (:func:`lungvlm.models.generation.greedy_generate`), keeping per-token entropies and
   cross-attentions.
3. Risk: the risk head reads the pooled visual features concatenated with the embedding of the
   **generated** findings (training's "risk_generated" variant; at inference there is no
   reference text). Malignancy probability ``sigmoid(logit / temperature)`` (temperature from
   calibration, 1 when uncalibrated), Lung-RADS class probabilities and P(growth by 12 months).
4. Concepts: the concept head's [0, 1] ratings.
5. Sentences: split and scored by :func:`lungvlm.models.generation.sentence_confidence`; each
   sentence's heatmap averages the (layer- and head-averaged) cross-attention of its tokens and
   back-projects it onto the fine crop with :func:`lungvlm.models.grounding.token_heatmaps`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from lungvlm.clinical.hu import HU_AIR, normalize_hu
from lungvlm.inference.calibration import MalignancyCalibrator
from lungvlm.labels import CONCEPT_NAMES, GROWTH_BINS_MONTHS, LUNGRADS_CATEGORIES
from lungvlm.losses.survival import probability_event_by
from lungvlm.models.generation import (
    generated_token_offsets,
    greedy_generate,
    sentence_confidence,
    sentence_token_groups,
)
from lungvlm.models.grounding import average_attention, token_heatmaps
from lungvlm.text.tokenizer import encode_reports


@dataclass
class GeneratedSentence:
    """One generated sentence with its confidence and heatmap on the fine-crop grid."""

    text: str
    confidence: float
    heatmap: NDArray[np.float32]


@dataclass
class NoduleHeadOutput:
    """What the heads say about one nodule.

    Attributes:
        malignancy_logit: raw malignancy logit (before temperature scaling).
        malignancy_probability: the calibrated probability (``sigmoid(logit / temperature)``,
            or the checkpoint's isotonic map of the logit).
        lungrads_probabilities: model probability of each Lung-RADS category.
        growth_probability_12m: P(growth by 12 months) from the growth hazards.
        concepts: concept-head rating in [0, 1] per concept name.
        text: the generated findings.
        sentences: its sentences with confidences and heatmaps.
        crop_start_vox: prepared-grid index (z, y, x) of the fine crop's voxel (0, 0, 0).
        timings_s: seconds of "heads" (encoder + risk + concepts) and "generation".
    """

    malignancy_logit: float
    malignancy_probability: float
    lungrads_probabilities: dict[str, float]
    growth_probability_12m: float
    concepts: dict[str, float]
    text: str
    sentences: list[GeneratedSentence]
    crop_start_vox: tuple[int, int, int]
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def lungrads_prediction(self) -> str:
        """The most probable Lung-RADS category of the model."""
        return max(self.lungrads_probabilities, key=self.lungrads_probabilities.get)

    def nodule_heatmap(self) -> NDArray[np.float32]:
        """Mean of the sentence heatmaps (fine-crop grid); zeros when nothing was generated."""
        if not self.sentences:
            return np.zeros((1, 1, 1), np.float32)
        return np.mean([s.heatmap for s in self.sentences], axis=0).astype(np.float32)


def sample_crop(
    volume: NDArray[np.float32],
    centre_zyx: Sequence[float],
    size_vox: int,
    scale: float,
    pad_value: float,
) -> NDArray[np.float32]:
    """Sample ``volume`` at ``round(centre) + (i - size // 2) * scale`` (linear, ``pad_value``
    outside): the fine crop for ``scale=1``, the context crop for ``scale=context_scale``."""
    centre = np.rint(np.asarray(centre_zyx, dtype=np.float64))
    axes = [centre[d] + (np.arange(size_vox) - size_vox // 2) * scale for d in range(3)]
    coords = np.meshgrid(*axes, indexing="ij")
    return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=pad_value).astype(
        np.float32
    )


def crop_start(centre_zyx: Sequence[float], size_vox: int) -> tuple[int, int, int]:
    """Prepared-grid index of voxel (0, 0, 0) of the fine crop around ``centre_zyx``."""
    start = np.rint(np.asarray(centre_zyx, dtype=np.float64)).astype(int) - size_vox // 2
    return tuple(int(v) for v in start)  # type: ignore[return-value]


@dataclass
class NoduleCrops:
    """One nodule's crops through the encoder.

    Attributes:
        fine: the fine crop (D, H, W), normalised intensities.
        features: encoder feature maps, finest first.
        visual_tokens: (1, N, d_model) decoder visual tokens.
        geometry: token geometry (for back-projecting attention to heatmaps).
        pooled: (1, visual_dim) pooled visual representation (risk and concept heads).
        crop_start_vox: prepared-grid index (z, y, x) of the fine crop's voxel (0, 0, 0).
    """

    fine: NDArray[np.float32]
    features: list
    visual_tokens: torch.Tensor
    geometry: object
    pooled: torch.Tensor
    crop_start_vox: tuple[int, int, int]


@torch.no_grad()
def encode_nodule(
    model,
    prepared_image: NDArray[np.float32],
    centre_vox: Sequence[float],
    crop_size_vox: int,
    context_scale: float,
    normalization: dict[str, float],
) -> NoduleCrops:
    """Fine + context crops around ``centre_vox`` (prepared grid) through the encoder and the
    visual tokenizer (step 1 of the module docstring); see :func:`run_nodule_heads` for args."""
    heads = model.vl_heads
    device = next(model.parameters()).device
    pad = float(
        normalize_hu(
            np.float32(HU_AIR),  # voxels outside the scan are air, as in training
            normalization["hu_min"],
            normalization["hu_max"],
        )
    )
    fine = sample_crop(prepared_image, centre_vox, crop_size_vox, 1.0, pad)
    context = sample_crop(prepared_image, centre_vox, crop_size_vox, context_scale, pad)
    image_t = torch.from_numpy(fine)[None, None].to(device)  # (1, 1, D, H, W)
    context_t = torch.from_numpy(context)[None, None].to(device)
    use_context = getattr(model.encoder, "use_context", False)
    features = model.encoder(image_t, context_t if use_context else None)
    tokens, geometry, pooled = heads.encode(features, model.seg_head(features)[0])
    return NoduleCrops(
        fine, features, tokens, geometry, pooled, crop_start(centre_vox, crop_size_vox)
    )


def answer_heatmap(gen, crops: NoduleCrops) -> NDArray[np.float32]:
    """Heatmap (fine-crop grid) of a generated answer: the layer- and head-averaged
    cross-attention of its tokens, back-projected to voxels (sums to 1; zeros if empty)."""
    length = int(gen.token_mask[0].sum())
    if length == 0:
        return np.zeros(crops.fine.shape, np.float32)
    attention = average_attention(gen.cross_attentions, "mean", "mean")[:, :length]
    pooled = attention.mean(dim=1, keepdim=True)  # (1, 1, N)
    heat = token_heatmaps(pooled, crops.geometry, crops.fine.shape)[0, 0]
    return heat.cpu().numpy().astype(np.float32)


@torch.no_grad()
def run_nodule_heads(
    model,
    prepared_image: NDArray[np.float32],
    centre_vox: Sequence[float],
    crop_size_vox: int,
    context_scale: float,
    normalization: dict[str, float],
    temperature: float | MalignancyCalibrator = 1.0,
    max_new_tokens: int | None = None,
    crops: NoduleCrops | None = None,
) -> NoduleHeadOutput:
    """Run the stage-3 heads on the crops around one nodule (module docstring).

    Args:
        model: a stage-3 :class:`~lungvlm.lightning.module.LungVLMModule` in eval mode.
        prepared_image: normalised scan (z, y, x) on the training grid.
        centre_vox: nodule centre on that grid (z, y, x), voxels.
        crop_size_vox: training crop edge (voxels).
        context_scale: training context field-of-view factor.
        normalization: the checkpoint's ``hu_min``/``hu_max`` (for the air padding value).
        temperature: malignancy temperature (calibration), > 0, or the checkpoint's
            :class:`~lungvlm.inference.calibration.MalignancyCalibrator` (temperature or
            isotonic map of the logit).
        max_new_tokens: longest generated report; default the model's validation setting.
        crops: the nodule's crops already through the encoder (:func:`encode_nodule`, same
            centre); given, the encoder is not run again.

    Raises:
        ValueError: a model without stage-3 heads or tokenizer, or a temperature <= 0.
    """
    heads = getattr(model, "vl_heads", None)
    tokenizer = getattr(getattr(model, "vl", None), "tokenizer", None)
    if heads is None or tokenizer is None:
        raise ValueError("the model has no vision-language heads or tokenizer (needs stage 3)")
    if not isinstance(temperature, MalignancyCalibrator):
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be > 0")
        temperature = MalignancyCalibrator(kind="temperature", temperature=float(temperature))
    limit = heads.decoder.max_length - 1
    max_new = min(limit, max_new_tokens or model.vl_config.generation_max_new_tokens)
    device = next(model.parameters()).device
    start_t = time.perf_counter()
    if crops is None:
        crops = encode_nodule(
            model, prepared_image, centre_vox, crop_size_vox, context_scale, normalization
        )
    fine, tokens, geometry = crops.fine, crops.visual_tokens, crops.geometry
    heads_s = time.perf_counter() - start_t

    start_t = time.perf_counter()
    gen = greedy_generate(heads.decoder, tokens, max_new, tokenizer=tokenizer)
    length = int(gen.token_mask[0].sum())
    ids = gen.token_ids[0, :length].tolist()
    text, offsets = generated_token_offsets(tokenizer, ids)
    scored = sentence_confidence(text, offsets, gen.token_entropies[0, :length])
    groups = sentence_token_groups(text, offsets)
    attention = average_attention(gen.cross_attentions, "mean", "mean")[:, :length]  # (1, L, N)
    sentences = []
    for (sentence, confidence), (_, token_idx) in zip(scored, groups, strict=True):
        if token_idx:
            pooled = attention[:, token_idx].mean(dim=1, keepdim=True)  # (1, 1, N)
            heat = token_heatmaps(pooled, geometry, fine.shape)[0, 0].cpu().numpy()
        else:
            heat = np.zeros(fine.shape, np.float32)
        sentences.append(GeneratedSentence(sentence, float(confidence), heat.astype(np.float32)))
    generation_s = time.perf_counter() - start_t

    start_t = time.perf_counter()
    text_ids, text_mask = encode_reports(tokenizer, [text], heads.max_length)
    text_emb = heads.decoder.report_embedding(text_ids.to(device), text_mask.to(device))
    pooled_visual = crops.pooled
    risk = heads.risk_head(pooled_visual, text_emb)
    concepts = heads.concept_head(pooled_visual).concept_probabilities()[0].float().cpu()
    logit = float(risk.malignancy_logit.float()[0])
    lungrads = risk.lungrads_probabilities().float()[0].cpu().double()
    lungrads = (lungrads / lungrads.sum()).tolist()
    growth = probability_event_by(risk.growth_hazard_logits.float(), 12.0, GROWTH_BINS_MONTHS)
    heads_s += time.perf_counter() - start_t
    return NoduleHeadOutput(
        malignancy_logit=logit,
        malignancy_probability=float(temperature.probability(logit)),
        lungrads_probabilities=dict(zip(LUNGRADS_CATEGORIES, lungrads, strict=True)),
        growth_probability_12m=float(growth[0].clamp(0.0, 1.0)),
        concepts=dict(zip(CONCEPT_NAMES, (float(v) for v in concepts), strict=True)),
        text=text,
        sentences=sentences,
        crop_start_vox=crops.crop_start_vox,
        timings_s={"heads": heads_s, "generation": generation_s},
    )


def heatmap_on_original_box(
    heatmap_crop: NDArray[np.float32],
    crop_start_vox: Sequence[int],
    zoom: Sequence[float],
    box: Sequence[slice],
) -> NDArray[np.float32]:
    """Resample a fine-crop heatmap onto a box of the original scan grid.

    Original index ``o`` lies at prepared index ``o * zoom`` (see
    :class:`~lungvlm.inference.scan.PreparedScan`), i.e. at crop index
    ``o * zoom - crop_start``; the map is sampled there linearly (0 outside the crop).

    Args:
        heatmap_crop: (D, H, W) heatmap on the fine crop.
        crop_start_vox: prepared-grid index of the crop's voxel (0, 0, 0).
        zoom: prepared / original voxel ratio per axis.
        box: three slices of the original grid (with explicit start and stop).

    Returns:
        The heatmap on the box, (box z, box y, box x) float32.
    """
    axes = [
        np.arange(s.start, s.stop) * float(z) - float(c)
        for s, z, c in zip(box, zoom, crop_start_vox, strict=True)
    ]
    coords = np.meshgrid(*axes, indexing="ij")
    return ndimage.map_coordinates(
        np.asarray(heatmap_crop, np.float32), coords, order=1, mode="constant", cval=0.0
    ).astype(np.float32)


def box_around(
    centre_zyx: ArrayLike, shape: Sequence[int], spacing_mm: Sequence[float], fov_mm: float
) -> tuple[slice, slice, slice]:
    """Slices of a ``fov_mm`` cube (clipped to ``shape``) centred on the voxel ``centre_zyx``."""
    centre = np.rint(np.asarray(centre_zyx, dtype=np.float64)).astype(int)
    half = np.ceil(fov_mm / 2.0 / np.asarray(spacing_mm, dtype=np.float64)).astype(int)
    lo = np.clip(centre - half, 0, np.asarray(shape) - 1)
    hi = np.clip(centre + half + 1, lo + 1, np.asarray(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]
