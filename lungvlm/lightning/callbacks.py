"""Lightning callbacks of LungVLM training: whole-scan validation (:class:`WholeScanValidation`).

Crop metrics (``val/seg/dice``) guide training; whole chests judge it (DESIGN.md, "Two
granularities"). This callback segments a few whole validation chests with the current model and
logs the detection numbers, so that a stage can select its checkpoints by them.
"""

from __future__ import annotations

import difflib
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from lungvlm.evaluation.detection import EvaluationResult, EvaluationScan, evaluate_scans
from lungvlm.labels import PHANTOM_SIZES
from lungvlm.types import WholeChest

#: Sizes of the chests a DataModule's ``validation_chests`` renders.
#: Metrics logged as ``val/det/<name>`` on every validation epoch (held between measurements).
DETECTION_METRICS: tuple[str, ...] = ("cpm", "sensitivity", "fps_per_scan", "mean_dice")
#: Settings read from the DataModule's hyper-parameters: the model's training crop and grid.
DATA_SETTINGS: tuple[str, ...] = ("crop_size_vox", "spacing_mm", "context_scale")


def _nearest(value: str, options: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(value), list(options), n=1, cutoff=0.0)
    return f"; did you mean {close[0]!r}?" if close else ""


def evaluation_scan(chest: WholeChest) -> EvaluationScan:
    """A :class:`~lungvlm.types.WholeChest` as a row of :func:`evaluate_scans`."""
    return EvaluationScan(
        chest.case_id,
        chest.image_hu,
        chest.spacing_mm,
        chest.origin_lps_mm,
        chest.nodule_labels,
        list(chest.nodule_diameters_mm),
        chest.lung_mask,
    )


def detection_metrics(result: EvaluationResult) -> dict[str, float]:
    """``{name: value}`` of :data:`DETECTION_METRICS`; NaN where undefined (no reference nodule)."""
    values = {
        "cpm": None if result.froc is None else result.froc.cpm,
        "sensitivity": result.sensitivity,
        "fps_per_scan": result.fps_per_scan,
        "mean_dice": result.mean_dice,
    }
    return {k: math.nan if v is None else float(v) for k, v in values.items()}


class WholeScanValidation(L.Callback):
    """Segment whole validation chests every few epochs and log detection FROC/CPM.

    What it measures. The chests come from the DataModule's one explicit method
    ``validation_chests(n_chests, phantom_size)`` (a list of :class:`~lungvlm.types.WholeChest`;
    ``PhantomDataModule`` renders phantoms of its validation seed range). They are fetched once
    and cached. Each measurement runs :func:`~lungvlm.evaluation.detection.evaluate_scans`
    (``prepare_scan`` + ``segment_scan``, then per-nodule Dice and the LUNA16 FROC) with the model
    in eval mode under ``torch.inference_mode()``, as inference would: windows of the training
    crop (``datamodule.hparams.crop_size_vox``), the training grid (``spacing_mm``), its context
    crop (``context_scale``) and the model's HU normalisation (``pl_module.normalization``).
    Train mode is restored afterwards.

    When. On validation epoch ``e`` of a fit it measures when ``(e + 1) % every_n_epochs == 0``
    and on the last epoch (``trainer.max_epochs``); at most once per epoch; on every
    ``trainer.validate``. Never during the sanity check or ``fast_dev_run`` (no checkpoints are
    written then).

    Logged keys, on every validation epoch end: ``val/det/cpm``, ``val/det/sensitivity``,
    ``val/det/fps_per_scan`` and ``val/det/mean_dice``; plus ``val/det/seconds`` (wall time of
    the measurement, including the first one's rendering of the chests) on epochs that measured.
    On a CPU one default-size chest costs about as much as a stage-2 training epoch, so
    measuring on every epoch is not an option there; instead, on an epoch that does not
    measure, the last measured values are logged again (sample and hold), so
    ``ModelCheckpoint(monitor="val/det/cpm")`` finds its key on every epoch. A held value
    equals the best it was measured as, so it never replaces the checkpoint of the epoch that
    measured it (ModelCheckpoint saves on strict improvement, so a tie also keeps the earlier
    measured epoch). Before the first measurement the values are NaN, which ModelCheckpoint
    ranks worst: the first measured epoch replaces that checkpoint, but until then "best" is
    the first epoch's model (use ``last.ckpt`` of a run stopped earlier). ``EarlyStopping``
    stops on NaN by default: do not early-stop on ``val/det/*`` unless ``every_n_epochs=1``.
    The held values are saved in the checkpoint, so a resumed run holds them too.

    Without a ``validation_chests`` method on the DataModule, or without a segmentation head
    on the model, it warns once and logs nothing. Under DDP, rank 0 measures and broadcasts the
    values, and every rank logs them.

    Args:
        every_n_epochs: measure every this many epochs (and on the last one).
        n_chests: number of whole validation chests.
        threshold: probability threshold of the detected instances and the Dice masks.
        overlap: overlap fraction of neighbouring sliding windows.
        sw_batch_size: sliding windows per forward pass.
        phantom_size: size of the chests asked of the DataModule, "default" or "tiny".
    """

    def __init__(
        self,
        every_n_epochs: int = 2,
        n_chests: int = 2,
        threshold: float = 0.5,
        overlap: float = 0.25,
        sw_batch_size: int = 4,
        phantom_size: str = "default",
    ) -> None:
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int):
            raise TypeError(f"every_n_epochs={every_n_epochs!r} must be an int")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs!r} must be >= 1")
        if isinstance(n_chests, bool) or not isinstance(n_chests, int) or n_chests < 1:
            raise ValueError(f"n_chests={n_chests!r} must be a positive int")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold={threshold!r} must be a probability in (0, 1)")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap={overlap!r} must be in [0, 1)")
        if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int):
            raise TypeError(f"sw_batch_size={sw_batch_size!r} must be an int")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size={sw_batch_size!r} must be >= 1")
        if phantom_size not in PHANTOM_SIZES:
            raise ValueError(
                f"phantom_size={phantom_size!r} is not one of {PHANTOM_SIZES}"
                + _nearest(phantom_size, PHANTOM_SIZES)
            )
        self.every_n_epochs = every_n_epochs
        self.n_chests = n_chests
        self.threshold = float(threshold)
        self.overlap = float(overlap)
        self.sw_batch_size = sw_batch_size
        self.phantom_size = phantom_size
        self.last_metrics: dict[str, float] | None = None
        self.last_measured_epoch: int | None = None
        self._chests: list[WholeChest] | None = None
        self._chests_source: int | None = None  # id() of the DataModule they came from
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ schedule
    def is_due(self, trainer: L.Trainer) -> bool:
        """Whether this validation epoch measures (see the class docstring)."""
        if trainer.state.fn == TrainerFn.VALIDATING:
            return True
        epoch = trainer.current_epoch
        if self.last_measured_epoch == epoch:  # several validations per epoch: measure once
            return False
        last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch + 1
        return (epoch + 1) % self.every_n_epochs == 0 or last

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    # ------------------------------------------------------------------ measurement
    def chests(self, datamodule: Any) -> list[WholeChest]:
        """The DataModule's validation chests, fetched on the first call and cached."""
        if self._chests is None or self._chests_source != id(datamodule):
            chests = list(datamodule.validation_chests(self.n_chests, self.phantom_size))
            wrong = [type(c).__name__ for c in chests if not isinstance(c, WholeChest)]
            if wrong:
                raise TypeError(
                    f"{type(datamodule).__name__}.validation_chests returned {wrong[0]}; "
                    "expected a list of lungvlm.types.WholeChest"
                )
            self._chests, self._chests_source = chests, id(datamodule)
        return self._chests

    @staticmethod
    def data_settings(datamodule: Any) -> dict[str, float]:
        """The model's crop size, spacing and context scale from the DataModule's hparams.

        Raises:
            ValueError: the DataModule does not record them.
        """
        hparams = getattr(datamodule, "hparams", {}) or {}
        missing = [name for name in DATA_SETTINGS if name not in hparams]
        if missing:
            raise ValueError(
                f"WholeScanValidation needs the DataModule's {', '.join(DATA_SETTINGS)} "
                f"hyper-parameters (the training crop and grid); {type(datamodule).__name__} "
                f"lacks {', '.join(missing)}"
            )
        return {name: hparams[name] for name in DATA_SETTINGS}

    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, chests: list[WholeChest]
    ) -> EvaluationResult:
        """Segment ``chests`` with ``pl_module`` as inference does and evaluate them."""
        settings = self.data_settings(trainer.datamodule)
        was_training = pl_module.training
        pl_module.eval()
        try:
            # The precision plugin's context: bf16 autocast on a GPU run, nothing in fp32.
            with torch.inference_mode(), trainer.precision_plugin.val_step_context():
                return evaluate_scans(
                    pl_module,
                    [evaluation_scan(c) for c in chests],
                    target_spacing_mm=float(settings["spacing_mm"]),
                    threshold=self.threshold,
                    roi_size_vox=int(settings["crop_size_vox"]),
                    overlap=self.overlap,
                    sw_batch_size=self.sw_batch_size,
                    context_scale=float(settings["context_scale"]),
                )
        finally:
            pl_module.train(was_training)

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        values: dict[str, float] | None = None
        if trainer.is_global_zero:
            start = time.perf_counter()
            result = self.evaluate(trainer, pl_module, self.chests(trainer.datamodule))
            values = {**detection_metrics(result), "seconds": time.perf_counter() - start}
        return trainer.strategy.broadcast(values, src=0)

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Measure when due, then log the measured (or held, or NaN) ``val/det/*`` values."""
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        datamodule = trainer.datamodule
        if not callable(getattr(datamodule, "validation_chests", None)):
            self._warn_once(
                "no_chests",
                f"WholeScanValidation: the DataModule ({type(datamodule).__name__}) has no "
                "validation_chests(n, size) method, so no whole-scan validation runs and "
                "val/det/* are not logged (a checkpoint monitor on val/det/cpm will fail)",
            )
            return
        if getattr(pl_module, "seg_head", None) is None:
            self._warn_once(
                "no_head",
                "WholeScanValidation: the model has no segmentation head (stage "
                f"{getattr(pl_module, 'stage', '?')!r}), so val/det/* are not logged",
            )
            return
        # Every rank logs the same (broadcast) values: "max" over ranks keeps them exact.
        log = {"on_step": False, "on_epoch": True, "sync_dist": True, "reduce_fx": "max"}
        if self.is_due(trainer):
            values = self._measure(trainer, pl_module)
            self.last_metrics = {k: values[k] for k in DETECTION_METRICS}
            if trainer.state.fn == TrainerFn.FITTING:  # a `validate` call is no epoch of a fit
                self.last_measured_epoch = trainer.current_epoch
            pl_module.log("val/det/seconds", values["seconds"], **log)
        held = self.last_metrics or dict.fromkeys(DETECTION_METRICS, math.nan)
        for name in DETECTION_METRICS:
            pl_module.log(f"val/det/{name}", held[name], prog_bar=name == "cpm", **log)

    def state_dict(self) -> dict[str, Any]:
        """The held values and their epoch (plain data: checkpoints load with weights_only)."""
        return {"last_metrics": self.last_metrics, "last_measured_epoch": self.last_measured_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the held values of a resumed run."""
        self.last_metrics = state_dict.get("last_metrics")
        self.last_measured_epoch = state_dict.get("last_measured_epoch")


class HardNegativeMining(L.Callback):
    """Mine whole training chests for false positives and feed them back as training crops.

    After each training epoch listed in ``epochs`` (0-based), the current model segments
    ``n_chests`` whole training chests as ``lungvlm report`` would
    (:func:`lungvlm.inference.mining.mine_chest`): its false-positive components (at most
    ``max_false_positives`` per chest, the highest ranked) and ``n_windows`` crops drawn where
    the sliding window runs become nodule-free training crops. They are written to a pool folder
    (``out_dir``, default ``<run_dir>/mined``; atomically, see :mod:`data_modules.mined`) and the
    DataModule draws a fraction ``mined_fraction`` of its training samples from the pool from
    the next epoch on. Each round meets new chests (round ``k`` asks the DataModule for chests
    ``k * n_chests ..``), so the pool grows with what the model gets wrong as it learns.

    The DataModule provides ``mining_chests(n, start, size)``, ``store_mined(folder, case_id,
    crops, stats, round_index)`` and ``load_mined(folder)`` (``PhantomDataModule`` does) and its
    ``crop_size_vox``, ``spacing_mm`` and ``context_scale`` hyper-parameters. Its workers must
    not be persistent (they would keep the old pool). The rounds done and the pool folder are
    saved in the checkpoint: a resumed run reloads the pool and does not mine a round twice.
    Under DDP, rank 0 mines and every rank reloads the pool after a barrier.

    Cost: one default phantom chest is about one stage-2 epoch on a 2-core CPU (the sliding
    window over the whole chest), so a round of 2 chests costs about two epochs.

    Args:
        epochs: training epochs (0-based) after which a mining round runs.
        n_chests: whole training chests per round.
        max_false_positives: false-positive crops kept per chest (the highest ranked).
        n_windows: whole-lung window crops per chest.
        threshold: probability threshold of the candidate components.
        overlap: sliding-window overlap.
        sw_batch_size: sliding windows per forward pass.
        phantom_size: size of the chests, "default" or "tiny".
        out_dir: the pool folder; None: ``<trainer.default_root_dir>/mined``.
    """

    def __init__(
        self,
        epochs: list[int] | tuple[int, ...] = (3,),
        n_chests: int = 2,
        max_false_positives: int = 32,
        n_windows: int = 16,
        threshold: float = 0.5,
        overlap: float = 0.25,
        sw_batch_size: int = 4,
        phantom_size: str = "default",
        out_dir: str | None = None,
    ) -> None:
        super().__init__()
        epochs = list(epochs)
        if not epochs or any(
            isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs
        ):
            raise ValueError(f"epochs={epochs!r} must be a non-empty list of epoch indices >= 0")
        for name, value, low in (
            ("n_chests", n_chests, 1),
            ("max_false_positives", max_false_positives, 0),
            ("n_windows", n_windows, 0),
            ("sw_batch_size", sw_batch_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an int >= {low}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold={threshold!r} must be a probability in (0, 1)")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap={overlap!r} must be in [0, 1)")
        if phantom_size not in PHANTOM_SIZES:
            raise ValueError(
                f"phantom_size={phantom_size!r} is not one of {PHANTOM_SIZES}"
                + _nearest(phantom_size, PHANTOM_SIZES)
            )
        self.epochs = sorted(set(epochs))
        self.n_chests, self.max_false_positives = n_chests, max_false_positives
        self.n_windows, self.threshold, self.overlap = n_windows, float(threshold), float(overlap)
        self.sw_batch_size, self.phantom_size = sw_batch_size, phantom_size
        self.out_dir = out_dir
        self.rounds_done: list[int] = []
        self.history: list[dict[str, Any]] = []

    def folder(self, trainer: L.Trainer) -> Path:
        """The pool folder of this run."""
        return Path(self.out_dir) if self.out_dir else Path(trainer.default_root_dir) / "mined"

    def _check(self, trainer: L.Trainer) -> bool:
        datamodule = trainer.datamodule
        needed = ("mining_chests", "store_mined", "load_mined")
        missing = [m for m in needed if not callable(getattr(datamodule, m, None))]
        if missing:
            raise TypeError(
                f"HardNegativeMining needs the DataModule's {', '.join(needed)} methods; "
                f"{type(datamodule).__name__} lacks {', '.join(missing)}"
            )
        if getattr(getattr(datamodule, "hparams", {}), "get", lambda *_: None)(
            "persistent_workers"
        ):
            raise ValueError(
                "HardNegativeMining: the DataModule's persistent_workers=True keeps the workers' "
                "old sample pool; set it to false"
            )
        return True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check the DataModule, and reload the pool of a resumed run."""
        self._check(trainer)
        if self.rounds_done:
            self._reload(trainer)

    def _reload(self, trainer: L.Trainer) -> None:
        trainer.datamodule.load_mined(self.folder(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Run a mining round when this epoch is listed (see the class docstring)."""
        epoch = trainer.current_epoch
        if trainer.sanity_checking or trainer.fast_dev_run or epoch not in self.epochs:
            return
        if epoch in self.rounds_done:
            return
        if getattr(pl_module, "seg_head", None) is None:
            raise ValueError(
                f"HardNegativeMining needs a segmentation model; stage {pl_module.stage!r} has none"
            )
        round_index = self.epochs.index(epoch)
        record: dict[str, Any] | None = None
        if trainer.is_global_zero:
            record = self._mine(trainer, pl_module, round_index)
        trainer.strategy.barrier()
        record = trainer.strategy.broadcast(record, src=0)
        self._reload(trainer)
        self.rounds_done.append(epoch)
        self.history.append(record)
        log = {"on_step": False, "on_epoch": True, "sync_dist": True, "reduce_fx": "max"}
        pl_module.log("train/mined/false_positives_per_chest", record["fps_per_chest"], **log)
        pl_module.log("train/mined/pool_size", float(record["pool_size"]), **log)
        pl_module.log("train/mined/seconds", record["seconds"], **log)

    def _mine(self, trainer: L.Trainer, pl_module: L.LightningModule, round_index: int) -> dict:
        from lungvlm.inference.mining import mine_chest
        from lungvlm.progress import update as progress_update

        settings = WholeScanValidation.data_settings(trainer.datamodule)
        datamodule = trainer.datamodule
        start = time.perf_counter()
        chests = datamodule.mining_chests(
            self.n_chests, round_index * self.n_chests, self.phantom_size
        )
        fps, crops = [], 0
        was_training = pl_module.training
        pl_module.eval()
        try:
            for i, chest in enumerate(chests):
                progress_update("mining chests", i, len(chests))
                with torch.inference_mode(), trainer.precision_plugin.val_step_context():
                    result = mine_chest(
                        pl_module, chest,
                        crop_size_vox=int(settings["crop_size_vox"]),
                        spacing_mm=float(settings["spacing_mm"]),
                        context_scale=float(settings["context_scale"]),
                        normalization=getattr(pl_module, "normalization", None),
                        threshold=self.threshold, overlap=self.overlap,
                        sw_batch_size=self.sw_batch_size,
                        max_false_positives=self.max_false_positives,
                        n_windows=self.n_windows, seed=round_index * 1000 + i,
                    )  # fmt: skip
                datamodule.store_mined(
                    self.folder(trainer), chest.case_id, result.crops, result.stats(), round_index
                )
                fps.append(result.n_false_positives)
                crops += len(result.crops)
            progress_update("mining chests", len(chests), len(chests))
        finally:
            pl_module.train(was_training)
        return {
            "epoch": trainer.current_epoch,
            "chests": [c.case_id for c in chests],
            "fps_per_chest": float(np.mean(fps)) if fps else 0.0,
            "crops": crops,
            "pool_size": datamodule.load_mined(self.folder(trainer)),
            "seconds": time.perf_counter() - start,
        }

    def state_dict(self) -> dict[str, Any]:
        """Rounds done and their records (plain data: checkpoints load with weights_only)."""
        return {"rounds_done": list(self.rounds_done), "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the rounds of a resumed run (the pool is reloaded at fit start)."""
        self.rounds_done = list(state_dict.get("rounds_done", []))
        self.history = list(state_dict.get("history", []))
