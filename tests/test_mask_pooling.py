"""Mask pooling of the stage-3 heads: nodule-weighted features and measured size."""

from __future__ import annotations

import math

import pytest
import torch

from lungvlm.models.encoder import MultiScaleEncoder3D
from lungvlm.models.vision_language import VisionLanguageHeads
from tests.conftest import TINY_ENCODER


def _heads(**kw) -> tuple[MultiScaleEncoder3D, VisionLanguageHeads]:
    torch.manual_seed(0)
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    heads = VisionLanguageHeads(
        encoder.feature_info, vocab_size=300, d_model=32, n_layers=1, n_heads=2, max_length=40, **kw
    )
    return encoder, heads


def _cube_logits(b: int = 1) -> torch.Tensor:
    logits = torch.full((b, 1, 32, 32, 32), -30.0)
    logits[:, :, 8:16, 8:16, 8:16] = 30.0  # an 8-voxel cube, aligned with the level-2 grid
    return logits


def test_summary_pools_the_nodule_and_measures_its_size():
    _, heads = _heads(mask_pooling=True, mask_levels=(2,))
    # Level-2 features (stride 4, 8^3): 1 where the cube is (cells 2..3), 5 elsewhere.
    level2 = torch.full((1, 8, 8, 8, 8), 5.0)
    level2[:, :, 2:4, 2:4, 2:4] = 1.0
    features = [None, None, level2, None, None]
    summary = heads.nodule_summary(features, _cube_logits())
    pooled, size = summary[0, :8], summary[0, 8:]
    assert torch.allclose(pooled, torch.ones(8), atol=1e-3)  # the nodule's features only
    diameter_vox = (6 * 512 / math.pi) ** (1 / 3)  # 9.93 voxels
    assert size[0].item() == pytest.approx(diameter_vox / 10, rel=1e-3)
    assert size[1].item() == pytest.approx(math.log1p(512) / 5, rel=1e-3)
    assert size[2].item() == pytest.approx(1.0)


def test_zero_initialised_conditioning_leaves_tokens_unchanged_and_needs_logits():
    encoder, plain = _heads()
    _, pooled_heads = _heads(mask_pooling=True)
    x = torch.randn(2, 1, 32, 32, 32)
    features = encoder(x, x)
    tokens, _, pooled = pooled_heads.encode(features, _cube_logits(2))
    reference, _ = pooled_heads.visual_tokens(features)  # without the conditioning
    assert torch.allclose(tokens, reference)
    assert pooled.shape == (2, pooled_heads.visual_dim) and plain.visual_dim < pooled.shape[1]
    with pytest.raises(ValueError, match="needs the segmentation logits"):
        pooled_heads.encode(features)
    with pytest.raises(ValueError, match="mask_levels"):
        _heads(mask_pooling=True, mask_levels=(7,))


def test_conditioning_reaches_the_tokens_once_trained():
    encoder, heads = _heads(mask_pooling=True)
    torch.nn.init.normal_(heads.summary_to_tokens[2].weight)
    x = torch.randn(1, 1, 32, 32, 32)
    features = encoder(x, x)
    small, big = _cube_logits(), torch.full((1, 1, 32, 32, 32), 30.0)
    tokens_small, _, _ = heads.encode(features, small)
    tokens_big, _, _ = heads.encode(features, big)
    assert not torch.allclose(tokens_small, tokens_big)
