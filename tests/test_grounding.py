"""Tests for visual tokens, token -> voxel heatmaps and the mention grounding losses."""

from __future__ import annotations

import math

import pytest
import torch

from lungvlm.losses.grounding import (
    mask_fractions,
    mention_grounding_loss,
    mention_grounding_loss_token_grid,
    query_labels,
)
from lungvlm.models.grounding import average_attention, token_heatmaps
from lungvlm.models.visual_tokens import TokenGeometry, VisualTokenizer, sinusoidal_position_3d

FEATURE_INFO = [{"channels": 4 * 2**i, "stride": 2**i} for i in range(5)]


def _features(side: int = 32, batch: int = 2) -> list[torch.Tensor]:
    return [
        torch.randn(batch, info["channels"], *(side // info["stride"],) * 3)
        for info in FEATURE_INFO
    ]


# --- visual tokens -----------------------------------------------------------------------------


def test_visual_tokenizer_shapes_and_geometry():
    torch.manual_seed(0)
    tokenizer = VisualTokenizer(FEATURE_INFO, levels=(2, 3, 4), d_model=24)
    tokens, geometry = tokenizer(_features())
    assert tokens.shape == (2, 512 + 64 + 8, 24)
    assert geometry.level_shapes == ((8, 8, 8), (4, 4, 4), (2, 2, 2))
    assert geometry.level_strides == ((4, 4, 4), (8, 8, 8), (16, 16, 16))
    assert geometry.offsets == (0, 512, 576) and geometry.num_tokens == 584
    assert geometry.token_position(576 + 5) == (2, 1, 0, 1)
    assert geometry.token_position(512 + 16 * 3 + 4 * 2 + 1) == (1, 3, 2, 1)


def test_visual_token_comes_from_its_own_cell():
    torch.manual_seed(0)
    tokenizer = VisualTokenizer(FEATURE_INFO, levels=(2, 3), d_model=12).eval()
    feats = _features(batch=1)
    base, geometry = tokenizer(feats)
    feats[3][0, :, 3, 2, 1] += 5.0  # one cell of level 3 (second chosen level)
    moved, _ = tokenizer(feats)
    changed = ((moved - base).abs().amax(-1) > 1e-6)[0].nonzero().flatten().tolist()
    assert changed == [512 + 16 * 3 + 4 * 2 + 1]


def test_sinusoidal_position_hand_values():
    # dim 7 -> one sin/cos pair per axis (frequency 1) + one zero channel; stride 2 centres
    # are (index + 0.5) * 2 - 0.5 = 0.5, 2.5.
    emb = sinusoidal_position_3d((1, 2, 1), (2, 2, 2), dim=7)
    c0, c1 = 0.5, 2.5
    expected_row1 = [
        math.sin(c0),
        math.cos(c0),
        math.sin(c1),
        math.cos(c1),
        math.sin(c0),
        math.cos(c0),
        0.0,
    ]
    assert emb.shape == (2, 7)
    assert torch.allclose(emb[1], torch.tensor(expected_row1), atol=1e-6)


def test_visual_tokenizer_errors():
    with pytest.raises(ValueError, match="level 5 is outside feature_info"):
        VisualTokenizer(FEATURE_INFO, levels=(2, 5), d_model=12)
    with pytest.raises(ValueError, match="must have 'channels' and 'stride'"):
        VisualTokenizer([{"channels": 4}], levels=(0,), d_model=12)
    with pytest.raises(ValueError, match=r"features\[2\] must be \(B, 16, d, h, w\)"):
        VisualTokenizer(FEATURE_INFO, levels=(2,), d_model=12)([torch.zeros(1, 3, 2, 2, 2)] * 3)
    with pytest.raises(ValueError, match=r"token must be in \[0, 8\)"):
        TokenGeometry(((2, 2, 2),), ((4, 4, 4),), (0,)).token_position(8)


# --- heatmaps ----------------------------------------------------------------------------------

GEOMETRY_16 = TokenGeometry(((4, 4, 4), (2, 2, 2)), ((4, 4, 4), (8, 8, 8)), (0, 64))


def test_heatmaps_sum_to_one_and_have_input_shape():
    torch.manual_seed(0)
    layers = tuple(torch.randn(2, 2, 3, 72).softmax(-1) for _ in range(2))
    for mode in ("trilinear", "nearest"):
        heat = token_heatmaps(layers, GEOMETRY_16, (16, 16, 16), mode=mode)
        assert heat.shape == (2, 3, 16, 16, 16)
        assert torch.allclose(heat.sum((2, 3, 4)), torch.ones(2, 3), atol=1e-5)
        assert (heat >= 0).all()


def test_attention_on_one_coarse_token_lands_in_its_block():
    # 24^3 input, one level of 3x3x3 tokens with stride 8; all attention on the centre cell.
    geometry = TokenGeometry(((3, 3, 3),), ((8, 8, 8),), (0,))
    attention = torch.zeros(1, 1, 27)
    attention[0, 0, 13] = 1.0  # (z, y, x) = (1, 1, 1) -> voxels 8:16 on each axis
    nearest = token_heatmaps(attention, geometry, (24, 24, 24), mode="nearest")
    assert nearest[0, 0, 8:16, 8:16, 8:16].sum().item() == pytest.approx(1.0, abs=1e-6)
    assert nearest[0, 0, 8:16, 8:16, 8:16].min().item() == pytest.approx(1 / 512, abs=1e-9)
    # Trilinear x8 (align_corners=False) of a 1D delta gives weights 9/16, 11/16, 13/16, 15/16,
    # 15/16, ..., 9/16 inside the block (sum 6) and 1/16 + 3/16 + 5/16 + 7/16 = 1 on each side:
    # the share inside is 6 / 8 per axis, (3/4)^3 in 3D.
    smooth = token_heatmaps(attention, geometry, (24, 24, 24), mode="trilinear")
    assert smooth[0, 0, 8:16, 8:16, 8:16].sum().item() == pytest.approx(0.421875, abs=1e-5)
    assert smooth.sum().item() == pytest.approx(1.0, abs=1e-5)
    zz = torch.arange(24, dtype=torch.float32)
    centre_z = (smooth[0, 0].sum((1, 2)) * zz).sum().item()
    assert centre_z == pytest.approx(11.5, abs=1e-4)  # the block centre


def test_level_mass_is_preserved():
    attention = torch.zeros(1, 1, 72)
    attention[0, 0, 0] = 0.3  # fine cell (0, 0, 0): voxels 0:4
    attention[0, 0, 64 + 7] = 0.7  # coarse cell (1, 1, 1): voxels 8:16
    heat = token_heatmaps(attention, GEOMETRY_16, (16, 16, 16), mode="nearest")
    assert heat[0, 0, :4, :4, :4].sum().item() == pytest.approx(0.3, abs=1e-6)
    assert heat[0, 0, 8:, 8:, 8:].sum().item() == pytest.approx(0.7, abs=1e-6)


def test_padded_input_extent():
    # A 20^3 input seen by an encoder that padded it to 32^3: 2x2x2 cells of stride 16, the last
    # cell of each axis covers voxels 16:32, of which only 16:20 lie in the input.
    geometry = TokenGeometry(((2, 2, 2),), ((16, 16, 16),), (0,))
    attention = torch.zeros(1, 1, 8)
    attention[0, 0, 7] = 1.0
    heat = token_heatmaps(attention, geometry, (20, 20, 20), mode="nearest")
    assert heat.shape == (1, 1, 20, 20, 20)
    assert heat[0, 0, 16:, 16:, 16:].sum().item() == pytest.approx(1.0, abs=1e-6)
    assert heat[0, 0, 16, 16, 16].item() == pytest.approx(1 / 64, abs=1e-7)
    fractions = mask_fractions(torch.ones(1, 1, 20, 20, 20), geometry)
    assert fractions[0, 0, [0, 1, 7]].tolist() == pytest.approx([1.0, 1 / 4, 1 / 64])


def test_average_attention_options():
    a = torch.zeros(1, 2, 1, 2)
    a[0, 0, 0] = torch.tensor([1.0, 0.0])
    a[0, 1, 0] = torch.tensor([0.5, 0.5])
    b = torch.zeros(1, 2, 1, 2)
    b[0, :, 0] = torch.tensor([0.0, 1.0])
    assert average_attention((a, b), "mean", "mean")[0, 0].tolist() == [0.375, 0.625]
    assert average_attention((a, b), "last", "mean")[0, 0].tolist() == [0.0, 1.0]
    assert average_attention((a, b), 0, 1)[0, 0].tolist() == [0.5, 0.5]
    # max over heads of layer a is [1.0, 0.5], renormalised to [2/3, 1/3].
    assert torch.allclose(
        average_attention((a,), "mean", "max")[0, 0], torch.tensor([2 / 3, 1 / 3])
    )
    with pytest.raises(ValueError, match="did you mean 'mean'"):
        average_attention((a, b), layers="meen")
    with pytest.raises(ValueError, match="mode must be one of"):
        token_heatmaps(
            a[:, 0], TokenGeometry(((1, 1, 2),), ((1, 1, 1),), (0,)), (1, 1, 2), mode="cubic"
        )


# --- grounding losses --------------------------------------------------------------------------

GEOMETRY_8 = TokenGeometry(((2, 2, 2),), ((4, 4, 4),), (0,))


def _mask_8() -> torch.Tensor:
    mask = torch.zeros(1, 1, 8, 8, 8)
    mask[0, 0, 0:4, 0:4, 0:4] = 1.0  # all of cell 0
    mask[0, 0, 0:4, 0:4, 4:6] = 1.0  # half of cell 1
    return mask


def _attention(weights: dict[int, float], queries: int = 3) -> torch.Tensor:
    att = torch.zeros(1, queries, 8)
    for q in range(queries):
        att[0, q, 7] = 1.0  # unlabelled queries: all attention on the far corner
    for cell, value in weights.items():
        att[0, 0, cell] = value
    att[0, 0, 7] = 1.0 - sum(v for c, v in weights.items() if c != 7)
    return att


def test_mask_fractions_hand_values():
    fractions = mask_fractions(_mask_8(), GEOMETRY_8)
    assert fractions[0, 0].tolist() == [1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_grounding_loss_equals_hand_value_and_prefers_the_mask():
    token_nodule = torch.tensor([[-1, 0, -1]])  # token 1 names nodule 0; query 0 produced it
    present = torch.tensor([True])
    on = _attention({0: 0.6, 1: 0.2})  # mass inside = 0.6 * 1 + 0.2 * 0.5 = 0.7
    off = _attention({0: 0.1})  # mass inside = 0.1
    loss_on = mention_grounding_loss_token_grid(on, GEOMETRY_8, token_nodule, _mask_8(), present)
    loss_off = mention_grounding_loss_token_grid(off, GEOMETRY_8, token_nodule, _mask_8(), present)
    assert loss_on.item() == pytest.approx(-math.log(0.7 + 1e-6), abs=1e-6)
    assert loss_off.item() == pytest.approx(-math.log(0.1 + 1e-6), abs=1e-6)
    assert loss_on.item() < loss_off.item()
    # Full-resolution heatmaps ("nearest") give the same mass, hence the same loss.
    heat = token_heatmaps(on, GEOMETRY_8, (8, 8, 8), mode="nearest")
    full = mention_grounding_loss(heat, token_nodule, _mask_8(), present)
    assert full.item() == pytest.approx(-math.log(0.7 + 1e-6), abs=1e-5)


def test_grounding_loss_averages_over_labelled_tokens_and_selects_channels():
    att = _attention({0: 0.6, 1: 0.2})
    att[0, 1] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.75])  # query 1 -> token 2
    masks = torch.cat([_mask_8(), torch.zeros(1, 1, 8, 8, 8)], dim=1)
    masks[0, 1, 4:8, 4:8, 4:8] = 1.0  # nodule 1 fills cell 7
    token_nodule = torch.tensor([[-1, 0, 1]])
    loss = mention_grounding_loss_token_grid(
        att, GEOMETRY_8, token_nodule, masks, torch.tensor([True])
    )
    expected = (-math.log(0.7 + 1e-6) - math.log(0.75 + 1e-6)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # The "reading" convention (query t grounds token t) picks queries 1 and 2 instead.
    loss0 = mention_grounding_loss_token_grid(
        att, GEOMETRY_8, token_nodule, masks, torch.tensor([True]), query_offset=0
    )
    assert loss0.item() == pytest.approx((-math.log(1e-6) - math.log(1.0 + 1e-6)) / 2, abs=1e-5)


@pytest.mark.parametrize(
    ("token_nodule", "present", "empty_mask"),
    [([[-1, -1, -1]], True, False), ([[-1, 0, -1]], False, False), ([[-1, 0, -1]], True, True)],
)
def test_grounding_loss_is_zero_without_labels(token_nodule, present, empty_mask):
    logits = torch.randn(1, 3, 8, requires_grad=True)
    mask = torch.zeros(1, 1, 8, 8, 8) if empty_mask else _mask_8()
    loss = mention_grounding_loss_token_grid(
        logits.softmax(-1), GEOMETRY_8, torch.tensor(token_nodule), mask, torch.tensor([present])
    )
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum().item() == 0.0


def test_grounding_loss_gradient_pulls_attention_into_the_mask():
    logits = torch.zeros(1, 3, 8, requires_grad=True)
    loss = mention_grounding_loss_token_grid(
        logits.softmax(-1), GEOMETRY_8, torch.tensor([[-1, 0, -1]]), _mask_8(), torch.tensor([True])
    )
    loss.backward()
    grad = logits.grad[0, 0]
    assert grad[0] < grad[1] < 0 < grad[7]  # descent raises cell 0 most, lowers outside cells


def test_grounding_loss_errors():
    att = _attention({0: 1.0})
    with pytest.raises(ValueError, match="names nodule 2 but masks has only K=2"):
        mention_grounding_loss_token_grid(
            att,
            GEOMETRY_8,
            torch.tensor([[-1, 2, -1]]),
            torch.ones(1, 2, 8, 8, 8),
            torch.tensor([True]),
        )
    with pytest.raises(ValueError, match="must share"):
        mention_grounding_loss(
            torch.ones(1, 3, 4, 4, 4), torch.zeros(1, 3), _mask_8(), torch.tensor([True])
        )
    assert query_labels(torch.tensor([[5, 6, 7]]), 1).tolist() == [[6, 7, -1]]
