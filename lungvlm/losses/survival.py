"""Discrete-time (logistic-hazard) survival model of nodule growth over month intervals.

The growth head predicts one hazard logit per month interval j = (bins[j], bins[j + 1]] of
``lungvlm.labels.GROWTH_BINS_MONTHS``; the hazard h_j = sigmoid(phi_j) is the probability of
growth in interval j given no growth before it (Kvamme & Borgan, arXiv:1910.06724, the
"LogisticHazard" model of pycox). S(bins[j + 1]) = prod_{i <= j} (1 - h_i).

Label convention (identical to ``pycox.preprocessing.label_transforms.LabTransDiscreteTime``
with ``cuts=bins``, shifted by one because pycox also gives the cut point bins[0] an output):

* an event at time t in (bins[j], bins[j + 1]] gets index j (events move to the right cut);
* a censoring at time t in [bins[j + 1], bins[j + 2]) gets index j: only *completed*
  intervals count as survived (censorings move to the left cut);
* a censoring before bins[1] gets index -1: no interval was completed, so the sample carries
  no information and :func:`logistic_hazard_loss` skips it;
* a time beyond bins[-1] is censored at bins[-1] (index J - 1, event 0), as in pycox.

pycox is the reference ``tests/test_survival.py`` checks both against, not a run-time
dependency: its loss is the same four tensor operations as :func:`logistic_hazard_loss`, its
label transform works on NumPy arrays (a device-to-host copy per batch), and any ``import
pycox...`` runs its package ``__init__``, which loads pandas, numba, scikit-learn and pyarrow
(about 1,600 modules and 2 s on top of torch, measured on a 2-core CPU) and creates a data
folder inside its install directory unless ``PYCOX_DATA_DIR`` is set.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lungvlm.labels import GROWTH_BINS_MONTHS
from lungvlm.losses.risk import masked_mean


def _bins_tensor(bins: Sequence[float], like: Tensor) -> Tensor:
    edges = torch.as_tensor(tuple(bins), dtype=torch.float64, device=like.device)
    if edges.ndim != 1 or edges.numel() < 2 or bool((edges[1:] <= edges[:-1]).any()):
        raise ValueError(f"bins={tuple(bins)!r} must be at least 2 strictly increasing values")
    return edges


def discretize_time(
    time_months: Tensor, event: Tensor, bins: Sequence[float] = GROWTH_BINS_MONTHS
) -> tuple[Tensor, Tensor]:
    """Map (time, event) pairs to interval indices, pycox ``LabTransDiscreteTime`` style.

    See the module docstring for the convention; ``idx == pycox_idx - 1`` exactly.

    Args:
        time_months: (B,) time of growth or censoring, months.
        event: (B,) 1.0 if growth was observed at ``time_months``, 0.0 if censored.
        bins: J + 1 increasing interval edges in months.

    Returns:
        ``(idx_durations, events)``: (B,) int64 indices in [-1, J - 1] and (B,) float32 events
        (0 for times moved to bins[-1]).

    Raises:
        ValueError: on bad ``bins``, mismatched shapes, a time before bins[0] or NaN, or an
            event at a time <= bins[0] (growth needs a positive follow-up time).
    """
    if time_months.ndim != 1 or event.shape != time_months.shape:
        raise ValueError(
            f"time_months and event must both be (B,); got {tuple(time_months.shape)} and "
            f"{tuple(event.shape)}"
        )
    edges = _bins_tensor(bins, time_months)
    time = time_months.detach().to(torch.float64)
    happened = event.detach() > 0.5
    if bool((time.isnan() | (time < edges[0])).any()):
        raise ValueError(f"time_months must be >= bins[0]={float(edges[0])}; got {time.tolist()}")
    if bool((happened & (time <= edges[0])).any()):
        raise ValueError(
            f"an event needs time_months > bins[0]={float(edges[0])}; got {time[happened].tolist()}"
        )
    last = edges.numel() - 1
    beyond = time > edges[-1]
    happened = happened & ~beyond
    # Event: right cut, smallest edge >= t (pycox index) -> interval index = that - 1.
    event_idx = torch.searchsorted(edges, time, right=False) - 1
    # Censoring: left cut, largest edge <= t (pycox index) -> completed intervals - 1.
    censor_idx = torch.searchsorted(edges, time, right=True) - 2
    idx = torch.where(happened, event_idx, censor_idx).clamp(max=last - 1)
    return idx.to(torch.int64), happened.to(torch.float32)


def logistic_hazard_loss(
    hazard_logits: Tensor, idx_durations: Tensor, events: Tensor, present: Tensor | None = None
) -> Tensor:
    """Masked negative log-likelihood of the logistic-hazard model.

    For each informative sample (present and ``idx >= 0``) the loss is
    ``sum_{i <= idx} BCE(phi_i, y_i)`` with y_idx = event and y_i = 0 before; the result is the
    mean over informative samples. On those samples it equals
    ``pycox.models.loss.nll_logistic_hazard(phi, idx, events)`` (reduction "mean").

    Args:
        hazard_logits: (B, J) hazard logits phi.
        idx_durations: (B,) int64 interval indices from :func:`discretize_time` (-1 = none).
        events: (B,) 1.0 event / 0.0 censored.
        present: (B,) bool, whether the growth label is real; None means all present.

    Returns:
        Scalar loss (exactly 0, attached to the graph, when no sample is informative).

    Raises:
        ValueError: on mismatched shapes or an informative index >= J.
    """
    if hazard_logits.ndim != 2 or idx_durations.shape != hazard_logits.shape[:1]:
        raise ValueError(
            f"hazard_logits must be (B, J) and idx_durations (B,); got "
            f"{tuple(hazard_logits.shape)} and {tuple(idx_durations.shape)}"
        )
    if events.shape != idx_durations.shape:
        raise ValueError(f"events must be (B,); got {tuple(events.shape)}")
    if present is None:
        present = torch.ones_like(idx_durations, dtype=torch.bool)
    elif present.shape != idx_durations.shape:
        raise ValueError(f"present must be (B,); got {tuple(present.shape)}")
    idx = idx_durations.to(torch.int64)
    informative = present.to(torch.bool) & (idx >= 0)
    idx = torch.where(informative, idx, torch.zeros_like(idx))
    if bool((idx >= hazard_logits.shape[1]).any()):
        raise ValueError(
            f"idx_durations must be < J={hazard_logits.shape[1]}; got {idx[informative].tolist()}"
        )
    events = torch.where(
        informative,
        events.to(hazard_logits.dtype),
        torch.zeros_like(events, dtype=hazard_logits.dtype),
    )
    targets = torch.zeros_like(hazard_logits).scatter(1, idx.unsqueeze(1), events.unsqueeze(1))
    bce = F.binary_cross_entropy_with_logits(hazard_logits, targets, reduction="none")
    nll = bce.cumsum(dim=1).gather(1, idx.unsqueeze(1)).squeeze(1)  # (B,)
    return masked_mean(nll, informative)


def growth_survival_loss(
    hazard_logits: Tensor,
    time_months: Tensor,
    event: Tensor,
    present: Tensor,
    bins: Sequence[float] = GROWTH_BINS_MONTHS,
) -> Tensor:
    """Discretize the growth labels of a batch and return :func:`logistic_hazard_loss`.

    Absent samples are replaced by a censoring at bins[0] before discretization, so their
    (possibly garbage) values are never read.

    Args:
        hazard_logits: (B, J) hazard logits, J = len(bins) - 1.
        time_months: (B,) growth or censoring time, months.
        event: (B,) 1.0 growth / 0.0 censored.
        present: (B,) bool.
        bins: J + 1 interval edges in months.

    Returns:
        Scalar loss.

    Raises:
        ValueError: if J != len(bins) - 1 or the labels are invalid (see
            :func:`discretize_time`).
    """
    if hazard_logits.ndim != 2 or hazard_logits.shape[1] != len(bins) - 1:
        raise ValueError(
            f"hazard_logits must be (B, {len(bins) - 1}) for bins={tuple(bins)}; got "
            f"{tuple(hazard_logits.shape)}"
        )
    if present.shape != time_months.shape:
        raise ValueError(f"present must be (B,); got {tuple(present.shape)}")
    present = present.to(torch.bool)
    start = torch.full_like(time_months, float(bins[0]))
    time_months = torch.where(present, time_months, start)
    event = torch.where(present, event, torch.zeros_like(event))
    idx, events = discretize_time(time_months, event, bins)
    return logistic_hazard_loss(hazard_logits, idx, events.to(hazard_logits.dtype), present)


def survival_curve(hazard_logits: Tensor) -> Tensor:
    """Survival probability at the end of each interval.

    Args:
        hazard_logits: (B, J) hazard logits.

    Returns:
        (B, J) S(bins[j + 1]) = prod_{i <= j} (1 - sigmoid(phi_i)), computed in log space.
    """
    return torch.exp(torch.cumsum(F.logsigmoid(-hazard_logits), dim=1))


def probability_event_by(
    hazard_logits: Tensor, months: float = 12.0, bins: Sequence[float] = GROWTH_BINS_MONTHS
) -> Tensor:
    """Probability of growth by ``months``: 1 - S(months).

    S is known at the bin edges (S(bins[0]) = 1); between edges it is interpolated linearly,
    i.e. a constant event density within an interval (pycox's "const_pdf" interpolation).
    With the default bins, 12 months is an edge and no interpolation happens.

    Args:
        hazard_logits: (B, J) hazard logits, J = len(bins) - 1.
        months: horizon in months, within [bins[0], bins[-1]].
        bins: J + 1 interval edges in months.

    Returns:
        (B,) probability in [0, 1].

    Raises:
        ValueError: if J != len(bins) - 1 or ``months`` is outside the bins.
    """
    if hazard_logits.ndim != 2 or hazard_logits.shape[1] != len(bins) - 1:
        raise ValueError(
            f"hazard_logits must be (B, {len(bins) - 1}) for bins={tuple(bins)}; got "
            f"{tuple(hazard_logits.shape)}"
        )
    edges = [float(b) for b in bins]
    if not edges[0] <= months <= edges[-1]:
        raise ValueError(f"months={months!r} must lie within the bins [{edges[0]}, {edges[-1]}]")
    surv = survival_curve(hazard_logits)
    surv = torch.cat([surv.new_ones(surv.shape[0], 1), surv], dim=1)  # (B, J+1) at the edges
    # Interval j with edges[j] <= months <= edges[j + 1] (the last one for months == bins[-1]).
    j = min(bisect.bisect_right(edges, months) - 1, len(edges) - 2)
    fraction = (months - edges[j]) / (edges[j + 1] - edges[j])
    at_horizon = surv[:, j] + fraction * (surv[:, j + 1] - surv[:, j])
    return 1.0 - at_horizon
