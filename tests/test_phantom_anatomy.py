"""Phantom anatomy, scanner and whole-case generation (tiny grids)."""

from dataclasses import replace

import numpy as np
import pytest

from data_modules.phantom.anatomy import (
    LOBE_LOWER,
    LOBE_UPPER,
    LUNG_LEFT,
    LUNG_RIGHT,
    draw_geometry,
    lobes,
    lung_sides,
)
from data_modules.phantom.generator import PhantomConfig, generate_case
from data_modules.phantom.grid import Grid
from data_modules.phantom.render import HU_CORTICAL, HU_TRABECULAR, render_anatomy, vessel_tree
from data_modules.phantom.scanner import (
    _thickness_weights,
    apply_profile,
    draw_profile,
    noise_sd_hu,
)
from lungvlm.clinical.emphysema import laa950_percent


@pytest.fixture(scope="module")
def geom():
    return draw_geometry(np.random.default_rng([0, 2]), 0, 300.0, -300.0)


@pytest.fixture(scope="module")
def tiny_case():
    return generate_case(1, PhantomConfig.tiny(n_nodules=(0, 0)))


def test_lung_parenchyma_histogram_peak(tiny_case):
    values = tiny_case.image_hu[tiny_case.lung_mask > 0]
    hist, edges = np.histogram(values, bins=np.arange(-1100, 0, 10))
    peak = 0.5 * (edges[np.argmax(hist)] + edges[np.argmax(hist) + 1])
    assert -910 <= peak <= -790


def test_soft_tissue_bone_and_fat_hu(geom):
    grid = Grid.centred((0.0, 0.0, -150.0), (48, 96, 96), (300 / 48, 3.6, 3.6))
    ideal = render_anatomy(geom, grid).image_hu
    (hx, hy, hz), _ = geom.heart
    k, j, i = np.rint(grid.world_to_index(np.array([hx, hy, hz]))).astype(int)
    assert 20.0 <= ideal[k, j, i] <= 80.0  # heart: blood / soft tissue
    z_body = geom.lung_base_z_mm + 15.0  # mid-vertebra, away from the 5 mm discs every 27 mm
    k, j, i = np.rint(grid.world_to_index(np.array([0.0, geom.spine_y_mm, z_body]))).astype(int)
    assert ideal[k, j, i] == HU_TRABECULAR
    assert (ideal == HU_CORTICAL).sum() > 0
    fat_y = -(geom.half_depth_mm - geom.fat_mm / 2)  # anterior subcutaneous fat
    k, j, i = np.rint(grid.world_to_index(np.array([0.0, fat_y, -150.0]))).astype(int)
    assert -100.0 <= ideal[k, j, i] <= -50.0


def test_lung_sides_and_lobes(geom):
    z_mid = geom.lung_base_z_mm + 0.75 * geom.lung_height_mm
    ai, _ = geom.thorax_half_axes_mm
    pts = np.array([[-0.5 * ai, 0.0, z_mid], [0.5 * ai, 0.0, z_mid], [0.0, 0.0, z_mid]])
    sides = lung_sides(geom, pts[:, 0], pts[:, 1], pts[:, 2])
    assert sides.tolist() == [LUNG_RIGHT, LUNG_LEFT, 0]
    low_post = np.array(
        [
            0.5 * ai,
            0.6 * geom.thorax_half_axes_mm[1],
            geom.lung_base_z_mm + 0.3 * geom.lung_height_mm,
        ]
    )
    assert lung_sides(geom, *low_post) == LUNG_LEFT
    lobe_ids = lobes(
        geom,
        np.array([0.5 * ai, low_post[0]]),
        np.array([0.0, low_post[1]]),
        np.array([z_mid, low_post[2]]),
        np.array([LUNG_LEFT, LUNG_LEFT], np.uint8),
    )
    assert lobe_ids.tolist() == [LOBE_UPPER, LOBE_LOWER]


def test_vessel_tree_tapers_and_stays_in_lungs(geom):
    segs = vessel_tree(geom)
    radius = segs.radius_start
    assert radius.max() > 3.0 and radius.min() < 0.5
    ends = segs.end[radius < 0.5]
    assert (lung_sides(geom, ends[:, 0], ends[:, 1], ends[:, 2]) > 0).mean() > 0.99


@pytest.mark.parametrize("fraction", [0.05, 0.2])
def test_emphysema_laa_close_to_target(geom, fraction):
    grid = Grid.centred((0.0, 0.0, -150.0), (48, 96, 96), (300 / 48, 3.6, 3.6))
    anatomy = render_anatomy(replace(geom, emphysema_fraction=fraction), grid)
    laa = laa950_percent(anatomy.image_hu, anatomy.lung_mask > 0)
    assert abs(laa - 100 * fraction) < 3.0


def test_scanner_noise_and_thickness():
    assert np.allclose(_thickness_weights(3.0, 1.0), [1 / 3] * 3)
    assert np.allclose(_thickness_weights(2.0, 1.0), [0.25, 0.5, 0.25])
    # 14 HU * sqrt(100/25) * (120/120)^1.5 / sqrt(1 mm) = 28 HU; sharp x 2.2
    assert noise_sd_hu("soft", 25.0, 120.0, 1.0) == pytest.approx(28.0)
    assert noise_sd_hu("sharp", 25.0, 120.0, 4.0) == pytest.approx(28.0 * 2.2 / 2.0)
    profile = draw_profile(np.random.default_rng(3))
    flat = apply_profile(
        np.zeros((16, 48, 48), np.float32), (1.0, 0.7, 0.7), profile, np.random.default_rng(0)
    )
    assert flat.std() == pytest.approx(profile.noise_sd_hu, rel=0.05)
    with pytest.raises(ValueError, match="kernel='medium'"):
        noise_sd_hu("medium", 25.0, 120.0, 1.0)


def test_profile_ranges():
    for seed in range(20):
        p = draw_profile(np.random.default_rng(seed))
        assert 0.5 <= p.pixel_spacing_mm <= 0.98
        assert (
            0.6 <= p.slice_thickness_mm <= 3.0 and 0.6 <= p.slice_spacing_mm <= p.slice_thickness_mm
        )
        assert p.kernel in ("soft", "sharp")


def test_generate_case_is_deterministic():
    config = PhantomConfig.tiny(n_nodules=(1, 1), with_report=False)
    a, b = generate_case(4, config), generate_case(4, config)
    assert np.array_equal(a.image_hu, b.image_hu)
    assert np.array_equal(a.nodule_labels, b.nodule_labels)
    c = generate_case(5, config)
    assert not np.array_equal(a.image_hu, c.image_hu)


def test_config_errors():
    with pytest.raises(ValueError, match="shape_source='mesh'"):
        PhantomConfig(shape_source="mesh")
    with pytest.raises(ValueError, match="n_nodules"):
        PhantomConfig(n_nodules=(3, 1))
    with pytest.raises(ValueError, match="seed=-1"):
        generate_case(-1, PhantomConfig.tiny())
