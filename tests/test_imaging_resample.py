"""The one resampler: grid, values, edges, and the cache and inference agreeing voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from data_modules.cache import CacheSpec, build_case
from lungvlm.clinical.hu import normalize_hu
from lungvlm.imaging.resample import resample_grid, resample_to_spacing, resampled_shape
from lungvlm.imaging.volume import CTVolume
from lungvlm.inference.scan import prepare_scan


def test_shape_and_linear_values():
    # A ramp along z at 2 mm resampled to 1 mm: output index o lies at input index o / 2.
    ramp = np.broadcast_to(np.arange(4, dtype=np.float32)[:, None, None] * 10.0, (4, 3, 3))
    out = resample_to_spacing(ramp, (2.0, 1.0, 1.0), 1.0, order=1)
    assert out.shape == resampled_shape(ramp.shape, (2.0, 1.0, 1.0), 1.0) == (8, 3, 3)
    # Between centres: linear; beyond the last centre (index 3.5): the edge value repeats.
    assert out[:, 1, 1].tolist() == pytest.approx([0, 5, 10, 15, 20, 25, 30, 30])


def test_matches_trilinear_with_edge_clamp():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(12, 14, 16)).astype(np.float32) * 100
    step = 1.0 / np.array([2.5, 0.7, 0.7])
    shape = resampled_shape(volume.shape, (2.5, 0.7, 0.7), 1.0)
    ours = resample_grid(volume, shape, step, order=1)
    scipy = ndimage.affine_transform(volume, step, output_shape=shape, order=1, mode="nearest")
    assert np.abs(ours - scipy).max() < 1e-3


def test_labels_stay_labels():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[2:4, 2:4, 2:4] = 3
    out = resample_to_spacing(labels, (1.0, 1.0, 1.0), 0.5, order=0)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 3}
    assert (out == 3).sum() == 8 * 8  # 2 voxels -> 4 per axis
    with pytest.raises(ValueError, match=r"order=2 must be 0"):
        resample_grid(labels, (3, 3, 3), 2.0, order=2)


def test_cache_and_inference_see_the_same_voxels():
    """Training (the cache) and inference (prepare_scan) put a scan on the same grid, equally."""
    rng = np.random.default_rng(1)
    hu = rng.normal(-700, 200, size=(20, 24, 24)).astype(np.float32)
    volume = CTVolume(hu, (2.5, 0.8, 0.8), (0.0, 0.0, 0.0))
    spec = CacheSpec(spacing_mm=1.0, margin_mm=1000.0, image_dtype="float32")
    arrays, _ = build_case(volume, None, [], spec)
    prepared = prepare_scan(
        hu, volume.spacing_mm, 1.0, {"hu_min": spec.hu_min, "hu_max": spec.hu_max}
    )
    expected = normalize_hu(resample_to_spacing(hu, volume.spacing_mm, 1.0, order=1))
    np.testing.assert_array_equal(prepared.image, expected)
    assert arrays["image"].shape == prepared.image.shape
    np.testing.assert_array_equal(arrays["image"], prepared.image)
