"""Multi-task loss weighting: fixed weights, optionally with learned homoscedastic uncertainty."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


class MultiTaskWeights(nn.Module):
    """Combine named task losses into one total.

    Fixed mode: ``total = sum_i w_i * L_i``.

    Uncertainty mode (Kendall, Gal & Cipolla, CVPR 2018, eq. 7, the regression form): each
    task has a learnable log-variance ``s_i = log sigma_i^2`` and contributes
    ``w_i * (0.5 * exp(-s_i) * L_i + 0.5 * s_i)``; the 0.5 * s_i term keeps sigma from
    growing without bound. ``s_i`` starts at ``init_log_variance``.

    A task whose labels are absent from a batch should be passed with ``active[name] = False``:
    its term (including the 0.5 * s_i regulariser, which would otherwise pull s_i towards
    -inf on batches without labels) is then exactly 0, still attached to the graph.

    Args:
        weights: task name -> fixed non-negative weight. Names must not contain ".".
        uncertainty: whether to learn one log-variance per task.
        init_log_variance: initial value of every log-variance.

    Raises:
        ValueError: on an empty mapping, a negative weight or a name containing ".".
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        uncertainty: bool = False,
        init_log_variance: float = 0.0,
    ) -> None:
        super().__init__()
        if not weights:
            raise ValueError("weights must name at least one task")
        for name, value in weights.items():
            if "." in name or not name:
                raise ValueError(f"task name {name!r} must be non-empty and contain no '.'")
            if value < 0:
                raise ValueError(f"weight of task {name!r} is {value!r}; expected >= 0")
        self.weights = {name: float(value) for name, value in weights.items()}
        self.uncertainty = uncertainty
        self.log_variances = nn.ParameterDict(
            {name: nn.Parameter(torch.tensor(float(init_log_variance))) for name in weights}
            if uncertainty
            else {}
        )

    def combine(
        self, losses: Mapping[str, Tensor], active: Mapping[str, bool] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weight and sum the task losses.

        Args:
            losses: task name -> scalar loss; every name must be in ``weights``.
            active: optional task name -> whether the task had labels in this batch; tasks
                not listed are active.

        Returns:
            ``(total, weighted)`` where ``weighted[name]`` is the term task ``name`` adds to
            ``total`` (so ``total == sum(weighted.values())``).

        Raises:
            ValueError: on an empty mapping, an unknown task name or a non-scalar loss.
        """
        if not losses:
            raise ValueError("losses must contain at least one task loss")
        active = active or {}
        weighted: dict[str, Tensor] = {}
        for name, loss in losses.items():
            if name not in self.weights:
                raise ValueError(
                    f"loss {name!r} has no weight; expected one of {sorted(self.weights)}"
                )
            if loss.ndim != 0:
                raise ValueError(f"loss {name!r} must be a scalar; got shape {tuple(loss.shape)}")
            term = loss
            if self.uncertainty:
                log_var = self.log_variances[name].to(loss.dtype)
                term = 0.5 * torch.exp(-log_var) * loss + 0.5 * log_var
            term = self.weights[name] * term
            if not active.get(name, True):
                term = term * 0.0
            weighted[name] = term
        total = torch.stack(list(weighted.values())).sum()
        return total, weighted

    def sigmas(self) -> dict[str, float]:
        """Current task standard deviations sigma_i = exp(s_i / 2) (empty in fixed mode)."""
        return {name: float(torch.exp(0.5 * p.detach())) for name, p in self.log_variances.items()}
