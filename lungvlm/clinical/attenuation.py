"""Nodule attenuation from the image: solid / part-solid / ground glass from the HU in the mask,
and the full extent of a subsolid nodule grown from its solid core.

Lung-RADS v2022 (``reference/lung-rads.md``) sizes a part-solid nodule by its total mean diameter
plus the mean diameter of its solid component, and has separate size rules for solid, part-solid
and non-solid (ground-glass) nodules. It gives no HU cut-offs: every number below is a project
choice, calibrated on phantom nodules with ground-truth masks (train-range seeds, checked on
test-range seeds; see each constant) and anchored on the reference HU values
(:mod:`lungvlm.clinical.hu`: lung about -850, ground glass about -700, soft tissue +50).

Partial volume: a solid nodule's edge voxels are mixtures of tissue and air, so a raw fraction of
"solid" voxels depends on the nodule's size in voxels. Every decision here therefore reads the
image after a light Gaussian smoothing (:data:`SMOOTHING_SIGMA_MM`, against noise) and uses
statistics that partial volume does not move much: the median HU of the mask's boundary voxels
(dense at a solid edge, ground glass at a subsolid edge) and the solid component's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from lungvlm.clinical.hu import HU_GROUND_GLASS, HU_LUNG
from lungvlm.clinical.measure import (
    NoduleMeasurement,
    _check_mask,
    _check_spacing,
    measure_nodule,
    solid_component_diameter_mm,
)

ATTENUATIONS: tuple[str, ...] = ("solid", "part_solid", "ground_glass")
#: Solid voxels are above this HU (the cut-off of :func:`solid_component_diameter_mm`).
SOLID_THRESHOLD_HU: float = -300.0
#: Gaussian smoothing (mm, per axis) applied before every HU decision. Project choice: about
#: half a typical voxel, enough to halve low-dose noise without moving a nodule's edge.
SMOOTHING_SIGMA_MM: float = 0.6
#: A nodule whose boundary voxels have a median above this HU has a solid edge. Project choice:
#: half-way between a solid edge (about -400 HU, half tissue and half air) and ground glass.
SOLID_EDGE_HU: float = -550.0
#: A solid part whose 3-D elongation (square root of the smallest over the largest principal
#: variance of its voxel positions, each variance plus one voxel's own, spacing² / 12) is below
#: this is a vessel crossing the nodule, not a solid component. Project choice: on train-range
#: phantom nodules, vessels inside ground glass measured 0.07-0.27 and solid cores 0.44-0.95.
VESSEL_ELONGATION: float = 0.35
#: Radius (mm, rounded to whole voxels, at least one) of the opening that cuts a vessel off a
#: solid core it runs through. Project choice: the width of a subsegmental vessel.
VESSEL_CUT_MM: float = 1.5
#: Subsolid extent: ground glass is grown at most this far (mm) from the given mask. Project
#: choice: covers a ground-glass rim of 3/4 of the radius of a 25 mm nodule.
MAX_GROWTH_MM: float = 10.0
#: Shell (mm beyond the growth limit) whose median HU estimates the lung around the nodule.
BACKGROUND_SHELL_MM: tuple[float, float] = (2.0, 6.0)
#: The ground-glass rim reaches out to the last shell (one voxel thick, around the given mask)
#: in which at least this fraction of the lung voxels is above the growth threshold. Project
#: choice: a majority, so that growth along a vessel or a septum does not set the extent.
RIM_SHELL_FRACTION: float = 0.5
#: A ground-glass rim exists only if the median HU of the lung voxels (at or below
#: :data:`SOLID_THRESHOLD_HU`) this far (mm) outside the given mask is above the growth
#: threshold. Project choice: beyond the partial-volume reach of a solid edge. On train-range
#: phantom nodules it fired for 1 % of solid nodules (ground-truth masks) and for every
#: part-solid nodule's solid core, where 1.5-2.5 mm fired for 17 % of solid nodules.
HALO_PROBE_MM: tuple[float, float] = (2.0, 3.0)


@dataclass(frozen=True)
class AttenuationMeasurement:
    """Attenuation measured from the HU inside a nodule mask.

    Attributes:
        attenuation: "solid", "part_solid" or "ground_glass".
        solid_component_mm: mean diameter (mm) of the largest solid part (HU above
            :data:`SOLID_THRESHOLD_HU`); 0.0 when there is none.
        edge_hu: median HU of the mask's boundary voxels (smoothed image).
        solid_fraction: fraction of mask voxels above :data:`SOLID_THRESHOLD_HU`.
    """

    attenuation: str
    solid_component_mm: float
    edge_hu: float
    solid_fraction: float


def _check_image(image_hu: ArrayLike, shape: tuple[int, ...]) -> NDArray[np.float32]:
    image = np.asarray(image_hu, dtype=np.float32)
    if image.shape != shape:
        raise ValueError(
            f"image_hu has shape {image.shape} but mask has shape {shape}; expected equal"
        )
    return image


def smooth_hu(
    image_hu: ArrayLike, spacing_mm: Sequence[float], sigma_mm: float = SMOOTHING_SIGMA_MM
):
    """Gaussian-smoothed HU image (sigma ``sigma_mm`` in mm on each axis), float32 (z, y, x)."""
    spacing = _check_spacing(spacing_mm)
    sigma_vox = [sigma_mm / s for s in spacing]
    return ndimage.gaussian_filter(
        np.asarray(image_hu, dtype=np.float32), sigma_vox, mode="nearest"
    )


def _boundary(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Mask voxels with a 6-neighbour outside the mask (or on the array border)."""
    inner = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1), border_value=0)
    return mask & ~inner


def _elongation(component: NDArray[np.bool_], spacing: tuple[float, float, float]) -> float:
    points = np.argwhere(component) * np.asarray(spacing)
    covariance = np.cov(points.T) if len(points) > 1 else np.zeros((3, 3))
    covariance = covariance + np.diag(np.square(spacing) / 12.0)  # a voxel's own extent
    variances = np.linalg.eigvalsh(covariance)
    return float(np.sqrt(variances[0] / variances[-1]))


def _largest_compact(solid: NDArray[np.bool_], spacing) -> NDArray[np.bool_] | None:
    labels, count = ndimage.label(solid, np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    for label in np.argsort(-sizes[1:]) + 1:
        component = labels == label
        if _elongation(component, spacing) >= VESSEL_ELONGATION:
            return component
    return None


def solid_component(
    mask: NDArray[np.bool_], smoothed_hu: NDArray[np.float32], spacing: tuple[float, float, float]
) -> NDArray[np.bool_] | None:
    """The largest 26-connected group of mask voxels above :data:`SOLID_THRESHOLD_HU` that is
    not vessel-like (:data:`VESSEL_ELONGATION`); None when there is none. A vessel that runs
    through a small solid core can join it into one elongated group: then the solid voxels are
    opened by :data:`VESSEL_CUT_MM`, which cuts the vessel off, and the largest compact piece
    is kept."""
    solid = mask & (smoothed_hu > SOLID_THRESHOLD_HU)
    if not solid.any():
        return None
    found = _largest_compact(solid, spacing)
    if found is None:
        steps = max(1, round(VESSEL_CUT_MM / min(spacing)))
        cross = ndimage.generate_binary_structure(3, 1)
        opened = ndimage.binary_opening(solid, cross, iterations=steps)
        found = _largest_compact(opened, spacing) if opened.any() else None
    return found


def classify_attenuation(
    mask: ArrayLike,
    image_hu: ArrayLike,
    spacing_mm: Sequence[float],
    solid_edge_hu: float = SOLID_EDGE_HU,
) -> AttenuationMeasurement:
    """Solid, part-solid or ground glass from the HU inside a full-extent nodule mask.

    Rule (project choice, calibrated on phantom nodules; the module docstring says why):

    - a dense edge (median HU of the mask's boundary voxels above ``solid_edge_hu``) -> "solid";
    - else a solid component (:func:`solid_component`: voxels above
      :data:`SOLID_THRESHOLD_HU`, vessels excluded) -> "part_solid";
    - else "ground_glass".

    The solid component's size is its Lung-RADS mean diameter
    (:func:`~lungvlm.clinical.measure.measure_nodule`). The mask must cover the whole nodule,
    ground glass included (see :func:`subsolid_extent`); a mask of the solid core only reads
    as solid.

    Args:
        mask: binary nodule mask (z, y, x).
        image_hu: CT in HU, same shape.
        spacing_mm: voxel spacing (z, y, x) in mm.
        solid_edge_hu: boundary median above which the edge is solid (HU).

    Raises:
        ValueError: an empty or non-3-D mask, an image of another shape or a bad spacing.
    """
    spacing = _check_spacing(spacing_mm)
    array = _check_mask(mask)
    smoothed = smooth_hu(_check_image(image_hu, array.shape), spacing)
    edge = _boundary(array)
    edge_hu = float(np.median(smoothed[edge if edge.any() else array]))
    fraction = float((smoothed[array] > SOLID_THRESHOLD_HU).mean())
    if edge_hu > solid_edge_hu:
        solid_mm = solid_component_diameter_mm(array, smoothed, spacing, SOLID_THRESHOLD_HU)
        return AttenuationMeasurement("solid", solid_mm, edge_hu, fraction)
    component = solid_component(array, smoothed, spacing)
    if component is None:
        return AttenuationMeasurement("ground_glass", 0.0, edge_hu, fraction)
    solid_mm = measure_nodule(component, spacing).mean_diameter_mm
    return AttenuationMeasurement("part_solid", solid_mm, edge_hu, fraction)


def _background_hu(smoothed, dist_mm, lung, max_growth_mm) -> float:
    """Median HU of the lung just beyond the growth limit (vessels and walls excluded)."""
    near, far = BACKGROUND_SHELL_MM
    shell = lung & (dist_mm > max_growth_mm + near) & (dist_mm <= max_growth_mm + far)
    shell &= smoothed < SOLID_THRESHOLD_HU
    if shell.sum() < 10:
        return HU_LUNG
    return float(np.median(smoothed[shell]))


def _rim_thickness_mm(candidate, dist_mm, lung, step_mm: float, max_growth_mm: float) -> float:
    """Distance (mm) out to which most of each shell around the mask is ground glass."""
    reach = 0.0
    while reach < max_growth_mm:
        shell = lung & (dist_mm > reach) & (dist_mm <= reach + step_mm)
        if not shell.any() or candidate[shell].mean() < RIM_SHELL_FRACTION:
            break
        reach += step_mm
    # The shell where the majority stops holds the edge: its voxels above the threshold count.
    return min(reach + step_mm, max_growth_mm) if reach > 0 else 0.0


def subsolid_extent(
    mask: ArrayLike,
    image_hu: ArrayLike,
    spacing_mm: Sequence[float],
    lung_mask: ArrayLike | None = None,
    max_growth_mm: float = MAX_GROWTH_MM,
    ground_glass_hu: float = HU_GROUND_GLASS,
) -> NDArray[np.bool_]:
    """Grow a nodule mask into the ground glass around it (the full extent of a subsolid nodule).

    A segmentation may cover only the solid core of a part-solid nodule; Lung-RADS sizes it by
    its total extent (``reference/lung-rads.md``). Steps (thresholds are project choices,
    calibrated on phantom nodules, see the module docstring):

    1. The lung background is the median (smoothed) HU of a shell
       :data:`BACKGROUND_SHELL_MM` beyond the growth limit; the growth threshold is half-way
       between it and ``ground_glass_hu``, the 50 % partial-volume edge of ground glass.
    2. Growth is tried only when the mask's own edge is ground glass (median boundary HU at or
       below :data:`SOLID_EDGE_HU`: a piece of a ground-glass nodule) or when the lung
       :data:`HALO_PROBE_MM` outside the mask is above the threshold (ground glass around a
       solid core); otherwise (a solid nodule) the mask is returned unchanged. The probe
       distance keeps a solid edge's partial volume from being mistaken for ground glass.
    3. Candidates are lung voxels above the threshold and at or below
       :data:`SOLID_THRESHOLD_HU` (not vessels or soft tissue). The rim reaches out through
       the one-voxel shells around the mask in which at least :data:`RIM_SHELL_FRACTION` of
       the lung voxels are candidates, plus the shell that holds the edge, and never beyond
       ``max_growth_mm``; a mask without such a first shell is returned unchanged (it already
       covers the nodule).
    4. Candidates within the rim that connect to the mask (6-connectivity) are added; an
       opening by one voxel then cuts thin spurs along vessel walls, and only what still
       connects to the mask is kept.

    Args:
        mask: binary nodule mask (z, y, x), e.g. a segmentation's.
        image_hu: CT in HU, same shape.
        spacing_mm: voxel spacing (z, y, x) in mm.
        lung_mask: optional lung mask, same shape; growth stays inside it.
        max_growth_mm: largest distance (mm) grown from ``mask``.
        ground_glass_hu: typical ground-glass HU (reference: about -800 to -600 HU).

    Returns:
        The grown mask (a superset of ``mask``), boolean (z, y, x).

    Raises:
        ValueError: an empty or non-3-D mask, an image or lung mask of another shape, a bad
            spacing or a negative ``max_growth_mm``.
    """
    spacing = _check_spacing(spacing_mm)
    core = _check_mask(mask)
    image = _check_image(image_hu, core.shape)
    if not (math.isfinite(max_growth_mm) and max_growth_mm >= 0):
        raise ValueError(f"max_growth_mm={max_growth_mm!r} must be a non-negative distance in mm")
    lung = np.ones(core.shape, bool)
    if lung_mask is not None:
        lung = np.asarray(lung_mask).astype(bool)
        if lung.shape != core.shape:
            raise ValueError(f"lung_mask has shape {lung.shape}; expected the mask's {core.shape}")
        lung = lung | core
    smoothed = smooth_hu(image, spacing)
    dist_mm = ndimage.distance_transform_edt(~core, sampling=spacing)
    threshold = 0.5 * (_background_hu(smoothed, dist_mm, lung, max_growth_mm) + ground_glass_hu)
    near, far = HALO_PROBE_MM
    probe = lung & (dist_mm > near) & (dist_mm <= far) & (smoothed <= SOLID_THRESHOLD_HU)
    ground_glass_edge = float(np.median(smoothed[_boundary(core)])) <= SOLID_EDGE_HU
    if not ground_glass_edge and (not probe.any() or np.median(smoothed[probe]) <= threshold):
        return core.copy()
    candidate = lung & (smoothed > threshold) & (smoothed <= SOLID_THRESHOLD_HU)
    candidate &= dist_mm <= _rim_thickness_mm(
        candidate, dist_mm, lung & (smoothed <= SOLID_THRESHOLD_HU), min(spacing), max_growth_mm
    )
    cross = ndimage.generate_binary_structure(3, 1)
    labels, _ = ndimage.label(candidate | core, cross)
    connected = np.isin(labels, np.unique(labels[core]))
    opened = ndimage.binary_opening(connected, cross) | core
    labels, _ = ndimage.label(opened, cross)
    return np.isin(labels, np.unique(labels[core]))


#: A mask whose median HU is below this is not a nodule in the image (air; e.g. a misplaced
#: mask): its attenuation is not measured. Project choice: below aerated lung (about -850 HU).
MIN_MEASURABLE_HU: float = -900.0
#: Attenuation classes are read against aerated lung: at least this fraction of the voxels
#: 2-6 mm around the mask must be below :data:`SOLID_THRESHOLD_HU`, else the attenuation is not
#: measured (a mask in soft tissue, or an image without lung). Project choice: a juxtapleural
#: nodule has about half of its surroundings in the lung.
MIN_LUNG_AROUND_FRACTION: float = 0.25


@dataclass(frozen=True)
class HUMeasurement:
    """A nodule measured on the image: full extent, size and attenuation.

    Attributes:
        mask: the measured mask (z, y, x): the input mask, grown into ground glass when the
            nodule is subsolid (:func:`subsolid_extent`).
        extended: whether ``mask`` is larger than the input mask.
        size: :func:`~lungvlm.clinical.measure.measure_nodule` of ``mask`` (mm, mm³).
        attenuation: the HU classification of ``mask``; None when the mask holds no tissue
            (median below :data:`MIN_MEASURABLE_HU`) or is not surrounded by aerated lung
            (:data:`MIN_LUNG_AROUND_FRACTION`); the mask is then not grown either.
    """

    mask: NDArray[np.bool_]
    extended: bool
    size: NoduleMeasurement
    attenuation: AttenuationMeasurement | None


def measure_hu(
    mask: ArrayLike,
    image_hu: ArrayLike,
    spacing_mm: Sequence[float],
    lung_mask: ArrayLike | None = None,
) -> HUMeasurement:
    """Grow a nodule mask to its full extent, then measure its size and attenuation.

    :func:`subsolid_extent` first (a segmentation may hold only the solid core), then
    :func:`classify_attenuation` on the grown mask. A nodule classified solid keeps the input
    mask (its edge is solid, so the growth was partial volume or an adjacent structure).

    Args:
        mask: binary nodule mask (z, y, x).
        image_hu: CT in HU, same shape; leave at least :data:`MAX_GROWTH_MM` plus
            :data:`BACKGROUND_SHELL_MM` of lung around the mask.
        spacing_mm: voxel spacing (z, y, x) in mm.
        lung_mask: optional lung mask, same shape.

    Raises:
        ValueError: as :func:`subsolid_extent`.
    """
    spacing = _check_spacing(spacing_mm)
    core = _check_mask(mask)
    image = _check_image(image_hu, core.shape)
    dist_mm = ndimage.distance_transform_edt(~core, sampling=spacing)
    around = (dist_mm > 2.0) & (dist_mm <= 6.0)
    lung_around = float((image[around] < SOLID_THRESHOLD_HU).mean()) if around.any() else 0.0
    if lung_around < MIN_LUNG_AROUND_FRACTION or np.median(image[core]) < MIN_MEASURABLE_HU:
        return HUMeasurement(core, False, measure_nodule(core, spacing), None)
    grown = subsolid_extent(core, image, spacing, lung_mask)
    attenuation = classify_attenuation(grown, image, spacing)
    if attenuation.attenuation == "solid" and grown.sum() > core.sum():
        grown = core
        attenuation = classify_attenuation(core, image, spacing)
    extended = bool(grown.sum() > core.sum())
    return HUMeasurement(grown, extended, measure_nodule(grown, spacing), attenuation)
