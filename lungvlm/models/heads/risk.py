"""Multi-task risk head: malignancy, ordinal Lung-RADS category and discrete-time growth hazard.

Risk is decoded from the pooled visual representation concatenated with an embedding of the
findings text (DESIGN.md, "Risk is decoded from the pooled visual representation concatenated
with an embedding of the explanation text"), so the text must carry the risk information.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lungvlm.labels import GROWTH_BINS_MONTHS, LUNGRADS_CATEGORIES

#: Smallest class probability kept before taking a log in :attr:`RiskOutput.lungrads_logits`.
_MIN_PROBABILITY = 1e-12


@dataclass
class RiskOutput:
    """Outputs of :class:`RiskHead` for a batch of B nodules.

    Attributes:
        malignancy_logit: (B,) logit of the probability that the nodule is malignant.
        lungrads_cumulative_logits: (B, C - 1) CORAL cumulative logits; entry k is the logit of
            P(category index > k) over the ordinal scale ``LUNGRADS_CATEGORIES`` (C classes).
            They are non-increasing in k by construction, so the class probabilities are
            non-negative.
        growth_hazard_logits: (B, J) logits of the discrete hazard of growth in month interval
            j = (bins[j], bins[j + 1]], J = len(GROWTH_BINS_MONTHS) - 1 by default.
    """

    malignancy_logit: Tensor
    lungrads_cumulative_logits: Tensor
    growth_hazard_logits: Tensor

    @property
    def lungrads_logits(self) -> Tensor:
        """(B, C) log class probabilities, usable wherever class logits are expected.

        ``softmax(lungrads_logits) == lungrads_probabilities()``; probabilities are clamped at
        1e-12 before the log.
        """
        return self.lungrads_probabilities().clamp_min(_MIN_PROBABILITY).log()

    def lungrads_probabilities(self) -> Tensor:
        """(B, C) class probabilities P(y = c) = P(y > c - 1) - P(y > c).

        With P(y > -1) = 1 and P(y > C - 1) = 0; each row sums to 1.
        """
        exceed = torch.sigmoid(self.lungrads_cumulative_logits)  # (B, C-1), P(y > k)
        ones = exceed.new_ones(exceed.shape[0], 1)
        zeros = exceed.new_zeros(exceed.shape[0], 1)
        upper = torch.cat([ones, exceed], dim=1)  # P(y > c - 1), (B, C)
        lower = torch.cat([exceed, zeros], dim=1)  # P(y > c), (B, C)
        return (upper - lower).clamp_min(0.0)

    def lungrads_prediction(self) -> Tensor:
        """(B,) int64 predicted category index: the number of thresholds with P(y > k) > 0.5.

        This is the CORAL decision rule (Cao et al., Pattern Recognit. Lett. 2020); with ordered
        thresholds it picks the category where the cumulative probability crosses 0.5.
        """
        return (self.lungrads_cumulative_logits > 0.0).sum(dim=1).to(torch.int64)

    def malignancy_probability(self) -> Tensor:
        """(B,) probability of malignancy, sigmoid of :attr:`malignancy_logit`."""
        return torch.sigmoid(self.malignancy_logit)


class RiskHead(nn.Module):
    """Decode malignancy, Lung-RADS and growth hazard from visual and text embeddings.

    The input is ``cat(visual, text)`` of size ``visual_dim + text_dim`` and goes through a
    two-layer MLP trunk (LayerNorm, Linear, GELU, Dropout) of width ``hidden_dim``, then:

    * malignancy: one logit;
    * Lung-RADS: a CORAL / cumulative-link layer: one shared score ``w . h`` plus C - 1 ordered
      biases, ``logit_k = w . h + b_k`` with ``b_0 > b_1 > ... > b_{C-2}`` enforced by
      ``b_k = b_{k-1} - softplus(delta_k)``, so P(y > k) is non-increasing in k;
    * growth: J logistic-hazard logits, one per month interval.

    When ``use_text`` is False, or ``text`` is None at call time, the text slot is filled with a
    learned "no text" vector of size ``text_dim`` (trained whenever text is missing), so the same
    weights serve image-only inference.

    Args:
        visual_dim: size of the pooled visual representation.
        text_dim: size of the findings-text embedding.
        hidden_dim: width of the MLP trunk.
        num_lungrads: number C of ordinal Lung-RADS categories.
        num_time_bins: number J of growth-hazard month intervals.
        dropout: dropout probability in the trunk.
        use_text: whether to read the text embedding at all.

    Raises:
        ValueError: on non-positive sizes, ``num_lungrads < 2`` or dropout outside [0, 1).
    """

    def __init__(
        self,
        visual_dim: int,
        text_dim: int,
        hidden_dim: int = 128,
        num_lungrads: int = len(LUNGRADS_CATEGORIES),
        num_time_bins: int = len(GROWTH_BINS_MONTHS) - 1,
        dropout: float = 0.1,
        use_text: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("visual_dim", visual_dim),
            ("text_dim", text_dim),
            ("hidden_dim", hidden_dim),
            ("num_time_bins", num_time_bins),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not isinstance(num_lungrads, int) or num_lungrads < 2:
            raise ValueError(f"num_lungrads={num_lungrads!r} must be an integer >= 2")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        self.visual_dim = visual_dim
        self.text_dim = text_dim
        self.num_lungrads = num_lungrads
        self.num_time_bins = num_time_bins
        self.use_text = use_text
        self.no_text = nn.Parameter(torch.zeros(text_dim))
        self.trunk = nn.Sequential(
            nn.LayerNorm(visual_dim + text_dim),
            nn.Linear(visual_dim + text_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
        )
        self.malignancy = nn.Linear(hidden_dim, 1)
        self.lungrads_score = nn.Linear(hidden_dim, 1, bias=False)
        # Ordered thresholds: first bias free, the rest step down by softplus(delta) > 0.
        # Initial steps of 1 logit (softplus(0.5413) = 1.0) spread the categories.
        self.lungrads_first_bias = nn.Parameter(torch.tensor((num_lungrads - 2) / 2.0))
        self.lungrads_bias_steps = nn.Parameter(torch.full((num_lungrads - 2,), 0.5413))
        self.growth = nn.Linear(hidden_dim, num_time_bins)

    def lungrads_biases(self) -> Tensor:
        """(C - 1,) strictly decreasing CORAL thresholds b_0 > b_1 > ... > b_{C-2}."""
        steps = F.softplus(self.lungrads_bias_steps)
        first = self.lungrads_first_bias.reshape(1)
        return torch.cat([first, first - torch.cumsum(steps, dim=0)])

    def forward(self, visual: Tensor, text: Tensor | None = None) -> RiskOutput:
        """Predict the risk outputs.

        Args:
            visual: (B, visual_dim) pooled visual representation.
            text: (B, text_dim) findings-text embedding, or None for the learned "no text"
                vector (also used for every sample when ``use_text`` is False).

        Returns:
            A :class:`RiskOutput` with (B,), (B, C - 1) and (B, J) tensors.

        Raises:
            ValueError: if ``visual`` or ``text`` has the wrong shape.
        """
        if visual.ndim != 2 or visual.shape[1] != self.visual_dim:
            raise ValueError(f"visual must be (B, {self.visual_dim}); got {tuple(visual.shape)}")
        batch = visual.shape[0]
        if text is None or not self.use_text:
            text = self.no_text.to(visual.dtype).expand(batch, self.text_dim)
        elif text.shape != (batch, self.text_dim):
            raise ValueError(f"text must be (B={batch}, {self.text_dim}); got {tuple(text.shape)}")
        hidden = self.trunk(torch.cat([visual, text.to(visual.dtype)], dim=1))  # (B, hidden)
        cumulative = self.lungrads_score(hidden) + self.lungrads_biases().to(hidden.dtype)
        return RiskOutput(
            malignancy_logit=self.malignancy(hidden).squeeze(1),
            lungrads_cumulative_logits=cumulative,  # (B, C-1) via broadcast of (B, 1) + (C-1,)
            growth_hazard_logits=self.growth(hidden),
        )
