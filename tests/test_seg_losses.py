"""DiceHausdorffLoss: hand-computed values, deep supervision, present mask, errors."""

import math

import numpy as np
import pytest
import torch
from monai.losses import DiceLoss, HausdorffDTLoss
from scipy.ndimage import distance_transform_edt

from lungvlm.losses.segmentation import DiceHausdorffLoss, downsample_target, infer_stride

LOG3 = math.log(3.0)


def line_case():
    """A (1, 1, 1, 1, 4) volume: target [1, 1, 0, 0], probabilities [.75, .25, .25, .25]."""
    logits = torch.tensor([LOG3, -LOG3, -LOG3, -LOG3]).view(1, 1, 1, 1, 4)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 1, 4)
    return logits, target


def test_dice_and_hausdorff_match_hand_computation():
    logits, target = line_case()
    out = DiceHausdorffLoss(dice_weight=1.0, hausdorff_weight=0.5)(logits, target)
    # Dice: intersection .75 + .25 = 1, sum(p) = 1.5, sum(t) = 2, MONAI smoothing 1e-5.
    dice = 1.0 - (2.0 * 1.0 + 1e-5) / (1.5 + 2.0 + 1e-5)
    # Distance fields (fg EDT + bg EDT): target [2, 1, 1, 2], prediction (p > .5 = [1,0,0,0])
    # [1, 1, 2, 3]; squared sums [5, 2, 5, 13]; errors (p - t)^2 [1/16, 9/16, 1/16, 1/16].
    hausdorff = (5 / 16 + 18 / 16 + 5 / 16 + 13 / 16) / 4
    assert hausdorff == pytest.approx(0.640625)
    assert out["dice"].item() == pytest.approx(dice, abs=1e-6)
    assert out["hausdorff"].item() == pytest.approx(hausdorff, abs=1e-6)
    assert out["total"].item() == pytest.approx(dice + 0.5 * hausdorff, abs=1e-6)


def test_hausdorff_matches_scipy_distance_transforms_on_a_sphere():
    grid = np.indices((12, 12, 12)) - 5.5
    target_np = (np.sqrt((grid**2).sum(0)) < 4).astype(np.float32)
    rng = np.random.default_rng(0)
    logits_np = (4 * target_np - 2 + rng.normal(0, 1.5, target_np.shape)).astype(np.float32)
    prob = 1 / (1 + np.exp(-logits_np.astype(np.float64)))

    def field(mask):
        return distance_transform_edt(mask) + distance_transform_edt(~mask)

    expected = (
        (prob - target_np) ** 2 * (field(prob > 0.5) ** 2 + field(target_np > 0.5) ** 2)
    ).mean()
    loss = DiceHausdorffLoss(dice_weight=0.0, hausdorff_weight=1.0)
    out = loss(torch.from_numpy(logits_np)[None, None], torch.from_numpy(target_np)[None, None])
    assert out["total"].item() == pytest.approx(expected, rel=1e-4)


def test_deep_supervision_downsamples_target_and_normalises_weights():
    torch.manual_seed(0)
    target = torch.zeros(2, 1, 5, 5, 5)
    target[0, 0, 1:3, 1:4, 2:5] = 1
    target[1, 0, 4, 4, 4] = 1  # one corner voxel: max-pooling keeps it at every level
    full, half, quarter = (
        torch.randn(2, 1, 5, 5, 5),
        torch.randn(2, 1, 3, 3, 3),
        torch.randn(2, 1, 2, 2, 2),
    )
    out = DiceHausdorffLoss(deep_supervision_weights=(1.0, 0.5, 0.25))(
        [full, half, quarter], target
    )

    half_target = downsample_target(target, (3, 3, 3))
    assert half_target[1, 0].nonzero().tolist() == [[2, 2, 2]]
    assert half_target[0, 0].sum().item() == 2 * 2 * 2  # cells z 0-1, y 0-1, x 1-2
    quarter_target = downsample_target(target, (2, 2, 2))
    dice, hd = DiceLoss(sigmoid=True), HausdorffDTLoss(sigmoid=True, include_background=True)
    pairs = [(full, target), (half, half_target), (quarter, quarter_target)]
    weights = [1.0, 0.5, 0.25]
    expected_dice = sum(w * dice(x, t) for w, (x, t) in zip(weights, pairs, strict=True)) / 1.75
    expected_hd = sum(w * hd(x, t) for w, (x, t) in zip(weights, pairs, strict=True)) / 1.75
    assert out["dice"].item() == pytest.approx(expected_dice.item(), abs=1e-6)
    assert out["hausdorff"].item() == pytest.approx(expected_hd.item(), abs=1e-6)


def test_nearest_downsampling_takes_first_voxel_of_each_cell():
    target = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(1, 1, 5, 3, 3)
    assert downsample_target(target, (3, 2, 2), "nearest")[0, 0, :, 0, 0].tolist() == [0, 2, 4]
    assert downsample_target(target, (2, 1, 1), "max")[0, 0, :, 0, 0].tolist() == [3, 4]


def test_absent_samples_are_skipped():
    logits, target = line_case()
    loss = DiceHausdorffLoss()
    alone = loss(logits, target)
    other_logits = torch.randn(1, 1, 1, 1, 4)
    batch_logits = torch.cat([logits, other_logits])
    batch_target = torch.cat([target, torch.ones(1, 1, 1, 1, 4)])
    present = torch.tensor([True, False])
    with_absent = loss(batch_logits, batch_target, present)
    for key in ("dice", "hausdorff", "total"):
        assert with_absent[key].item() == pytest.approx(alone[key].item(), abs=1e-7)
    both = loss(batch_logits, batch_target)
    assert both["dice"].item() != pytest.approx(alone["dice"].item(), abs=1e-3)


def test_no_sample_present_returns_zero_attached_to_graph():
    logits = torch.randn(2, 1, 4, 4, 4, requires_grad=True)
    out = DiceHausdorffLoss()([logits], torch.ones(2, 1, 4, 4, 4), torch.tensor([False, False]))
    assert out["total"].item() == 0.0
    out["total"].backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_infer_stride_follows_the_ceil_rule():
    assert [
        infer_stride((17, 20, 23), s)
        for s in [(17, 20, 23), (9, 10, 12), (5, 5, 6), (3, 3, 3), (2, 2, 2)]
    ] == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError, match=r"level size \(4, 10, 12\) is not ceil"):
        infer_stride((17, 20, 23), (4, 10, 12))


def test_bad_arguments_raise():
    with pytest.raises(
        ValueError, match="target_downsampling='maximum' is not valid.*Did you mean 'max'"
    ):
        DiceHausdorffLoss(target_downsampling="maximum")
    with pytest.raises(ValueError, match="hausdorff_weight must be >= 0; got -1"):
        DiceHausdorffLoss(hausdorff_weight=-1)
    loss = DiceHausdorffLoss(deep_supervision_weights=(1.0,))
    x = torch.zeros(2, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="got 2 logit levels; expected 1 to 1"):
        loss([x, x], x)
    with pytest.raises(ValueError, match=r"present must be a bool tensor of shape \(2,\)"):
        loss(x, x, torch.tensor([1, 0]))
    with pytest.raises(
        ValueError, match=r"target spatial size \(4, 4, 2\) != full-resolution logits"
    ):
        loss(x, x[..., :2])
