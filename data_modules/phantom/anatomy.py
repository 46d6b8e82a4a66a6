"""Analytic chest anatomy of the phantom, defined in world millimetres (LPS).

A :class:`ChestGeometry` is drawn per patient; every structure is a function of world
coordinates, so a whole chest and a small patch are rendered by the same code
(:func:`data_modules.phantom.render.render_anatomy`). Conventions: +x is the patient's left
(the right lung has x < 0), +y posterior, +z toward the head.

Lobes are a *geometric approximation*: the oblique fissure is a plane rising from anterior-low
to posterior-high (lower lobe behind and below it); on the right a horizontal plane splits the
upper from the middle lobe; the left lung has no middle lobe (the lingula counts as upper).
Shapes and sizes are phantom conventions chosen to look like an adult chest CT, not
measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

#: Lung side labels in the lung mask.
LUNG_RIGHT: int = 1
LUNG_LEFT: int = 2
SIDE_NAMES: dict[int, str] = {LUNG_RIGHT: "right", LUNG_LEFT: "left"}
#: Lobe labels in the lobe map.
LOBE_UPPER: int = 1
LOBE_MIDDLE: int = 2
LOBE_LOWER: int = 3
LOBE_NAMES: dict[int, str] = {LOBE_UPPER: "upper", LOBE_MIDDLE: "middle", LOBE_LOWER: "lower"}

Array = NDArray[np.floating]


@dataclass(frozen=True)
class ChestGeometry:
    """Size and layout of one phantom chest (all lengths in mm, positions LPS).

    Attributes:
        seed: seed the geometry was drawn from (keys the vessel-tree cache).
        half_width_mm: body outline half-width (x).
        half_depth_mm: body outline half-depth (y).
        fat_mm: subcutaneous fat thickness.
        muscle_mm: chest-wall muscle thickness.
        lung_base_z_mm: z of the lowest lung point (costophrenic recess).
        lung_height_mm: lung base to apex.
        dome_height_mm: height of the left diaphragm dome above the base (right is higher).
        emphysema_fraction: target fraction of lung volume below -950 HU (0 = none).
    """

    seed: int
    half_width_mm: float
    half_depth_mm: float
    fat_mm: float
    muscle_mm: float
    lung_base_z_mm: float
    lung_height_mm: float
    dome_height_mm: float
    emphysema_fraction: float

    @property
    def thorax_half_axes_mm(self) -> tuple[float, float]:
        """Half-axes (x, y) of the inner chest wall ellipse."""
        inset = self.fat_mm + self.muscle_mm
        return self.half_width_mm - inset, self.half_depth_mm - inset

    @property
    def spine_y_mm(self) -> float:
        """y of the vertebral body centre."""
        return self.thorax_half_axes_mm[1] - 18.0

    @property
    def carina_z_mm(self) -> float:
        """z of the tracheal carina."""
        return self.lung_base_z_mm + 0.6 * self.lung_height_mm

    @property
    def trachea_xy_mm(self) -> tuple[float, float]:
        """(x, y) of the trachea axis."""
        return 0.0, self.spine_y_mm - 42.0

    @cached_property
    def heart(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Heart ellipsoid centre (x, y, z) and radii (x, y, z)."""
        ai, bi = self.thorax_half_axes_mm
        centre = (0.18 * ai, -0.3 * bi, self.lung_base_z_mm + 0.2 * self.lung_height_mm)
        return centre, (0.42 * ai, 0.42 * bi, 0.22 * self.lung_height_mm)

    def hilum_mm(self, side: int) -> NDArray[np.float64]:
        """Hilum point (x, y, z) of one lung, where its vessel trees are rooted."""
        ai, _ = self.thorax_half_axes_mm
        sign = -1.0 if side == LUNG_RIGHT else 1.0
        return np.array(
            [sign * 0.3 * ai, -5.0, self.carina_z_mm - (22.0 if side == LUNG_RIGHT else 12.0)]
        )


def draw_geometry(
    rng: np.random.Generator, seed: int, z_extent_mm: float, z_min_mm: float
) -> ChestGeometry:
    """Draw a chest that fits a field of view of ``z_extent_mm`` starting at ``z_min_mm``."""
    height = float(min(rng.uniform(215.0, 255.0), z_extent_mm - 40.0))
    if height < 60.0:
        raise ValueError(
            f"z_extent_mm={z_extent_mm!r} is too small for a chest; expected >= 100 mm"
        )
    free = z_extent_mm - height - 30.0
    emphysema = 0.0 if rng.random() < 0.55 else float(rng.uniform(0.02, 0.25))
    return ChestGeometry(
        seed=int(seed),
        half_width_mm=float(rng.uniform(150.0, 178.0)),
        half_depth_mm=float(rng.uniform(105.0, 125.0)),
        fat_mm=float(rng.uniform(8.0, 24.0)),
        muscle_mm=float(rng.uniform(9.0, 14.0)),
        lung_base_z_mm=float(z_min_mm + 12.0 + rng.uniform(0.2, 0.6) * free),
        lung_height_mm=height,
        dome_height_mm=float(rng.uniform(35.0, 55.0)),
        emphysema_fraction=emphysema,
    )


def thorax_scale(geom: ChestGeometry, z: Array) -> Array:
    """Factor (<= 1) by which the chest wall narrows toward the thoracic inlet at height ``z``."""
    t = np.clip((z - geom.lung_base_z_mm) / geom.lung_height_mm, 0.0, 1.0)
    return 1.0 - 0.22 * np.clip((t - 0.35) / 0.65, 0.0, 1.0) ** 2


def _ellipsoid_r2(x: Array, y: Array, z: Array, centre, radii) -> Array:
    return (
        ((x - centre[0]) / radii[0]) ** 2
        + ((y - centre[1]) / radii[1]) ** 2
        + ((z - centre[2]) / radii[2]) ** 2
    )


def lung_sides(geom: ChestGeometry, x: Array, y: Array, z: Array) -> NDArray[np.uint8]:
    """Lung label of world points: 0 outside, 1 right lung, 2 left lung (broadcasting)."""
    ai0, bi0 = geom.thorax_half_axes_mm
    ai, bi = ai0 * thorax_scale(geom, z), bi0 * thorax_scale(geom, z)
    t = np.clip((z - geom.lung_base_z_mm) / geom.lung_height_mm, 0.0, None)
    scale = np.sqrt(np.clip(1.0 - t**4, 0.0, 1.0)) + 1e-3
    thorax = (x / (ai - 2.0)) ** 2 + (y / (bi - 2.0)) ** 2 < 1.0
    hc, hr = geom.heart
    outside_heart = _ellipsoid_r2(x, y, z, hc, (hr[0] + 4, hr[1] + 4, hr[2] + 4)) > 1.0
    sy = geom.spine_y_mm
    tx, ty = geom.trachea_xy_mm
    medi = (np.abs(x) > 16.0) & (x**2 + (y - sy) ** 2 > 30.0**2)
    upper_medi = (z < geom.carina_z_mm - 30) | (x**2 + (y - ty) ** 2 > 26.0**2)
    aorta = ((x - 0.16 * ai0) ** 2 + (y - (sy - 24.0)) ** 2 > 16.0**2) | (z > geom.carina_z_mm + 20)
    common = thorax & outside_heart & medi & upper_medi & aorta & (t < 1.0)
    out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=np.uint8)
    for side, sign, extra_dome in ((LUNG_RIGHT, -1.0, 12.0), (LUNG_LEFT, 1.0, 0.0)):
        cx, cy, lx, ly = sign * 0.5 * ai, 0.04 * bi, 0.5 * ai + 2.0, 0.96 * bi
        qx = np.abs(x - cx) / (lx * scale)
        qy = np.abs(y - cy) / (ly * scale)
        r2 = np.clip(((x - cx) / lx) ** 2 + ((y - cy) / ly) ** 2, 0.0, 1.0)
        dome = geom.lung_base_z_mm + (geom.dome_height_mm + extra_dome) * np.sqrt(1.0 - r2)
        inside = common & (qx**2.6 + qy**2.6 < 1.0) & (z > dome) & ((x * sign) > 0)
        out[np.broadcast_to(inside, out.shape)] = side
    return out


def _oblique_z(geom: ChestGeometry, y: Array) -> Array:
    """z of the oblique fissure plane as a function of y."""
    _, bi = geom.thorax_half_axes_mm
    u = (y + bi) / (2.0 * bi)
    return geom.lung_base_z_mm + geom.lung_height_mm * (0.1 + 0.55 * u)


def lobes(
    geom: ChestGeometry, x: Array, y: Array, z: Array, sides: NDArray[np.uint8]
) -> NDArray[np.uint8]:
    """Lobe label (1 upper, 2 middle, 3 lower, 0 outside the lungs) by the fissure planes."""
    lower = z < _oblique_z(geom, y)
    middle = (
        (~lower) & (z < geom.lung_base_z_mm + 0.5 * geom.lung_height_mm) & (sides == LUNG_RIGHT)
    )
    out = np.where(lower, LOBE_LOWER, np.where(middle, LOBE_MIDDLE, LOBE_UPPER)).astype(np.uint8)
    return np.where(sides > 0, out, 0).astype(np.uint8)


def fissure_distance_mm(
    geom: ChestGeometry, x: Array, y: Array, z: Array, sides: NDArray[np.uint8]
) -> Array:
    """Distance (mm) from world points to the nearest fissure plane of their lung."""
    _, bi = geom.thorax_half_axes_mm
    slope = 0.55 * geom.lung_height_mm / (2.0 * bi)
    d_oblique = np.abs(z - _oblique_z(geom, y)) / np.sqrt(1.0 + slope**2)
    z_h = geom.lung_base_z_mm + 0.5 * geom.lung_height_mm
    d_horizontal = np.where(
        (sides == LUNG_RIGHT) & (z >= _oblique_z(geom, y)), np.abs(z - z_h), np.inf
    )
    return np.minimum(d_oblique, d_horizontal)


def fissure_normal(geom: ChestGeometry) -> NDArray[np.float64]:
    """Unit normal (x, y, z) of the oblique fissure plane."""
    _, bi = geom.thorax_half_axes_mm
    n = np.array([0.0, -0.55 * geom.lung_height_mm / (2.0 * bi), 1.0])
    return n / np.linalg.norm(n)
