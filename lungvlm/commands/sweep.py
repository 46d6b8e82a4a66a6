"""``lungvlm sweep``: run or resume an Optuna study over a LightningCLI experiment.

    lungvlm sweep --config experiments/sweeps/stage2_tiny.yaml --trials 6 --out runs/sweeps/tiny

Several workers (one per GPU or machine) share one study when given the same ``--study`` and
``--storage`` (e.g. ``postgresql://user:password@host:5432/optuna``); see docs/multi_gpu.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``sweep`` subcommand to a ``lungvlm`` sub-parser set."""
    parser = subparsers.add_parser(
        "sweep",
        help="tune hyper-parameters with Optuna (pruning, SQLite/PostgreSQL storage)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, required=True, help="sweep YAML (experiments/sweeps/*.yaml)"
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="trials to finish (COMPLETE or PRUNED) in the study, resumed ones included "
        "(default: the YAML's n_trials)",
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: sqlite:///OUT/study.db)",
    )
    parser.add_argument("--study", default=None, help="study name (default: the sweep file's name)")
    parser.add_argument(
        "--max-failures",
        type=int,
        default=None,
        help="stop this worker after that many failed trials (default: --trials)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="sweep folder: trial runs, best.yaml, trials.csv, plots (default: runs/sweeps/NAME)",
    )
    parser.set_defaults(func=run)
    return parser


def run(namespace: argparse.Namespace) -> int:
    """Run the ``sweep`` subcommand; prints the trial counts and the files written."""
    # Imported here so that `lungvlm --help` stays fast (Lightning, Optuna load on use).
    from lungvlm.sweep.report import write_report
    from lungvlm.sweep.runner import run_sweep
    from lungvlm.sweep.space import SweepConfig

    config = SweepConfig.from_yaml(namespace.config)
    name = namespace.study or namespace.config.stem
    out_dir = namespace.out or Path("runs") / "sweeps" / name
    study = run_sweep(
        config,
        out_dir,
        n_trials=namespace.trials,
        storage=namespace.storage,
        study_name=name,
        write_outputs=False,
        max_failures=namespace.max_failures,
    )
    outputs = write_report(study, config, out_dir)
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(outputs["states"].items()))
    print(f"study {name!r}: {counts or 'no trials'}")
    if outputs["best"] is not None:
        best = study.best_trial
        print(f"best trial {best.number}: {config.metric} = {best.value:.6g}, {best.params}")
        print(f"best config: {outputs['best']}")
    print(f"trials: {outputs['trials']}")
    for path in outputs["plots"]:
        print(f"plot: {path}")
    return 0
