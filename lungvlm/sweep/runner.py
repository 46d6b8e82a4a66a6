"""Run an Optuna study whose trials are ``lungvlm fit`` runs built by LightningCLI.

Each trial layers the sweep's ``base_configs``, then its fixed ``overrides``, then the sampled
parameters (``--key=value``), then ``--run_dir OUT/trial_N``, builds model, data module and
trainer with :class:`SweepTrialCLI` (``run=False``), adds Optuna's Lightning pruning callback
and calls ``trainer.fit``. The objective value is ``trainer.callback_metrics[metric]`` after
the last epoch.

Conventions chosen here:

- ``n_trials`` counts trials that ended COMPLETE or PRUNED, as Optuna's ``MaxTrialsCallback``
  does. A resumed study (same name and storage) runs only the missing ones. Failed trials
  (an exception, a config that does not parse, a NaN metric) are recorded as FAIL, do not
  count, and the study goes on; one call gives up after ``max_failures`` of them (default:
  ``n_trials``), so a config that always fails cannot loop for ever.
- RDB storages get a heartbeat: a trial whose worker was killed is marked FAIL after
  ``grace_period_s`` instead of staying RUNNING for ever.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import optuna
from lightning.pytorch.cli import LightningArgumentParser
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from lungvlm.commands.fit import LungVLMCLI
from lungvlm.sweep.space import SweepConfig

log = logging.getLogger(__name__)

#: Trial states that count towards ``n_trials``.
COUNTED_STATES: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 300


def format_value(value: Any) -> str:
    """Write a config value as LightningCLI reads it after ``--key=``.

    Strings are passed through (jsonargparse parses them as YAML, so "[8, 16]" becomes a
    list); other values are written as JSON (``True`` -> ``true``, ``None`` -> ``null``).
    """
    return value if isinstance(value, str) else json.dumps(value)


def cli_args(config: SweepConfig, params: dict[str, Any], run_dir: str | Path) -> list[str]:
    """LightningCLI arguments of one trial (without a subcommand: ``run=False``).

    Args:
        config: the sweep.
        params: sampled values, dotted key -> value.
        run_dir: the trial's folder (logs and checkpoints).

    Returns:
        ``["--config", base_1, ..., "--k=v" for overrides then params, "--run_dir", run_dir]``.
    """
    args: list[str] = []
    for path in config.base_configs:
        args += ["--config", str(path)]
    for key, value in {**config.overrides, **params}.items():
        args.append(f"--{key}={format_value(value)}")
    return [*args, "--run_dir", str(run_dir)]


class SweepTrialCLI(LungVLMCLI):
    """:class:`LungVLMCLI` that adds extra trainer callbacks and raises on bad arguments.

    The callbacks travel through LightningCLI's ``trainer_defaults`` path, so the configured
    ones (``trainer.callbacks``, ``checkpoint``) are kept. A config that does not parse raises
    ``argparse.ArgumentError`` instead of exiting the process, so Optuna records a FAIL.
    """

    def __init__(self, args: list[str], callbacks: list[L.Callback] | None = None) -> None:
        self._extra_callbacks = list(callbacks or [])
        super().__init__(args=args, run=False)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs["exit_on_error"] = False
        return super().init_parser(**kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        if self._extra_callbacks:
            previous = self.trainer_defaults.get("callbacks") or []
            previous = previous if isinstance(previous, list) else [previous]
            self.trainer_defaults = {
                **self.trainer_defaults,
                "callbacks": [*previous, *self._extra_callbacks],
            }
        return super().instantiate_trainer(**kwargs)


class TrialObjective:
    """The Optuna objective: one ``fit`` per trial in ``out_dir/trial_N``.

    Args:
        config: the sweep.
        out_dir: the sweep folder.
    """

    def __init__(self, config: SweepConfig, out_dir: str | Path) -> None:
        self.config = config
        self.out_dir = Path(out_dir)

    def __call__(self, trial: optuna.trial.Trial) -> float:
        params = self.config.suggest(trial)
        run_dir = self.out_dir / f"trial_{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        pruning = PyTorchLightningPruningCallback(trial, monitor=self.config.metric)
        cli = SweepTrialCLI(cli_args(self.config, params, run_dir), callbacks=[pruning])
        if cli.trainer.world_size > 1:
            # A DDP launcher re-runs the whole process per rank, which would run the study
            # once per rank; scale a sweep out with one worker per device instead.
            raise ValueError(
                f"trial {trial.number} asks for {cli.trainer.world_size} processes; sweep "
                "trials train on one device each: start one `lungvlm sweep` worker per GPU "
                "on a shared --storage (docs/multi_gpu.md)"
            )
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        checkpoint = cli.trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.best_model_path:
            trial.set_user_attr("best_checkpoint", str(checkpoint.best_model_path))
        value = cli.trainer.callback_metrics.get(self.config.metric)
        if value is None:
            logged = sorted(cli.trainer.callback_metrics)
            raise KeyError(
                f"metric {self.config.metric!r} was not logged by trial {trial.number}; "
                f"logged keys: {logged}"
            )
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"trial {trial.number}: {self.config.metric}={value} is not finite")
        return value


def default_storage(out_dir: str | Path) -> str:
    """SQLite file ``out_dir/study.db`` as an SQLAlchemy URL (absolute path)."""
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def open_study(config: SweepConfig, storage: str, study_name: str) -> optuna.Study:
    """Create the study, or load it when one of that name exists in ``storage``.

    Args:
        config: the sweep (direction, sampler, pruner).
        storage: an SQLAlchemy URL (``sqlite:///...``, ``postgresql://user:pw@host/db``).
        study_name: the study's name in ``storage``; workers sharing it share the study.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(
            storage, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=GRACE_PERIOD_S
        )
    study = optuna.create_study(
        storage=rdb,
        study_name=study_name,
        direction=config.direction,
        sampler=config.build_sampler(),
        pruner=config.build_pruner(),
        load_if_exists=True,
    )
    # Resuming with the same seed would replay the first trials' parameters: offset it.
    existing = len(study.get_trials(deepcopy=False))
    if existing:
        study.sampler = config.build_sampler(seed_offset=existing)
    return study


def counted_trials(study: optuna.Study) -> int:
    """Number of trials that count towards ``n_trials`` (COMPLETE or PRUNED)."""
    return len(study.get_trials(deepcopy=False, states=COUNTED_STATES))


class StopAfterFailures:
    """Optuna callback: stop the study once ``max_failures`` trials of this call have failed."""

    def __init__(self, max_failures: int) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures={max_failures}; expected a positive integer")
        self.max_failures = max_failures
        self.failures = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.failures += 1
            if self.failures >= self.max_failures:
                log.warning("%d trials failed: stopping this sweep worker", self.failures)
                study.stop()


def run_sweep(
    config: SweepConfig,
    out_dir: str | Path,
    n_trials: int | None = None,
    storage: str | None = None,
    study_name: str = "lungvlm-sweep",
    write_outputs: bool = True,
    max_failures: int | None = None,
) -> optuna.Study:
    """Run (or resume) a sweep until ``n_trials`` trials are COMPLETE or PRUNED.

    Args:
        config: the sweep.
        out_dir: the sweep folder: ``trial_N/`` runs, ``study.db``, ``best.yaml``,
            ``trials.csv`` and plots.
        n_trials: overrides ``config.n_trials``.
        storage: SQLAlchemy URL of the Optuna storage; default ``sqlite:///OUT/study.db``.
        study_name: the study's name in the storage.
        write_outputs: write ``best.yaml``, ``trials.csv`` and the plots at the end.
        max_failures: stop this call after that many failed trials (default: ``n_trials``).

    Returns:
        The study.
    """
    target = config.n_trials if n_trials is None else int(n_trials)
    if target < 1:
        raise ValueError(f"n_trials={n_trials}; expected a positive integer")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(config, storage or default_storage(out_dir), study_name)
    remaining = target - counted_trials(study)
    log.info(
        "study %r: %d of %d trials done, running %d",
        study_name,
        target - max(remaining, 0),
        target,
        max(remaining, 0),
    )
    if remaining > 0:
        callbacks = [
            optuna.study.MaxTrialsCallback(target, states=COUNTED_STATES),
            StopAfterFailures(target if max_failures is None else max_failures),
        ]
        study.optimize(
            TrialObjective(config, out_dir),
            catch=(Exception,),
            callbacks=callbacks,
            gc_after_trial=True,
        )
    if write_outputs:
        from lungvlm.sweep.report import write_report  # report imports this module

        write_report(study, config, out_dir)
    return study
