"""Two-process DDP on CPU (gloo): ranks see disjoint data and end with identical weights."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from lungvlm.lightning.module import LungVLMModule
from lungvlm.models.encoder import MultiScaleEncoder3D
from lungvlm.models.heads.segmentation import SegmentationHead
from lungvlm.types import collate_samples
from tests.conftest import TINY_ENCODER, sphere_sample

CROP_VOX = 24
N_SAMPLES = 8
BATCH_SIZE = 2  # per process: the global batch is BATCH_SIZE x 2 processes


class RecordRankCallback(L.Callback):
    """Writes, per rank, the patient ids it trained on and its final weights.

    Args:
        out_dir: folder for ``rank{R}_ids.json`` and ``rank{R}_state.pt``.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.patient_ids: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.patient_ids.extend(batch.patient_id)

    def on_train_end(self, trainer, pl_module) -> None:
        rank = trainer.global_rank
        (self.out_dir / f"rank{rank}_ids.json").write_text(json.dumps(self.patient_ids))
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.out_dir / f"rank{rank}_state.pt")


def tiny_module() -> LungVLMModule:
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    return LungVLMModule(
        encoder=encoder,
        stage="segment",
        seg_head=SegmentationHead(encoder.feature_info),
        # A partial, not a lambda: the spawned processes receive the module by pickling.
        optimizer=functools.partial(torch.optim.SGD, lr=0.05),
    )


def test_two_process_ddp_splits_data_and_keeps_weights_equal(tmp_path):
    torch.manual_seed(0)
    module = tiny_module()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    samples = [sphere_sample(seed, CROP_VOX, radius_vox=5.0) for seed in range(N_SAMPLES)]
    # A plain DataLoader: Lightning swaps in a DistributedSampler (use_distributed_sampler).
    loader = DataLoader(samples, batch_size=BATCH_SIZE, collate_fn=collate_samples)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        # Stage 2's segmentation head reads levels 0-2 only, so the encoder's deeper
        # path-aggregation convolutions get no gradient: DDP must be told (docs/multi_gpu.md).
        strategy=DDPStrategy(
            process_group_backend="gloo", start_method="spawn", find_unused_parameters=True
        ),
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RecordRankCallback(str(tmp_path))],
        default_root_dir=tmp_path,
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    print(f"2-process DDP fit: {time.perf_counter() - start:.1f} s")

    ids = [json.loads((tmp_path / f"rank{r}_ids.json").read_text()) for r in (0, 1)]
    # The DistributedSampler gives each rank its own half of the (shuffled) epoch.
    assert len(ids[0]) == len(ids[1]) == N_SAMPLES // 2
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(f"sphere-{s}" for s in range(N_SAMPLES))

    states = [torch.load(tmp_path / f"rank{r}_state.pt") for r in (0, 1)]
    assert states[0].keys() == states[1].keys() == initial.keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    changed = [k for k in initial if not torch.equal(initial[k], states[0][k])]
    assert any(k.startswith("encoder.") for k in changed)
    assert any(k.startswith("seg_head.") for k in changed)
    # The spawn launcher copies rank 0's weights back into this process's module.
    assert torch.equal(module.state_dict()[changed[0]], states[0][changed[0]])
