"""Robustness curves: crop Dice and malignancy AUROC under perturbed inputs.

Perturbations of the normalised crop (``[0, 1]`` = ``[hu_min, hu_max]`` of the checkpoint),
with strengths stated in physical units:

- ``noise``: added Gaussian noise of standard deviation ``level`` HU (fixed seed);
- ``blur``: Gaussian smoothing of standard deviation ``level`` mm (MONAI ``GaussianFilter``,
  converted with the crop spacing);
- ``fgsm``: one fast-gradient-sign step of ``level`` HU against the segmentation
  (binary cross-entropy of the finest segmentation logits against the crop's reference mask;
  crops without a mask are left unchanged): a small white-box adversarial perturbation.

Every perturbed image is clipped back to [0, 1]. Each curve point re-runs the model over the
same test crops (:func:`~lungvlm.evaluation.crop_predictions.collect_crop_records`, without text
generation: the risk head reads its "no text" slot) and scores the mean crop Dice and the
malignancy AUROC; level 0 is the clean input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from torch import Tensor

from lungvlm.evaluation.crop_predictions import collect_crop_records

#: Default strengths per perturbation (HU for noise and FGSM, mm for blur).
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "noise": (25.0, 50.0, 100.0),
    "blur": (0.5, 1.0, 2.0),
    "fgsm": (2.0, 8.0, 32.0),
}
UNITS = {"noise": "HU", "blur": "mm", "fgsm": "HU"}


def gaussian_noise(sd_hu: float, hu_range: float, seed: int = 0) -> Callable:
    """Perturbation adding N(0, sd_hu) HU noise (``hu_range`` = hu_max - hu_min)."""
    generator = torch.Generator().manual_seed(seed)

    def perturb(image: Tensor, batch) -> Tensor:
        noise = torch.randn(image.shape, generator=generator).to(image) * (sd_hu / hu_range)
        return (image + noise).clamp(0.0, 1.0)

    return perturb


def gaussian_blur(sigma_mm: float, spacing_mm: float) -> Callable:
    """Perturbation smoothing with a Gaussian of ``sigma_mm`` (isotropic crop spacing)."""
    smoother = GaussianFilter(spatial_dims=3, sigma=sigma_mm / spacing_mm)

    def perturb(image: Tensor, batch) -> Tensor:
        return smoother(image).clamp(0.0, 1.0)

    return perturb


def fgsm(model, epsilon_hu: float, hu_range: float) -> Callable:
    """One FGSM step of ``epsilon_hu`` HU against the segmentation (module docstring)."""

    def perturb(image: Tensor, batch) -> Tensor:
        present = batch.seg_present.to(image.device).bool()
        if not bool(present.any()):
            return image
        x = image.detach().clone().requires_grad_(True)
        context = batch.context.to(image.device) if model.encoder.use_context else None
        logits = model.seg_head(model.encoder(x, context))[0]
        target = batch.seg_mask.to(image.device).float()
        loss = F.binary_cross_entropy_with_logits(logits[present], target[present])
        (grad,) = torch.autograd.grad(loss, x)
        step = (epsilon_hu / hu_range) * grad.sign()
        step[~present] = 0.0
        return (x + step).clamp(0.0, 1.0).detach()

    return perturb


def curve_metrics(records: Sequence[Mapping]) -> dict:
    """Mean crop Dice and malignancy AUROC (raw logits) of a set of crop records."""
    from lungvlm.evaluation.audit import auroc

    dice = [r["dice"] for r in records if r.get("dice") is not None]
    labelled = [r for r in records if r.get("malignant") is not None]
    return {
        "dice": float(np.mean(dice)) if dice else None,
        "malignancy_auroc": auroc(
            [r["malignancy_logit"] for r in labelled], [r["malignant"] for r in labelled]
        ),
        "n": len(records),
    }


def robustness_curves(
    model,
    batches: Callable[[], Iterable],
    hu_range: float,
    spacing_mm: float,
    levels: Mapping[str, Sequence[float]] = DEFAULT_LEVELS,
    max_samples: int | None = None,
) -> dict:
    """``{"clean": metrics, kind: [{"level", "unit", **metrics}, ...]}`` (module docstring).

    Args:
        model: stage-3 ``LungVLMModule`` in eval mode.
        batches: returns a fresh iterable of the test crop batches (called once per point).
        hu_range: hu_max - hu_min of the checkpoint's normalisation (HU).
        spacing_mm: crop voxel spacing (mm).
        levels: strengths per perturbation kind (``noise``, ``blur``, ``fgsm``).
        max_samples: crops per point (default all).
    """
    factories = {
        "noise": lambda level: gaussian_noise(level, hu_range),
        "blur": lambda level: gaussian_blur(level, spacing_mm),
        "fgsm": lambda level: fgsm(model, level, hu_range),
    }
    unknown = set(levels) - set(factories)
    if unknown:
        raise ValueError(f"unknown perturbations {sorted(unknown)}; expected {sorted(factories)}")

    def run(perturb=None) -> dict:
        records = collect_crop_records(
            model, batches(), max_samples=max_samples, perturb=perturb, generate=False
        )
        return curve_metrics(records)

    out: dict = {"clean": run()}
    for kind, values in levels.items():
        out[kind] = [
            {"level": float(level), "unit": UNITS[kind], **run(factories[kind](float(level)))}
            for level in values
        ]
    return out
