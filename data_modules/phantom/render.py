"""Rendering of the ideal (noise-free) phantom chest on any :class:`Grid`.

Layers, in painting order: body fat, chest-wall muscle, mediastinal fat and abdominal organs,
heart with epicardial fat, great vessels, spine (trabecular core ~+300 HU, cortical rim
~+1000 HU, discs) and ribs, lung parenchyma (~-860 HU with low-frequency texture and a
gravity-dependent gradient), fissures, emphysema clusters (<-950 HU), pulmonary vessels
(+40 HU) and airways (air lumen, soft-tissue wall). HU values follow ``reference/dicom-ct.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtri

from data_modules.phantom.anatomy import (
    LUNG_LEFT,
    LUNG_RIGHT,
    ChestGeometry,
    fissure_distance_mm,
    lobes,
    lung_sides,
    thorax_scale,
)
from data_modules.phantom.fields import smooth_field
from data_modules.phantom.grid import Grid
from data_modules.phantom.vessels import Segments, rasterise, sample_inside, territory_tree

HU_AIR, HU_FAT, HU_MUSCLE, HU_BLOOD, HU_LIVER = -1000.0, -95.0, 45.0, 42.0, 58.0
HU_LUNG, HU_EMPHYSEMA = -860.0, -980.0
HU_TRABECULAR, HU_CORTICAL, HU_DISC = 300.0, 1000.0, 85.0
#: Parenchymal texture sd (HU) and correlation length (mm); gravity gradient (HU, posterior).
TEXTURE_SD_HU, TEXTURE_MM, GRAVITY_HU = 22.0, 4.0, 35.0
#: Leaves per vessel tree (two per lung: artery, vein) and per bronchial tree, and leaf radii (mm).
VESSEL_LEAVES, VESSEL_LEAF_RADIUS_MM = 1200, 0.4
AIRWAY_LEAVES, AIRWAY_LEAF_RADIUS_MM = 40, 0.9
#: Emphysema clusters cover this many times the target fraction of the field, because texture
#: and the gravity gradient keep part of each cluster's rim above -950 HU (calibrated on the
#: ideal image: measured LAA-950 is then within a few points of the target).
EMPHYSEMA_CALIBRATION = 1.4


@dataclass
class AnatomyVolumes:
    """Ideal anatomy on a grid, (z, y, x) arrays.

    Attributes:
        image_hu: noise-free HU volume.
        body_mask: inside the body outline.
        lung_mask: 0 outside, 1 right lung, 2 left lung.
        lobe_map: 0 outside, 1 upper, 2 middle, 3 lower (geometric approximation).
        vessel_mask: vessel occupancy >= 0.5.
        airway_mask: airway lumen occupancy >= 0.5.
    """

    image_hu: NDArray[np.float32]
    body_mask: NDArray[np.bool_]
    lung_mask: NDArray[np.uint8]
    lobe_map: NDArray[np.uint8]
    vessel_mask: NDArray[np.bool_]
    airway_mask: NDArray[np.bool_]


def _inside(geom: ChestGeometry, side: int):
    return lambda p: lung_sides(geom, p[:, 0], p[:, 1], p[:, 2]) == side


def _lung_targets(
    geom: ChestGeometry, side: int, n: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    ai, bi = geom.thorax_half_axes_mm
    sign = -1.0 if side == LUNG_RIGHT else 1.0
    low = np.array([min(0.0, sign * ai), -bi, geom.lung_base_z_mm])
    high = np.array([max(0.0, sign * ai), bi, geom.lung_base_z_mm + geom.lung_height_mm])
    return sample_inside(_inside(geom, side), low, high, n, rng)


@lru_cache(maxsize=32)
def vessel_tree(geom: ChestGeometry) -> Segments:
    """Pulmonary artery and vein trees of both lungs (cached per geometry)."""
    rng = np.random.default_rng([geom.seed, 11])
    parts = []
    for side in (LUNG_RIGHT, LUNG_LEFT):
        hilum = geom.hilum_mm(side)
        for offset_z in (0.0, -20.0):
            targets = _lung_targets(geom, side, VESSEL_LEAVES, rng)
            parts.append(
                territory_tree(
                    hilum + np.array([0.0, 0.0, offset_z]), targets, VESSEL_LEAF_RADIUS_MM, rng
                )
            )
    return Segments.concat(parts)


@lru_cache(maxsize=32)
def airway_tree(geom: ChestGeometry) -> tuple[Segments, Segments]:
    """Airway (outer wall, lumen) capsules: trachea, main bronchi and the bronchial tree."""
    rng = np.random.default_rng([geom.seed, 12])
    tx, ty = geom.trachea_xy_mm
    cz = geom.carina_z_mm
    top = geom.lung_base_z_mm + geom.lung_height_mm + 60.0
    carina = np.array([tx, ty, cz])
    ends = {
        LUNG_RIGHT: carina + np.array([-30.0, 8.0, -22.0]),
        LUNG_LEFT: carina + np.array([42.0, 10.0, -30.0]),
    }
    big = Segments(
        np.array([[tx, ty, top], carina, carina]),
        np.array([carina, ends[LUNG_RIGHT], ends[LUNG_LEFT]]),
        np.array([8.5, 6.5, 5.5]),
        np.array([8.0, 6.0, 5.0]),
    )
    trees = [
        territory_tree(
            ends[s], _lung_targets(geom, s, AIRWAY_LEAVES, rng), AIRWAY_LEAF_RADIUS_MM, rng
        )
        for s in ends
    ]
    lumen = Segments.concat([big, *trees])
    wall = 0.18 * lumen.radius_start + 0.6
    outer = Segments(lumen.start, lumen.end, lumen.radius_start + wall, lumen.radius_end + wall)
    return outer, lumen


def _mediastinal_vessels(geom: ChestGeometry) -> Segments:
    """Aorta, pulmonary trunk and main pulmonary arteries as capsules."""
    ai, bi = geom.thorax_half_axes_mm
    (hx, hy, hz), (_, _, hrz) = geom.heart
    sy, cz = geom.spine_y_mm, geom.carina_z_mm
    arch_z = cz + 25.0
    desc = np.array([0.16 * ai, sy - 24.0])
    asc = np.array([-0.05 * ai, -0.25 * bi])
    trunk_top = np.array([0.08 * ai, -0.12 * bi, cz - 14.0])
    pts = [
        ([desc[0], desc[1], geom.lung_base_z_mm - 40.0], [desc[0], desc[1], arch_z], 12.0),
        ([asc[0], asc[1], hz + 0.6 * hrz], [asc[0], asc[1], arch_z], 14.0),
        ([asc[0], asc[1], arch_z], [desc[0], desc[1], arch_z], 12.5),
        ([hx * 0.5, hy + 10.0, hz + 0.5 * hrz], list(trunk_top), 13.0),
        (list(trunk_top), list(geom.hilum_mm(LUNG_RIGHT)), 9.0),
        (list(trunk_top), list(geom.hilum_mm(LUNG_LEFT)), 9.0),
    ]
    start, end, radius = (np.array([p[i] for p in pts], dtype=np.float64) for i in range(3))
    return Segments(start, end, radius, radius * 0.95)


def _bones(geom: ChestGeometry, x, y, z) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(bone, cortical) masks of spine, ribs and sternum on broadcast world coordinates."""
    ai0, bi0 = geom.thorax_half_axes_mm
    ai, bi = ai0 * thorax_scale(geom, z), bi0 * thorax_scale(geom, z)
    sy = geom.spine_y_mm
    body = (x / 19.0) ** 2 + ((y - sy) / 16.0) ** 2
    canal_r = np.sqrt(x**2 + (y - sy - 27.0) ** 2)
    disc = np.mod(z - geom.lung_base_z_mm, 27.0) < 5.0
    arch = (canal_r > 9.0) & (canal_r < 14.0) & (y > sy + 16.0)
    spinous = (np.abs(x) < 4.0) & (y > sy + 38.0) & (y < sy + 62.0)
    vertebra = ((body < 1.0) & ~disc) | arch | spinous
    cortical = vertebra & ((body > 0.72) | arch | spinous)
    rho = np.sqrt((x / ai) ** 2 + (y / bi) ** 2) + 1e-6
    r_local = np.sqrt(x**2 + y**2) / rho
    dr = (rho - 1.0) * r_local
    sin_t = y / np.maximum(np.sqrt(x**2 + y**2), 1e-3)
    drop = 45.0 * (1.0 - sin_t) / 2.0
    u = (z + drop - geom.lung_base_z_mm) / 27.0
    dz = (u - np.round(u)) * 27.0
    e = ((dr - 6.0) / 4.5) ** 2 + (dz / 6.0) ** 2
    z_ok = (z + drop > geom.lung_base_z_mm - 10.0) & (
        z + drop < geom.lung_base_z_mm + geom.lung_height_mm + 15.0
    )
    ribs = (e < 1.0) & (sin_t > -0.8) & (np.abs(x) > 24.0) & z_ok
    sternum = (
        (np.abs(x) < 16.0)
        & (dr > 0.0)
        & (dr < 11.0)
        & (y < 0)
        & (z > geom.lung_base_z_mm + 0.2 * geom.lung_height_mm)
    )
    bone = vertebra | ribs | sternum
    cortical = cortical | (ribs & (e > 0.45)) | (sternum & ((dr < 2.5) | (dr > 8.5)))
    return bone, cortical


def render_anatomy(geom: ChestGeometry, grid: Grid) -> AnatomyVolumes:
    """Render the ideal chest of ``geom`` on ``grid`` (deterministic in ``geom.seed``)."""
    z, y, x = grid.axes_mm()
    a, b = geom.half_width_mm, geom.half_depth_mm
    ai, bi = geom.thorax_half_axes_mm
    shape = grid.shape_zyx
    r_body = (x / a) ** 2 + (y / b) ** 2
    r_muscle = (x / (a - geom.fat_mm)) ** 2 + (y / (b - geom.fat_mm)) ** 2
    r_thorax = (x / (ai * thorax_scale(geom, z))) ** 2 + (y / (bi * thorax_scale(geom, z))) ** 2
    img = np.full(shape, HU_AIR, dtype=np.float32)
    img[np.broadcast_to(r_body <= 1.0, shape)] = HU_FAT
    img[np.broadcast_to(r_muscle <= 1.0, shape)] = HU_MUSCLE
    below = z < geom.lung_base_z_mm + (geom.dome_height_mm + np.where(x < 0, 12.0, 0.0)) * np.sqrt(
        np.clip(1.0 - ((np.abs(x) - 0.5 * ai) / (0.5 * ai)) ** 2 - (y / bi) ** 2, 0.0, 1.0)
    )
    thorax = np.broadcast_to(r_thorax < 1.0, shape)
    img[thorax & ~below] = HU_FAT
    img[thorax & below] = HU_LIVER
    stomach = ((x - 0.45 * ai) / 35.0) ** 2 + ((y + 0.2 * bi) / 30.0) ** 2 + (
        (z - geom.lung_base_z_mm + 5.0) / 22.0
    ) ** 2 < 1.0
    img[np.broadcast_to(stomach, shape) & thorax] = HU_AIR
    hc, hr = geom.heart
    r_heart = ((x - hc[0]) / hr[0]) ** 2 + ((y - hc[1]) / hr[1]) ** 2 + ((z - hc[2]) / hr[2]) ** 2
    img[r_heart < 1.0] = HU_BLOOD
    great = rasterise(_mediastinal_vessels(geom), grid)
    img += great * (HU_BLOOD - img)
    bone, cortical = _bones(geom, x, y, z)
    img[bone] = HU_TRABECULAR
    img[cortical] = HU_CORTICAL
    sides = lung_sides(geom, x, y, z)
    lung = sides > 0
    texture = smooth_field(grid, geom.seed * 7 + 1, TEXTURE_MM)
    paren = HU_LUNG + TEXTURE_SD_HU * texture + GRAVITY_HU * np.clip(y / bi, -1.0, 1.0)
    if geom.emphysema_fraction > 0:
        cluster = smooth_field(grid, geom.seed * 7 + 2, 3.0)
        threshold = float(ndtri(1.0 - min(EMPHYSEMA_CALIBRATION * geom.emphysema_fraction, 0.95)))
        # w = 0.75 at the threshold: there the blend crosses -950 HU, so the fraction of lung
        # below -950 HU is close to the target.
        weight = np.clip((cluster - threshold) / 0.2 + 0.75, 0.0, 1.0)
        paren = paren * (1.0 - weight) + (HU_EMPHYSEMA + 8.0 * texture) * weight
    img[lung] = np.broadcast_to(paren, shape)[lung]
    vox = float(np.mean(grid.spacing_mm[1:]))
    zi, yi, xi = np.nonzero(lung)
    zl, yl, xl = z.ravel()[zi], y.ravel()[yi], x.ravel()[xi]
    fissure = fissure_distance_mm(geom, xl, yl, zl, sides[lung])
    f_occ = np.clip(1.0 - fissure / vox, 0.0, 1.0) * min(0.25 / vox, 1.0)
    img[lung] += f_occ * (HU_MUSCLE - img[lung])
    lobe_map = np.zeros(shape, dtype=np.uint8)
    lobe_map[lung] = lobes(geom, xl, yl, zl, sides[lung])
    vessels = rasterise(vessel_tree(geom), grid)
    img += vessels * (HU_BLOOD - img)
    outer, lumen = airway_tree(geom)
    wall = rasterise(outer, grid, splat_below_vox=0.0)
    img += wall * (HU_MUSCLE - img)
    air = rasterise(lumen, grid, splat_below_vox=0.0)
    img += air * (HU_AIR - img)
    return AnatomyVolumes(
        image_hu=img,
        body_mask=np.broadcast_to(r_body <= 1.0, shape).copy(),
        lung_mask=np.where(air >= 0.5, 0, sides).astype(np.uint8),
        lobe_map=np.where(air >= 0.5, 0, lobe_map).astype(np.uint8),
        vessel_mask=vessels >= 0.5,
        airway_mask=air >= 0.5,
    )
