"""Optuna hyper-parameter sweeps over LightningCLI experiments (``lungvlm sweep``).

- :mod:`lungvlm.sweep.space`: the sweep YAML (:class:`SweepConfig`, :class:`ParamSpec`).
- :mod:`lungvlm.sweep.runner`: trials as LightningCLI ``fit`` runs with pruning
  (:func:`run_sweep`).
- :mod:`lungvlm.sweep.report`: ``best.yaml``, ``trials.csv`` and plots.
- :mod:`lungvlm.commands.sweep`: the ``sweep`` subcommand.

The names below are imported on first use, so that ``lungvlm --help`` (which imports
:mod:`lungvlm.commands.sweep`) does not load Lightning and Optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ParamSpec": "lungvlm.sweep.space",
    "SweepConfig": "lungvlm.sweep.space",
    "cli_args": "lungvlm.sweep.runner",
    "default_storage": "lungvlm.sweep.runner",
    "open_study": "lungvlm.sweep.runner",
    "run_sweep": "lungvlm.sweep.runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lungvlm.sweep' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
