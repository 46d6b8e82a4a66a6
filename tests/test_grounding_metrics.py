"""Pointing game and heatmap mass in mask on tiny hand-built volumes."""

import pytest
import torch

from lungvlm.metrics.grounding import HeatmapMassInMask, PointingGame, dilate_mask


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    """Three (8, 8, 8) rows: mask cube [2:4]^3 in rows 0 and 1, an empty mask in row 2."""
    masks = torch.zeros(3, 8, 8, 8)
    masks[0, 2:4, 2:4, 2:4] = 1
    masks[1, 2:4, 2:4, 2:4] = 1
    heat = torch.zeros(3, 8, 8, 8)
    heat[0, 3, 3, 3] = 3.0  # peak inside
    heat[0, 7, 7, 7] = 1.0  # a quarter of the mass outside
    heat[1, 5, 3, 3] = 1.0  # peak 2 voxels (along z) from the mask voxel (3, 3, 3)
    heat[2, 0, 0, 0] = 1.0  # no mask: skipped
    return heat, masks


def test_dilate_mask_ball_sizes():
    point = torch.zeros(1, 9, 9, 9, dtype=torch.bool)
    point[0, 4, 4, 4] = True
    assert int(dilate_mask(point, 0).sum()) == 1
    assert int(dilate_mask(point, 1).sum()) == 7  # centre + 6 face neighbours
    assert int(dilate_mask(point, 2).sum()) == 33  # 1 + 6 + 12 + 8 + 6 points with |d|^2 <= 4
    with pytest.raises(ValueError, match="tolerance_voxels=-1"):
        dilate_mask(point, -1)


@pytest.mark.parametrize(("tolerance", "expected"), [(0, 0.5), (1, 0.5), (2, 1.0)])
def test_pointing_game_tolerance(tolerance, expected):
    heat, masks = _rows()
    metric = PointingGame(tolerance_voxels=tolerance)
    metric.update(heat[:2], masks[:2])
    metric.update(heat[2:], masks[2:])
    assert metric.compute().item() == pytest.approx(expected)


def test_pointing_game_first_tied_maximum_and_errors():
    masks = torch.zeros(1, 4, 4, 4)
    masks[0, 0, 0, 1] = 1
    heat = torch.zeros(1, 4, 4, 4)  # all voxels tie; argmax takes voxel (0, 0, 0): a miss
    metric = PointingGame()
    metric.update(heat, masks)
    assert metric.compute().item() == 0.0
    with pytest.raises(ValueError, match=r"must both be \(N, D, H, W\)"):
        metric.update(heat[0], masks[0])


def test_heatmap_mass_in_mask():
    heat, masks = _rows()
    metric = HeatmapMassInMask()
    metric.update(heat, masks)
    # Row 0: 3 of 4 units inside; row 1: 0 inside; row 2 skipped -> (0.75 + 0) / 2.
    assert metric.compute().item() == pytest.approx(0.375)
    zero_mass = HeatmapMassInMask()
    zero_mass.update(torch.zeros(1, 8, 8, 8), masks[:1])
    assert zero_mass.compute().item() == 0.0
    with pytest.raises(ValueError, match="must be non-negative; got a minimum of -3.0"):
        metric.update(-heat, masks)
