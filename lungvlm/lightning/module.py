"""One LightningModule for every training stage; stages differ by YAML, not by subclass.

The module receives the encoder and factories of the heads (each factory is called with the
encoder's ``feature_info``, so heads read channels and strides instead of hard-coding them). It
owns the loss weighting, one torchmetrics object per split and task, and the optimizer; one
shared step returns named losses whose weighted sum is the total.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lungvlm.clinical.hu import default_normalization
from lungvlm.lightning.checkpoint import (
    CHECKPOINT_KEY,
    inference_metadata,
    load_weights_non_strict,
    plain_data,
    read_checkpoint,
)
from lungvlm.lightning.language import LANGUAGE_LOSS_KEYS, LanguageTask, decoder_config
from lungvlm.lightning.vision_language import (
    VL_LOSS_NAMES,
    VisionLanguageConfig,
    VisionLanguageTask,
)
from lungvlm.losses.candidate import candidate_loss
from lungvlm.losses.masking import apply_mask, batch_block_mask, masked_reconstruction_loss
from lungvlm.losses.segmentation import DiceHausdorffLoss
from lungvlm.metrics.candidate import CandidateAUROC
from lungvlm.metrics.crop_segmentation import SegmentationMetrics
from lungvlm.models.encoder import MultiScaleEncoder3D
from lungvlm.models.heads.candidate import CandidateHead
from lungvlm.models.heads.reconstruction import ReconstructionHead
from lungvlm.models.heads.segmentation import SegmentationHead
from lungvlm.models.vision_language import VisionLanguageHeads
from lungvlm.text.tokenizer import tokenizer_from_json, tokenizer_to_json

log = logging.getLogger(__name__)

Stage = Literal["pretrain", "segment", "language", "vision_language"]
STAGES: tuple[str, ...] = ("pretrain", "segment", "language", "vision_language")
HeadFactory = Callable[[Sequence[dict]], nn.Module]


#: Constructor arguments that are modules or factories rather than plain values.
MODULE_ARGUMENTS: tuple[str, ...] = (
    "encoder",
    "seg_head",
    "candidate_head",
    "recon_head",
    "seg_loss",
    "optimizer",
    "lr_scheduler",
)


def _built_by_cli() -> bool:
    """Whether LightningCLI is instantiating this module (it supplies the config as hparams)."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # private API moved: fall back to the safe choice
        return False
    return _given_hyperparameters.get() is not None


def _build(
    factory: nn.Module | HeadFactory | None, feature_info: Sequence[dict]
) -> nn.Module | None:
    """Return ``factory`` itself if it is already a module, else ``factory(feature_info)``."""
    if factory is None or isinstance(factory, nn.Module):
        return factory
    return factory(feature_info)


class LungVLMModule(L.LightningModule):
    """Training, validation and test logic of every stage.

    Args:
        encoder: the shared multi-scale 3D encoder.
        stage: which stage this run trains: "pretrain", "segment", "language" (the report
            decoder of ``vl_heads`` on text only: causal LM + report coherence) or
            "vision_language".
        seg_head: segmentation head (or a factory taking the encoder's ``feature_info``).
        candidate_head: optional candidate head (or its factory): one logit per crop, "a nodule
            is centred here", trained in stages "segment" and "vision_language" with the loss
            "candidate" (:mod:`lungvlm.losses.candidate`); inference scores and ranks whole-scan
            candidates with it. None: no candidate loss (older configs).
        recon_head: reconstruction head for masked-volume pretraining (or its factory).
        seg_loss: Dice + Hausdorff loss of the segmentation head.
        vl_heads: stage-3 heads (or a factory taking ``feature_info``): visual tokens, report
            decoder, contrastive alignment, risk and concept heads.
        vl: stage-3 settings: tokenizer, generation and sample-report logging.
        loss_weights: weight of each named loss in the total (missing names weigh 1.0).
        mask_block_size_vox: (z, y, x) size of the masked sub-volumes of stage 1, in voxels.
        mask_ratio: fraction of the crop masked in stage 1.
        mask_fill_value: normalised intensity written into masked voxels.
        optimizer: optimizer factory (called with the parameters).
        lr_scheduler: optional learning-rate scheduler factory (called with the optimizer).
        init_from: checkpoint of a previous stage to initialise from (non-strict, by name+shape).
        init_from_required: raise if ``init_from`` is missing instead of training from scratch.
        image_log_every_n_epochs: log input / masked / reconstruction images every N epochs.
    """

    def __init__(
        self,
        encoder: MultiScaleEncoder3D,
        stage: Stage = "segment",
        seg_head: HeadFactory | None = None,
        candidate_head: HeadFactory | None = None,
        recon_head: HeadFactory | None = None,
        seg_loss: DiceHausdorffLoss | None = None,
        vl_heads: Callable[[Sequence[dict]], VisionLanguageHeads] | None = None,
        vl: VisionLanguageConfig | None = None,
        loss_weights: dict[str, float] | None = None,
        mask_block_size_vox: tuple[int, int, int] = (4, 4, 4),
        mask_ratio: float = 0.6,
        mask_fill_value: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        init_from: str | None = None,
        init_from_required: bool = False,
        image_log_every_n_epochs: int = 1,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r} is not a stage; expected one of {STAGES}")
        # Under LightningCLI the hparams are the parsed config (class paths, plain values), which
        # lets `load_from_checkpoint` rebuild the model; built objects passed in directly (tests,
        # notebooks) are not picklable config, so they are left out.
        self.save_hyperparameters(ignore=None if _built_by_cli() else list(MODULE_ARGUMENTS))
        self.stage = stage
        self.encoder = encoder
        info = encoder.feature_info
        self.seg_head: SegmentationHead | None = _build(seg_head, info)
        self.recon_head: ReconstructionHead | None = _build(recon_head, info)
        if stage == "pretrain" and self.recon_head is None:
            raise ValueError("stage='pretrain' needs a recon_head")
        if stage in ("segment", "vision_language") and self.seg_head is None:
            raise ValueError(f"stage={stage!r} needs a seg_head")
        self.candidate_head: CandidateHead | None = _build(candidate_head, info)
        self.vl_heads: VisionLanguageHeads | None = _build(vl_heads, info)
        if stage in ("language", "vision_language") and self.vl_heads is None:
            raise ValueError(f"stage={stage!r} needs vl_heads")
        self.vl_config = vl or VisionLanguageConfig()
        self.vl = (
            VisionLanguageTask(self.vl_heads, self.vl_config) if self.vl_heads is not None else None
        )
        # The coherence head exists only in the language stage: stage-3 keys stay unchanged.
        self.language: LanguageTask | None = None
        if stage == "language":
            self.language = LanguageTask(self.vl_heads.decoder, seed=torch.initial_seed())
            trained = {id(p) for p in self.language.trained_parameters()}
            for parameter in self.parameters():  # only the decoder's language weights learn
                parameter.requires_grad_(id(parameter) in trained)
        self.seg_loss = seg_loss if seg_loss is not None else DiceHausdorffLoss()
        self.loss_weights = dict(loss_weights or {})
        self.mask_block_size_vox = tuple(mask_block_size_vox)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1); got {mask_ratio}")
        self.mask_ratio = mask_ratio
        self.mask_fill_value = mask_fill_value
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.init_from = init_from
        self.init_from_required = init_from_required
        self.image_log_every_n_epochs = image_log_every_n_epochs
        self.normalization: dict[str, float] = default_normalization()
        self.seg_metrics = nn.ModuleDict(
            {split: SegmentationMetrics() for split in ("val", "test")}
        )
        splits = ("val", "test") if self.candidate_head is not None else ()
        self.candidate_auroc = nn.ModuleDict({split: CandidateAUROC() for split in splits})
        self._initialised_from: str | None = None
        self._initialised_from_vl = False  # True when init_from brought a trained decoder
        self._maybe_init_from()

    # ------------------------------------------------------------------ set-up
    def _maybe_init_from(self) -> None:
        if not self.init_from:
            return
        try:
            checkpoint = read_checkpoint(self.init_from)
        except FileNotFoundError:
            if self.init_from_required:
                raise
            log.warning("init_from=%s does not exist: training from scratch", self.init_from)
            return
        report = load_weights_non_strict(self, checkpoint["state_dict"])
        meta = checkpoint.get(CHECKPOINT_KEY, {})
        if "normalization" in meta:
            self.normalization = dict(meta["normalization"])
        log.info("init_from=%s: %s", self.init_from, report.summary())
        for name in ("missing", "unexpected", "shape_mismatch"):
            keys = getattr(report, name)
            if keys:
                log.info("  %s keys (%d): %s", name, len(keys), ", ".join(keys[:20]))
        self._initialised_from = str(self.init_from)
        self._initialised_from_vl = any(k.startswith("vl_heads.decoder.") for k in report.loaded)
        self.init_report = report

    def setup(self, stage: str) -> None:
        """Read the data's HU normalisation so checkpoints record what training used."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        norm = getattr(datamodule, "normalization", None)
        if norm:
            self.normalization = {k: float(v) for k, v in dict(norm).items()}
        if self.vl is not None and self.vl.tokenizer is None:
            extra = datamodule.report_corpus() if hasattr(datamodule, "report_corpus") else ()
            run_dir = self.trainer.default_root_dir if self._trainer else None
            save_dir = run_dir if self._trainer is None or self.trainer.is_global_zero else None
            fresh = stage == "fit" and self._initialised_from_vl is False
            if self.stage == "language":  # the tokenizer stage 3 would fit, saved with the run
                self.vl.fit_tokenizer(extra, save_dir)
            # A fresh decoder starts from the language checkpoint (model.vl.language_init) when
            # there is one; else language first, inline: every rank runs the same seeded steps.
            elif not (fresh and self.vl.load_language_init(save_dir)):
                self.vl.fit_tokenizer(extra, save_dir)
                if fresh:
                    self.vl.pretrain_language(self.loss_weights)

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks this stage trains."""
        if self.stage == "pretrain":
            return ["reconstruction"]
        candidate = ["candidate"] if self.candidate_head is not None else []
        if self.stage == "segment":
            return ["segmentation", *candidate]
        if self.stage == "language":
            return list(LANGUAGE_LOSS_KEYS)
        return ["segmentation", *candidate, *VL_LOSS_NAMES]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the metadata inference needs (normalisation, labels, stage) as plain data.

        The hyper-parameters become plain data too, so the file loads with
        ``torch.load(weights_only=True)`` (:mod:`lungvlm.lightning.checkpoint`).
        """
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = plain_data(checkpoint[key])
        checkpoint[CHECKPOINT_KEY] = inference_metadata(self.stage, self.normalization, self.tasks)
        if self.vl is not None and self.vl.tokenizer is not None:
            checkpoint[CHECKPOINT_KEY]["tokenizer_json"] = tokenizer_to_json(self.vl.tokenizer)
            checkpoint[CHECKPOINT_KEY]["report_max_length"] = self.vl_heads.max_length
        if self.stage == "language":  # stage 3 checks its decoder sizes against these
            checkpoint[CHECKPOINT_KEY]["decoder_config"] = decoder_config(self.vl_heads.decoder)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the normalisation parameters saved by :meth:`on_save_checkpoint`."""
        meta = checkpoint.get(CHECKPOINT_KEY, {})
        if "normalization" in meta:
            self.normalization = dict(meta["normalization"])
        if self.vl is not None and "tokenizer_json" in meta:
            self.vl.tokenizer = tokenizer_from_json(meta["tokenizer_json"])

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Tokenise the reports (stage 3) on the CPU before the batch moves to the device."""
        if self.language is None and self.vl is not None:
            if getattr(batch, "report_tokens", None) is None:
                self.vl.tokenize_batch(batch)
        return batch

    def configure_optimizers(self):
        """Build the optimizer (and scheduler) from the configured factories."""
        params = self.parameters() if self.language is None else self.language.trained_parameters()
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    # ------------------------------------------------------------------ steps
    def forward(self, image: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """Segmentation logits (B, 1, D, H, W) per deep-supervision level, finest first."""
        if self.seg_head is None:
            raise RuntimeError("this model has no segmentation head")
        return self.seg_head(self.encoder(image, context))

    def _weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        return sum(self.loss_weights.get(name, 1.0) * value for name, value in losses.items())

    def _reconstruction_losses(self, batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        image = batch.image
        mask = batch_block_mask(
            image.shape[0], image.shape[2:], self.mask_block_size_vox, self.mask_ratio
        ).to(image.device)
        masked = apply_mask(image, mask, self.mask_fill_value)
        context = batch.context if getattr(self.encoder, "use_context", False) else None
        recon = self.recon_head(self.encoder(masked, context))
        loss = masked_reconstruction_loss(recon, image, mask)
        return {"reconstruction": loss}, {"masked": masked, "reconstruction": recon}

    def _candidate_losses(
        self, features: list[Tensor], batch
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The candidate loss and the head's logits, or nothing without a candidate head."""
        if self.candidate_head is None:
            return {}, {}
        logits = self.candidate_head(features)
        loss = candidate_loss(logits, batch.seg_mask, batch.seg_present)
        return {"candidate": loss}, {"candidate_logits": logits}

    def _segmentation_losses(self, batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        context = batch.context if getattr(self.encoder, "use_context", False) else None
        features = self.encoder(batch.image, context)
        logits = self.seg_head(features)
        parts = self.seg_loss(logits, batch.seg_mask, batch.seg_present)
        candidate, candidate_outputs = self._candidate_losses(features, batch)
        return {"segmentation": parts["total"], **candidate}, {
            "logits": logits[0],
            "seg_dice_loss": parts["dice"],
            "seg_hausdorff_loss": parts["hausdorff"],
            **candidate_outputs,
        }

    def _vision_language_losses(self, batch) -> tuple[dict[str, Tensor], dict]:
        context = batch.context if getattr(self.encoder, "use_context", False) else None
        features = self.encoder(batch.image, context)
        logits = self.seg_head(features)
        parts = self.seg_loss(logits, batch.seg_mask, batch.seg_present)
        candidate, candidate_outputs = self._candidate_losses(features, batch)
        vl_losses, forward = self.vl.losses(features, batch, logits[0])
        losses = {"segmentation": parts["total"], **candidate, **vl_losses}
        return losses, {"logits": logits[0], "vl_forward": forward, **candidate_outputs}

    def shared_step(
        self, batch, reorder_seed: int | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Compute the named losses of this stage and auxiliary outputs.

        Args:
            batch: a :class:`~lungvlm.types.LungBatch` (:class:`~lungvlm.types.TextBatch` in the
                language stage).
            reorder_seed: language stage: seed of the sentence reorderings (evaluation, so every
                validation sees the same copies); None draws them from the task's generator.

        Returns:
            (losses, outputs): ``losses`` maps task names to scalars and holds ``total``, their
            weighted sum; ``outputs`` holds tensors used by metrics and image logging.
        """
        if self.stage == "pretrain":
            losses, outputs = self._reconstruction_losses(batch)
        elif self.stage == "language":
            losses = self.language.losses(self.vl.tokenizer, batch.texts, reorder_seed)
            outputs = {}
        elif self.stage == "segment":
            losses, outputs = self._segmentation_losses(batch)
        else:
            losses, outputs = self._vision_language_losses(batch)
        losses["total"] = self._weighted_total(losses)
        return losses, outputs

    def _log_losses(
        self, split: str, losses: dict[str, Tensor], outputs: dict, batch_size: int
    ) -> None:
        on_step = split == "train"
        for name, value in losses.items():
            if name == "total":
                key = f"{split}/loss"
            else:
                key = f"{split}/{LANGUAGE_LOSS_KEYS.get(name, f'{name}/loss')}"
            self.log(
                key,
                value,
                on_step=on_step,
                on_epoch=True,
                prog_bar=name == "total",
                batch_size=batch_size,
                sync_dist=split != "train",
            )
        for name in ("seg_dice_loss", "seg_hausdorff_loss"):
            if name in outputs:
                metric = name.removeprefix("seg_").removesuffix("_loss")
                self.log(
                    f"{split}/seg/{metric}_loss",
                    outputs[name],
                    on_step=False,
                    on_epoch=True,
                    batch_size=batch_size,
                    sync_dist=split != "train",
                )

    def on_train_epoch_start(self) -> None:
        """Re-seed the data's training augmentation for this epoch (if the data supports it)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        losses, outputs = self.shared_step(batch)
        self._log_losses("train", losses, outputs, batch.batch_size)
        return losses["total"]

    def _eval_step(self, split: str, batch, batch_idx: int) -> None:
        losses, outputs = self.shared_step(batch, reorder_seed=batch_idx)
        self._log_losses(split, losses, outputs, batch.batch_size)
        if self.language is not None:
            self.language.update_metrics(split, self.vl.tokenizer, batch.texts, seed=batch_idx)
            accuracy = self.language.coherence_accuracy[split]
            self.log(f"{split}/language/coherence_accuracy", accuracy, on_epoch=True)
        if "logits" in outputs:
            metrics = self.seg_metrics[split]
            metrics.update(outputs["logits"], batch.seg_mask, batch.seg_present, batch.spacing_mm)
        if "candidate_logits" in outputs:
            self.candidate_auroc[split].update(
                outputs["candidate_logits"], batch.seg_mask, batch.seg_present
            )
        if "vl_forward" in outputs:
            self.vl.update_metrics(split, outputs["vl_forward"], batch, keep_samples=batch_idx == 0)
        if (
            split == "val"
            and batch_idx == 0
            and "reconstruction" in outputs
            and self.current_epoch % max(1, self.image_log_every_n_epochs) == 0
        ):
            self._log_reconstruction_images(batch.image, outputs)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch, batch_idx)

    def _log_eval_metrics(self, split: str) -> None:
        if self.stage in ("pretrain", "language"):  # language: logged as a Metric in the step
            return
        values = self.seg_metrics[split].compute()
        for name, value in values.items():
            self.log(f"{split}/seg/{name}", value, prog_bar=name == "dice")
        self.seg_metrics[split].reset()
        if split in self.candidate_auroc and self.candidate_auroc[split].update_called:
            self.log(f"{split}/candidate/auroc", self.candidate_auroc[split].compute())
            self.candidate_auroc[split].reset()
        if self.vl is not None:
            for name, value in self.vl.compute_metrics(split).items():
                self.log(f"{split}/{name}", value, prog_bar=name == "report/concept_f1")
            if self.trainer.is_global_zero and not self.trainer.sanity_checking:
                self.vl.write_samples(
                    split,
                    self.current_epoch,
                    self.trainer.default_root_dir,
                    self.loggers,
                    self.global_step,
                )

    def on_validation_epoch_end(self) -> None:
        self._log_eval_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_metrics("test")

    def _log_reconstruction_images(self, image: Tensor, outputs: dict[str, Tensor]) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        mid = image.shape[2] // 2  # axial slice through the crop centre
        rows = [
            image[0, 0, mid],
            outputs["masked"][0, 0, mid],
            outputs["reconstruction"][0, 0, mid],
        ]
        grid = torch.cat([r.detach().float().clamp(0, 1) for r in rows], dim=1)
        experiment.add_image(
            "val/reconstruction/input_masked_reconstruction", grid[None].cpu(), self.global_step
        )
