"""Nodule-crop segmentation metrics: Dice and HD95 (MONAI) accumulated as a torchmetrics Metric."""

from __future__ import annotations

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from torch import Tensor
from torchmetrics import Metric


class SegmentationMetrics(Metric):
    """Mean Dice and mean 95th-percentile Hausdorff distance (mm) over nodule crops.

    Only samples whose mask is present and non-empty count (a negative crop has no Dice).
    HD95 uses MONAI's ``compute_hausdorff_distance(percentile=95)`` with each sample's voxel
    spacing, so it is in mm; a crop where the prediction is empty gets the crop diagonal (the
    worst case) instead of MONAI's NaN/inf, and is counted in ``empty_predictions``.
    Sums are kept as metric states, so values are synchronised across DDP ranks.

    Args:
        threshold: probability threshold applied to ``sigmoid(logits)``.
    """

    full_state_update = False

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        self.add_state("dice_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hd95_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("empty", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, present: Tensor, spacing_mm: Tensor) -> None:
        """Add a batch.

        Args:
            logits: (B, 1, D, H, W) full-resolution logits.
            target: (B, 1, D, H, W) binary masks.
            present: (B,) bool, whether each mask is a real label.
            spacing_mm: (B, 3) voxel spacing (z, y, x) in mm.
        """
        if logits.shape != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape"
            )
        pred = (torch.sigmoid(logits.detach().float()) >= self.threshold).float()
        target = (target > 0.5).float()
        for i in range(pred.shape[0]):
            if not bool(present[i]) or not bool(target[i].any()):
                continue
            dice = compute_dice(pred[i : i + 1], target[i : i + 1], include_background=True)
            spacing = [float(s) for s in spacing_mm[i].tolist()]
            if bool(pred[i].any()):
                hd = compute_hausdorff_distance(
                    pred[i : i + 1],
                    target[i : i + 1],
                    include_background=True,
                    percentile=95,
                    spacing=spacing,
                )
                hd95 = float(hd.reshape(-1)[0])
            else:
                shape = torch.tensor(pred.shape[2:], dtype=torch.float64)
                hd95 = float(
                    torch.linalg.vector_norm(shape * torch.tensor(spacing, dtype=torch.float64))
                )
                self.empty += 1
            self.dice_sum += float(dice.reshape(-1)[0])
            self.hd95_sum += hd95
            self.count += 1

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"dice", "hd95", "n"}``; NaN means and n = 0 when nothing was counted."""
        n = self.count.double()
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=n.device)
        return {
            "dice": (self.dice_sum / n if self.count > 0 else nan).float(),
            "hd95": (self.hd95_sum / n if self.count > 0 else nan).float(),
            "n": self.count.float(),
        }
