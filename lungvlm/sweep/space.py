"""The sweep YAML: which configs to layer, what to search, what to optimise, how to prune.

A sweep file (``experiments/sweeps/*.yaml``) holds everything about a sweep; the code knows
nothing about any particular search space::

    base_configs: [experiments/base.yaml, experiments/stage2.yaml, experiments/debug.yaml]
    overrides: {trainer.max_epochs: 2}          # fixed for every trial
    metric: val/seg/dice
    direction: maximize                         # or minimize
    n_trials: 20
    sampler: {type: tpe, seed: 0}               # tpe | random
    pruner: {type: median, n_startup_trials: 2} # median | hyperband | none
    space:                                      # dotted LightningCLI keys -> distributions
      model.optimizer.init_args.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
      model.encoder.init_args.fpn_channels: {type: categorical, choices: [8, 16]}

Paths in ``base_configs`` are used as given (relative ones against the working directory,
like ``lungvlm fit --config``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

DIRECTIONS: tuple[str, ...] = ("maximize", "minimize")
PARAM_TYPES: tuple[str, ...] = ("float", "int", "categorical")
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}
SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
}
SWEEP_KEYS: tuple[str, ...] = (
    "base_configs",
    "overrides",
    "metric",
    "direction",
    "pruner",
    "sampler",
    "n_trials",
    "space",
)


def _closest(value: str, options: Any) -> str:
    """A " (did you mean ...?)" hint naming the nearest valid option, or ""."""
    match = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _choose(name: str, value: Any, options: Any) -> str:
    """Return ``value`` if it is one of ``options``, else raise a ValueError with a hint."""
    if value not in options:
        raise ValueError(
            f"{name}={value!r} is not valid; expected one of {sorted(options)}"
            + _closest(value, options)
        )
    return value


@dataclass(frozen=True)
class ParamSpec:
    """One searched config key and its distribution.

    Attributes:
        key: dotted LightningCLI key, e.g. ``model.optimizer.init_args.lr``.
        type: "float", "int" or "categorical".
        low: lower bound (float/int), inclusive.
        high: upper bound (float/int), inclusive.
        log: sample on a log scale (float/int).
        step: discretisation step (float/int), None for continuous floats / step 1 ints.
        choices: the values of a categorical parameter (None, bool, int, float or str; lists
            and dicts are not allowed by Optuna's storage, so give them as YAML strings).
    """

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @classmethod
    def from_dict(cls, key: str, spec: Mapping[str, Any]) -> ParamSpec:
        """Parse ``{type: float|int|categorical, ...}`` for ``key`` (see module docstring)."""
        if not isinstance(spec, Mapping) or "type" not in spec:
            raise ValueError(f"space[{key!r}]={spec!r} must be a mapping with a 'type' entry")
        kind = _choose(f"space[{key!r}].type", spec["type"], PARAM_TYPES)
        allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log"}
        allowed |= {"step"} if kind != "categorical" else set()
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ValueError(
                f"space[{key!r}] has unknown entries {unknown}; a {kind} takes {sorted(allowed)}"
            )
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list | tuple) or not choices:
                raise ValueError(f"space[{key!r}].choices={choices!r}; expected a non-empty list")
            for choice in choices:
                if not (choice is None or isinstance(choice, bool | int | float | str)):
                    raise ValueError(
                        f"space[{key!r}].choices holds {choice!r}; expected None, bool, int, "
                        "float or str (write lists as YAML strings, e.g. '[8, 16]')"
                    )
            return cls(key=key, type=kind, choices=tuple(choices))
        if "low" not in spec or "high" not in spec:
            raise ValueError(f"space[{key!r}] ({kind}) needs 'low' and 'high'; got {dict(spec)}")
        low, high = spec["low"], spec["high"]
        cast = float if kind == "float" else int
        if float(low) > float(high):
            raise ValueError(f"space[{key!r}]: low={low} is above high={high}")
        log = bool(spec.get("log", False))
        if log and float(low) <= 0:
            raise ValueError(f"space[{key!r}]: log=true needs low > 0; got low={low}")
        step = spec.get("step")
        return cls(
            key=key,
            type=kind,
            low=cast(low),
            high=cast(high),
            log=log,
            step=None if step is None else cast(step),
        )

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        """Draw this parameter's value for ``trial`` (named by its dotted key)."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


@dataclass
class SweepConfig:
    """A parsed sweep YAML (see the module docstring for the file format).

    Attributes:
        base_configs: experiment YAML files layered in order (later ones override).
        space: the searched parameters, in file order.
        metric: logged metric to optimise, e.g. ``val/seg/dice``.
        direction: "maximize" or "minimize".
        overrides: dotted keys fixed for every trial (applied after ``base_configs``).
        n_trials: trials that should end COMPLETE or PRUNED (failed ones do not count).
        pruner: ``{type: median|hyperband|none, **arguments of the Optuna pruner}``.
        sampler: ``{type: tpe|random, seed: int, **arguments of the Optuna sampler}``.
    """

    base_configs: list[str]
    space: list[ParamSpec]
    metric: str
    direction: str = "maximize"
    overrides: dict[str, Any] = field(default_factory=dict)
    n_trials: int = 20
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": 0})

    def __post_init__(self) -> None:
        if not self.base_configs:
            raise ValueError("base_configs is empty; list at least one experiment YAML")
        if not self.space:
            raise ValueError("space is empty; give at least one searched key")
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"metric={self.metric!r}; expected a logged key like 'val/loss'")
        _choose("direction", self.direction, DIRECTIONS)
        if int(self.n_trials) < 1:
            raise ValueError(f"n_trials={self.n_trials}; expected a positive integer")
        clash = sorted(set(self.overrides) & {p.key for p in self.space})
        if clash:
            raise ValueError(f"keys {clash} are both fixed in overrides and searched in space")
        _choose("pruner.type", self.pruner.get("type"), PRUNERS)
        _choose("sampler.type", self.sampler.get("type"), SAMPLERS)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SweepConfig:
        """Build from the mapping of a sweep YAML; unknown top-level keys are an error."""
        if not isinstance(raw, Mapping):
            raise TypeError(f"a sweep config must be a mapping; got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(SWEEP_KEYS))
        if unknown:
            hint = "".join(_closest(k, SWEEP_KEYS) for k in unknown)
            raise ValueError(f"unknown sweep keys {unknown}; expected {list(SWEEP_KEYS)}{hint}")
        for required in ("base_configs", "metric", "space"):
            if required not in raw:
                raise ValueError(f"the sweep config has no {required!r} entry")
        space = raw["space"]
        if not isinstance(space, Mapping):
            raise ValueError(f"space={space!r}; expected a mapping of dotted keys")
        base = raw["base_configs"]
        return cls(
            base_configs=[str(p) for p in ([base] if isinstance(base, str) else base)],
            space=[ParamSpec.from_dict(str(k), v) for k, v in space.items()],
            metric=raw["metric"],
            direction=raw.get("direction", "maximize"),
            overrides=dict(raw.get("overrides") or {}),
            n_trials=int(raw.get("n_trials", 20)),
            pruner=dict(raw.get("pruner") or {"type": "median"}),
            sampler=dict(raw.get("sampler") or {"type": "tpe", "seed": 0}),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> SweepConfig:
        """Read a sweep YAML file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep config {path} does not exist")
        return cls.from_dict(yaml.safe_load(path.read_text()))

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Draw every searched parameter for ``trial``: dotted key -> value."""
        return {param.key: param.suggest(trial) for param in self.space}

    def build_pruner(self) -> optuna.pruners.BasePruner:
        """The Optuna pruner named by ``pruner.type`` with the remaining entries as arguments."""
        args = {k: v for k, v in self.pruner.items() if k != "type"}
        return PRUNERS[self.pruner["type"]](**args)

    def build_sampler(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        """The Optuna sampler named by ``sampler.type`` with the remaining entries as arguments.

        ``seed_offset`` is added to a configured ``seed``: a resumed study (or another worker
        joining it) must not replay the parameter sequence of the trials already run.
        """
        args = {k: v for k, v in self.sampler.items() if k != "type"}
        if args.get("seed") is not None:
            args["seed"] = int(args["seed"]) + int(seed_offset)
        return SAMPLERS[self.sampler["type"]](**args)
