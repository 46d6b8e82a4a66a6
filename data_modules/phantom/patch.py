"""Fast nodule-centred samples for training crops (:func:`make_nodule_sample`).

Instead of a whole chest, only a small window of a *template* chest is rendered: the geometry
and its vessel trees are cached per template (``config.n_templates`` of them), and anatomy,
nodule and scanner are rendered on a fine crop grid and on a wider context grid around the same
centre (both share the world-anchored parenchymal texture). Templates have no emphysema, so the
report's emphysema statement ("none") holds for the crop; emphysema is a scan-level label
(:class:`~data_modules.phantom.generator.PhantomCase`).
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from data_modules.phantom.anatomy import (
    LOBE_NAMES,
    SIDE_NAMES,
    ChestGeometry,
    draw_geometry,
    lobes,
    lung_sides,
)
from data_modules.phantom.draw import _random_lung_point, place
from data_modules.phantom.generator import PhantomConfig, _draw_specs
from data_modules.phantom.grid import Grid
from data_modules.phantom.labels import measure_labels
from data_modules.phantom.nodules import render_nodule
from data_modules.phantom.render import render_anatomy, vessel_tree
from data_modules.phantom.report import exam_findings, findings_spans, render
from data_modules.phantom.scanner import apply_profile, draw_profile

#: Seeds of template geometries start here (disjoint from case seeds in practice).
TEMPLATE_SEED_BASE: int = 900_000_000


@lru_cache(maxsize=64)
def template_geometry(template: int, z_extent_mm: float) -> ChestGeometry:
    """Chest geometry of template ``template`` (no emphysema; cached)."""
    seed = TEMPLATE_SEED_BASE + int(template)
    geom = draw_geometry(np.random.default_rng([seed, 2]), seed, z_extent_mm, -z_extent_mm)
    return replace(geom, emphysema_fraction=0.0)


def _render(geom, grid, spec, profile, rng, scanner: bool):
    anatomy = render_anatomy(geom, grid)
    image = anatomy.image_hu
    occ = np.zeros(grid.shape_zyx, dtype=np.float32)
    if spec is not None:
        out = render_nodule(spec, grid, image, anatomy.lung_mask > 0)
        if out is not None:
            occ[out[0]] = out[1]
    if scanner:
        image = apply_profile(image, grid.spacing_mm, profile, rng)
    return image, occ, anatomy


#: Where a nodule-free crop is centred: a random lung point, or a point on a pulmonary vessel
#: (a hard negative: vessels and their branch points are what a nodule detector confuses).
NEGATIVE_SITES: tuple[str, ...] = ("lung", "vessel")
#: Vessel segments thinner than this (mm radius) are not used as hard-negative sites.
MIN_VESSEL_RADIUS_MM: float = 1.0


def random_vessel_point(geom, rng: np.random.Generator) -> NDArray[np.float64]:
    """A uniformly drawn point on the axis of a pulmonary vessel of radius >= 1 mm (LPS mm)."""
    tree = vessel_tree(geom)
    radius = np.minimum(tree.radius_start, tree.radius_end)
    candidates = np.flatnonzero(radius >= MIN_VESSEL_RADIUS_MM)
    if candidates.size == 0:
        return _random_lung_point(geom, rng)
    i = int(candidates[rng.integers(candidates.size)])
    t = float(rng.random())
    return tree.start[i] + t * (tree.end[i] - tree.start[i])


def make_nodule_sample(
    seed: int,
    config: PhantomConfig | None = None,
    *,
    positive: bool = True,
    negative_site: str = "lung",
) -> dict[str, Any]:
    """Render a nodule-centred (or, with ``positive=False``, nodule-free) lung crop.

    Args:
        seed: sample seed (deterministic).
        config: generator settings (crop grid ``patch_shape_vox`` at ``patch_spacing_mm``,
            ``context_scale``, ``jitter_mm``, ``shape_source``).
        positive: place a nodule near the crop centre (jittered by up to ``jitter_mm``).
        negative_site: centre of a nodule-free crop, one of :data:`NEGATIVE_SITES`.

    Returns:
        A dict with ``image_hu`` (z, y, x) float32, ``soft_mask`` (occupancy in [0, 1]),
        ``mask`` (bool), ``context_hu`` (same grid size, ``context_scale`` x the field of view;
        None if disabled), ``spacing_mm`` and ``context_spacing_mm`` (z, y, x), ``centre_lps_mm``,
        ``labels`` (:class:`~data_modules.phantom.labels.NoduleLabels` or None), ``side``,
        ``lobe``, ``profile`` (dict), ``findings_text``, ``impression_text``, ``spans``,
        ``template`` and ``seed``.
    """
    config = config or PhantomConfig()
    if negative_site not in NEGATIVE_SITES:
        raise ValueError(f"negative_site={negative_site!r} is not one of {NEGATIVE_SITES}")
    rng = np.random.default_rng([seed, 7])
    template = int(rng.integers(config.n_templates))
    geom = template_geometry(template, config.z_extent_mm)
    profile = draw_profile(
        np.random.default_rng([seed, 1]), fov_mm=2.0 * geom.half_width_mm / 0.86, site=config.site
    )
    spec = None
    if positive:
        spec, relation = _draw_specs(seed, config, 1)[0]
        placed = place(spec, geom, rng, relation=relation) or place(
            spec, geom, rng, relation="none"
        )
        if placed is None:
            raise RuntimeError(f"could not place a nodule for seed={seed}")
        spec = placed
        centre = np.asarray(spec.centre_lps_mm) + rng.uniform(
            -config.jitter_mm, config.jitter_mm, 3
        )
    elif negative_site == "vessel":
        centre = random_vessel_point(geom, rng)
    else:
        centre = _random_lung_point(geom, rng)
    sp = float(config.patch_spacing_mm)
    fine = Grid.centred(centre, config.patch_shape_vox, (sp, sp, sp))
    image, occ, anatomy = _render(
        geom, fine, spec, profile, np.random.default_rng([seed, 4]), config.apply_scanner
    )
    context = None
    if config.context_scale > 0:
        cs = sp * config.context_scale
        cgrid = Grid.centred(centre, config.patch_shape_vox, (cs, cs, cs))
        context = _render(
            geom, cgrid, spec, profile, np.random.default_rng([seed, 8]), config.apply_scanner
        )[0]
    labels = None
    point = np.asarray(spec.centre_lps_mm if spec is not None else centre)
    side_id = int(lung_sides(geom, point[0], point[1], point[2])) or (1 if point[0] < 0 else 2)
    lobe_id = int(lobes(geom, point[0], point[1], point[2], np.uint8(side_id))) or 1
    side, lobe = SIDE_NAMES[side_id], LOBE_NAMES[lobe_id]
    if spec is not None:
        m_image, m_occ, m_grid = image, occ, fine
        inside = np.all(
            np.abs(np.asarray(spec.centre_lps_mm) - centre) + spec.bounding_radius_mm
            < (np.asarray(config.patch_shape_vox) / 2 - 1) * sp
        )
        if not inside:  # the nodule overflows the crop: measure it on a grid that holds it
            n = int(np.ceil(2 * spec.bounding_radius_mm / sp)) + 6
            m_grid = Grid.centred(spec.centre_lps_mm, (n, n, n), (sp, sp, sp))
            m_image, m_occ, _ = _render(
                geom, m_grid, spec, profile, np.random.default_rng([seed, 4]), config.apply_scanner
            )
        mask = m_occ >= 0.5
        if mask.any():
            centroid = m_grid.index_to_world(np.argwhere(mask).mean(axis=0))
            labels = measure_labels(
                spec, 0, mask, m_image, m_grid.spacing_mm, offset_zyx=(0, 0, 0), centroid_lps_mm=tuple(centroid),
                side=side, lobe="upper" if (lobe == "middle" and side == "left") else lobe,
            )  # fmt: skip
    # A crop's report does not name the whole scan's slice number: it is not in the crop.
    findings = exam_findings([labels] if labels is not None else [], None, with_slice=False)
    report = render(findings, seed=seed, state_defaults=labels is None)
    return {
        "image_hu": image.astype(np.float32),
        "soft_mask": occ,
        "mask": occ >= 0.5,
        "context_hu": None if context is None else context.astype(np.float32),
        "spacing_mm": (sp, sp, sp),
        "context_spacing_mm": (sp * config.context_scale,) * 3,
        "centre_lps_mm": tuple(float(v) for v in centre),
        "labels": labels,
        "side": side,
        "lobe": lobe,
        "lung_mask": anatomy.lung_mask,
        "profile": profile.to_dict(),
        "findings_text": report.findings_text,
        "impression_text": report.impression_text,
        "spans": findings_spans(report),
        "template": template,
        "seed": int(seed),
    }
