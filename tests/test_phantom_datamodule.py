"""PhantomDataModule batches, the shared crop sampler and the augmentation."""

import numpy as np
import pytest
import torch

from data_modules.phantom_datamodule import PhantomDataModule, split_seed_base
from data_modules.sampling import context_crop, crop_around
from lungvlm.clinical.hu import denormalize_hu
from lungvlm.labels import CONCEPT_NAMES


def _dm(**kw):
    args = dict(
        crop_size_vox=16, n_train=4, n_val=4, n_test=4, batch_size=4, seed=0, positive_fraction=0.75
    )
    args.update(kw)
    dm = PhantomDataModule(**args)
    dm.setup()
    return dm


def test_batches_deterministic_per_seed():
    a, b = _dm(), _dm()
    for loader in ("train_dataloader", "val_dataloader"):
        ba, bb = next(iter(getattr(a, loader)())), next(iter(getattr(b, loader)()))
        assert torch.equal(ba.image, bb.image) and torch.equal(ba.seg_mask, bb.seg_mask)
        assert ba.report_text == bb.report_text and ba.patient_id == bb.patient_id
    other = next(iter(_dm(seed=1).val_dataloader()))
    assert not torch.equal(other.image, next(iter(a.val_dataloader())).image)


def test_splits_are_disjoint():
    assert split_seed_base("train", 0) == 0 and split_seed_base("val", 0) == 1_000_000
    assert split_seed_base("test", 2) == 8_000_000
    dm = _dm()
    ids = {s: {dm.datasets[s][i].patient_id for i in range(4)} for s in ("train", "val", "test")}
    assert (
        not (ids["train"] & ids["val"])
        and not (ids["train"] & ids["test"])
        and not (ids["val"] & ids["test"])
    )
    assert ids["val"] == {f"phantom-{1_000_000 + i}" for i in range(4)}


def test_masks_line_up_with_images():
    dm = _dm(augment=False, crop_size_vox=24, n_val=6)
    batch = next(iter(dm.val_dataloader()))
    assert batch.image.shape == (4, 1, 24, 24, 24) and batch.context.shape == batch.image.shape
    hu = denormalize_hu(batch.image.numpy())
    positives = exact = 0
    for i, meta in enumerate(batch.meta):
        mask = batch.seg_mask[i].numpy() > 0.5
        if not meta["positive"]:
            assert (
                not mask.any()
                and not batch.malignancy_present[i]
                and not batch.concepts_present[i].any()
            )
            continue
        positives += 1
        lab = meta["labels"]
        in_mask = hu[i][mask]
        # the nodule's HU: ground glass about -700, solid tissue about +40, both above lung
        assert in_mask.mean() > -790.0
        if lab["volume_mm3"] == mask.sum() and lab["kind"] != "calcified":
            # the nodule lies wholly in the crop, so its labels were measured on this very
            # image: the masked mean is the label's mean HU (calcium may exceed the 400 HU clip)
            assert in_mask.mean() == pytest.approx(lab["mean_hu"], abs=0.5)
            exact += 1
        assert batch.lungrads_present[i] and batch.growth_present[i]
    assert positives >= 1 and exact >= 1
    assert batch.concepts.shape == (4, len(CONCEPT_NAMES))
    assert ((batch.concepts >= 0) & (batch.concepts <= 1)).all()


def test_label_fraction_masks_training_labels():
    dm = _dm(label_fraction=0.0, augment=False)
    batch = next(iter(dm.train_dataloader()))
    assert (
        not batch.seg_present.any()
        and not batch.lungrads_present.any()
        and not batch.concepts_present.any()
    )


def test_cache_round_trip(tmp_path):
    dm = _dm(cache_dir=str(tmp_path), augment=False)
    first = dm.datasets["val"][0]
    files = list(tmp_path.glob("phantom-*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp*"))
    again = _dm(cache_dir=str(tmp_path), augment=False).datasets["val"][0]
    assert torch.equal(first.image, again.image) and first.report_text == again.report_text


def test_constructor_errors():
    with pytest.raises(ValueError, match="positive_fraction=1.5"):
        PhantomDataModule(positive_fraction=1.5)
    with pytest.raises(ValueError, match="shape_source='cad'"):
        PhantomDataModule(shape_source="cad")


def test_crop_around_pads_outside():
    vol = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    crop = crop_around(vol, (0, 0, 0), 3, pad_value=-1000.0)
    assert crop.shape == (3, 3, 3)
    assert crop[0, 0, 0] == -1000.0 and crop[1, 1, 1] == 0.0 and crop[2, 2, 2] == 21.0
    assert np.array_equal(crop_around(vol, (2, 2, 2), 2), vol[1:3, 1:3, 1:3])
    with pytest.raises(ValueError, match="size_vox"):
        crop_around(vol, (1, 1, 1), 0)


def test_context_crop_scales_field_of_view():
    z = np.arange(9, dtype=np.float32)[:, None, None] * np.ones((1, 9, 9), np.float32)
    ctx = context_crop(z, (4, 4, 4), 3, scale=2.0, pad_value=-1.0)
    assert ctx[:, 1, 1].tolist() == [2.0, 4.0, 6.0]  # samples z = 4 + (i - 1) * 2
    assert np.array_equal(context_crop(z, (4, 4, 4), 3, scale=1.0), crop_around(z, (4, 4, 4), 3))
    assert context_crop(z, (4, 4, 4), 5, scale=3.0, pad_value=-1.0)[0, 2, 2] == -1.0
    with pytest.raises(ValueError, match="scale=0"):
        context_crop(z, (4, 4, 4), 3, scale=0)


def test_hard_negatives_sit_on_vessels(tmp_path):
    """Vessel-centred negatives: the fraction is honoured and their crop centre is vessel-bright
    (about +40 HU blurred) where random lung negatives stay near lung attenuation."""
    dm = _dm(
        crop_size_vox=24, n_train=0, n_val=0, n_test=40, positive_fraction=0.0,
        hard_negative_fraction=0.5, augment=False, cache_dir=str(tmp_path),
    )  # fmt: skip
    test = dm.datasets["test"]
    kinds = [test.sample_kind(test.seed_base + i) for i in range(40)]
    assert 12 <= kinds.count("vessel") <= 28 and set(kinds) == {"vessel", "lung"}
    centre = {"vessel": [], "lung": []}
    for i, kind in enumerate(kinds[:16]):
        sample = test[i]
        assert sample.meta["negative_site"] == kind and not bool(sample.seg_mask.any())
        hu = denormalize_hu(sample.image[0, 11:13, 11:13, 11:13].numpy()).mean()
        centre[kind].append(float(hu))
    assert np.median(centre["vessel"]) > np.median(centre["lung"]) + 150
    # The cache is keyed per sample: another fraction reuses the files of the same samples.
    before = len(list(tmp_path.glob("phantom-*.pt")))
    other = _dm(
        crop_size_vox=24, n_train=0, n_val=0, n_test=16, positive_fraction=0.0,
        hard_negative_fraction=0.5, augment=False, cache_dir=str(tmp_path), batch_size=2,
    ).datasets["test"]  # fmt: skip
    other[0]
    assert len(list(tmp_path.glob("phantom-*.pt"))) == before
    with pytest.raises(ValueError, match="hard_negative_fraction=2"):
        PhantomDataModule(hard_negative_fraction=2)
