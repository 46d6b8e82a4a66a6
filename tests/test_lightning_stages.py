"""Stages 1 and 2 through the one LightningModule: losses fall, init_from chains, resume."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lungvlm.lightning.checkpoint import CHECKPOINT_KEY, read_checkpoint
from lungvlm.lightning.module import LungVLMModule
from lungvlm.models.encoder import MultiScaleEncoder3D
from lungvlm.models.heads.candidate import CandidateHead
from lungvlm.models.heads.reconstruction import ReconstructionHead
from lungvlm.models.heads.segmentation import SegmentationHead
from lungvlm.types import collate_samples
from tests.conftest import TINY_ENCODER, sphere_batch, sphere_sample


def make_module(stage: str, **kwargs) -> LungVLMModule:
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    heads = {}
    if stage == "pretrain":
        heads["recon_head"] = ReconstructionHead(encoder.feature_info)
    else:
        heads["seg_head"] = SegmentationHead(encoder.feature_info)
    return LungVLMModule(
        encoder=encoder,
        stage=stage,
        optimizer=lambda p: torch.optim.AdamW(p, lr=5e-3),
        **heads,
        **kwargs,
    )


def fit_fixed_batch(module: LungVLMModule, steps: int) -> list[float]:
    batch = sphere_batch(2, 32)
    optimizer = module.configure_optimizers()
    losses = []
    torch.manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        total = module.shared_step(batch)[0]["total"]
        total.backward()
        optimizer.step()
        losses.append(float(total))
    return losses


@pytest.mark.parametrize("stage", ["pretrain", "segment"])
def test_few_steps_decrease_loss_on_fixed_batch(stage):
    losses = fit_fixed_batch(make_module(stage), steps=8)
    assert losses[-1] < losses[0] * 0.9, losses


def test_stage_without_its_head_is_rejected():
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    with pytest.raises(ValueError, match="needs a recon_head"):
        LungVLMModule(encoder=encoder, stage="pretrain")
    with pytest.raises(ValueError, match="stage='segmnet' is not a stage"):
        LungVLMModule(encoder=encoder, stage="segmnet")


class SphereData(L.LightningDataModule):
    """Tiny in-memory data module of sphere crops (no phantom generator)."""

    normalization = {"hu_min": -1000.0, "hu_max": 400.0}

    def train_dataloader(self):
        samples = [sphere_sample(i) for i in range(8)]
        return DataLoader(samples, batch_size=2, collate_fn=collate_samples)

    def val_dataloader(self):
        samples = [sphere_sample(100 + i) for i in range(2)]
        return DataLoader(samples, batch_size=2, collate_fn=collate_samples)


def make_trainer(tmp_path, max_steps: int, **kwargs) -> L.Trainer:
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=1
    )
    return L.Trainer(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
        num_sanity_val_steps=0,
        limit_val_batches=1,
        **kwargs,
    )


def test_checkpoint_to_init_from_chain_loads_encoder(tmp_path):
    stage1 = make_module("pretrain")
    make_trainer(tmp_path / "s1", max_steps=2).fit(stage1, datamodule=SphereData())
    ckpt = tmp_path / "s1" / "checkpoints" / "last.ckpt"
    meta = read_checkpoint(ckpt)[CHECKPOINT_KEY]
    assert meta["stage"] == "pretrain"
    assert meta["normalization"] == {"hu_min": -1000.0, "hu_max": 400.0}
    assert meta["labels"]["lungrads_categories"][-1] == "4X"

    stage2 = make_module("segment", init_from=str(ckpt))
    trained = read_checkpoint(ckpt)["state_dict"]
    for key, value in stage2.state_dict().items():
        if key.startswith("encoder."):
            assert torch.equal(value, trained[key]), key
    report = stage2.init_report
    assert all(k.startswith("seg_head.") for k in report.missing)
    assert all(k.startswith("recon_head.") for k in report.unexpected)
    assert len(report.loaded) == sum(1 for k in trained if k.startswith("encoder."))


def test_missing_init_from_is_an_error_only_when_required(tmp_path):
    module = make_module("segment", init_from=str(tmp_path / "nope.ckpt"))
    assert module._initialised_from is None
    with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
        make_module("segment", init_from=str(tmp_path / "nope.ckpt"), init_from_required=True)


def test_kill_and_resume_continues_at_same_step(tmp_path):
    first = make_module("segment")
    make_trainer(tmp_path, max_steps=3).fit(first, datamodule=SphereData())
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 3

    resumed = make_module("segment")
    trainer = make_trainer(tmp_path, max_steps=5)
    trainer.fit(resumed, datamodule=SphereData(), ckpt_path=str(last))
    assert trainer.global_step == 5
    # The optimizer state came back too: Adam's step counter equals the global step.
    state = trainer.optimizers[0].state_dict()["state"]
    assert int(next(iter(state.values()))["step"]) == 5


CANDIDATE_HEAD = {
    "class_path": "lungvlm.models.heads.candidate.CandidateHead",
    "init_args": {"hidden_dim": 16},
}


def test_without_a_candidate_head_nothing_changes():
    module = make_module("segment")
    assert module.candidate_head is None and len(module.candidate_auroc) == 0
    losses, outputs = module.shared_step(sphere_batch(2, 32))
    assert set(losses) == {"segmentation", "total"} and "candidate_logits" not in outputs
    assert module.tasks == ["segmentation"]
    assert not any(k.startswith("candidate_head.") for k in module.state_dict())


class MixedSphereData(SphereData):
    """Sphere crops (candidate target 1) and empty crops (target 0) in both splits."""

    def train_dataloader(self):
        samples = [sphere_sample(0, 24, 4.0), sphere_sample(1, 24, 0.0)]
        return DataLoader(samples, batch_size=2, collate_fn=collate_samples)

    def val_dataloader(self):
        samples = [sphere_sample(100, 24, 4.0), sphere_sample(101, 24, 0.0)]
        return DataLoader(samples, batch_size=2, collate_fn=collate_samples)


def test_candidate_head_trains_in_stage_2_and_logs_its_loss_and_auroc(tmp_path):
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    module = make_module(
        "segment", candidate_head=CandidateHead(encoder.feature_info, hidden_dim=16),
        loss_weights={"candidate": 0.5},
    )  # fmt: skip
    losses, _ = module.shared_step(sphere_batch(2, 24))
    assert set(losses) == {"segmentation", "candidate", "total"}
    torch.testing.assert_close(losses["total"], losses["segmentation"] + 0.5 * losses["candidate"])
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=MixedSphereData())
    logged = trainer.callback_metrics
    assert {"train/candidate/loss", "val/candidate/loss", "val/candidate/auroc"} <= set(logged)
    assert float(logged["val/candidate/auroc"]) in (0.0, 1.0)  # two crops: one of each class
    meta = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")[CHECKPOINT_KEY]
    assert meta["tasks"] == ["segmentation", "candidate"]


def test_init_from_stage_2_carries_the_candidate_head_into_stage_3(tmp_path):
    from lightning.pytorch.cli import instantiate_module

    from tests.report_fixtures import MODEL_CONFIG

    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    stage2 = make_module(
        "segment", candidate_head=CandidateHead(encoder.feature_info, hidden_dim=16)
    )
    path = tmp_path / "stage2.ckpt"
    torch.save({"state_dict": stage2.state_dict()}, path)
    config = {
        **copy.deepcopy(MODEL_CONFIG),
        "candidate_head": CANDIDATE_HEAD,
        "init_from": str(path),
    }
    stage3 = instantiate_module(LungVLMModule, config)
    head_keys = [k for k in stage2.state_dict() if k.startswith("candidate_head.")]
    assert head_keys and set(head_keys) <= set(stage3.init_report.loaded)
    for key in head_keys:
        assert torch.equal(stage3.state_dict()[key], stage2.state_dict()[key]), key
    assert "candidate" in stage3.tasks
