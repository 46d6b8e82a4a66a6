"""LIDCDataModule on a tiny cache built from phantom LIDC trees (5 series, 4 patients)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_modules.cache import CacheSpec, load_case_json
from data_modules.cached_dataset import CachedNoduleDataset, patient_split
from data_modules.lidc import LIDCDataModule
from data_modules.phantom.generator import PhantomConfig, generate_case, generate_follow_up
from data_modules.phantom.writers import write_lidc_tree
from data_modules.preprocess import preprocess
from data_modules.sampling import crop_around
from lungvlm.labels import CONCEPT_NAMES, concept_to_unit
from lungvlm.types import LungBatch

TINY = PhantomConfig.tiny(
    shape_zyx=(24, 40, 40), z_extent_mm=160.0, with_report=False, n_nodules=(1, 1)
)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lidc")
    for seed in (10, 11, 12, 13):
        case = generate_case(seed, TINY)
        write_lidc_tree(case, tmp / "src")
        if seed == 10:  # a second CT of patient PHANTOM-0010
            write_lidc_tree(generate_follow_up(case, 6.0, seed=99), tmp / "src")
    result = preprocess(
        "lidc", tmp / "src", tmp / "cache", CacheSpec(spacing_mm=4.0), progress=False
    )
    assert len(result.written) == 5 and result.failed == []
    return tmp / "cache"


def module(root: Path, **kwargs) -> LIDCDataModule:
    base = {"crop_size_vox": 16, "batch_size": 4, "augment": False, "jitter_mm": 0.0}
    dm = LIDCDataModule(
        data_root=str(root), val_fraction=0.25, test_fraction=0.25, **(base | kwargs)
    )
    dm.setup()
    return dm


def test_patient_split_keeps_a_patient_in_one_split():
    ids = ["a", "b", "a", "c", "d", "e", "f", "g", "h", "i"]
    split = patient_split(ids, val_fraction=0.2, test_fraction=0.1, seed=3)
    patients = {k: {ids[i] for i in v} for k, v in split.items()}
    # 9 patients: round(0.1 * 9) = 1 in test, round(0.2 * 9) = 2 in val, 6 in train
    assert [len(patients[k]) for k in ("train", "val", "test")] == [6, 2, 1]
    assert set.union(*patients.values()) == set(ids)
    assert sum(len(p) for p in patients.values()) == 9  # no patient in two splits
    assert sum(len(v) for v in split.values()) == 10
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        patient_split(ids, 0.6, 0.5, 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_splits_are_patient_level_and_seeded(cache_root: Path, seed: int):
    dm = module(cache_root, seed=seed)
    patients = {
        split: {load_case_json(cache_root / c)["patient_id"] for c in ids}
        for split, ids in dm.split_case_ids.items()
    }
    assert [len(patients[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert sum(len(v) for v in dm.split_case_ids.values()) == 5
    owner = [s for s, p in patients.items() if "PHANTOM-0010" in p]
    assert len(owner) == 1 and len(dm.split_case_ids[owner[0]]) == len(patients[owner[0]]) + 1
    assert module(cache_root, seed=seed).split_case_ids == dm.split_case_ids


def test_batch_fields_and_labels(cache_root: Path):
    dm = module(cache_root, positive_fraction=1.0)
    batch = next(iter(dm.val_dataloader()))
    assert isinstance(batch, LungBatch)
    assert batch.image.shape[1:] == (1, 16, 16, 16) and batch.context.shape == batch.image.shape
    assert batch.seg_present.all() and not batch.lungrads_present.any()
    assert not batch.growth_present.any() and batch.report_text[0] == ""
    assert batch.concepts_present.all() and batch.spacing_mm[0].tolist() == [4.0, 4.0, 4.0]
    dataset = dm.datasets["val"]
    case = dataset.cases[0]
    record = case["nodules"][0]
    sample = dataset[0]
    assert sample.meta["nodule_label"] == record["label"] and sample.seg_mask.sum() > 0
    median = record["ratings"]["sphericity"]["median"]
    assert sample.concepts[CONCEPT_NAMES.index("sphericity")] == pytest.approx(
        concept_to_unit("sphericity", median)
    )
    mean = np.mean(record["malignancy"]["ratings"])
    assert sample.malignancy_present == (mean != 3) and sample.malignancy == float(mean > 3)
    image = np.load(dataset.case_dirs[0] / "image.npy")
    expected = crop_around(image, record["centroid_voxel_zyx"], 16).astype(np.float32)
    assert np.array_equal(sample.image[0].numpy(), expected)


def test_negatives_label_fraction_and_normalization(cache_root: Path):
    dm = module(cache_root, positive_fraction=0.5, label_fraction=0.0, augment=True)
    train = dm.datasets["train"]
    positives = sum(n is not None for _, n in train.entries)
    assert len(train) == 2 * positives
    batch = next(iter(dm.train_dataloader()))
    assert not batch.seg_present.any() and not batch.malignancy_present.any()
    assert batch.image.min() >= 0 and batch.image.max() <= 1
    negative = train[len(train) - 1]
    assert negative.meta["positive"] is False and not negative.concepts_present.any()
    assert dm.normalization == {"hu_min": -1000.0, "hu_max": 400.0}


def test_missing_root_points_to_readme(tmp_path: Path):
    dm = LIDCDataModule(data_root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match='README.md, section "Real data"'):
        dm.setup()
    with pytest.raises(ValueError, match="not a preprocessed cache"):
        LIDCDataModule(data_root=str(tmp_path)).prepare_data()
    with pytest.raises(ValueError, match="malignancy_rule"):
        LIDCDataModule(malignancy_rule="mean")
    with pytest.raises(ValueError, match="positive_fraction"):
        CachedNoduleDataset([], positive_fraction=2.0)
