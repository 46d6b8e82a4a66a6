"""Post-hoc saliency baseline: Grad-CAM on the malignancy logit (captum), scored like our
per-token cross-attention heatmaps.

:func:`gradcam_maps` runs captum's ``LayerGradCam`` on an encoder layer for the risk head's
malignancy logit (image-only: the risk head reads its "no text" slot, as Grad-CAM explains an
image classifier), keeps the positive part and upsamples it trilinearly to the crop.
:func:`heatmap_scores` gives the two grounding figures used for both kinds of map, with the
definitions of :class:`lungvlm.metrics.grounding.PointingGame` (argmax inside the mask, first
voxel in raster order on ties) and :class:`~lungvlm.metrics.grounding.HeatmapMassInMask`
(share of the non-negative map's mass inside the mask; 0 for an all-zero map).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: Encoder layers Grad-CAM is computed on by default (strides 8 and 4 of the 5-level encoder).
DEFAULT_GRADCAM_LAYERS: tuple[str, ...] = ("encoder.stages.3", "encoder.stages.2")


def heatmap_scores(heatmap, mask) -> tuple[bool, float] | None:
    """(pointing hit, mass in mask) of one (D, H, W) heatmap against a binary mask; None when
    the mask is empty."""
    heat = np.asarray(heatmap, dtype=np.float64)
    inside = np.asarray(mask) > 0.5
    if heat.shape != inside.shape:
        raise ValueError(f"heatmap {heat.shape} and mask {inside.shape} differ")
    if not inside.any():
        return None
    if (heat < 0).any():
        raise ValueError("heatmaps must be non-negative")
    hit = bool(inside.ravel()[int(np.argmax(heat.ravel()))])
    total = heat.sum()
    return hit, float(heat[inside].sum() / total) if total > 0 else 0.0


def gradcam_maps(model, image: Tensor, context: Tensor | None, layer_name: str) -> Tensor:
    """(B, D, H, W) non-negative Grad-CAM maps of the malignancy logit at ``layer_name``.

    Raises:
        ValueError: ``layer_name`` is not a submodule of the model.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    try:
        layer = model.get_submodule(layer_name)
    except AttributeError as err:
        raise ValueError(f"the model has no layer {layer_name!r} for Grad-CAM") from err
    heads = model.vl_heads

    def malignancy_logit(x: Tensor) -> Tensor:
        features = model.encoder(x, context)
        seg_logits = model.seg_head(features)[0]
        _, _, pooled = heads.encode(features, seg_logits)
        return heads.risk_head(pooled, None).malignancy_logit.reshape(-1, 1)

    with torch.enable_grad():
        cam = LayerGradCam(malignancy_logit, layer).attribute(
            image.detach().requires_grad_(True), target=0, relu_attributions=True
        )
    up = LayerAttribution.interpolate(cam.detach(), tuple(image.shape[2:]), "trilinear")
    return up[:, 0].clamp_min(0.0)
