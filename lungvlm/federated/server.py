"""The federation's server: Flower ServerApp, per-round logs, global checkpoints and resume.

After every round (Flower's ``evaluate_fn`` hook, called once the sites have trained and
validated the new global model) :class:`FederationRecorder`:

- logs the round to TensorBoard (``OUT/tensorboard``): the global (sample-weighted, or equal
  per site with privacy) validation metrics as ``val/...``, each site's as
  ``site/<name>/val/...``, the sites' training loss, and ``privacy/epsilon``; and appends it
  to ``OUT/rounds.jsonl``. Round 0 is the start model, validated by every site in round 1;
- writes the global model as a normal LungVLM checkpoint (``OUT/global/last.ckpt`` and
  ``OUT/global/round_NNN.ckpt``) that ``lungvlm report``, ``evaluate`` and ``init_from`` load;
- writes the server's state (rounds done, FedAvgM's momentum, privacy spent) atomically, so a
  stopped federation resumes at the next round when started again with the same config.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from lungvlm.export.writer import write_bytes_atomic, write_text_atomic
from lungvlm.federated.config import FederatedConfig
from lungvlm.federated.sites import LOCAL_FIT_ARGS, build_site
from lungvlm.federated.strategy import (
    BOOKKEEPING_KEYS,
    EXAMPLES_KEY,
    STEPS_KEY,
    TOKENIZER_KEY,
    build_strategy,
)

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
ROUNDS_FILE = "rounds.jsonl"
#: Bookkeeping metrics of a reply that are not logged as results.
_BOOKKEEPING = BOOKKEEPING_KEYS


def config_digest(config: FederatedConfig) -> str:
    """Digest of what a resume must not change (sites, stage, strategy, privacy, epochs)."""
    data = config.to_dict()
    for key in ("rounds", "out_dir", "timeout_s", "client_cpus", "client_gpus"):
        data.pop(key)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_state(out_dir: str | Path) -> dict[str, Any] | None:
    """The saved server state of a federation folder, or None when it has none.

    Raises:
        ValueError: the state file exists but is not readable JSON (names it).
    """
    path = Path(out_dir) / "global" / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"federation state {path} is not readable JSON: {err}") from err
    if not isinstance(state, dict) or "rounds_done" not in state:
        raise ValueError(f"federation state {path} has no 'rounds_done'")
    return state


def read_rounds(out_dir: str | Path) -> list[dict[str, Any]]:
    """The per-round records of ``OUT/rounds.jsonl`` (round 0 first), [] when absent."""
    path = Path(out_dir) / ROUNDS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


class FederationRecorder:
    """Per-round logging, checkpoints and state of a federation (module docstring).

    Args:
        config: the federation.
        template: a LightningCLI of the stage (its ``model`` writes the checkpoints).
        rounds_done: rounds finished before this run (a resume).
    """

    def __init__(self, config: FederatedConfig, template: Any, rounds_done: int = 0) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        self.config = config
        self.template = template
        self.rounds_done = int(rounds_done)
        self.out = Path(config.out_dir)
        self.names = [s.name for s in config.sites]
        self.strategy: Any = None
        self._train: dict[str, Any] = {}
        self._evaluate: dict[str, Any] = {}
        self._local_steps = 0
        self.tensorboard = TensorBoardLogger(str(self.out), name="", version="tensorboard")
        state = read_state(self.out)
        if state is not None:
            self._local_steps = int(state.get("local_steps", 0))

    # ---------------------------------------------------------------- Flower hooks
    def _per_site(self, records: list[RecordDict]) -> dict[str, dict[str, float]]:
        out = {}
        for record in records:
            metrics = dict(next(iter(record.metric_records.values())))
            if "results" in record.config_records:
                metrics.update(dict(record.config_records["results"]))
            index = int(metrics.get("site-index", -1))
            name = self.names[index] if 0 <= index < len(self.names) else f"site{index}"
            out[name] = {k: float(v) for k, v in metrics.items() if k not in _BOOKKEEPING}
            out[name]["samples"] = float(metrics.get(EXAMPLES_KEY, 0))
            out[name]["steps"] = float(metrics.get(STEPS_KEY, 0))
        return out

    def train_metrics(self, records: list[RecordDict], weighting_key: str) -> MetricRecord:
        """Flower's train-metrics hook: keep each site's values, return their weighted mean."""
        self._train = self._per_site(records)
        return aggregate_metricrecords(records, weighting_key)

    def evaluate_metrics(self, records: list[RecordDict], weighting_key: str) -> MetricRecord:
        """Flower's evaluate-metrics hook: keep each site's values, return their weighted mean."""
        self._evaluate = self._per_site(records)
        return aggregate_metricrecords(records, weighting_key)

    # ---------------------------------------------------------------- per round
    def _mean(self, per_site: dict[str, dict[str, float]], key: str) -> float | None:
        rows = [(m[key], m["samples"]) for m in per_site.values() if key in m]
        if not rows:
            return None
        uniform = self.config.privacy is not None
        weights = np.array([1.0 if uniform else w for _, w in rows])
        values = np.array([v for v, _ in rows])
        return float((values * weights).sum() / weights.sum())

    def _record(self, round_index: int, per_site_val: dict, per_site_train: dict) -> dict:
        record: dict[str, Any] = {"round": round_index, "global": {}, "sites": {}}
        keys = sorted({k for m in per_site_val.values() for k in m if k.startswith("val/")})
        for key in keys:
            record["global"][key] = self._mean(per_site_val, key)
        train_keys = sorted(
            {k for m in per_site_train.values() for k in m if k.startswith("train/")}
        )
        for key in train_keys:
            record["global"][key] = self._mean(per_site_train, key)
        for name in self.names:
            site = {
                k: v for k, v in per_site_val.get(name, {}).items() if k not in ("samples", "steps")
            }
            train = per_site_train.get(name, {})
            site.update({k: v for k, v in train.items() if k.startswith("train/")})
            record["sites"][name] = site
        ledger = getattr(self.strategy, "ledger", None)
        if ledger is not None:  # round 0 is the start model: nothing released yet
            epsilon = ledger.epsilon if round_index > 0 else 0.0
            record["privacy"] = {"epsilon": epsilon, "delta": ledger.delta}
        return record

    def _log(self, record: dict) -> None:
        metrics = {k: v for k, v in record["global"].items() if v is not None}
        for name, site in record["sites"].items():
            metrics.update({f"site/{name}/{k}": v for k, v in site.items()})
        if "privacy" in record:
            metrics["privacy/epsilon"] = record["privacy"]["epsilon"]
        self.tensorboard.log_metrics(metrics, step=record["round"])
        self.tensorboard.save()
        path = self.out / ROUNDS_FILE
        kept = [r for r in read_rounds(self.out) if r["round"] < record["round"]]
        lines = "".join(json.dumps(r) + "\n" for r in [*kept, record])
        write_text_atomic(path, lines)
        shown = {k: round(v, 4) for k, v in metrics.items() if "/" in k and "site/" not in k}
        log.info("round %d: %s", record["round"], shown)

    def after_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn``: log, checkpoint and save the state of a finished round."""
        if server_round == 0:
            return None
        round_index = server_round + self.rounds_done
        if round_index == 1:  # the start model, validated by every site before training
            start = {
                name: {k[len("start/") :]: v for k, v in m.items() if k.startswith("start/")}
                | {"samples": m["samples"]}
                for name, m in self._train.items()
            }
            if any(len(m) > 1 for m in start.values()):
                self._log(self._record(0, start, {}))
        self._local_steps += self._round_steps()
        record = self._record(round_index, self._evaluate, self._train)
        self._log(record)
        self._save(round_index, arrays, record)
        return MetricRecord({k: v for k, v in record["global"].items() if v is not None})

    def _round_steps(self) -> int:
        """Optimizer steps the sites took this round, all together."""
        return int(sum(m.get("steps", 0) for m in self._train.values()))

    def _save(self, round_index: int, arrays: ArrayRecord, record: dict) -> None:
        from lungvlm.lightning.checkpoint import module_checkpoint, save_checkpoint

        model = self.template.model
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        norm = getattr(self.template.datamodule, "normalization", None)
        if norm:
            model.normalization = {k: float(v) for k, v in dict(norm).items()}
        extra = {
            "federated": {
                "round": round_index,
                "sites": self.names,
                "strategy": vars(self.config.strategy).copy(),
                "privacy": record.get("privacy"),
                "config_digest": config_digest(self.config),
            }
        }
        checkpoint = module_checkpoint(
            model, self.template.datamodule, round_index, self._local_steps, extra
        )
        folder = self.out / "global"
        round_file = f"round_{round_index:03d}.ckpt"
        save_checkpoint(folder / round_file, checkpoint)
        save_checkpoint(folder / "last.ckpt", checkpoint)
        momentum = getattr(self.strategy, "momentum_vector", None)
        momentum_file = None
        if momentum is not None:
            momentum_file = f"momentum_{round_index:03d}.npz"
            buffer = io.BytesIO()
            np.savez(buffer, **dict(zip(arrays.keys(), momentum, strict=True)))
            write_bytes_atomic(folder / momentum_file, buffer.getvalue())
        # state.json is the commit point: a resume reads the files it names, so a crash
        # before it is written resumes from the previous round's files.
        state = {
            "rounds_done": round_index,
            "checkpoint": round_file,
            "momentum_file": momentum_file,
            "local_steps": self._local_steps,
            "config_digest": config_digest(self.config),
            "privacy": record.get("privacy"),
        }
        write_text_atomic(folder / STATE_FILE, json.dumps(state, indent=2))
        for old in folder.glob("momentum_*.npz"):
            if old.name != momentum_file:
                old.unlink(missing_ok=True)


def _resume(config: FederatedConfig) -> tuple[int, dict | None, dict | None]:
    """(rounds done, saved global checkpoint, momentum arrays) of ``config.out_dir``.

    Raises:
        ValueError: the folder holds a federation of another configuration.
    """
    from lungvlm.lightning.checkpoint import read_checkpoint

    state = read_state(config.out_dir)
    if state is None:
        return 0, None, None
    if state.get("config_digest") != config_digest(config):
        raise ValueError(
            f"{config.out_dir} holds a federation with another configuration (sites, stage, "
            "strategy, privacy or local epochs differ); choose another --out or delete it"
        )
    done = int(state["rounds_done"])
    folder = Path(config.out_dir) / "global"
    checkpoint = read_checkpoint(folder / str(state.get("checkpoint", "last.ckpt")))
    momentum = None
    if state.get("momentum_file"):
        path = folder / str(state["momentum_file"])
        try:
            with np.load(path, allow_pickle=False) as f:
                momentum = {k: f[k] for k in f.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"FedAvgM momentum {path} is not readable: {err}") from err
    return done, checkpoint, momentum


def shared_tokenizer(model: Any) -> str | None:
    """The report tokenizer every site must use (stage 3), as JSON; None without a decoder.

    Sites must agree on the vocabulary for their decoder weights to average. The server sets
    the model up once as a fit would: the tokenizer (and decoder weights) of
    ``model.vl.language_init`` when that checkpoint exists, else a tokenizer fitted on the
    phantom report corpus and a few inline language steps; sites then take it from the
    round's config instead of fitting their own.
    """
    from lungvlm.text.tokenizer import tokenizer_to_json

    vl = getattr(model, "vl", None)
    if vl is None:
        return None
    if vl.tokenizer is None:
        model.setup("fit")
    return tokenizer_to_json(vl.tokenizer)


def run_server(grid: Grid, config: FederatedConfig) -> dict[str, Any]:
    """Run (or resume) the federation's rounds on ``grid``.

    Returns:
        ``{"rounds_done": int, "checkpoint": path}``.
    """
    done, saved, momentum = _resume(config)
    last = Path(config.out_dir) / "global" / "last.ckpt"
    if done >= config.rounds:
        log.info("%s: all %d rounds are done (%s)", config.out_dir, config.rounds, last)
        return {"rounds_done": done, "checkpoint": str(last)}
    template = build_site(
        config, config.sites[0], Path(config.out_dir) / "server", 1, LOCAL_FIT_ARGS
    )
    if saved is not None:
        template.model.on_load_checkpoint(saved)  # a resumed stage 3 keeps its tokenizer
    tokenizer = shared_tokenizer(template.model)
    recorder = FederationRecorder(config, template, rounds_done=done)
    strategy = build_strategy(config, recorder.train_metrics, recorder.evaluate_metrics, done)
    recorder.strategy = strategy
    if saved is not None:
        template.model.load_state_dict(saved["state_dict"], strict=True)
        log.info("resuming %s after round %d of %d", config.out_dir, done, config.rounds)
    initial = ArrayRecord({k: v.detach().cpu() for k, v in template.model.state_dict().items()})
    if momentum is not None and hasattr(strategy, "momentum_vector"):
        strategy.current_arrays = initial
        strategy.momentum_vector = [momentum[k] for k in initial.keys()]
    shared = {} if tokenizer is None else {TOKENIZER_KEY: tokenizer}
    strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=config.rounds - done,
        timeout=config.timeout_s,
        train_config=ConfigRecord(
            {"local-epochs": config.local_epochs, "round-offset": done, **shared}
        ),
        evaluate_config=ConfigRecord(shared),
        evaluate_fn=recorder.after_round,
    )
    return {"rounds_done": config.rounds, "checkpoint": str(last)}


def make_server_app(config_loader: Any) -> ServerApp:
    """The federation's ServerApp.

    Args:
        config_loader: called with the Flower ``Context``; returns the
            :class:`FederatedConfig`.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, config_loader(context))

    return app
