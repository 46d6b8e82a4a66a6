"""Crop-level metric of the candidate head: AUROC of "a nodule is centred in this crop".

State lives in torchmetrics (synchronised across DDP processes). Only crops whose nodule mask is
a real label enter it (present-but-masked, DESIGN.md); targets are
:func:`lungvlm.losses.candidate.candidate_targets`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities import dim_zero_cat

from lungvlm.losses.candidate import candidate_targets


class CandidateAUROC(BinaryAUROC):
    """Binary AUROC of the candidate probabilities; NaN (not torchmetrics' 0) unless both
    classes were seen, since the AUROC is undefined then."""

    def update(self, logits: Tensor, seg_mask: Tensor, seg_present: Tensor) -> None:  # type: ignore[override]
        """Add a batch: (B,) candidate logits, (B, 1, D, H, W) masks, (B,) bool presence."""
        present = seg_present.to(torch.bool)
        target = candidate_targets(seg_mask)[present].to(torch.int64)
        super().update(torch.sigmoid(logits.detach().float())[present], target)

    def compute(self) -> Tensor:
        """The AUROC over every added crop, or NaN with a single class (or none)."""
        target = dim_zero_cat(self.target) if len(self.target) else torch.zeros(0)
        if target.numel() == 0 or bool(target.min() == target.max()):
            return torch.tensor(math.nan)
        return super().compute()
