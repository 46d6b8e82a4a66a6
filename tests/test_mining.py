"""Hard-negative mining: a planted false positive is found, stored atomically and trained on.

Chests are the 24³ "box" chests at 10 mm of ``test_whole_scan_validation`` (two box lungs, one
2³-voxel nodule of 20 mm reference diameter), so the sliding window is one 24-voxel window.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from data_modules.mined import MANIFEST_NAME, pool_files, read_manifest
from data_modules.phantom_datamodule import MINING_SEED_OFFSET, PhantomDataModule
from lungvlm.inference.mining import lung_window_centres, mine_chest
from lungvlm.lightning.callbacks import HardNegativeMining
from lungvlm.types import WholeChest
from tests.test_whole_scan_validation import BoxChestData, box_chests, segment_module, trainer

TINY = {"crop_size_vox": 24, "spacing_mm": 10.0, "context_scale": 2.0}


class BrightIsNodule(nn.Module):
    """Fires where the normalised image exceeds 0.71 (20 HU does, -50 HU soft tissue does not)."""

    encoder = None

    def forward(self, window: torch.Tensor, context=None) -> torch.Tensor:
        return 100.0 * (window - 0.71)


def planted_chest() -> WholeChest:
    """Box chest "hit" plus an unlabelled 20 HU blob at the centre of the second lung box."""
    chest = box_chests()[0]
    image = chest.image_hu.copy()
    image[11:13, 11:13, 18:20] = 20.0
    return WholeChest(chest.case_id, image, chest.spacing_mm, chest.origin_lps_mm,
                      chest.nodule_labels, chest.nodule_diameters_mm, chest.lung_mask)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


def test_mining_finds_the_planted_false_positive_and_not_the_nodule():
    result = mine_chest(
        BrightIsNodule(), planted_chest(), **TINY, n_windows=0,
        normalization={"hu_min": -1000.0, "hu_max": 400.0},
    )  # fmt: skip
    assert (result.n_candidates, result.n_true_positives, result.n_false_positives) == (2, 1, 1)
    assert result.n_nodules == 1
    (crop,) = result.crops
    blob = (20.0 + 1000.0) / 1400.0  # normalised 20 HU
    assert crop.kind == "false_positive"
    assert crop.score == pytest.approx(1.0 / (1.0 + np.exp(-100.0 * (blob - 0.71))), rel=1e-4)
    np.testing.assert_allclose(crop.centre_vox, (11.5, 11.5, 18.5))
    # Cut from the prepared grid: the blob sits at the crop centre (index 12 = rint(11.5)).
    assert crop.image.shape == (24, 24, 24) and crop.context.shape == (24, 24, 24)
    assert crop.image[12, 12, 12] == pytest.approx(blob, abs=1e-5)
    assert crop.mask.sum() == 0  # the real nodule (x 4-5) lies outside this crop


def test_a_nodule_at_the_crop_centre_is_never_a_negative():
    chest = planted_chest()
    labels = chest.nodule_labels.copy()
    labels[11:13, 11:13, 18:20] = 2  # the blob is now a second nodule, 20 mm reference
    labelled = WholeChest(chest.case_id, chest.image_hu, chest.spacing_mm, chest.origin_lps_mm,
                          labels, (20.0, 20.0), chest.lung_mask)  # fmt: skip
    result = mine_chest(BrightIsNodule(), labelled, **TINY, n_windows=8, seed=3)
    assert (result.n_true_positives, result.n_false_positives) == (2, 0)
    assert all(c.kind == "window" for c in result.crops)
    for crop in result.crops:  # windows keep their nodule voxels, never at the centre
        assert not crop.mask[6:18, 6:18, 6:18].any()


def test_window_centres_fall_on_windows_that_touch_the_lungs():
    region = np.zeros((40, 40, 40), bool)
    region[30:34, 5:9, 20:24] = True
    centres = lung_window_centres(region, 200, 8, np.random.default_rng(0))
    assert centres.shape == (200, 3)
    for c in centres.astype(int):
        window = region[max(c[0] - 4, 0) : c[0] + 4, max(c[1] - 4, 0) : c[1] + 4,
                        max(c[2] - 4, 0) : c[2] + 4]  # fmt: skip
        assert window.any()
    assert centres[:, 0].min() >= 26 and centres[:, 0].max() <= 37
    with pytest.raises(ValueError, match="empty"):
        lung_window_centres(np.zeros((4, 4, 4), bool), 1, 8, np.random.default_rng(0))


def test_stored_pool_is_what_training_draws(tmp_path):
    result = mine_chest(BrightIsNodule(), planted_chest(), **TINY, n_windows=0)
    data = PhantomDataModule(**TINY, n_train=4, n_val=1, n_test=1, augment=False,
                             mined_fraction=1.0)  # fmt: skip
    data.setup("fit")
    assert data.load_mined(tmp_path / "pool") == 0  # no pool yet: phantom crops only
    paths = data.store_mined(tmp_path / "pool", "hit", result.crops, result.stats())
    assert [p.name for p in paths] == ["hit-r0-000-false_positive.npz"]
    assert data.load_mined(tmp_path / "pool") == 1
    sample = data.datasets["train"][2]
    np.testing.assert_array_equal(sample.image[0].numpy(), result.crops[0].image)
    assert sample.seg_present and sample.seg_mask.sum() == 0
    assert not sample.lungrads_present and not sample.malignancy_present
    assert sample.meta["mined_kind"] == "false_positive" and sample.patient_id == "hit"
    assert "nodule" in sample.report_text.lower()
    # A second round for the same chest replaces its entry; validation never draws mined crops.
    data.store_mined(tmp_path / "pool", "hit", result.crops * 2, result.stats(), round_index=1)
    assert [p.name for p in pool_files(tmp_path / "pool")] == [
        "hit-r1-000-false_positive.npz", "hit-r1-001-false_positive.npz",
    ]  # fmt: skip
    assert data.datasets["val"].mined_file(data.datasets["val"].seed_base) is None


def test_fraction_of_mined_samples_follows_mined_fraction(tmp_path):
    result = mine_chest(BrightIsNodule(), planted_chest(), **TINY, n_windows=0)
    data = PhantomDataModule(**TINY, n_train=400, n_val=1, n_test=1, mined_fraction=0.25)
    data.setup("fit")
    data.store_mined(tmp_path, "hit", result.crops, result.stats())
    data.load_mined(tmp_path)
    train = data.datasets["train"]
    picked = [train.mined_file(train.seed_base + i) is not None for i in range(400)]
    assert 0.19 < np.mean(picked) < 0.31
    train.epoch = 1  # drawn anew each epoch
    again = [train.mined_file(train.seed_base + i) is not None for i in range(400)]
    assert picked != again


def test_a_manifest_naming_a_missing_file_is_an_error_that_names_it(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text(
        json.dumps({"version": 1, "chests": {"c": {"files": ["gone.npz"], "stats": {}}}})
    )
    with pytest.raises(ValueError, match="gone.npz"):
        pool_files(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"version": 99, "chests": {}}))
    with pytest.raises(ValueError, match="version"):
        read_manifest(tmp_path)


class MiningBoxData(BoxChestData):
    """Box chests for mining, with the pool kept by the real storage functions."""

    def mining_chests(self, n: int, start: int = 0, size: str = "default") -> list[WholeChest]:
        self.calls.append(("mine", n, start))
        return box_chests()[start : start + n]

    def store_mined(self, folder, case_id, crops, stats, round_index=0):
        return PhantomDataModule.store_mined(self, folder, case_id, crops, stats, round_index)

    def load_mined(self, folder) -> int:
        self.pool = pool_files(folder) if folder.is_dir() else []
        return len(self.pool)


def test_callback_mines_the_box_chests_fp_and_resumes_without_mining_again(tmp_path):
    # Logit 5 everywhere: each (dilated) lung box is one candidate. Box 1 holds the nodule at its
    # centre (a hit); box 2 is a false positive centred at x = 18.5.
    data = MiningBoxData()
    callback = HardNegativeMining(epochs=[0], n_chests=1, max_false_positives=4, n_windows=2)
    run = trainer(callback, tmp_path, max_epochs=1, limit_train_batches=1)
    run.fit(segment_module(seg_logit=5.0), datamodule=data)
    assert ("mine", 1, 0) in data.calls
    manifest = read_manifest(tmp_path / "mined")
    stats = manifest["chests"]["hit"]["stats"]
    assert (stats["n_candidates"], stats["n_true_positives"], stats["n_false_positives"]) == (
        2,
        1,
        1,
    )
    assert stats["n_crops"] == {"false_positive": 1, "window": 2}
    assert len(data.pool) == 3
    assert callback.history[0]["fps_per_chest"] == 1.0
    assert float(run.callback_metrics["train/mined/pool_size"]) == 3.0
    state = callback.state_dict()
    resumed = HardNegativeMining(epochs=[0], n_chests=1)
    resumed.load_state_dict(state)
    again = MiningBoxData()
    run = trainer(resumed, tmp_path, max_epochs=1, limit_train_batches=1)
    run.fit(segment_module(seg_logit=5.0), datamodule=again)
    assert not [c for c in again.calls if c[0] == "mine"] and len(again.pool) == 3


def test_bad_arguments_and_data_modules_are_refused(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        HardNegativeMining(epochs=[])
    with pytest.raises(ValueError, match="n_chests"):
        HardNegativeMining(n_chests=0)
    with pytest.raises(ValueError, match="phantom_size"):
        HardNegativeMining(phantom_size="huge")
    run = trainer(HardNegativeMining(epochs=[0]), tmp_path, max_epochs=1, limit_train_batches=1)
    with pytest.raises(TypeError, match="mining_chests"):
        run.fit(segment_module(), datamodule=BoxChestData())
    with pytest.raises(ValueError, match="n_train"):
        PhantomDataModule(n_train=MINING_SEED_OFFSET)
