"""Whole-scan validation while training: the callback's numbers, its schedule, the chests.

Tiny everything: 24-voxel windows at 10 mm, so a tiny phantom chest (32 x 64 x 64) is a
30 x 41 x 41 grid, and hand-made 24³ "box" chests whose two lungs are boxes.
"""

from __future__ import annotations

import csv
import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from data_modules.phantom_datamodule import SPLIT_SEEDS, PhantomDataModule
from lungvlm.commands.evaluate import phantom_scans
from lungvlm.evaluation.detection import evaluate_scans
from lungvlm.lightning.callbacks import WholeScanValidation, evaluation_scan
from lungvlm.lightning.module import LungVLMModule
from lungvlm.models.encoder import MultiScaleEncoder3D
from lungvlm.models.heads.segmentation import SegmentationHead
from lungvlm.types import WholeChest, collate_samples
from tests.conftest import TINY_ENCODER, sphere_sample

#: The training crop and grid of every data module here (the callback reads them).
TINY_DATA = {"crop_size_vox": 24, "spacing_mm": 10.0, "context_scale": 2.0}
DET_KEYS = ("val/det/cpm", "val/det/sensitivity", "val/det/fps_per_scan", "val/det/mean_dice")


def segment_module(seg_logit: float | None = None) -> LungVLMModule:
    """A tiny stage-2 model; with ``seg_logit`` its head outputs that constant logit everywhere."""
    torch.manual_seed(0)
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    module = LungVLMModule(
        encoder=encoder,
        stage="segment",
        seg_head=SegmentationHead(encoder.feature_info),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
    )
    if seg_logit is not None:
        with torch.no_grad():
            for conv in module.seg_head.convs:  # 1x1x1 convs: zero weights, constant bias
                conv.weight.zero_()
                conv.bias.fill_(seg_logit)
    return module


def box_chests() -> list[WholeChest]:
    """Two 24³ chests at 10 mm whose lungs are two boxes (x 2..7 and x 16..21, z/y 8..15).

    Chest "hit" has a 2³-voxel nodule at the centre of the first box (20 mm reference, so a
    candidate at the box centre hits it); chest "miss" has it in the gap between the boxes.
    """
    chests = []
    for name, x0 in (("hit", 4), ("miss", 11)):
        lungs = np.zeros((24, 24, 24), bool)
        lungs[8:16, 8:16, 2:8] = True
        lungs[8:16, 8:16, 16:22] = True
        labels = np.zeros(lungs.shape, np.int16)
        labels[11:13, 11:13, x0 : x0 + 2] = 1
        image = np.where(lungs, -850.0, -50.0).astype(np.float32)
        image[labels > 0] = 20.0
        spacing, origin = (10.0, 10.0, 10.0), (0.0, 0.0, 0.0)
        chests.append(WholeChest(name, image, spacing, origin, labels, (20.0,), lungs))
    return chests


class BoxChestData(L.LightningDataModule):
    """Sphere crops for training and validation plus :func:`box_chests` as whole chests.

    Args:
        crop_size_vox: edge of the crops (voxels), also the callback's window.
        spacing_mm: the crops' spacing (mm), also the callback's grid.
        context_scale: context field of view / crop field of view.
    """

    normalization = {"hu_min": -1000.0, "hu_max": 400.0}

    def __init__(
        self, crop_size_vox: int = 24, spacing_mm: float = 10.0, context_scale: float = 2.0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.calls: list[tuple[int, str]] = []

    def _loader(self, seeds: range) -> DataLoader:
        samples = [sphere_sample(s, self.hparams.crop_size_vox, 4.0) for s in seeds]
        return DataLoader(samples, batch_size=2, collate_fn=collate_samples)

    def train_dataloader(self) -> DataLoader:
        return self._loader(range(2))

    def val_dataloader(self) -> DataLoader:
        return self._loader(range(100, 102))

    def validation_chests(self, n: int, size: str = "default") -> list[WholeChest]:
        self.calls.append((n, size))
        return box_chests()[:n]


class CropsOnly(BoxChestData):
    """The same crops without ``validation_chests``."""

    validation_chests = None  # type: ignore[assignment]


def trainer(callback: L.Callback, tmp_path, extra: tuple = (), **kwargs) -> L.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(callbacks=[callback, *extra], **{**options, **kwargs})


def logged(trainer_: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer_.callback_metrics.items() if k.startswith("val/det/")}


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory) -> PhantomDataModule:
    cache = str(tmp_path_factory.mktemp("phantom_cache"))  # the validation crop renders once
    return PhantomDataModule(
        **TINY_DATA, n_train=2, n_val=1, n_test=1, batch_size=1, cache_dir=cache
    )


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny volumes: one thread is as fast, and it does not spin-wait on a busy 2-core machine.
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


# ---------------------------------------------------------------- what it measures
def test_logged_values_equal_evaluate_scans_on_the_same_model_and_chests(phantom_data, tmp_path):
    # Logit 0.2 plus the random head: probabilities straddle the threshold, so there are
    # instances, false positives and a Dice to compare (not 0 == 0).
    model = segment_module()
    with torch.no_grad():
        for conv in model.seg_head.convs:
            conv.bias.fill_(0.2)
    callback = WholeScanValidation(n_chests=2, phantom_size="tiny", threshold=0.5, overlap=0.25)
    run = trainer(callback, tmp_path)
    run.validate(model, datamodule=phantom_data, verbose=False)
    values = logged(run)

    chests = phantom_data.validation_chests(2, "tiny")
    assert [c.case_id for c in chests] == ["phantom-1000000", "phantom-1000001"]
    model.eval()
    expected = evaluate_scans(
        model,
        [evaluation_scan(c) for c in chests],
        target_spacing_mm=10.0,
        threshold=0.5,
        roi_size_vox=24,
        overlap=0.25,
        context_scale=2.0,
    )
    assert expected.fps_per_scan > 0 and expected.mean_dice > 0
    assert values["val/det/cpm"] == pytest.approx(expected.froc.cpm)
    assert values["val/det/sensitivity"] == pytest.approx(expected.sensitivity)
    assert values["val/det/fps_per_scan"] == pytest.approx(expected.fps_per_scan)
    assert values["val/det/mean_dice"] == pytest.approx(expected.mean_dice)
    assert values["val/det/seconds"] > 0


def test_a_model_that_segments_nothing_scores_zero(phantom_data, tmp_path):
    run = trainer(WholeScanValidation(n_chests=2, phantom_size="tiny"), tmp_path)
    run.validate(segment_module(seg_logit=-20.0), datamodule=phantom_data, verbose=False)
    values = logged(run)
    assert values["val/det/sensitivity"] == 0.0
    assert values["val/det/cpm"] == 0.0
    assert values["val/det/fps_per_scan"] == 0.0
    assert values["val/det/mean_dice"] == 0.0


def test_a_constant_probability_model_finds_each_lung_once(tmp_path):
    # p = sigmoid(0) = 0.5 >= 0.25 on the (dilated) lung mask, 0 elsewhere: each box lung is
    # one instance at the box centre. Chest "hit": box 1 hits the nodule, box 2 is a false
    # positive; chest "miss": both are. 3 FPs / 2 scans, 1 of 2 nodules found. All scores tie,
    # so the FROC curve is (0, 0) -> (1.5, 0.5): sensitivity 0.5 * min(f / 1.5, 1) at
    # f = 1/8 ... 8, CPM (0.5 / 7) * ((1/8 + 1/4 + 1/2 + 1) / 1.5 + 3) = 2.125 / 7.
    # Dice: the hit nodule (8 voxels) against box 1 dilated by 5 mm (10 x 10 x 8 = 800
    # voxels), 16 / 808; the missed one 0.
    data = BoxChestData()
    run = trainer(WholeScanValidation(n_chests=2, threshold=0.25), tmp_path)
    run.validate(segment_module(seg_logit=0.0), datamodule=data, verbose=False)
    values = logged(run)
    assert values["val/det/fps_per_scan"] == pytest.approx(1.5)
    assert values["val/det/sensitivity"] == pytest.approx(0.5)
    assert values["val/det/cpm"] == pytest.approx(2.125 / 7)
    assert values["val/det/mean_dice"] == pytest.approx((16 / 808) / 2)
    assert data.calls == [(2, "default")]


def test_measuring_restores_train_mode():
    class Run:  # the two trainer attributes evaluate() reads
        datamodule = BoxChestData()
        precision_plugin = L.pytorch.plugins.precision.Precision()

    model = segment_module(seg_logit=0.0).train()
    callback = WholeScanValidation(threshold=0.25)
    result = callback.evaluate(Run(), model, box_chests())
    assert model.training
    assert result.fps_per_scan == pytest.approx(1.5)


# ---------------------------------------------------------------- the chests
def test_validation_chests_are_deterministic_and_from_the_validation_seeds():
    data = PhantomDataModule(**TINY_DATA, n_train=4, n_val=2, n_test=2)
    chests = data.validation_chests(2, "tiny")
    assert [c.case_id for c in chests] == ["phantom-1000000", "phantom-1000001"]
    # Rendered again by the evaluate command's rows: the same arrays (one implementation).
    rows = list(phantom_scans(range(1_000_000, 1_000_002), "tiny", with_lung_mask=True))
    for chest, row in zip(chests, rows, strict=True):
        assert chest.case_id == row.scan_id
        np.testing.assert_array_equal(chest.image_hu, row.image_hu)
        np.testing.assert_array_equal(chest.nodule_labels, row.gt_label_map)
        np.testing.assert_array_equal(chest.lung_mask, row.lung_mask)
        assert list(chest.nodule_diameters_mm) == list(row.gt_nodule_diameters_mm)
        n = len(chest.nodule_diameters_mm)
        assert set(np.unique(chest.nodule_labels).tolist()) == set(range(n + 1))
    # Disjoint from the training and test seed ranges of the same module.
    data.setup("fit")
    seeds = {int(c.case_id.removeprefix("phantom-")) for c in chests}
    for split in ("train", "test"):
        base = data.datasets[split].seed_base
        assert not any(base <= s < base + SPLIT_SEEDS for s in seeds), split
    val_base = data.datasets["val"].seed_base
    assert all(val_base <= s < val_base + SPLIT_SEEDS for s in seeds)
    # The data seed shifts the range as it shifts the splits.
    shifted = PhantomDataModule(**TINY_DATA, seed=1).validation_chests(1, "tiny")
    assert shifted[0].case_id == "phantom-4000000"


def test_validation_chests_reject_bad_arguments():
    data = PhantomDataModule(**TINY_DATA)
    with pytest.raises(ValueError, match=r"n=0 must be a number of chests in 1\.\.1000000"):
        data.validation_chests(0)
    with pytest.raises(ValueError, match=r"size='small' is not a chest size"):
        data.validation_chests(1, "small")


# ---------------------------------------------------------------- the schedule
def read_epochs(path) -> dict[int, dict[str, str]]:
    """CSVLogger rows merged per epoch (validation rows carry the val/det keys)."""
    epochs: dict[int, dict[str, str]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("val/det/cpm"):
                epochs.setdefault(int(row["epoch"]), {}).update({k: v for k, v in row.items() if v})
    return epochs


def test_fit_monitoring_cpm_survives_the_epochs_that_do_not_measure(tmp_path):
    data = BoxChestData()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/det/cpm", mode="max")
    callback = WholeScanValidation(every_n_epochs=2, n_chests=2, threshold=0.25)
    run = trainer(
        callback,
        tmp_path,
        extra=(checkpoint,),
        max_epochs=4,
        enable_checkpointing=True,
        logger=CSVLogger(tmp_path, name="csv", version=""),
        log_every_n_steps=1,
    )
    run.fit(segment_module(), datamodule=data)

    epochs = read_epochs(tmp_path / "csv" / "metrics.csv")
    assert sorted(epochs) == [0, 1, 2, 3]
    assert math.isnan(float(epochs[0]["val/det/cpm"]))  # nothing measured yet
    measured = [e for e in epochs if "val/det/seconds" in epochs[e]]
    assert measured == [1, 3]  # (e + 1) % 2 == 0, and 3 is also the last epoch
    for key in DET_KEYS:  # epoch 2 holds epoch 1's values
        assert epochs[2][key] == epochs[1][key]
    assert data.calls == [(2, "default")]  # fetched once, cached
    assert callback.last_measured_epoch == 3
    assert checkpoint.best_model_path and math.isfinite(float(checkpoint.best_model_score))
    state = torch.load(checkpoint.best_model_path, weights_only=True)["callbacks"]
    held = next(v for k, v in state.items() if k.startswith("WholeScanValidation"))
    assert set(held["last_metrics"]) == {k.removeprefix("val/det/") for k in DET_KEYS}


def test_without_validation_chests_it_warns_once_and_logs_nothing(tmp_path):
    run = trainer(WholeScanValidation(), tmp_path)
    model, data = segment_module(), CropsOnly()
    with pytest.warns(UserWarning, match="has no validation_chests") as caught:
        run.validate(model, datamodule=data, verbose=False)
        run.validate(model, datamodule=data, verbose=False)
    assert sum("validation_chests" in str(w.message) for w in caught) == 1
    assert not logged(run)
    assert "val/loss" in run.callback_metrics


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_epochs": 0}, ValueError, r"every_n_epochs=0 must be >= 1"),
        ({"n_chests": 0}, ValueError, r"n_chests=0 must be a positive int"),
        ({"threshold": 1.5}, ValueError, r"threshold=1.5 must be a probability in \(0, 1\)"),
        ({"overlap": 1.0}, ValueError, r"overlap=1.0 must be in \[0, 1\)"),
        ({"sw_batch_size": 0}, ValueError, r"sw_batch_size=0 must be >= 1"),
        ({"phantom_size": "tiyn"}, ValueError, r"phantom_size='tiyn' .*did you mean 'tiny'\?"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        WholeScanValidation(**kwargs)


# ---------------------------------------------------------------- the configs
def test_stage2_selects_by_cpm_and_the_debug_overlay_turns_it_off(tmp_path):
    from lungvlm.commands.fit import LungVLMCLI

    def parse(*files: str) -> LungVLMCLI:
        args = [a for f in ("base.yaml", *files) for a in ("--config", f"experiments/{f}")]
        args += ["--run_dir", str(tmp_path), "--model.init_from", str(tmp_path / "none.ckpt")]
        return LungVLMCLI(args=args, run=False)

    stage2 = parse("stage2.yaml").trainer
    # stage2.yaml's list replaces base.yaml's, so it repeats the learning-rate monitor.
    names = [type(c).__name__ for c in stage2.callbacks]
    assert names[:3] == ["LearningRateMonitor", "HardNegativeMining", "WholeScanValidation"]
    (mining,) = [c for c in stage2.callbacks if type(c).__name__ == "HardNegativeMining"]
    assert (mining.epochs, mining.n_chests) == ([3, 8], 2)
    (callback,) = [c for c in stage2.callbacks if isinstance(c, WholeScanValidation)]
    assert (callback.every_n_epochs, callback.n_chests, callback.phantom_size) == (13, 1, "default")
    assert callback.every_n_epochs == stage2.max_epochs  # once, at the last epoch
    assert (stage2.checkpoint_callback.monitor, stage2.checkpoint_callback.mode) == (
        "val/det/cpm",
        "max",
    )
    debug = parse("stage2.yaml", "debug.yaml").trainer
    names = {type(c).__name__ for c in debug.callbacks}
    assert "LearningRateMonitor" in names
    assert not names & {"WholeScanValidation", "HardNegativeMining"}
    assert debug.checkpoint_callback.monitor == "val/loss"
