"""LUNA16DataModule on a tiny cache built from a phantom LUNA16 tree (4 scans, subsets 0-3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_modules.cache import CacheSpec
from data_modules.io import read_annotations_csv
from data_modules.luna16 import LUNA16DataModule
from data_modules.phantom.generator import PhantomConfig, generate_case
from data_modules.phantom.writers import write_luna16_tree
from data_modules.preprocess import preprocess

TINY = PhantomConfig.tiny(shape_zyx=(24, 40, 40), z_extent_mm=160.0, with_report=False)


@pytest.fixture(scope="module")
def luna(tmp_path_factory) -> tuple[Path, dict[int, str]]:
    tmp = tmp_path_factory.mktemp("luna")
    subset_uid = {}
    for subset, seed in enumerate((20, 21, 22, 23)):
        mhd = write_luna16_tree(
            generate_case(seed, TINY), tmp / "src", subset=subset, n_negatives=3
        )
        subset_uid[subset] = mhd.stem
    result = preprocess(
        "luna16", tmp / "src", tmp / "cache", CacheSpec(spacing_mm=4.0), progress=False
    )
    assert len(result.written) == 4 and result.failed == []
    return tmp, subset_uid


def module(root: Path, **kwargs) -> LUNA16DataModule:
    base = {"crop_size_vox": 16, "batch_size": 4, "augment": False, "jitter_mm": 0.0}
    dm = LUNA16DataModule(data_root=str(root / "cache"), **(base | kwargs))
    dm.setup()
    return dm


def test_fold_is_the_held_out_subset(luna):
    root, uid = luna
    dm = module(root, fold=1)
    assert dm.split_case_ids == {
        "train": [uid[0], uid[2], uid[3]],
        "val": [uid[1]],
        "test": [uid[1]],
    }
    dm = module(root, fold=1, test_fold=2)
    assert dm.split_case_ids == {"train": [uid[0], uid[3]], "val": [uid[1]], "test": [uid[2]]}
    with pytest.raises(ValueError, match="fold=10 must be a LUNA16 subset"):
        LUNA16DataModule(data_root=str(root / "cache"), fold=10)


def test_samples_have_centres_but_no_risk_labels(luna):
    root, uid = luna
    dm = module(root, fold=0, positive_fraction=1.0)
    batch = next(iter(dm.train_dataloader()))
    assert not batch.malignancy_present.any() and not batch.concepts_present.any()
    assert not batch.seg_present.any() and batch.seg_mask.sum() == 0  # no outlines in LUNA16
    assert not batch.lungrads_present.any() and not batch.growth_present.any()
    rows = read_annotations_csv(root / "src" / "annotations.csv")
    dataset = dm.datasets["val"]
    sample = dataset[0]
    row = next(r for r in rows if r.seriesuid == uid[0])
    assert sample.patient_id == uid[0] and sample.meta["fold"] == 0
    # the crop centre is the annotated centre's nearest cache voxel: within half a voxel per axis
    offset = np.abs(np.subtract(sample.meta["world_centre_lps_mm"], row.xyz_mm))
    assert np.all(offset <= 2.0 + 1e-6)
    assert dm.normalization == {"hu_min": -1000.0, "hu_max": 400.0}


def test_wrong_or_missing_root(luna, tmp_path: Path):
    with pytest.raises(ValueError, match='section "Real data"'):
        LUNA16DataModule(data_root=str(tmp_path / "missing")).setup()
    (tmp_path / "cache.json").write_text("{}")
    with pytest.raises(ValueError, match="expected only 'luna16' cases"):
        LUNA16DataModule(data_root=str(tmp_path)).setup()
