"""Stage-3 risk metrics: growth C-index, Lung-RADS agreement, malignancy AUROC and calibration.

All metrics honour the ``*_present`` masks of the batch: absent labels never enter a state.
State lives in torchmetrics objects, so it is synchronised across DDP processes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryCalibrationError,
    CohenKappa,
    MulticlassAccuracy,
)
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.wrappers.transformations import MetricInputTransformer

from lungvlm.labels import LUNGRADS_CATEGORIES

#: Target value that the wrapped torchmetrics classification metrics skip.
IGNORE_INDEX = -1

#: Rows of the pair matrix processed at once by :class:`ConcordanceIndex` (bounds memory).
_PAIR_CHUNK_ROWS = 1024


def masked_target(target: Tensor, present: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Replace absent targets by ``ignore_index`` (int64 output).

    Args:
        target: (N,) integer-valued targets (class indices or 0/1).
        present: (N,) bool.
        ignore_index: value given to absent entries.

    Returns:
        (N,) int64 targets.

    Raises:
        ValueError: if the shapes differ.
    """
    if present.shape != target.shape:
        raise ValueError(
            f"present shape {tuple(present.shape)} must equal target shape {tuple(target.shape)}"
        )
    filler = torch.full_like(target, ignore_index, dtype=torch.int64)
    return torch.where(present.to(torch.bool), target.to(torch.int64), filler)


class PresentMasked(MetricInputTransformer):
    """Wrap a torchmetrics metric built with ``ignore_index=IGNORE_INDEX`` to take a mask.

    ``update(preds, target, present)`` forwards ``(preds, masked_target(target, present))``.
    The wrapped metric (or every metric of a wrapped collection) keeps and syncs the state.

    Args:
        wrapped_metric: a Metric or MetricCollection whose metrics all have
            ``ignore_index == IGNORE_INDEX``.

    Raises:
        ValueError: if a wrapped metric does not ignore ``IGNORE_INDEX``.
    """

    def __init__(self, wrapped_metric: Metric | MetricCollection, **kwargs: Any) -> None:
        super().__init__(wrapped_metric, **kwargs)
        metrics = (
            list(wrapped_metric.values())
            if isinstance(wrapped_metric, MetricCollection)
            else [wrapped_metric]
        )
        for metric in metrics:
            if getattr(metric, "ignore_index", None) != IGNORE_INDEX:
                raise ValueError(
                    f"{type(metric).__name__} has ignore_index="
                    f"{getattr(metric, 'ignore_index', None)!r}; expected {IGNORE_INDEX}"
                )

    def update(self, preds: Tensor, target: Tensor, present: Tensor) -> None:  # type: ignore[override]
        """Update with (N, ...) predictions, (N,) targets and an (N,) present mask."""
        self.wrapped_metric.update(preds, masked_target(target, present))

    def forward(self, preds: Tensor, target: Tensor, present: Tensor) -> Any:  # type: ignore[override]
        """Update and return the metric on this batch only."""
        return self.wrapped_metric(preds, masked_target(target, present))


def malignancy_metrics(n_bins: int = 15) -> PresentMasked:
    """Masked malignancy metrics: AUROC and expected calibration error.

    Call ``update(probability (N,), target (N,) 0/1, present (N,))``; ``compute()`` returns
    ``{"auroc": ..., "ece": ...}``. ECE is torchmetrics' L1 binary calibration error with
    ``n_bins`` equal-width bins.
    """
    return PresentMasked(
        MetricCollection(
            {
                "auroc": BinaryAUROC(ignore_index=IGNORE_INDEX),
                "ece": BinaryCalibrationError(n_bins=n_bins, norm="l1", ignore_index=IGNORE_INDEX),
            },
            compute_groups=False,
        )
    )


def lungrads_metrics(num_classes: int = len(LUNGRADS_CATEGORIES)) -> PresentMasked:
    """Masked Lung-RADS metrics: accuracy and linearly weighted Cohen's kappa.

    Call ``update(predicted index (N,) or probabilities (N, C), target (N,), present (N,))``;
    ``compute()`` returns ``{"accuracy": ..., "kappa_linear": ...}``. The linear weights
    treat ``LUNGRADS_CATEGORIES`` as an ordinal scale with equal steps.
    """
    return PresentMasked(
        MetricCollection(
            {
                "accuracy": MulticlassAccuracy(
                    num_classes=num_classes, average="micro", ignore_index=IGNORE_INDEX
                ),
                "kappa_linear": CohenKappa(
                    task="multiclass",
                    num_classes=num_classes,
                    weights="linear",
                    ignore_index=IGNORE_INDEX,
                ),
            },
            compute_groups=False,
        )
    )


class ConcordanceIndex(Metric):
    """Harrell's concordance index of a risk score against censored times.

    A higher ``risk`` must mean an earlier event (e.g. ``probability_event_by(..., 12)``).
    Pair (i, j) is comparable when i had the event and ``t_i < t_j``, or ``t_i == t_j`` and j
    was censored (a censoring at the event time counts as surviving longer; two events at the
    same time are not comparable). Among comparable pairs, ``risk_i > risk_j`` scores 1 and a
    tie in risk scores 0.5. This is the convention of scikit-survival's
    ``concordance_index_censored``; without ties in risk it equals pycox's
    ``concordance_td(method="antolini")`` for time-constant survival curves (tested).
    The cost is O(N^2) at ``compute``, in chunks of rows.

    Returns NaN when no pair is comparable.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("risk", default=[], dist_reduce_fx="cat")
        self.add_state("time", default=[], dist_reduce_fx="cat")
        self.add_state("event", default=[], dist_reduce_fx="cat")

    def update(  # type: ignore[override]
        self, risk: Tensor, time_months: Tensor, event: Tensor, present: Tensor | None = None
    ) -> None:
        """Add a batch.

        Args:
            risk: (N,) risk score, higher = earlier event.
            time_months: (N,) event or censoring time, months.
            event: (N,) 1 event / 0 censored.
            present: (N,) bool; absent samples are dropped. None keeps all.

        Raises:
            ValueError: on mismatched shapes.
        """
        if risk.ndim != 1 or time_months.shape != risk.shape or event.shape != risk.shape:
            raise ValueError(
                f"risk, time_months and event must be (N,); got {tuple(risk.shape)}, "
                f"{tuple(time_months.shape)}, {tuple(event.shape)}"
            )
        keep = (
            torch.ones_like(risk, dtype=torch.bool) if present is None else present.to(torch.bool)
        )
        if keep.shape != risk.shape:
            raise ValueError(f"present must be (N,); got {tuple(keep.shape)}")
        # float32 states: an idle DDP rank contributes an empty float32 tensor to the gather.
        self.risk.append(risk.detach()[keep].to(torch.float32))
        self.time.append(time_months.detach()[keep].to(torch.float32))
        self.event.append((event.detach()[keep] > 0.5).to(torch.float32))

    def compute(self) -> Tensor:
        """Return the C-index as a float64 scalar (NaN without comparable pairs)."""
        if isinstance(self.risk, list) and not self.risk:
            return torch.tensor(float("nan"), dtype=torch.float64)
        risk, time, event = (
            dim_zero_cat(self.risk),
            dim_zero_cat(self.time),
            dim_zero_cat(self.event),
        )
        return harrell_concordance(risk, time, event > 0.5)


def harrell_concordance(risk: Tensor, time: Tensor, event: Tensor) -> Tensor:
    """Harrell's C-index with the tie rules of :class:`ConcordanceIndex`.

    Args:
        risk: (N,) risk score, higher = earlier event.
        time: (N,) event or censoring time (any unit).
        event: (N,) bool or 0/1 event indicator.

    Returns:
        float64 scalar, NaN when no pair is comparable.
    """
    risk, time, event = risk.to(torch.float64), time.to(torch.float64), event.to(torch.bool)
    concordant = torch.zeros((), dtype=torch.float64, device=risk.device)
    comparable = torch.zeros((), dtype=torch.float64, device=risk.device)
    for start in range(0, risk.numel(), _PAIR_CHUNK_ROWS):
        rows = slice(start, start + _PAIR_CHUNK_ROWS)
        t_i, d_i, r_i = time[rows, None], event[rows, None], risk[rows, None]
        pairs = d_i & ((t_i < time[None]) | ((t_i == time[None]) & ~event[None]))  # (n, N)
        score = (r_i > risk[None]).to(torch.float64) + 0.5 * (r_i == risk[None]).to(torch.float64)
        concordant += (score * pairs).sum()
        comparable += pairs.sum()
    if float(comparable) == 0.0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=risk.device)
    return concordant / comparable


def majority_baseline_accuracy(labels: Tensor, present: Tensor | None = None) -> float:
    """Accuracy of always predicting the most frequent present label.

    Args:
        labels: (N,) integer labels.
        present: (N,) bool; None keeps all.

    Returns:
        Fraction in [0, 1].

    Raises:
        ValueError: if no label is present.
    """
    kept = labels if present is None else labels[present.to(torch.bool)]
    if kept.numel() == 0:
        raise ValueError("majority_baseline_accuracy needs at least one present label")
    _, counts = torch.unique(kept, return_counts=True)
    return float(counts.max()) / kept.numel()


def prevalence_baseline_brier(labels: Tensor, present: Tensor | None = None) -> float:
    """Brier score of always predicting the prevalence p of the binary labels: p (1 - p).

    A constant score has AUROC 0.5 and C-index 0.5 (all ties) and, at the prevalence, zero
    calibration error, so the Brier score is the informative constant baseline.

    Args:
        labels: (N,) 0/1 labels.
        present: (N,) bool; None keeps all.

    Returns:
        Brier score in [0, 0.25].

    Raises:
        ValueError: if no label is present.
    """
    kept = labels if present is None else labels[present.to(torch.bool)]
    if kept.numel() == 0:
        raise ValueError("prevalence_baseline_brier needs at least one present label")
    p = float(kept.to(torch.float64).mean())
    return p * (1.0 - p)
