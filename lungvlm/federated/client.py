"""A site: Flower ClientApp that trains and validates the project's Lightning stage locally.

On a ``train`` message the site builds its LightningCLI run (:func:`build_site`), loads the
global weights, fits ``local-epochs`` epochs on its own data and replies with its weights and
metrics. On an ``evaluate`` message it validates the global weights on its validation split.
Images never leave the site; only weights and a few numbers do. With privacy on, Flower's
``fixedclipping_mod`` clips the site's update to the norm the server sends.

Which site a ClientApp is: ``site=<name>`` or ``partition-id=<i>`` in the SuperNode's node
config (``flower-supernode --node-config "site=screening_a"``; the simulation sets
``partition-id``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from lungvlm.federated.config import FederatedConfig, SiteConfig
from lungvlm.federated.sites import LOCAL_FIT_ARGS, SITE_ARGS, build_site, site_index
from lungvlm.federated.strategy import (
    BOOKKEEPING_KEYS,
    EXAMPLES_KEY,
    STEPS_KEY,
    TOKENIZER_KEY,
    UNIFORM_WEIGHT_KEY,
)

log = logging.getLogger(__name__)

#: Validation metrics a site reports (those the stage logs; missing ones are skipped).
REPORTED_PREFIXES: tuple[str, ...] = ("val/",)


def site_of(config: FederatedConfig, node_config: dict[str, Any]) -> tuple[int, SiteConfig]:
    """The site a SuperNode runs, from its node config (``site`` name or ``partition-id``).

    Raises:
        KeyError: neither key, or an unknown name or index.
    """
    if "site" in node_config:
        index = site_index(config, str(node_config["site"]))
    elif "partition-id" in node_config:
        index = int(node_config["partition-id"])
        if not 0 <= index < len(config.sites):
            raise KeyError(f"partition-id={index}: {config.source} has {len(config.sites)} sites")
    else:
        raise KeyError(
            "this SuperNode's node config names no site: start it with "
            '--node-config "site=<name>" (names in the federation config)'
        )
    return index, config.sites[index]


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Finite float values of ``metrics`` under the reported prefixes."""
    out = {}
    for key, value in metrics.items():
        if not key.startswith(REPORTED_PREFIXES):
            continue
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        if math.isfinite(value):
            out[key] = value
    return out


class SiteRunner:
    """Train or validate one site's copy of the global model.

    Args:
        config: the federation.
        index: the site's index in ``config.sites``.
    """

    def __init__(self, config: FederatedConfig, index: int) -> None:
        self.config = config
        self.index = int(index)
        self.site = config.sites[self.index]
        self.folder = Path(config.out_dir) / "sites" / self.site.name
        threads = max(1, int(config.client_cpus))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def _build(self, fit: bool, max_epochs: int | None = None) -> Any:
        """The site's LightningCLI for a local fit (``local/``) or a validation."""
        run_dir = self.folder / ("local" if fit else "validate")
        extra = LOCAL_FIT_ARGS if fit else SITE_ARGS
        return build_site(self.config, self.site, run_dir, max_epochs, extra=extra)

    def _load(self, model: Any, arrays: ArrayRecord, tokenizer_json: str | None = None) -> None:
        if tokenizer_json is not None and getattr(model, "vl", None) is not None:
            from lungvlm.text.tokenizer import tokenizer_from_json

            # The server's tokenizer: the fit's setup then neither fits its own nor reloads
            # the language checkpoint over the global decoder weights.
            model.vl.tokenizer = tokenizer_from_json(tokenizer_json)
        state = arrays.to_torch_state_dict()
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"site {self.site.name}: the global weights do not fit this site's model "
                f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}); every site "
                "must build the same model"
            )

    def _validate(self, cli: Any) -> dict[str, float]:
        results = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
        return _scalar_metrics(results[0] if results else {})

    def train(
        self,
        arrays: ArrayRecord,
        server_round: int,
        local_epochs: int,
        tokenizer_json: str | None = None,
    ) -> tuple[ArrayRecord, dict[str, float]]:
        """Fit ``local_epochs`` epochs from the global ``arrays``.

        ``tokenizer_json`` is the server's report tokenizer (stage 3; None otherwise).

        Returns:
            The site's weights and metrics: ``num-examples`` (training samples),
            ``site-weight`` (1), ``site-index``, ``steps`` (optimizer steps), ``train/loss``
            (last epoch's mean), ``train/update_norm`` (L2 norm of the update, before
            clipping) and, in round 1, the global start model's validation metrics under
            ``start/``.
        """
        metrics: dict[str, float] = {}
        if server_round == 1:
            start = self.evaluate(arrays, tokenizer_json)
            metrics.update({f"start/{k}": v for k, v in start.items() if k.startswith("val/")})
        cli = self._build(fit=True, max_epochs=local_epochs)
        self._load(cli.model, arrays, tokenizer_json)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        train_loss = cli.trainer.callback_metrics.get("train/loss")
        if train_loss is None:
            train_loss = cli.trainer.callback_metrics.get("train/loss_epoch")
        if train_loss is not None:
            metrics["train/loss"] = float(train_loss)
        n_train = len(cli.datamodule.train_dataloader().dataset)
        metrics.update({EXAMPLES_KEY: n_train, UNIFORM_WEIGHT_KEY: 1, "site-index": self.index})
        metrics[STEPS_KEY] = int(cli.trainer.global_step)
        state = {k: v.detach().cpu() for k, v in cli.model.state_dict().items()}
        metrics["train/update_norm"] = update_norm(state, arrays)
        return ArrayRecord(state), metrics

    def evaluate(self, arrays: ArrayRecord, tokenizer_json: str | None = None) -> dict[str, float]:
        """Validation metrics of the global ``arrays`` on this site's validation split."""
        cli = self._build(fit=False)
        self._load(cli.model, arrays, tokenizer_json)
        metrics = self._validate(cli)
        n_val = len(cli.datamodule.val_dataloader().dataset)
        metrics.update({EXAMPLES_KEY: n_val, UNIFORM_WEIGHT_KEY: 1, "site-index": self.index})
        return metrics


def update_norm(state: dict[str, torch.Tensor], start: ArrayRecord) -> float:
    """L2 norm of a site's update (its weights minus the global ``start`` weights), before
    any clipping: what ``privacy.clipping_norm`` is compared with."""
    before = start.to_torch_state_dict()
    total = sum(float(((state[k].double() - before[k].double()) ** 2).sum()) for k in state)
    return math.sqrt(total)


def clip_when_asked(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower mod: Flower's ``fixedclipping_mod`` when the server sends a clipping norm."""
    config = next(iter(msg.content.config_records.values()), {})
    if KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def reply_content(metrics: dict[str, float], arrays: ArrayRecord | None = None) -> RecordDict:
    """A site's reply: weights, the bookkeeping Flower aggregates, and the site's results.

    Flower's strategies require every site's MetricRecord to hold the same keys, but sites may
    log different metrics (one that is NaN on a site is left out there), so the MetricRecord
    holds only the bookkeeping keys and the results travel in a ConfigRecord ``results``.
    """
    bookkeeping = {k: v for k, v in metrics.items() if k in BOOKKEEPING_KEYS}
    results = {k: float(v) for k, v in metrics.items() if k not in BOOKKEEPING_KEYS}
    records: dict[str, Any] = {
        "metrics": MetricRecord(bookkeeping),
        "results": ConfigRecord(results),
    }
    if arrays is not None:
        records = {"arrays": arrays, **records}
    return RecordDict(records)


def make_client_app(config_loader: Any) -> ClientApp:
    """The site ClientApp.

    Args:
        config_loader: called with the Flower ``Context``; returns the
            :class:`FederatedConfig` (from the run config in a deployment, or bound in a
            simulation).
    """
    app = ClientApp(mods=[clip_when_asked])
    runners: dict[int, SiteRunner] = {}

    def runner(context: Context) -> SiteRunner:
        config = config_loader(context)
        index, _ = site_of(config, dict(context.node_config))
        if index not in runners:
            runners[index] = SiteRunner(config, index)
        return runners[index]

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = runner(context)
        settings = msg.content["config"]
        arrays, metrics = site.train(
            msg.content["arrays"],
            server_round=int(settings["server-round"]) + int(settings.get("round-offset", 0)),
            local_epochs=int(settings["local-epochs"]),
            tokenizer_json=settings.get(TOKENIZER_KEY),
        )
        return Message(content=reply_content(metrics, arrays), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        tokenizer_json = msg.content["config"].get(TOKENIZER_KEY)
        metrics = runner(context).evaluate(msg.content["arrays"], tokenizer_json)
        return Message(content=reply_content(metrics), reply_to=msg)

    return app
