"""``lungvlm fit|validate|test``: the LightningCLI subclass that trains and evaluates every stage.

``--ckpt_path`` (resume) is always read with ``weights_only=True``; our checkpoints hold plain
data only (:mod:`lungvlm.lightning.checkpoint`).
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lungvlm.lightning.energy import EnergyMeter
from lungvlm.lightning.module import LungVLMModule

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.csv"


class ResumableCSVLogger(CSVLogger):
    """A CSVLogger that keeps the earlier rows of ``metrics.csv`` when a fit resumes.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts. With
    ``keep_until_step`` set (the resumed checkpoint's ``global_step``: the number of steps
    done, so rows up to ``global_step - 1`` precede it) the old file is moved aside first, its
    rows before that step are written back (later rows were logged after the checkpoint and
    will be logged again), and new rows are appended. A kill between the two
    steps leaves ``.metrics.csv.before-resume``, which the next resume reads instead.

    Args:
        keep_until_step: keep rows whose ``step`` is below this; None starts a fresh file.
        *args, **kwargs: as :class:`~lightning.pytorch.loggers.CSVLogger`.
    """

    def __init__(self, *args: Any, keep_until_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_until_step = keep_until_step

    @property
    def experiment(self):  # type: ignore[override]
        """The CSV writer; on a resume, primed with the kept history (class docstring)."""
        if self._experiment is not None or self.keep_until_step is None:
            return super().experiment
        metrics = Path(self.log_dir) / METRICS_FILE
        aside = metrics.with_name(f".{METRICS_FILE}.before-resume")
        if metrics.is_file() and not aside.is_file():
            os.replace(metrics, aside)
        writer = super().experiment  # finds no metrics.csv, so deletes nothing
        if writer is not None and aside.is_file():
            header, rows = _rows_until(aside, self.keep_until_step)
            tmp = metrics.with_name(f".{METRICS_FILE}.tmp-{os.getpid()}")
            with open(tmp, "w", newline="") as fh:
                out = csv.DictWriter(fh, fieldnames=header)
                out.writeheader()
                out.writerows(rows)
            os.replace(tmp, metrics)
            aside.unlink()
            writer.metrics_keys = list(header)
            log.info("resumed %s: kept %d earlier row(s)", metrics, len(rows))
        return writer


def _rows_until(path: Path, last_step: int) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a metrics CSV whose ``step`` is < ``last_step`` (all without one)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        header = list(reader.fieldnames or [])

    def keep(row: dict[str, str]) -> bool:
        try:
            return float(row.get("step") or "-inf") < last_step
        except ValueError:
            return True

    return header, [r for r in rows if keep(r)]


def resolve_precision(precision: Any, cuda_available: bool) -> Any:
    """Turn ``precision: null`` (automatic) into "bf16-mixed" on a GPU and "32-true" on a CPU.

    Any other value is returned unchanged.
    """
    if precision is not None:
        return precision
    return "bf16-mixed" if cuda_available else "32-true"


class LungVLMCLI(LightningCLI):
    """LightningCLI with LungVLM's module, any LightningDataModule and per-run folders.

    - The model class is fixed (:class:`LungVLMModule`, configured under ``model:``); the data
      module is chosen by ``data: class_path:`` (e.g.
      ``data_modules.phantom_datamodule.PhantomDataModule``).
    - Configs are layered: ``--config experiments/base.yaml --config experiments/stage2.yaml``;
      later files override earlier ones.
    - ``run_dir`` is the run's folder: TensorBoard logs in ``run_dir/tensorboard``, CSV metrics
      in ``run_dir/csv``, checkpoints (best by ``checkpoint.monitor`` plus ``last.ckpt``) in
      ``run_dir/checkpoints``; the energy and CO2e of the fit in ``run_dir/energy.json``
      (``energy.*``: :class:`~lungvlm.lightning.energy.EnergyMeter`).
    - ``trainer.precision: null`` means bf16-mixed when a CUDA GPU is present, fp32 otherwise.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=LungVLMModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_data=True,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``run_dir`` and the checkpoint callback's arguments (``checkpoint.*``)."""
        parser.add_argument(
            "--run_dir",
            type=str,
            default="runs/default",
            help="folder for this run's logs, checkpoints and samples",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "best"})
        parser.add_lightning_class_args(EnergyMeter, "energy")
        parser.link_arguments("run_dir", "trainer.default_root_dir")
        parser.link_arguments(
            "run_dir", "checkpoint.dirpath", compute_fn=lambda d: str(Path(d) / "checkpoints")
        )

    def before_instantiate_classes(self) -> None:
        """Resolve ``precision: null`` (automatic) and make ``--ckpt_path`` load safely.

        Raises:
            ValueError: ``--weights_only false``: LungVLM never unpickles a checkpoint.
        """
        config = self.config.get(str(self.subcommand), self.config)
        if "weights_only" in config:
            if config["weights_only"] is False:
                raise ValueError(
                    "--weights_only false is refused: LungVLM reads every checkpoint with "
                    "weights_only=True (a pickled object in a checkpoint can run code)"
                )
            config["weights_only"] = True
        trainer = config.get("trainer")
        if trainer is not None and "precision" in trainer:
            trainer["precision"] = resolve_precision(
                trainer["precision"], torch.cuda.is_available()
            )

    def _resume_checkpoint(self) -> dict | None:
        """The ``--ckpt_path`` checkpoint of ``fit`` (read once, safely), else None.

        A path that is not a file (or "last"/"best") gives None: Lightning then resolves or
        reports it.

        Raises:
            ValueError: the file is corrupt or holds objects a safe load refuses.
        """
        if getattr(self, "_resume_cache", False) is not False:
            return self._resume_cache
        from lungvlm.lightning.checkpoint import read_checkpoint

        self._resume_cache: dict | None = None
        config = self.config.get(str(self.subcommand), {}) if self.subcommand == "fit" else {}
        ckpt_path = config.get("ckpt_path") if hasattr(config, "get") else None
        if ckpt_path and Path(str(ckpt_path)).is_file():
            try:
                self._resume_cache = read_checkpoint(ckpt_path)
            except (ValueError, OSError) as err:  # one line naming the file, not a traceback
                raise ValueError(f"--ckpt_path: {err}") from err
        return self._resume_cache

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Build the trainer; unless loggers are configured, log to TensorBoard and CSV.

        On a resumed fit the CSV logger keeps the earlier ``metrics.csv`` rows up to the
        checkpoint's step (:class:`ResumableCSVLogger`).
        """
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            run_dir = self._get(self.config, "run_dir")
            resumed = self._resume_checkpoint()
            keep = None
            if resumed is not None:
                keep = int(resumed.get("global_step", sys.maxsize))
            kwargs["logger"] = [
                TensorBoardLogger(run_dir, name="", version="tensorboard"),
                ResumableCSVLogger(
                    run_dir,
                    name="",
                    version="csv",
                    keep_until_step=keep,
                    flush_logs_every_n_steps=1,
                ),  # flushed every step: a kill -9 loses at most one row
            ]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """On a resume, take the tokenizer from the checkpoint instead of training a new one."""
        from lungvlm.lightning.language import tokenizer_from_checkpoint

        resumed = self._resume_checkpoint()
        vl = getattr(self.model, "vl", None)
        if resumed is None or vl is None:
            return
        tokenizer = tokenizer_from_checkpoint(resumed)
        if tokenizer is not None:
            vl.tokenizer = tokenizer  # setup() then skips fitting (and pretraining) a new one
            log.info("resume: tokenizer of %d tokens restored from the checkpoint", len(tokenizer))


def run_lightning(argv: list[str]) -> None:
    """Run LungVLMCLI with ``argv`` (first element: fit, validate or test).

    Raises:
        ValueError: a ``--ckpt_path`` checkpoint that a safe (weights-only) load refuses or
            cannot read, with the reason.
    """
    import sys
    import warnings

    from lungvlm.lightning.quiet import quiet_lightning_tips

    check_config_files(argv)
    check_ckpt_path(argv)
    quiet_lightning_tips()
    # LightningCLI warns when given args that also sit in sys.argv (the console script case).
    args = None if list(argv) == sys.argv[1:] else list(argv)
    with warnings.catch_warnings():
        # The module tokenises reports before the transfer on purpose (the DataModule does not).
        warnings.filterwarnings("ignore", message=r".*overridden `on_before_batch_transfer`")
        _run_cli(args)


def check_config_files(argv: list[str]) -> None:
    """Check every ``--config`` file exists and is YAML, with an error naming the file.

    jsonargparse reports a YAML syntax error without the file's name (``"<unicode string>"``).

    Raises:
        ValueError: a missing, unreadable or malformed config file.
    """
    import yaml

    argv = list(argv)
    paths = [b for a, b in zip(argv, argv[1:], strict=False) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"--config {path}: the file does not exist")
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--config {path}: cannot read the file: {err}") from err
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
            problem = getattr(err, "problem", None) or str(err)
            raise ValueError(f"--config {path}: not valid YAML{line}: {problem}") from err


def check_ckpt_path(argv: list[str]) -> None:
    """Read a ``--ckpt_path`` file safely once, so a corrupt one is an error naming it.

    LightningCLI itself reads the file while parsing and lets, e.g., an ``IndexError`` of a
    truncated file escape as a traceback.

    Raises:
        ValueError: the file is corrupt or holds objects a safe load refuses.
    """
    from lungvlm.lightning.checkpoint import read_checkpoint

    argv = list(argv)
    paths = [b for a, b in zip(argv, argv[1:], strict=False) if a == "--ckpt_path"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--ckpt_path=")]
    for path in paths:
        if Path(path).is_file():
            try:
                read_checkpoint(path)
            except (ValueError, OSError) as err:
                raise ValueError(f"--ckpt_path: {err}") from err


def _run_cli(args: list[str] | None) -> None:
    import pickle

    from lungvlm.lightning.checkpoint import refused_global

    try:
        LungVLMCLI(args=args)
    except pickle.UnpicklingError as err:
        refused = refused_global(err)
        reason = (
            f"it holds a Python object ({refused}) that a safe load refuses (LungVLM reads "
            "checkpoints with weights_only=True; a pickled object can run code)"
            if refused
            else "it is corrupt or not a checkpoint"
        )
        raise ValueError(f"--ckpt_path: the checkpoint cannot be loaded: {reason}") from err
