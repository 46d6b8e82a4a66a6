"""Server strategies: Flower's FedAvg and FedAvgM, with client-level differential privacy.

Flower's own DP wrappers (``DifferentialPrivacyClientSideFixedClipping``) add the noise to what
the wrapped strategy returns. Around FedAvgM that is after the momentum step, so the server's
momentum buffer would hold the un-noised mean of the sites' updates and leak it into every later
round; Flower's accountant refuses that combination for this reason. Here the noise goes on
the mean of the clipped updates *inside* the aggregation, before FedAvgM's momentum
(:class:`NoisyMeanMixin`), so everything the server keeps or releases is post-processing of
noised means and the per-round accounting holds. Clipping happens on the sites with Flower's
``fixedclipping_mod`` (:mod:`lungvlm.federated.client`), told the norm by :meth:`configure_train`.

Privacy accounting uses Opacus's RDP accountant: every round is one Gaussian mechanism with
noise multiplier ``sigma`` on the sum of the sites' clipped updates (sensitivity: one site's
clipping norm; all sites take part every round, so ``sample_rate = 1``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedAvgM
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from lungvlm.federated.config import FederatedConfig, PrivacyConfig

log = logging.getLogger(__name__)

#: Metric every site reports as 1: the weight of a uniform (per-site) mean.
UNIFORM_WEIGHT_KEY = "site-weight"
#: Metric every site reports as its number of training (or validation) samples.
EXAMPLES_KEY = "num-examples"
#: Metric every site reports as the optimizer steps of its local fit.
STEPS_KEY = "steps"
#: The keys of a site's MetricRecord (the same at every site, as Flower requires); the
#: site's results travel in its reply's ConfigRecord ``results``.
BOOKKEEPING_KEYS: tuple[str, ...] = (EXAMPLES_KEY, UNIFORM_WEIGHT_KEY, STEPS_KEY, "site-index")
#: Round-config key of the server's report tokenizer (JSON; stage 3 only).
TOKENIZER_KEY = "tokenizer-json"


class PrivacyLedger:
    """(epsilon, delta) spent by the noised rounds so far (Opacus RDP accountant).

    Args:
        noise_multiplier: noise standard deviation over the clipping norm.
        delta: the delta epsilon is reported at.
        rounds_done: rounds already spent (a resumed federation).
    """

    def __init__(self, noise_multiplier: float, delta: float, rounds_done: int = 0) -> None:
        from opacus.accountants import RDPAccountant

        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self._accountant = RDPAccountant()
        self.rounds = 0
        for _ in range(int(rounds_done)):
            self.step()

    def step(self) -> None:
        """Account one round (one Gaussian mechanism over all sites)."""
        self._accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=1.0)
        self.rounds += 1

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at :attr:`delta` (0 before the first round)."""
        if self.rounds == 0:
            return 0.0
        return float(self._accountant.get_epsilon(delta=self.delta))


class NoisyMeanMixin:
    """Adds DP noise to the mean of the sites' (clipped) models before anything else uses it.

    Mixed in *below* FedAvgM (``class PrivateFedAvgM(FedAvgM, NoisyMeanMixin, FedAvg)``), so
    FedAvgM's ``super().aggregate_train`` gets the noised mean and applies momentum to it.
    All sites start a round from the same global weights and are weighted equally, so noise
    on the mean of their models is noise on the mean of their updates.
    """

    privacy: PrivacyConfig | None = None
    n_sites: int = 0
    ledger: PrivacyLedger | None = None

    def enable_privacy(self, privacy: PrivacyConfig, n_sites: int, rounds_done: int = 0) -> None:
        """Turn the noise on: ``privacy`` settings, ``n_sites`` sites per round."""
        self.privacy = privacy
        self.n_sites = int(n_sites)
        self.ledger = PrivacyLedger(privacy.noise_multiplier, privacy.delta, rounds_done)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As the wrapped strategy, plus the clipping norm for the sites' clipping mod."""
        if self.privacy is not None:
            config = ConfigRecord({**dict(config), KEY_CLIPPING_NORM: self.privacy.clipping_norm})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Mean of the sites' models, plus Gaussian noise when privacy is on.

        Raises:
            RuntimeError: privacy is on and not every site replied (the accounting assumes
                all sites every round: the round is refused rather than under-noised).
        """
        replies = list(replies)
        raise_on_errors(server_round, replies, "train")
        if self.privacy is not None:
            good = [r for r in replies if not r.has_error()]
            if len(good) != self.n_sites:
                raise RuntimeError(
                    f"round {server_round}: {len(good)} of {self.n_sites} sites replied; with "
                    "differential privacy every site must take part in every round"
                )
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or self.privacy is None:
            return arrays, metrics
        std = self.privacy.noise_multiplier * self.privacy.clipping_norm / self.n_sites
        noised = {
            key: Array(value + np.random.normal(0.0, std, value.shape).astype(value.dtype))
            for key, value in zip(arrays.keys(), arrays.to_numpy_ndarrays(), strict=True)
        }
        assert self.ledger is not None
        self.ledger.step()
        log.info(
            "round %d: Gaussian noise sd %.3g on the mean update; epsilon %.3f at delta %g",
            server_round,
            std,
            self.ledger.epsilon,
            self.ledger.delta,
        )
        return ArrayRecord(noised), metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """As the wrapped strategy, but a site that failed to validate stops the run."""
        replies = list(replies)
        raise_on_errors(server_round, replies, "validate")
        return super().aggregate_evaluate(server_round, replies)


def raise_on_errors(server_round: int, replies: list[Message], what: str) -> None:
    """Stop the federation when a site's reply is an error.

    Flower's strategies skip the round's aggregation and go on, which would train for the
    configured rounds while nothing changes; a failed site is an error to fix instead.

    Raises:
        RuntimeError: naming the round, the number of failed sites and the first reason.
    """
    failed = [r for r in replies if r.has_error()]
    if failed:
        reason = failed[0].error.reason
        raise RuntimeError(
            f"round {server_round}: {len(failed)} of {len(replies)} sites failed to {what}: "
            f"{reason}"
        )


class PrivateFedAvg(NoisyMeanMixin, FedAvg):
    """FedAvg whose mean may carry DP noise (:class:`NoisyMeanMixin`)."""


class PrivateFedAvgM(FedAvgM, NoisyMeanMixin, FedAvg):
    """FedAvgM whose momentum acts on the (optionally) noised mean (:class:`NoisyMeanMixin`)."""


MetricsFn = Callable[[list[RecordDict], str], MetricRecord]


def build_strategy(
    config: FederatedConfig,
    train_metrics_fn: MetricsFn | None = None,
    evaluate_metrics_fn: MetricsFn | None = None,
    rounds_done: int = 0,
) -> PrivateFedAvg | PrivateFedAvgM:
    """The server strategy of ``config``: every site trains and validates every round.

    Args:
        config: the federation.
        train_metrics_fn, evaluate_metrics_fn: Flower's metric aggregation hooks (the run's
            recorder logs per-site values there).
        rounds_done: rounds a resumed federation already spent (privacy accounting).

    Returns:
        A FedAvg or FedAvgM strategy. Sites are weighted by their number of training samples,
        or equally when privacy is on (the noise is calibrated to an equal-weight mean).
    """
    n = len(config.sites)
    common = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": n,
        "min_evaluate_nodes": n,
        "min_available_nodes": n,
        "weighted_by_key": UNIFORM_WEIGHT_KEY if config.privacy is not None else EXAMPLES_KEY,
        "train_metrics_aggr_fn": train_metrics_fn,
        "evaluate_metrics_aggr_fn": evaluate_metrics_fn,
    }
    if config.strategy.name == "fedavgm":
        strategy = PrivateFedAvgM(
            **common,
            server_learning_rate=config.strategy.server_learning_rate,
            server_momentum=config.strategy.server_momentum,
        )
    else:
        strategy = PrivateFedAvg(**common)
    if config.privacy is not None:
        strategy.enable_privacy(config.privacy, n, rounds_done)
    return strategy
