"""The typed batch: collate, validation and device moves."""

import pytest
import torch

from lungvlm.types import LungBatch, collate_samples
from tests.conftest import sphere_batch, sphere_sample


def test_collate_stacks_fields_with_dtypes():
    batch = sphere_batch(3, 16)
    assert batch.image.shape == (3, 1, 16, 16, 16)
    assert batch.lungrads.dtype == torch.int64
    assert batch.malignancy.tolist() == [0.0, 1.0, 0.0]
    assert batch.patient_id == ["sphere-0", "sphere-1", "sphere-2"]
    assert batch.batch_size == 3


def test_collate_rejects_mixed_shapes_and_empty():
    with pytest.raises(ValueError, match="share one shape"):
        collate_samples([sphere_sample(0, 16), sphere_sample(1, 20)])
    with pytest.raises(ValueError, match="empty list"):
        collate_samples([])


def test_post_init_names_bad_field():
    batch = sphere_batch(2, 16)
    fields = dict(batch.__dict__)
    fields["seg_mask"] = torch.zeros(2, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="seg_mask shape"):
        LungBatch(**fields)
    fields = dict(batch.__dict__)
    fields["lungrads"] = fields["lungrads"].float()
    with pytest.raises(TypeError, match="lungrads must be int64"):
        LungBatch(**fields)


def test_to_moves_tensors_and_keeps_strings():
    batch = sphere_batch(2, 16).to("cpu")
    assert batch.report_text[0].startswith("A 8 mm")
    assert batch.image.device.type == "cpu"
