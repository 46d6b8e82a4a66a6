"""Shared fixtures: tiny synthetic sphere batches and a tiny encoder (CPU, 16-voxel crops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungvlm.labels import CONCEPT_NAMES
from lungvlm.types import LungBatch, NoduleSample, ReportSpan, collate_samples

TINY_ENCODER = {"widths": (4, 8, 8, 16, 16), "depths": (1, 1, 1, 1, 1), "fpn_channels": 8}


def sphere_sample(seed: int, size: int = 32, radius_vox: float = 6.0) -> NoduleSample:
    """A bright sphere (nodule) in noisy dark lung, normalised to [0, 1]; labels known."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:size, :size, :size].astype(np.float32)
    centre = size / 2 - 0.5 + rng.uniform(-1.5, 1.5, 3)
    dist = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    mask = (dist <= radius_vox).astype(np.float32)
    image = 0.1 + 0.05 * rng.standard_normal((size, size, size)).astype(np.float32)
    image = np.where(mask > 0, 0.75, image).astype(np.float32)
    text = "A 8 mm solid nodule in the right upper lobe."
    return NoduleSample(
        image=torch.from_numpy(image)[None],
        context=torch.from_numpy(image)[None],
        seg_mask=torch.from_numpy(mask)[None],
        seg_present=True,
        malignancy=float(seed % 2),
        malignancy_present=True,
        lungrads=4,
        lungrads_present=True,
        growth_time_months=12.0,
        growth_event=float(seed % 2),
        growth_present=True,
        concepts=torch.full((len(CONCEPT_NAMES),), 0.5),
        concepts_present=torch.ones(len(CONCEPT_NAMES), dtype=torch.bool),
        report_text=text,
        report_spans=[ReportSpan(2, 6, 0, "size")],
        impression_text="Lung-RADS 4A.",
        spacing_mm=torch.tensor([1.0, 1.0, 1.0]),
        patient_id=f"sphere-{seed}",
        meta={"seed": seed},
    )


def sphere_batch(n: int = 2, size: int = 32, seed: int = 0) -> LungBatch:
    """Collate ``n`` sphere samples."""
    return collate_samples([sphere_sample(seed + i, size) for i in range(n)])


@pytest.fixture
def tiny_batch() -> LungBatch:
    return sphere_batch(2, 32)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny stage-3 checkpoint (``tests.report_fixtures.write_stage3_checkpoint``: it segments
    every lung voxel), one per test module; a module may define its own ``ckpt`` instead."""
    from tests.report_fixtures import write_stage3_checkpoint

    return write_stage3_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt")
