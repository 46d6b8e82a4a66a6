"""Concept head: a supervised decomposition of nodule features into radiological attributes.

The first K latent dimensions are aligned, one each, with the concepts of
``lungvlm.labels.CONCEPT_NAMES`` (LIDC-IDRI-style ratings rescaled to [0, 1]); the remaining
"free" dimensions carry whatever the concepts do not, so explanations can be read at the
feature level (DESIGN.md, "Concepts").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lungvlm.labels import CONCEPT_NAMES


@dataclass
class ConceptOutput:
    """Outputs of :class:`ConceptHead` for a batch of B nodules.

    Attributes:
        concept_logits: (B, K) logits; ``sigmoid`` gives each concept's predicted [0, 1] rating.
        latent: (B, K + F) latent vector whose first K entries are ``concept_logits`` and whose
            last F entries are the free dimensions.
    """

    concept_logits: Tensor
    latent: Tensor

    def concept_probabilities(self) -> Tensor:
        """(B, K) predicted concept ratings in [0, 1]."""
        return torch.sigmoid(self.concept_logits)


class ConceptHead(nn.Module):
    """Linear projection whose first K outputs are the concept logits.

    With ``bottleneck=True`` the head is one ``Linear(input_dim, K + num_free_dims)``: the
    latent is a narrow code in which K dimensions are supervised concepts and
    ``num_free_dims`` are unsupervised residual dimensions (a concept bottleneck with a side
    channel). With ``bottleneck=False`` the concepts come from ``Linear(input_dim, K)`` and the
    free part of the latent is the input features themselves (F = input_dim), so nothing is
    squeezed through the concepts. Either way ``latent[:, :K] == concept_logits``.

    Args:
        input_dim: size of the input feature vector.
        concept_names: the K concept names, in the order of the targets.
        bottleneck: whether the free dimensions are a learned projection (True) or the
            unchanged input (False).
        num_free_dims: number F of free latent dimensions when ``bottleneck`` is True.

    Raises:
        ValueError: on an empty or duplicated ``concept_names`` or non-positive sizes.
    """

    def __init__(
        self,
        input_dim: int,
        concept_names: Sequence[str] = CONCEPT_NAMES,
        bottleneck: bool = True,
        num_free_dims: int = 16,
    ) -> None:
        super().__init__()
        if not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"input_dim={input_dim!r} must be a positive integer")
        names = tuple(concept_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(
                f"concept_names={names!r} must be a non-empty sequence of distinct names"
            )
        if bottleneck and (not isinstance(num_free_dims, int) or num_free_dims < 0):
            raise ValueError(f"num_free_dims={num_free_dims!r} must be an integer >= 0")
        self.input_dim = input_dim
        self.concept_names = names
        self.bottleneck = bottleneck
        self.num_free_dims = num_free_dims if bottleneck else input_dim
        k = len(names)
        self.projection = nn.Linear(input_dim, k + num_free_dims if bottleneck else k)

    @property
    def num_concepts(self) -> int:
        """Number K of supervised concept dimensions."""
        return len(self.concept_names)

    @property
    def latent_dim(self) -> int:
        """Size K + F of :attr:`ConceptOutput.latent`."""
        return self.num_concepts + self.num_free_dims

    def forward(self, features: Tensor) -> ConceptOutput:
        """Project features onto concept and free dimensions.

        Args:
            features: (B, input_dim) pooled nodule features.

        Returns:
            :class:`ConceptOutput` with (B, K) concept logits and the (B, K + F) latent.

        Raises:
            ValueError: if ``features`` is not (B, input_dim).
        """
        if features.ndim != 2 or features.shape[1] != self.input_dim:
            raise ValueError(f"features must be (B, {self.input_dim}); got {tuple(features.shape)}")
        projected = self.projection(features)
        concept_logits = projected[:, : self.num_concepts]  # (B, K)
        latent = projected if self.bottleneck else torch.cat([concept_logits, features], dim=1)
        return ConceptOutput(concept_logits=concept_logits, latent=latent)
