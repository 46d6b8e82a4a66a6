"""Masked losses of the risk and concept heads: malignancy BCE, CORAL ordinal loss, concepts.

Every loss takes a ``present`` mask (DESIGN.md: a label a data set lacks is present-but-masked).
Absent entries are replaced by a harmless placeholder *before* the loss is computed, so garbage
values (NaN, out-of-range) in them change neither the loss nor the gradients. When nothing is
present the loss is exactly 0 and still attached to the graph of the predictions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_present(present: Tensor, shape: torch.Size, name: str) -> Tensor:
    if present.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(present.shape)}")
    return present.to(torch.bool)


def masked_mean(values: Tensor, present: Tensor) -> Tensor:
    """Mean of ``values`` over the entries where ``present`` is True.

    Args:
        values: tensor of per-entry losses, any shape; absent entries must be finite.
        present: bool tensor of the same shape.

    Returns:
        Scalar mean over present entries, or exactly 0 (attached to the graph of ``values``)
        when no entry is present.

    Raises:
        ValueError: if the shapes differ.
    """
    present = _check_present(present, values.shape, "present")
    kept = torch.where(present, values, torch.zeros_like(values))
    # clamp_min(1): with nothing present the numerator is an exact 0 (still on the graph), and
    # no host synchronisation is needed to test for that case.
    return kept.sum() / present.sum().clamp_min(1).to(values.dtype)


def malignancy_loss(
    logit: Tensor, target: Tensor, present: Tensor, pos_weight: float | None = None
) -> Tensor:
    """Masked binary cross-entropy of the malignancy logit.

    Args:
        logit: (B,) malignancy logits.
        target: (B,) 1.0 malignant / 0.0 benign (soft values in [0, 1] allowed).
        present: (B,) bool, whether the label is real.
        pos_weight: optional weight of the positive (malignant) term, e.g. n_neg / n_pos.

    Returns:
        Scalar mean BCE over present samples (0 when none is present).

    Raises:
        ValueError: on mismatched shapes or a non-positive ``pos_weight``.
    """
    if logit.ndim != 1 or target.shape != logit.shape:
        raise ValueError(
            f"logit and target must both be (B,); got {tuple(logit.shape)} and "
            f"{tuple(target.shape)}"
        )
    present = _check_present(present, logit.shape, "present")
    if pos_weight is not None and pos_weight <= 0:
        raise ValueError(f"pos_weight={pos_weight!r} must be positive")
    target = torch.where(present, target.to(logit.dtype), torch.zeros_like(logit))
    weight = None if pos_weight is None else logit.new_tensor(pos_weight)
    bce = F.binary_cross_entropy_with_logits(logit, target, pos_weight=weight, reduction="none")
    return masked_mean(bce, present)


def lungrads_cumulative_targets(labels: Tensor, num_classes: int) -> Tensor:
    """CORAL targets: entry k of row b is 1.0 when ``labels[b] > k``.

    Args:
        labels: (B,) int64 ordinal class indices in [0, num_classes).
        num_classes: number C of ordinal classes.

    Returns:
        (B, C - 1) float tensor of cumulative targets.

    Example:
        With C = 4, label 2 gives [1, 1, 0].
    """
    thresholds = torch.arange(num_classes - 1, device=labels.device)
    return (labels.unsqueeze(1) > thresholds).to(torch.float32)


def lungrads_ordinal_loss(cumulative_logits: Tensor, labels: Tensor, present: Tensor) -> Tensor:
    """CORAL ordinal loss (Cao et al., Pattern Recognit. Lett. 2020) for Lung-RADS.

    Binary cross-entropy of each cumulative logit against the target ``label > k``, summed over
    the C - 1 thresholds and averaged over present samples (the CORAL paper's reduction, which
    uses equal task weights).

    Args:
        cumulative_logits: (B, C - 1) logits of P(y > k).
        labels: (B,) int64 category indices in [0, C).
        present: (B,) bool.

    Returns:
        Scalar loss (0 when no sample is present).

    Raises:
        ValueError: on mismatched shapes or a present label outside [0, C).
    """
    if cumulative_logits.ndim != 2 or labels.shape != cumulative_logits.shape[:1]:
        raise ValueError(
            f"cumulative_logits must be (B, C-1) and labels (B,); got "
            f"{tuple(cumulative_logits.shape)} and {tuple(labels.shape)}"
        )
    present = _check_present(present, labels.shape, "present")
    num_classes = cumulative_logits.shape[1] + 1
    labels = torch.where(
        present, labels.to(torch.int64), torch.zeros_like(labels, dtype=torch.int64)
    )
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(
            f"present labels must be in [0, {num_classes}); got {labels[present].tolist()}"
        )
    targets = lungrads_cumulative_targets(labels, num_classes).to(cumulative_logits.dtype)
    bce = F.binary_cross_entropy_with_logits(cumulative_logits, targets, reduction="none")
    return masked_mean(bce.sum(dim=1), present)


def concept_loss(concept_logits: Tensor, targets: Tensor, present: Tensor) -> Tensor:
    """Masked binary cross-entropy with soft targets for the concept head.

    BCE with soft targets t in [0, 1] is a proper scoring rule: for each concept it is
    minimised exactly when ``sigmoid(logit) = t`` (its minimum is the entropy of t, not 0), and
    unlike MSE on the sigmoid its gradient does not vanish for confident wrong predictions.
    That is why it was chosen over MSE.

    Args:
        concept_logits: (B, K) logits.
        targets: (B, K) concept ratings in [0, 1] (see ``lungvlm.labels.concept_to_unit``).
        present: (B, K) bool, per concept.

    Returns:
        Scalar mean BCE over present (sample, concept) entries (0 when none is present).

    Raises:
        ValueError: on mismatched shapes or a present target outside [0, 1].
    """
    if concept_logits.ndim != 2 or targets.shape != concept_logits.shape:
        raise ValueError(
            f"concept_logits and targets must both be (B, K); got "
            f"{tuple(concept_logits.shape)} and {tuple(targets.shape)}"
        )
    present = _check_present(present, concept_logits.shape, "present")
    targets = torch.where(
        present, targets.to(concept_logits.dtype), torch.zeros_like(concept_logits)
    )
    if bool(((targets < 0) | (targets > 1) | targets.isnan()).any()):
        raise ValueError(
            f"present concept targets must be in [0, 1]; got {targets[present].tolist()}"
        )
    bce = F.binary_cross_entropy_with_logits(concept_logits, targets, reduction="none")
    return masked_mean(bce, present)
