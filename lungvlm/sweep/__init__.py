"""Optuna hyper-parameter sweeps over LightningCLI experiments (``lungvlm sweep``).

- :mod:`lungvlm.sweep.space`: the sweep YAML (:class:`SweepConfig`, :class:`ParamSpec`).
- :mod:`lungvlm.sweep.runner`: trials as LightningCLI ``fit`` runs with pruning
  (:func:`run_sweep`).
- :mod:`lungvlm.sweep.report`: ``best.yaml``, ``trials.csv`` and plots.
- :mod:`lungvlm.sweep.cli`: the ``sweep`` subcommand.
"""

from lungvlm.sweep.runner import cli_args, default_storage, open_study, run_sweep
from lungvlm.sweep.space import ParamSpec, SweepConfig

__all__ = ["ParamSpec", "SweepConfig", "cli_args", "default_storage", "open_study", "run_sweep"]
