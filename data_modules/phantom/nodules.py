"""Phantom nodules: generative parameters, implicit shapes and partial-volume rendering.

A nodule is an implicit surface (an approximate signed distance, mm, negative inside): an
ellipsoid, smoothly joined with lobes (lobulated), united with thin tapering cones
(spiculated), or a real LIDC-IDRI shape (:mod:`data_modules.phantom.lidc_shapes`). It is
rendered in its bounding box only: voxels within one voxel of the surface are supersampled
3 x 3 x 3 to give an occupancy in [0, 1] (ill-defined margins use a wide linear ramp instead);
then ``HU = background * (1 - occ) + nodule_HU * occ`` and the binary mask is ``occ >= 0.5``.
Ground glass keeps what is denser than itself (vessels stay visible through it, BTS
definition in ``reference/report-language.md``); solid tissue obscures it. HU values follow
``reference/dicom-ct.md`` (ground glass about -800 to -600, solid soft tissue, malignant mean
92 +- 18, calcium well above 164).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from data_modules.phantom.fields import smooth_field
from data_modules.phantom.grid import Grid

KINDS: tuple[str, ...] = ("solid", "part_solid", "ground_glass", "calcified")
MARGINS: tuple[str, ...] = ("smooth", "lobulated", "spiculated", "ill_defined")
CALCIFICATIONS: tuple[str, ...] = ("none", "central", "diffuse", "popcorn", "laminated")
PLEURAL_RELATIONS: tuple[str, ...] = ("none", "juxtapleural", "perifissural")
#: Width (mm) of the occupancy ramp of an ill-defined margin.
ILL_DEFINED_RAMP_MM: float = 2.5


@dataclass
class NoduleSpec:
    """Generative parameters of one nodule (lengths in mm, positions LPS mm).

    Attributes:
        kind: one of :data:`KINDS`.
        centre_lps_mm: centre (x, y, z).
        radii_mm: ellipsoid semi-axes along the nodule's local axes (u, v, w).
        rotation: 3 x 3 matrix whose columns are the local axes in world (x, y, z).
        margin: one of :data:`MARGINS`.
        calcification: one of :data:`CALCIFICATIONS` (only for kind "calcified").
        pleural_relation: one of :data:`PLEURAL_RELATIONS`.
        tissue_hu: HU of the solid tissue.
        ggo_hu: HU of the ground-glass part.
        core_fraction: solid core size / nodule size (part-solid).
        calcium_hu: HU of calcium (calcified).
        lobes: (K, 4) lobe centres (local mm) and radii (mm), smoothly united.
        spicules: (S, 5) spicule direction (local unit vector), length (mm), base radius (mm).
        blobs: (B, 4) popcorn calcium blobs: centre (local mm) and radius (mm).
        requested_diameter_mm: generative mean axial diameter (long + short axis) / 2.
        malignancy_score: latent score in [0, 1] (procedural) that drove the parameters.
        malignant: generative malignancy (procedural) or None when unknown.
        vdt_days: volume doubling time (days); ``inf`` for a nodule that does not grow.
        scale: growth factor applied to every length (1 at baseline).
        seed: seed of the internal texture.
        lidc: real-shape record (``lidc_shapes.LidcShape``) or None for procedural shapes.
    """

    kind: str
    centre_lps_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    rotation: NDArray[np.float64]
    margin: str = "smooth"
    calcification: str = "none"
    pleural_relation: str = "none"
    tissue_hu: float = 45.0
    ggo_hu: float = -680.0
    core_fraction: float = 0.0
    calcium_hu: float = 500.0
    lobes: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 4)))
    spicules: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 5)))
    blobs: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 4)))
    requested_diameter_mm: float = 0.0
    malignancy_score: float = 0.0
    malignant: bool | None = None
    vdt_days: float = float("inf")
    scale: float = 1.0
    seed: int = 0
    lidc: Any = None

    def __post_init__(self) -> None:
        for name, value, options in (
            ("kind", self.kind, KINDS),
            ("margin", self.margin, MARGINS),
            ("calcification", self.calcification, CALCIFICATIONS),
            ("pleural_relation", self.pleural_relation, PLEURAL_RELATIONS),
        ):
            if value not in options:
                raise ValueError(f"{name}={value!r} is not valid; expected one of {options}")

    def grown(self, scale: float) -> NoduleSpec:
        """The same nodule with every length multiplied by ``scale`` (growth)."""
        return replace(self, scale=self.scale * scale)

    @property
    def bounding_radius_mm(self) -> float:
        """Radius of a sphere around the centre that contains the whole nodule."""
        r = float(max(self.radii_mm))
        if len(self.lobes):
            r = max(r, float((np.linalg.norm(self.lobes[:, :3], axis=1) + self.lobes[:, 3]).max()))
        if len(self.spicules):
            r = max(
                r,
                float((self.spicules[:, 3] + self.spicules[:, 4]).max()) + 0.5 * min(self.radii_mm),
            )
        if self.lidc is not None:
            r = max(r, float(self.lidc.bounding_radius_mm))
        return r * self.scale


def _smin(a: NDArray[np.float32], b: NDArray[np.float32], k: float) -> NDArray[np.float32]:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _ellipsoid_sdf(q: NDArray[np.float32], radii: NDArray[np.float32]) -> NDArray[np.float32]:
    k0 = np.linalg.norm(q / radii, axis=-1)
    k1 = np.linalg.norm(q / radii**2, axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _cone_sdf(q: NDArray[np.float32], direction, length: float, r0: float, r1: float, start: float):
    a = direction * start
    ba = direction * length
    pa = q - a
    h = np.clip(pa @ ba / (length**2), 0.0, 1.0)
    return np.linalg.norm(pa - h[:, None] * ba, axis=-1) - (r0 + (r1 - r0) * h)


def local_coords(spec: NoduleSpec, points_lps_mm: NDArray[np.floating]) -> NDArray[np.float32]:
    """World points (M, 3) -> unscaled local nodule coordinates (M, 3) in mm."""
    q = (np.asarray(points_lps_mm) - np.asarray(spec.centre_lps_mm)) @ np.asarray(spec.rotation)
    return (q / spec.scale).astype(np.float32)


def nodule_sdf(spec: NoduleSpec, points_lps_mm: NDArray[np.floating]) -> NDArray[np.float32]:
    """Approximate signed distance (mm, negative inside) of world points (M, 3) to the nodule."""
    q = local_coords(spec, points_lps_mm)
    if spec.lidc is not None:
        return spec.lidc.sdf(q) * spec.scale
    radii = np.asarray(spec.radii_mm, dtype=np.float32)
    d = _ellipsoid_sdf(q, radii)
    for cx, cy, cz, r in spec.lobes:
        d = _smin(d, np.linalg.norm(q - np.array([cx, cy, cz], np.float32), axis=-1) - r, 0.2 * r)
    for ux, uy, uz, length, r0 in spec.spicules:
        u = np.array([ux, uy, uz], np.float32)
        surf = 1.0 / float(np.linalg.norm(u / radii))  # ellipsoid radius along u
        # The cone starts inside the body (0.7 of the radius) and ends ``length`` beyond it.
        d = np.minimum(d, _cone_sdf(q, u, length + 0.3 * surf, r0, 0.25, 0.7 * surf))
    return (d * spec.scale).astype(np.float32)


def _bbox(spec: NoduleSpec, grid: Grid) -> tuple[slice, slice, slice] | None:
    r = spec.bounding_radius_mm + 2.0 * max(grid.spacing_mm)
    lo = np.floor(grid.world_to_index(np.asarray(spec.centre_lps_mm) - r)).astype(int)
    hi = np.ceil(grid.world_to_index(np.asarray(spec.centre_lps_mm) + r)).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, np.asarray(grid.shape_zyx))
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def occupancy(spec: NoduleSpec, grid: Grid, box: tuple[slice, slice, slice]) -> NDArray[np.float32]:
    """Partial-volume occupancy of the nodule in the sub-box ``box`` of ``grid``."""
    z, y, x = grid.axes_mm()
    zz, yy, xx = np.broadcast_arrays(z[box[0]], y[:, box[1]], x[:, :, box[2]])
    pts = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
    sdf = nodule_sdf(spec, pts)
    if spec.margin == "ill_defined":
        return np.clip(0.5 - sdf / ILL_DEFINED_RAMP_MM, 0.0, 1.0).reshape(zz.shape)
    occ = (sdf <= 0).astype(np.float32)
    band = np.nonzero(np.abs(sdf) < 0.9 * max(grid.spacing_mm))[0]
    if len(band):
        offs = (
            np.array(np.meshgrid(*[np.array([-1, 0, 1]) / 3.0] * 3, indexing="ij")).reshape(3, -1).T
        )
        offs_xyz = offs * np.asarray(grid.spacing_mm)  # offsets are symmetric, order is moot
        sub = (pts[band][:, None, :] + offs_xyz[None]).reshape(-1, 3)
        occ[band] = (nodule_sdf(spec, sub).reshape(len(band), -1) <= 0).mean(axis=1)
    return occ.reshape(zz.shape)


def _material(
    spec: NoduleSpec, grid: Grid, box, background: NDArray[np.float32]
) -> NDArray[np.float32]:
    """HU the nodule would have at each voxel of ``box`` if it filled it."""
    sub = Grid(
        background.shape,
        grid.spacing_mm,
        tuple(grid.index_to_world(np.array([s.start for s in box]))),
    )
    texture = smooth_field(sub, spec.seed, 2.0)
    tissue = spec.tissue_hu + 10.0 * texture
    if spec.kind == "solid":
        return tissue
    ggo = np.maximum(spec.ggo_hu + 25.0 * texture, background)
    if spec.kind == "ground_glass":
        return ggo
    z, y, x = sub.axes_mm()
    zz, yy, xx = np.broadcast_arrays(z, y, x)
    q = local_coords(spec, np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1))
    radii = np.asarray(spec.radii_mm, np.float32)
    vox = float(np.mean(grid.spacing_mm)) / spec.scale
    if spec.kind == "part_solid":
        core_sdf = _ellipsoid_sdf(q, radii * spec.core_fraction)
        core = np.clip(0.5 - core_sdf / vox, 0.0, 1.0).reshape(zz.shape)
        return ggo * (1.0 - core) + tissue * core
    norm = np.linalg.norm(q / radii, axis=-1)
    if spec.calcification == "central":
        calc = np.clip(0.5 - (norm - 0.45) * min(spec.radii_mm) / vox, 0.0, 1.0)
    elif spec.calcification == "diffuse":
        calc = np.ones_like(norm)
    elif spec.calcification == "laminated":
        ring = np.abs(np.mod(norm * 3.0, 1.0) - 0.5)
        calc = np.clip((ring - 0.3) * 5.0, 0.0, 1.0) * (norm > 0.2)
    else:  # popcorn
        calc = np.zeros_like(norm)
        for cx, cy, cz, r in spec.blobs:
            d = np.linalg.norm(q - np.array([cx, cy, cz], np.float32), axis=-1) - r
            calc = np.maximum(calc, np.clip(0.5 - d / vox, 0.0, 1.0))
    return tissue + calc.reshape(zz.shape) * (spec.calcium_hu - tissue)


def render_nodule(
    spec: NoduleSpec,
    grid: Grid,
    image_hu: NDArray[np.float32],
    allowed: NDArray[np.bool_] | None = None,
) -> tuple[tuple[slice, slice, slice], NDArray[np.float32]] | None:
    """Paint one nodule into ``image_hu`` (in place).

    Args:
        spec: the nodule.
        grid: grid of ``image_hu``.
        image_hu: volume (z, y, x) in HU, modified in place.
        allowed: optional mask (z, y, x) of where the nodule may be (the lungs); occupancy is
            zero elsewhere (a juxtapleural nodule stops at the chest wall).

    Returns:
        ``(box, occupancy)``: the bounding box slices and the occupancy in that box, or None
        if the nodule lies outside the grid.
    """
    box = _bbox(spec, grid)
    if box is None:
        return None
    occ = occupancy(spec, grid, box)
    if allowed is not None:
        occ = occ * allowed[box]
    background = image_hu[box]
    target = _material(spec, grid, box, background)
    image_hu[box] = background * (1.0 - occ) + target * occ
    return box, occ.astype(np.float32)
