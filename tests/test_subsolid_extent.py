"""Full extent of subsolid nodules grown from a core mask (lungvlm/clinical/attenuation.py) on
hand-built 32³ volumes at 1 mm: lung -850 HU, ground glass -650 HU, tissue -100 / +40 HU."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lungvlm.clinical.attenuation import subsolid_extent
from lungvlm.clinical.measure import measure_nodule

SPACING = (1.0, 1.0, 1.0)
LUNG_HU, GROUND_GLASS_HU, CORE_HU, TISSUE_HU = -850.0, -650.0, -100.0, 40.0


def grid() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(z, y, x) offsets from the centre voxel and the distance r from it (voxels)."""
    z, y, x = np.mgrid[:32, :32, :32] - 16
    return z, y, x, np.sqrt(z * z + y * y + x * x)


def part_solid(shell_radius: float = 6.0) -> np.ndarray:
    """-100 HU core of radius 3 voxels in -650 HU ground glass out to ``shell_radius``."""
    *_, r = grid()
    image = np.full(r.shape, LUNG_HU, np.float32)
    image[r <= shell_radius] = GROUND_GLASS_HU
    image[r <= 3] = CORE_HU
    return image


def test_a_core_only_mask_grows_to_the_full_nodule():
    *_, r = grid()
    grown = subsolid_extent(r <= 3, part_solid(), SPACING)
    full = r <= 6
    # The full r = 6 sphere measures 13.0 mm (12 mm centre to centre + 1 pixel); the core 7.0.
    assert measure_nodule(r <= 3, SPACING).mean_diameter_mm == 7.0
    assert measure_nodule(grown, SPACING).mean_diameter_mm == 13.0
    assert grown[r <= 3].all() and not grown[r > 6.5].any()
    assert grown.sum() == pytest.approx(full.sum(), rel=0.05)  # 925 voxels; the opening trims


def test_a_full_mask_and_a_solid_nodule_are_unchanged():
    *_, r = grid()
    np.testing.assert_array_equal(subsolid_extent(r <= 6, part_solid(), SPACING), r <= 6)
    solid = np.where(r <= 5, TISSUE_HU, LUNG_HU).astype(np.float32)
    np.testing.assert_array_equal(subsolid_extent(r <= 5, solid, SPACING), r <= 5)


def test_a_solid_nodule_next_to_a_vessel_does_not_grow():
    z, y, x, r = grid()
    image = np.where(r <= 4, TISSUE_HU, LUNG_HU).astype(np.float32)
    vessel = np.hypot(z, y - 6) <= 1.5  # +40 HU vessel along x, touching the nodule's side
    image[vessel] = TISSUE_HU
    grown = subsolid_extent(r <= 4, image, SPACING)
    np.testing.assert_array_equal(grown, r <= 4)


def test_growth_stops_at_max_growth_mm():
    # Ground glass out to r = 12 but at most 3 mm of growth from the r = 3 core.
    *_, r = grid()
    grown = subsolid_extent(r <= 3, part_solid(shell_radius=12.0), SPACING, max_growth_mm=3.0)
    distance_mm = ndimage.distance_transform_edt(r > 3, sampling=SPACING)
    assert grown.sum() > (r <= 3).sum()
    assert distance_mm[grown].max() <= 3.0


def test_growth_stays_inside_the_lung_mask():
    _, _, x, r = grid()
    lung = x <= 0  # the lung ends at the nodule's centre plane
    grown = subsolid_extent(r <= 3, part_solid(), SPACING, lung_mask=lung)
    assert grown[x > 0].sum() == (r <= 3)[x > 0].sum()  # only the core itself lies outside
    assert grown[(x <= 0) & (r > 3)].any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_growth_mm": -1.0}, r"max_growth_mm=-1\.0 must be a non-negative distance in mm"),
        ({"lung_mask": np.ones((4, 4, 4), bool)}, r"lung_mask has shape \(4, 4, 4\); expected"),
    ],
)
def test_bad_input_is_rejected(kwargs, match):
    *_, r = grid()
    with pytest.raises(ValueError, match=match):
        subsolid_extent(r <= 3, part_solid(), SPACING, **kwargs)
