"""Block masking and masked reconstruction loss."""

import itertools
import math

import pytest
import torch

from lungvlm.losses.masking import (
    apply_mask,
    batch_block_mask,
    block_mask,
    masked_reconstruction_loss,
)


@pytest.mark.parametrize("shape", [(16, 16, 16), (20, 23, 17)])
@pytest.mark.parametrize("ratio", [0.3, 0.6, 0.75])
def test_covered_ratio_is_reached_within_one_block(shape, ratio):
    generator = torch.Generator().manual_seed(1)
    n_voxels = math.prod(shape)
    for _ in range(5):
        mask = block_mask(shape, (4, 4, 4), ratio, generator)
        assert mask.shape == shape and mask.dtype == torch.bool
        covered = mask.sum().item()
        assert math.ceil(ratio * n_voxels) <= covered < ratio * n_voxels + 64


def test_unit_blocks_give_the_exact_ratio_and_extremes():
    generator = torch.Generator().manual_seed(0)
    assert block_mask((5, 6, 7), (1, 1, 1), 0.5, generator).sum().item() == math.ceil(0.5 * 210)
    assert block_mask((5, 6, 7), (3, 3, 3), 0.0, generator).sum().item() == 0
    assert block_mask((5, 6, 7), (3, 3, 3), 1.0, generator).all()


def test_mask_is_a_union_of_grid_blocks():
    mask = block_mask((12, 12, 12), (4, 4, 4), 0.5, torch.Generator().manual_seed(3))

    def constant_on_grid(offset):
        for z, y, x in itertools.product(range(-4, 12, 4), repeat=3):
            cz, cy, cx = z + offset[0], y + offset[1], x + offset[2]
            cell = mask[max(cz, 0) : cz + 4, max(cy, 0) : cy + 4, max(cx, 0) : cx + 4]
            if cell.numel() and cell.any() and not cell.all():
                return False
        return True

    assert any(constant_on_grid(o) for o in itertools.product(range(4), repeat=3))


def test_same_seed_same_mask_and_batch_samples_differ():
    a = block_mask((16, 16, 16), generator=torch.Generator().manual_seed(7))
    b = block_mask((16, 16, 16), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    batch = batch_block_mask(3, (16, 16, 16), generator=torch.Generator().manual_seed(7))
    assert batch.shape == (3, 1, 16, 16, 16)
    assert torch.equal(batch[0, 0], a)
    assert not torch.equal(batch[0, 0], batch[1, 0])


def test_reconstruction_loss_counts_masked_voxels_only():
    target = torch.zeros(1, 1, 1, 2, 2)
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 2, 2)
    mask = torch.tensor([True, False, True, False]).view(1, 1, 1, 2, 2)
    assert masked_reconstruction_loss(pred, target, mask).item() == pytest.approx((1 + 9) / 2)
    assert masked_reconstruction_loss(pred, target, mask, "l1").item() == pytest.approx((1 + 3) / 2)
    changed = pred.clone()
    changed[~mask] = float("nan")
    assert masked_reconstruction_loss(changed, target, mask).item() == pytest.approx(5.0)


def test_reconstruction_loss_broadcasts_mask_and_backpropagates_to_masked_voxels():
    pred = torch.randn(2, 1, 4, 4, 4, requires_grad=True)
    mask = batch_block_mask(2, (4, 4, 4), (2, 2, 2), 0.5, torch.Generator().manual_seed(0))
    masked_reconstruction_loss(pred, torch.zeros(2, 1, 4, 4, 4), mask).backward()
    assert torch.equal(pred.grad != 0, mask)


def test_nothing_masked_gives_attached_zero():
    pred = torch.randn(1, 1, 2, 2, 2, requires_grad=True)
    loss = masked_reconstruction_loss(
        pred, pred.detach(), torch.zeros(1, 1, 2, 2, 2, dtype=torch.bool)
    )
    assert loss.item() == 0.0 and loss.requires_grad


def test_apply_mask_fills_masked_voxels():
    image = torch.arange(8.0).view(1, 1, 2, 2, 2)
    mask = torch.zeros(1, 1, 2, 2, 2, dtype=torch.bool)
    mask[0, 0, 1] = True
    assert apply_mask(image, mask, -1.0).flatten().tolist() == [0, 1, 2, 3, -1, -1, -1, -1]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\]; got 1.5"):
        block_mask((8, 8, 8), mask_ratio=1.5)
    with pytest.raises(ValueError, match=r"block_size_vox must be three positive ints"):
        block_mask((8, 8, 8), block_size_vox=(4, 4))
    with pytest.raises(ValueError, match="batch_size must be a positive int; got 0"):
        batch_block_mask(0, (8, 8, 8))
    x = torch.zeros(1, 1, 2, 2, 2)
    with pytest.raises(ValueError, match="kind='l2' is not valid.*Did you mean 'l1'"):
        masked_reconstruction_loss(x, x, x.bool(), kind="l2")
    with pytest.raises(TypeError, match="mask must be a bool tensor; got torch.float32"):
        masked_reconstruction_loss(x, x, x)
    with pytest.raises(ValueError, match="pred and target must have the same shape"):
        masked_reconstruction_loss(x, x[..., :1], x.bool())
