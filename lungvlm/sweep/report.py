"""What a sweep leaves behind: ``best.yaml``, ``trials.csv`` and plots.

``best.yaml`` is one self-contained LightningCLI config (the base configs, the fixed overrides
and the best trial's parameters merged by the real parser), so
``lungvlm fit --config OUT/best.yaml`` retrains the best setting unchanged.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from lightning.pytorch.cli import LightningArgumentParser
from optuna.trial import TrialState

from lungvlm.commands.fit import LungVLMCLI
from lungvlm.sweep.runner import cli_args
from lungvlm.sweep.space import SweepConfig

log = logging.getLogger(__name__)


class ConfigOnlyCLI(LungVLMCLI):
    """Parse (and validate) a layered config without building model, data or trainer.

    ``trainer.precision: null`` (automatic) is kept as written; ``fit`` resolves it, and a
    config that does not parse raises ``argparse.ArgumentError`` instead of exiting.
    """

    def __init__(self, args: list[str]) -> None:
        super().__init__(args=args, run=False)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs["exit_on_error"] = False
        return super().init_parser(**kwargs)

    def before_instantiate_classes(self) -> None:
        """Keep ``precision: null`` (automatic) unresolved in the written config."""

    def instantiate_classes(self) -> None:
        """Build nothing: only the parsed config is wanted."""

    def dump(self) -> str:
        """The merged config as LightningCLI YAML."""
        return self.parser.dump(self.config, skip_none=False)


def merged_config_yaml(
    config: SweepConfig, params: dict[str, Any], run_dir: str | Path, header: str = ""
) -> str:
    """Merge ``config``'s base configs, overrides and ``params`` into one LightningCLI YAML.

    Args:
        config: the sweep.
        params: parameter values, dotted key -> value.
        run_dir: ``run_dir`` written into the config.
        header: comment lines put on top (each line is prefixed with "# ").
    """
    text = ConfigOnlyCLI(cli_args(config, params, run_dir)).dump()
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + text


def write_best_config(study: optuna.Study, config: SweepConfig, out_dir: str | Path) -> Path | None:
    """Write ``out_dir/best.yaml`` for the best COMPLETE trial; None if there is none."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        log.warning("study %r has no complete trial: no best.yaml written", study.study_name)
        return None
    best = study.best_trial
    out_dir = Path(out_dir)
    header = (
        f"Best trial {best.number} of Optuna study {study.study_name!r}: "
        f"{config.metric} = {best.value:.6g} ({config.direction}).\n"
        f"Sampled: {best.params}\n"
        f"Retrain: lungvlm fit --config {out_dir / 'best.yaml'}"
    )
    text = merged_config_yaml(config, best.params, out_dir / "best", header)
    path = out_dir / "best.yaml"
    path.write_text(text)
    return path


def write_trials_csv(study: optuna.Study, out_dir: str | Path) -> Path:
    """Write ``out_dir/trials.csv``: one row per trial (number, state, value, params, ...)."""
    path = Path(out_dir) / "trials.csv"
    study.trials_dataframe().to_csv(path, index=False)
    return path


def write_plots(study: optuna.Study, out_dir: str | Path) -> list[Path]:
    """Write the optimisation history and parameter importances as PNG where possible.

    The history needs one complete trial and the importances two (with some variation in
    the parameters); a plot that cannot be drawn is skipped with a log message.

    Returns:
        The PNG files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    plots = {"optimization_history.png": (optuna_plots.plot_optimization_history, 1)}
    plots["param_importances.png"] = (optuna_plots.plot_param_importances, 2)
    written: list[Path] = []
    for name, (plot, needed) in plots.items():
        if n_complete < needed:
            log.info("%s needs %d complete trials, the study has %d", name, needed, n_complete)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            log.warning("could not draw %s: %s", name, err)
            continue
        figure = axes.figure
        path = Path(out_dir) / name
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def write_report(study: optuna.Study, config: SweepConfig, out_dir: str | Path) -> dict[str, Any]:
    """Write every sweep output into ``out_dir``.

    Returns:
        ``{"best": Path | None, "trials": Path, "plots": [Path, ...], "states": {name: n}}``.
    """
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return {
        "best": write_best_config(study, config, out_dir),
        "trials": write_trials_csv(study, out_dir),
        "plots": write_plots(study, out_dir),
        "states": states,
    }
