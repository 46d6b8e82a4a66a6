"""Drawing procedural nodules and placing them inside the phantom lungs.

A latent malignancy score ``s`` in [0, 1] drives the generative parameters (phantom
conventions, not clinical rules): size grows with ``s``; spiculation and lobulation become more
likely and solid tissue denser (toward the 92 HU mean of malignant nodules,
``reference/dicom-ct.md``); the volume doubling time is log-normal with a median of 250 days for
malignant and 1500 days for benign solid nodules, three times longer for subsolid nodules;
calcified nodules are benign and do not grow. The malignancy label is ``s > 0.5``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from data_modules.phantom.anatomy import ChestGeometry, _oblique_z, fissure_normal, lung_sides
from data_modules.phantom.labels import lidc_calcification
from data_modules.phantom.nodules import KINDS, NoduleSpec

#: Probabilities of the nodule kinds (solid, part_solid, ground_glass, calcified).
KIND_PROBS: tuple[float, ...] = (0.55, 0.15, 0.15, 0.15)
#: Median volume doubling time (days) of malignant / benign solid nodules; subsolid factor.
VDT_MALIGNANT_DAYS, VDT_BENIGN_DAYS, VDT_SUBSOLID_FACTOR, VDT_LOG_SD = 250.0, 1500.0, 3.0, 0.35


def _fibonacci_sphere(n: int) -> NDArray[np.float64]:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


_SPHERE = _fibonacci_sphere(48)


def _rotation_z(angle: float) -> NDArray[np.float64]:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def draw_spec(
    rng: np.random.Generator,
    *,
    kind: str | None = None,
    diameter_mm: float | None = None,
    margin: str | None = None,
    calcification: str | None = None,
    score_beta: tuple[float, float] = (1.3, 2.2),
) -> NoduleSpec:
    """Draw a procedural nodule centred at the origin (place it with :func:`place`).

    Args:
        rng: random generator.
        kind: force a kind from :data:`KINDS`; drawn with :data:`KIND_PROBS` if None.
        diameter_mm: force the mean axial diameter (3-40 mm); drawn from the score if None.
        margin: force a margin; drawn from the score if None.
        calcification: force a calcification pattern (kind "calcified" only).
        score_beta: (a, b) of the Beta distribution of the latent malignancy score, which
            drives size, margin, density and the malignancy label (a site's nodule mix,
            :class:`~data_modules.phantom.scanner.PhantomSite`).
    """
    kind = kind or str(rng.choice(KINDS, p=KIND_PROBS))
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a nodule kind; expected one of {KINDS}")
    score = float(rng.beta(*score_beta)) * (0.3 if kind == "calcified" else 1.0)
    if diameter_mm is None:
        median = (4.5 + 14.0 * score) * (1.3 if kind in ("ground_glass", "part_solid") else 1.0)
        diameter_mm = float(np.clip(np.exp(rng.normal(np.log(median), 0.35)), 3.0, 40.0))
    if not 1.0 <= diameter_mm <= 60.0:
        raise ValueError(f"diameter_mm={diameter_mm!r} is outside the renderable range 1-60 mm")
    if margin is None:
        if kind == "ground_glass":
            margin = "ill_defined"
        elif kind != "calcified" and rng.random() < 0.05 + 0.7 * score**2:
            margin = "spiculated"
        elif kind != "calcified" and rng.random() < 0.1 + 0.4 * score:
            margin = "lobulated"
        else:
            margin = "smooth"
    ecc = float(rng.uniform(0.0, 0.2))
    half = diameter_mm / 2.0
    radii = (half * (1 + ecc), half * (1 - ecc), half * float(rng.uniform(0.8, 1.15)))
    spec = NoduleSpec(
        kind=kind,
        centre_lps_mm=(0.0, 0.0, 0.0),
        radii_mm=radii,
        rotation=_rotation_z(float(rng.uniform(0, np.pi))),
        margin=margin,
        calcification="none",
        tissue_hu=float(np.clip(45.0 + 47.0 * score + rng.normal(0, 10), 25.0, 140.0)),
        ggo_hu=float(rng.uniform(-750.0, -600.0)),
        core_fraction=float(np.clip(0.3 + 0.4 * score + rng.normal(0, 0.05), 0.25, 0.75)),
        calcium_hu=float(rng.uniform(300.0, 700.0)),
        requested_diameter_mm=float(diameter_mm),
        malignancy_score=score,
        malignant=bool(score > 0.5),
        seed=int(rng.integers(2**31)),
    )
    r_min = min(radii)
    if margin == "lobulated":
        n = int(rng.integers(3, 7))
        dirs = _fibonacci_sphere(n) @ np.linalg.qr(rng.standard_normal((3, 3)))[0]
        dirs[:, 2] *= 0.5
        spec.lobes = np.concatenate(
            [dirs * r_min * rng.uniform(0.65, 0.8, (n, 1)), r_min * rng.uniform(0.35, 0.5, (n, 1))],
            axis=1,
        )
    if margin == "spiculated":
        n = int(rng.integers(5, 15))
        dirs = rng.standard_normal((n, 3)) * np.array([1.0, 1.0, 0.6])
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lengths = diameter_mm * rng.uniform(0.4, 0.9, (n, 1))
        spec.spicules = np.concatenate([dirs, lengths, rng.uniform(0.8, 1.5, (n, 1))], axis=1)
    if kind == "calcified":
        spec.calcification = calcification or str(
            rng.choice(["central", "diffuse", "popcorn", "laminated"])
        )
        if spec.calcification == "popcorn":
            n = int(rng.integers(4, 8))
            centres = rng.uniform(-0.55, 0.55, (n, 3)) * np.asarray(radii)
            spec.blobs = np.concatenate([centres, r_min * rng.uniform(0.18, 0.3, (n, 1))], axis=1)
    median_vdt = VDT_MALIGNANT_DAYS if spec.malignant else VDT_BENIGN_DAYS
    if kind in ("ground_glass", "part_solid"):
        median_vdt *= VDT_SUBSOLID_FACTOR
    spec.vdt_days = (
        float("inf")
        if kind == "calcified"
        else float(median_vdt * np.exp(rng.normal(0, VDT_LOG_SD)))
    )
    return spec


def _inside(
    geom: ChestGeometry, pts: NDArray[np.float64], side: int | None = None
) -> NDArray[np.bool_]:
    s = lung_sides(geom, pts[..., 0], pts[..., 1], pts[..., 2])
    return s > 0 if side is None else s == side


def _random_lung_point(geom: ChestGeometry, rng: np.random.Generator) -> NDArray[np.float64]:
    ai, bi = geom.thorax_half_axes_mm
    low = np.array([-ai, -bi, geom.lung_base_z_mm])
    high = np.array([ai, bi, geom.lung_base_z_mm + geom.lung_height_mm])
    for _ in range(100):
        pts = rng.uniform(low, high, size=(64, 3))
        ok = _inside(geom, pts)
        if ok.any():
            return pts[int(np.argmax(ok))]
    raise RuntimeError("could not sample a point inside the phantom lungs")


def _lentiform_rotation(
    normal: NDArray[np.float64], rng: np.random.Generator
) -> NDArray[np.float64]:
    e1 = np.cross(normal, rng.standard_normal(3))
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(normal, e1), normal], axis=1)


def place(
    spec: NoduleSpec,
    geom: ChestGeometry,
    rng: np.random.Generator,
    *,
    relation: str,
    occupied: list[tuple[NDArray[np.float64], float]] = (),
    vessel_fraction=None,
    max_tries: int = 200,
) -> NoduleSpec | None:
    """Move ``spec`` to a valid position in the lungs, or return None if none was found.

    Args:
        spec: nodule drawn at the origin (modified in place and returned).
        geom: chest geometry.
        rng: random generator.
        relation: "none" (free, >= 1.5 mm from the pleura), "juxtapleural" (touching the costal
            pleura) or "perifissural" (lentiform, on the oblique fissure).
        occupied: (centre, radius) of nodules already placed; nodules stay 2 mm apart.
        vessel_fraction: optional callable mapping (M, 3) points to the fraction of them in a
            vessel or airway; a position where more than 30 % of the nodule would be is refused.
        max_tries: attempts before giving up.
    """
    for _ in range(max_tries):
        p = _random_lung_point(geom, rng)
        side = int(lung_sides(geom, p[0], p[1], p[2]))
        if relation == "juxtapleural":
            u = rng.standard_normal(3) * np.array([1.0, 1.0, 0.3])
            u /= np.linalg.norm(u)
            steps = p + np.arange(0, 300, 1.0)[:, None] * u
            out = np.nonzero(~_inside(geom, steps, side))[0]
            if len(out) == 0:
                continue
            boundary = steps[max(out[0] - 1, 0)]
            centre = boundary - u * 0.75 * min(spec.radii_mm[:2]) * spec.scale
            core = 0.5
        elif relation == "perifissural":
            f = np.array([p[0], p[1], float(_oblique_z(geom, p[1]))])
            n = fissure_normal(geom)
            r = spec.radii_mm
            spec.radii_mm = (r[0], r[1], 0.5 * min(r[0], r[1]))
            spec.rotation = _lentiform_rotation(n, rng)
            centre = f + n * rng.choice([-1.0, 1.0]) * spec.radii_mm[2] * spec.scale * 0.8
            core = 0.9
        else:
            centre, core = p, 1.0
        rb = spec.bounding_radius_mm
        shell = centre + _SPHERE * (core * rb + (1.5 if relation == "none" else 0.0))
        if not (_inside(geom, centre[None], side).all() and _inside(geom, shell, side).all()):
            continue
        if any(np.linalg.norm(centre - c) < rb + r + 2.0 for c, r in occupied):
            continue
        inner = centre + np.concatenate([_SPHERE * 0.5 * rb, _SPHERE * 0.9 * rb, np.zeros((1, 3))])
        if vessel_fraction is not None and vessel_fraction(inner) > 0.3:
            continue
        spec.centre_lps_mm = tuple(float(v) for v in centre)
        spec.pleural_relation = relation
        return spec
    return None


def draw_lidc_spec(rng: np.random.Generator, shape) -> NoduleSpec:
    """A nodule with a real LIDC shape (``lidc_shapes.LidcShape``) and its reader's ratings.

    Kind from texture (1-2 ground glass, 3 part-solid, 4-5 solid) unless calcified (ratings
    1, 2, 3, 5 -> popcorn, laminated, diffuse, central); margin word from the ratings
    (spiculation >= 3 spiculated, else lobulation >= 3 lobulated, else margin <= 2 ill-defined,
    else smooth). The doubling time follows the group malignancy as for procedural nodules
    (mean rating 3, an absent label, counts as benign for growth).
    """
    r = shape.ratings
    calcification = lidc_calcification(r["calcification"])
    if calcification != "none":
        kind = "calcified"
    else:
        kind = (
            "ground_glass"
            if r["texture"] <= 2
            else ("part_solid" if r["texture"] == 3 else "solid")
        )
    if r["spiculation"] >= 3:
        margin = "spiculated"
    elif r["lobulation"] >= 3:
        margin = "lobulated"
    elif r["margin"] <= 2:
        margin = "ill_defined"
    else:
        margin = "smooth"
    r_eq = float(
        (3.0 * shape.voxel_count * np.prod(shape.spacing_mm) / (4.0 * np.pi)) ** (1.0 / 3.0)
    )
    malignant = shape.malignant
    median_vdt = VDT_MALIGNANT_DAYS if malignant else VDT_BENIGN_DAYS
    if kind in ("ground_glass", "part_solid"):
        median_vdt *= VDT_SUBSOLID_FACTOR
    spec = NoduleSpec(
        kind=kind,
        centre_lps_mm=(0.0, 0.0, 0.0),
        radii_mm=(r_eq, r_eq, r_eq),
        rotation=_rotation_z(float(rng.choice([0.0, np.pi / 2, np.pi, 3 * np.pi / 2]))),
        margin=margin,
        calcification=calcification,
        tissue_hu=float(
            np.clip(45.0 + 12.0 * (r["malignancy"] - 1) + rng.normal(0, 10), 25.0, 140.0)
        ),
        ggo_hu=float(rng.uniform(-750.0, -600.0)),
        core_fraction=float(rng.uniform(0.35, 0.6)),
        calcium_hu=float(rng.uniform(300.0, 700.0)),
        requested_diameter_mm=2.0 * r_eq,
        malignancy_score=float((shape.malignancy_mean - 1.0) / 4.0),
        malignant=malignant,
        vdt_days=float("inf")
        if kind == "calcified"
        else float(median_vdt * np.exp(rng.normal(0, VDT_LOG_SD))),
        seed=int(rng.integers(2**31)),
        lidc=shape,
    )
    if calcification == "popcorn":
        n = int(rng.integers(4, 8))
        spec.blobs = np.concatenate(
            [rng.uniform(-0.5, 0.5, (n, 3)) * r_eq, r_eq * rng.uniform(0.18, 0.3, (n, 1))], axis=1
        )
    return spec
