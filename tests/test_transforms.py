"""The training augmentation: one subject copy per sample gives the values of a copy per step."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from data_modules.phantom_datamodule import PhantomDataModule
from data_modules.transforms import augment, train_augmentation


def copy_per_transform(transform):
    """The same augmentation with torchio's default: every transform deep-copies the subject."""
    reference = copy.deepcopy(transform)
    for t in reference.transforms:
        t.copy = True
    return reference


def crops(seed: int, size: int = 16):
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.uniform(0, 1, (1, size, size, size)).astype(np.float32))
    context = torch.from_numpy(rng.uniform(0, 1, (1, size, size, size)).astype(np.float32))
    mask = torch.zeros(1, size, size, size)
    mask[:, 5:11, 6:10, 4:12] = 1.0
    return image, context, mask


def test_training_transforms_share_one_copy():
    transform = train_augmentation()
    assert transform.copy is True
    assert [t.copy for t in transform.transforms] == [False] * 5


@pytest.mark.parametrize("seed", [0, 1, 7, 1009])
def test_same_values_as_a_copy_per_transform(seed):
    image, context, mask = crops(seed)
    before = (image.clone(), context.clone(), mask.clone())
    outputs = []
    for transform in (train_augmentation(), copy_per_transform(train_augmentation())):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            outputs.append(augment(transform, image, context, mask, (1.0,) * 3, (2.0,) * 3))
    (ours, reference) = outputs
    for got, expected in zip(ours, reference, strict=True):
        assert torch.equal(got, expected)
    assert not torch.equal(ours[0], image)  # the augmentation did change the crop ...
    for arg, original in zip((image, context, mask), before, strict=True):
        assert torch.equal(arg, original)  # ... and left the caller's tensors alone


def test_phantom_training_samples_unchanged(tmp_path):
    dm = PhantomDataModule(
        crop_size_vox=16, n_train=3, n_val=0, n_test=0, batch_size=3, cache_dir=str(tmp_path)
    )
    dm.setup("fit")
    train = dm.datasets["train"]
    ours = [train[i] for i in range(3)]
    train.transform = copy_per_transform(train.transform)
    for i, sample in enumerate(ours):
        reference = train[i]
        assert torch.equal(sample.image, reference.image)
        assert torch.equal(sample.context, reference.context)
        assert torch.equal(sample.seg_mask, reference.seg_mask)
