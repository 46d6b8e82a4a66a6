"""``lungvlm fit|validate|test``: the LightningCLI subclass that trains and evaluates every stage.

``--ckpt_path`` (resume) is always read with ``weights_only=True``; our checkpoints hold plain
data only (:mod:`lungvlm.lightning.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lungvlm.lightning.module import LungVLMModule


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
      ``run_dir/checkpoints``.
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

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Build the trainer; unless loggers are configured, log to TensorBoard and CSV."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            run_dir = self._get(self.config, "run_dir")
            kwargs["logger"] = [
                TensorBoardLogger(run_dir, name="", version="tensorboard"),
                CSVLogger(run_dir, name="", version="csv"),
            ]
        return super().instantiate_trainer(**kwargs)


def run_lightning(argv: list[str]) -> None:
    """Run LungVLMCLI with ``argv`` (first element: fit, validate or test).

    Raises:
        ValueError: a ``--ckpt_path`` checkpoint that a safe (weights-only) load refuses or
            cannot read, with the reason.
    """
    import sys
    import warnings

    from lungvlm.lightning.quiet import quiet_lightning_tips

    quiet_lightning_tips()
    # LightningCLI warns when given args that also sit in sys.argv (the console script case).
    args = None if list(argv) == sys.argv[1:] else list(argv)
    with warnings.catch_warnings():
        # The module tokenises reports before the transfer on purpose (the DataModule does not).
        warnings.filterwarnings("ignore", message=r".*overridden `on_before_batch_transfer`")
        _run_cli(args)


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
