"""``lungvlm data-efficiency``: train one stage at several label fractions, from stage 1 and
from scratch, with the same budget, and write the Dice curves (issue 17, section 5).

Each run is a real ``lungvlm fit`` in a subprocess (``OUT/<init>-labels-<pct>/``) of the given
configs plus ``OUT/overlay.yaml`` (written here: the stage's whole-chest callbacks are replaced
by the learning-rate monitor, the checkpoint watches ``val/seg/dice``) and, per run,
``--data.init_args.label_fraction``, ``--model.init_from`` (the stage-1 checkpoint, or null for
scratch), ``--trainer.max_epochs`` and ``--seed_everything``. A finished run leaves
``done.json`` (its settings and final metrics) and is skipped by a rerun with the same settings,
so the study resumes after a crash. ``OUT/data_efficiency.json`` (runs + summary of
:func:`lungvlm.evaluation.data_efficiency.data_efficiency_summary`) and
``OUT/data_efficiency.png`` are written atomically; ``lungvlm audit --data-efficiency FILE``
adds them to the audit page.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

from lungvlm.commands.options import add_progress
from lungvlm.evaluation.data_efficiency import DEFAULT_FRACTIONS, INITS

log = logging.getLogger(__name__)

OVERLAY = """# Written by `lungvlm data-efficiency`: crop training only, checkpoint on the crop Dice.
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.LearningRateMonitor
      init_args:
        logging_interval: step
checkpoint:
  monitor: val/seg/dice
  mode: max
"""
DEFAULT_CONFIGS = ("experiments/base.yaml", "experiments/stage2.yaml")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``data-efficiency`` subcommand."""
    parser = subparsers.add_parser(
        "data-efficiency",
        help="Dice at 5-100 %% of the labels, from stage 1 and from scratch (resumable)",
        description=(
            "Train a stage (default stage 2) at several label fractions, initialised from the "
            "stage-1 checkpoint and from scratch with the same number of epochs, and write "
            "OUT/data_efficiency.json and OUT/data_efficiency.png (final val/seg/dice per run)."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="study folder (resumable)")
    parser.add_argument(
        "--config", action="append", default=None,
        help=f"fit configs, in order (default: {' '.join(DEFAULT_CONFIGS)}); repeat the flag",
    )  # fmt: skip
    parser.add_argument(
        "--stage1-ckpt", type=Path, default=Path("runs/stage1/checkpoints/last.ckpt"),
        help="stage-1 checkpoint the pretrained runs start from",
    )  # fmt: skip
    parser.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS),
                        help="label fractions in (0, 1]")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=4, help="epochs of every run (same budget)")
    parser.add_argument("--seed", type=int, default=1234, help="seed_everything of every run")
    parser.add_argument(
        "--fit-arg", action="append", default=[],
        help="extra `lungvlm fit` argument for every run, e.g. --fit-arg=--data.init_args.n_train=256",
    )  # fmt: skip
    add_progress(parser)
    parser.set_defaults(func=run)
    return parser


def _settings(args: argparse.Namespace, init: str, fraction: float, configs) -> dict:
    return {"init": init, "fraction": fraction, "epochs": args.epochs, "seed": args.seed,
            "configs": [str(c) for c in configs], "fit_args": list(args.fit_arg),
            "stage1_ckpt": str(args.stage1_ckpt) if init == "stage1" else None}  # fmt: skip


def _fit(argv: list[str], log_path: Path) -> int:
    """Run ``lungvlm fit`` in a subprocess, its output into ``log_path``."""
    with open(log_path, "w") as handle:
        return subprocess.run(
            [sys.executable, "-m", "lungvlm.cli", *argv], stdout=handle, stderr=subprocess.STDOUT
        ).returncode


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lungvlm.export.writer import write_bytes_atomic

    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for init, points in summary["curves"].items():
        xs = [100 * p[0] for p in points if p[1] is not None]
        ys = [p[1] for p in points if p[1] is not None]
        ax.plot(xs, ys, marker="o", label=init)
    ax.set(xscale="log", xlabel="labelled training crops (%)", ylabel="val crop Dice",
           title="data efficiency")  # fmt: skip
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def run(args: argparse.Namespace) -> int:
    """Execute ``lungvlm data-efficiency``; prints the curves and the written files."""
    from lungvlm.commands.progress import progress_bars
    from lungvlm.evaluation.data_efficiency import (
        data_efficiency_summary,
        read_final_metrics,
        run_name,
    )
    from lungvlm.export.writer import write_text_atomic
    from lungvlm.progress import update as progress_update

    if args.epochs < 1:
        raise ValueError(f"--epochs={args.epochs} must be >= 1")
    for fraction in args.fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"--fractions: {fraction} is not in (0, 1]")
    configs = [Path(c) for c in (args.config or DEFAULT_CONFIGS)]
    for config in configs:
        if not config.is_file():
            raise ValueError(f"--config {config} does not exist")
    if not args.stage1_ckpt.is_file():
        raise ValueError(
            f"--stage1-ckpt {args.stage1_ckpt} does not exist: train stage 1 first "
            "(make train-stage1) or point to its checkpoint"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    overlay = write_text_atomic(args.out / "overlay.yaml", OVERLAY)
    runs, results = [], {init: {} for init in INITS}
    plan = [(init, fraction) for init in INITS for fraction in sorted(args.fractions)]
    with progress_bars(args.progress):
        for index, (init, fraction) in enumerate(plan):
            progress_update("data-efficiency runs", index, len(plan))
            name = run_name(init, fraction)
            run_dir = args.out / name
            settings = _settings(args, init, fraction, configs)
            done = run_dir / "done.json"
            stored = json.loads(done.read_text()) if done.is_file() else None
            if stored is None or stored.get("settings") != settings:
                argv = ["fit"]
                for config in [*configs, overlay]:
                    argv += ["--config", str(config)]
                init_from = str(args.stage1_ckpt) if init == "stage1" else "null"
                argv += [f"--run_dir={run_dir}", f"--data.init_args.label_fraction={fraction}",
                         f"--model.init_from={init_from}", f"--trainer.max_epochs={args.epochs}",
                         f"--seed_everything={args.seed}", *args.fit_arg]  # fmt: skip
                run_dir.mkdir(parents=True, exist_ok=True)
                log.info("data efficiency: %s", name)
                print(f"training {name} ...", flush=True)
                code = _fit(argv, run_dir / "fit.log")
                if code != 0:
                    raise RuntimeError(
                        f"`lungvlm fit` of {name} failed ({code}): see {run_dir}/fit.log"
                    )
                metrics = read_final_metrics(run_dir / "csv" / "metrics.csv")
                stored = {"settings": settings, "metrics": metrics}
                write_text_atomic(done, json.dumps(stored, indent=2))
            dice = stored["metrics"].get("val/seg/dice")
            results[init][float(fraction)] = dice
            runs.append({"name": name, **stored})
            print(f"{name}: val/seg/dice {dice}")
        progress_update("data-efficiency runs", len(plan), len(plan))
    summary = data_efficiency_summary(results)
    data = {"runs": runs, "summary": summary}
    write_text_atomic(args.out / "data_efficiency.json", json.dumps(data, indent=2))
    _plot(summary, args.out / "data_efficiency.png")
    print(f"pretrained at 20 %: {summary['pretrained_20']}; scratch at 100 %: "
          f"{summary['scratch_100']}; matches: {summary['matches']}")  # fmt: skip
    print(f"wrote {args.out / 'data_efficiency.json'} and {args.out / 'data_efficiency.png'}")
    return 0
