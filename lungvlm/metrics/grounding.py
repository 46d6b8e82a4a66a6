"""Grounding metrics: do report heatmaps point at the nodule they describe?

Each row is one (sample, nodule sentence) pair: a heatmap over the crop (D, H, W) and the
binary mask (D, H, W) of the nodule the sentence names, on the same grid. Rows whose mask is
empty (no nodule to point at) are skipped and do not count in the denominator.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric


def _check_pair(heatmaps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    if heatmaps.ndim != 4 or masks.shape != heatmaps.shape:
        raise ValueError(
            f"heatmaps and masks must both be (N, D, H, W); got {tuple(heatmaps.shape)} and "
            f"{tuple(masks.shape)}"
        )
    return heatmaps.detach(), masks.detach() > 0.5


def dilate_mask(masks: Tensor, tolerance_voxels: int) -> Tensor:
    """Dilate binary masks by a ball of radius ``tolerance_voxels`` (Euclidean, in voxels).

    Args:
        masks: (N, D, H, W) bool masks.
        tolerance_voxels: ball radius in voxels (0 = unchanged).

    Returns:
        (N, D, H, W) bool dilated masks.

    Raises:
        ValueError: if ``tolerance_voxels`` is negative.
    """
    if tolerance_voxels < 0:
        raise ValueError(f"tolerance_voxels={tolerance_voxels!r} must be >= 0")
    if tolerance_voxels == 0:
        return masks
    r = tolerance_voxels
    offsets = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float32)
    zz, yy, xx = torch.meshgrid(offsets, offsets, offsets, indexing="ij")
    ball = ((zz**2 + yy**2 + xx**2) <= r * r).to(torch.float32)[None, None]  # (1, 1, k, k, k)
    hits = F.conv3d(masks[:, None].to(torch.float32), ball, padding=r)  # (N, 1, D, H, W)
    return hits[:, 0] > 0.5


class PointingGame(Metric):
    """Fraction of (sample, sentence) heatmaps whose maximum lies inside the nodule mask.

    The maximum is ``argmax`` of the flattened heatmap: among tied maxima the first voxel in
    (z, y, x) raster order is taken. The mask may be dilated by ``tolerance_voxels`` (a ball,
    Euclidean distance in voxels) so that a peak on the border of a small nodule counts.
    Returns NaN when no row had a non-empty mask.

    Args:
        tolerance_voxels: dilation radius in voxels.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, tolerance_voxels: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(tolerance_voxels, int) or tolerance_voxels < 0:
            raise ValueError(f"tolerance_voxels={tolerance_voxels!r} must be an integer >= 0")
        self.tolerance_voxels = tolerance_voxels
        self.add_state("hits", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, heatmaps: Tensor, masks: Tensor) -> None:  # type: ignore[override]
        """Add rows.

        Args:
            heatmaps: (N, D, H, W) heatmaps (any real values; only the argmax matters).
            masks: (N, D, H, W) nodule masks in {0, 1}.
        """
        heatmaps, masks = _check_pair(heatmaps, masks)
        evaluable = masks.flatten(1).any(dim=1)  # (N,)
        masks = dilate_mask(masks, self.tolerance_voxels)
        peak = heatmaps.flatten(1).argmax(dim=1)  # (N,) flat (z, y, x) index
        hit = masks.flatten(1).gather(1, peak[:, None]).squeeze(1) & evaluable
        self.hits += hit.sum().to(self.hits.dtype)
        self.total += evaluable.sum().to(self.total.dtype)

    def compute(self) -> Tensor:
        """Hit rate in [0, 1] (NaN without evaluable rows)."""
        return self.hits / self.total if self.total > 0 else self.hits.new_tensor(float("nan"))


class HeatmapMassInMask(Metric):
    """Mean fraction of heatmap mass that falls inside the nodule mask.

    Per row: ``sum(heatmap * mask) / sum(heatmap)``, averaged over rows with a non-empty mask.
    Heatmaps must be non-negative (attention maps, normalised saliency). A heatmap with zero
    total mass points nowhere and scores 0. Returns NaN when no row was evaluable.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "fraction_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, heatmaps: Tensor, masks: Tensor) -> None:  # type: ignore[override]
        """Add rows.

        Args:
            heatmaps: (N, D, H, W) non-negative heatmaps.
            masks: (N, D, H, W) nodule masks in {0, 1}.

        Raises:
            ValueError: on mismatched shapes or a negative heatmap value.
        """
        heatmaps, masks = _check_pair(heatmaps, masks)
        if bool((heatmaps < 0).any()):
            raise ValueError(
                f"heatmaps must be non-negative; got a minimum of {float(heatmaps.min())}"
            )
        heat = heatmaps.flatten(1).to(torch.float64)  # (N, V)
        evaluable = masks.flatten(1).any(dim=1)
        inside = (heat * masks.flatten(1)).sum(dim=1)
        mass = heat.sum(dim=1)
        fraction = torch.where(mass > 0, inside / mass.clamp_min(1e-300), torch.zeros_like(mass))
        self.fraction_sum += (fraction * evaluable).sum()
        self.total += evaluable.sum().to(torch.float64)

    def compute(self) -> Tensor:
        """Mean in-mask fraction in [0, 1] (NaN without evaluable rows)."""
        if self.total > 0:
            return self.fraction_sum / self.total
        return self.fraction_sum.new_tensor(float("nan"))
