"""Comparison with a prior scan: lung-driven registration, nodule matching, growth and VDT.

1. Registration (SimpleITK): the **lung masks** drive it, not the raw intensities, so nodule
   growth, contrast or a different kernel do not pull the alignment. Each lung mask becomes a
   signed Maurer distance map (mm, clipped to +-:data:`DISTANCE_CLIP_MM`, negative inside),
   resampled onto a :data:`REGISTRATION_SPACING_MM` isotropic grid; a rigid (Euler 3D, default)
   or affine transform is fitted by mean squares between the two maps, initialised by the mask
   centres of mass (moments). Fixed image = current scan, moving image = prior; the fitted
   transform maps current points to prior points and its inverse maps prior nodule centres into
   the current scan.
2. Matching: Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on the distance
   between current centres and mapped prior centres (mm); a pair is allowed only when the
   distance is at most ``max_distance_mm`` (default 10 mm) plus the larger of the two radii
   (project choice: a large nodule's centre may move more than a small one's).
3. Per current nodule: "new" when unmatched, else
   :func:`lungvlm.clinical.growth.growth_status_volumetric` ("growing" / "stable" / "smaller":
   the Lung-RADS mean-diameter rule, or the same 1.5 mm amount implied by the volume change
   when the volume changed beyond measurement noise) with the diameter change, the VDT
   (:func:`~lungvlm.clinical.growth.volume_doubling_time_days`; None when the volume did not
   change) and whether the Lung-RADS growth rule applies
   (:func:`~lungvlm.clinical.growth.is_lungrads_growth`). Unmatched prior nodules are
   "resolved". The Lung-RADS status passed to ``categorize`` is "new", "growing" (any
   growth_status "growing", also over more than 12 months: project choice, so a grown nodule is
   never categorised as stable) or "stable" ("stable" and "smaller", as v2022's stepped rules
   read "stable or smaller").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

from lungvlm.clinical.growth import (
    growth_status_volumetric,
    is_lungrads_growth,
    volume_doubling_time_days,
)

#: Average month (days): 365.25 / 12.
DAYS_PER_MONTH: float = 30.4375
#: Distance maps are clipped to this magnitude (mm): only the lung boundary region counts.
DISTANCE_CLIP_MM: float = 20.0
#: Isotropic spacing (mm) of the grid the distance maps are registered on.
REGISTRATION_SPACING_MM: float = 4.0
#: Default matching radius (mm) added to the larger nodule radius.
MAX_MATCH_DISTANCE_MM: float = 10.0
TRANSFORMS: tuple[str, ...] = ("rigid", "affine")


@dataclass(frozen=True)
class MeasuredNodule:
    """A nodule's centre (LPS world (x, y, z), mm), mean diameter (mm) and volume (mm³)."""

    centroid_world_mm: tuple[float, float, float]
    mean_diameter_mm: float
    volume_mm3: float


@dataclass(frozen=True)
class NoduleComparison:
    """Change of one nodule since the prior scan.

    Attributes:
        current_index: index in the current nodule list (None for a resolved prior nodule).
        prior_index: index in the prior nodule list (None for a new nodule).
        status: "new", "growing", "stable", "smaller" or "resolved".
        distance_mm: distance between the current and the mapped prior centre.
        prior_mean_diameter_mm / prior_volume_mm3: the prior measurements.
        diameter_change_mm: current minus prior mean diameter.
        vdt_days: volume doubling time; None when new, resolved or the volume is unchanged.
        lungrads_growth: the Lung-RADS growth rule (>1.5 mm within 12 months) applies.
    """

    current_index: int | None
    prior_index: int | None
    status: str
    distance_mm: float | None = None
    prior_mean_diameter_mm: float | None = None
    prior_volume_mm3: float | None = None
    diameter_change_mm: float | None = None
    vdt_days: float | None = None
    lungrads_growth: bool = False

    @property
    def lungrads_status(self) -> str:
        """Status for :func:`lungvlm.clinical.lungrads.categorize` (module docstring)."""
        if self.status in ("new", "growing"):
            return self.status
        return "stable"


def patients_differ(current_patient_id: str | None, prior_patient_id: str | None) -> bool:
    """True only when both patient ids are known and differ."""
    return (
        bool(current_patient_id)
        and bool(prior_patient_id)
        and (str(current_patient_id).strip() != str(prior_patient_id).strip())
    )


def mask_image(
    mask: ArrayLike,
    spacing_mm: Sequence[float],
    origin_lps_mm: Sequence[float],
    direction: ArrayLike | None = None,
) -> sitk.Image:
    """A (z, y, x) mask as a uint8 SimpleITK image with LPS geometry.

    ``direction``: (3, 3) with the world unit vectors of index axes x, y, z in its columns (the
    layout of ``CTVolume.direction``); None is the identity.
    """
    image = sitk.GetImageFromArray(np.asarray(mask).astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_mm)[::-1])
    image.SetOrigin(tuple(float(v) for v in origin_lps_mm))
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    image.SetDirection(tuple(d.reshape(-1)))
    return image


def _distance_map(mask: sitk.Image) -> sitk.Image:
    if not np.any(sitk.GetArrayViewFromImage(mask)):
        raise ValueError("a lung mask is empty; the prior cannot be registered on the lungs")
    dist = sitk.SignedMaurerDistanceMap(
        mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    dist = sitk.Clamp(dist, sitk.sitkFloat32, -DISTANCE_CLIP_MM, DISTANCE_CLIP_MM)
    size = [
        max(8, math.ceil(n * s / REGISTRATION_SPACING_MM))
        for n, s in zip(mask.GetSize(), mask.GetSpacing(), strict=True)
    ]
    return sitk.Resample(
        dist, size, sitk.Transform(), sitk.sitkLinear, mask.GetOrigin(),
        (REGISTRATION_SPACING_MM,) * 3, mask.GetDirection(), DISTANCE_CLIP_MM, sitk.sitkFloat32,
    )  # fmt: skip


def register_lungs(
    current_mask: sitk.Image, prior_mask: sitk.Image, transform: str = "rigid"
) -> sitk.Transform:
    """Fit the transform mapping current-scan points (mm) to prior-scan points (module doc).

    Raises:
        ValueError: an unknown ``transform`` or an empty lung mask.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform={transform!r} is not valid; expected one of {TRANSFORMS}")
    fixed, moving = _distance_map(current_mask), _distance_map(prior_mask)
    base = sitk.Euler3DTransform() if transform == "rigid" else sitk.AffineTransform(3)
    initial = sitk.CenteredTransformInitializer(
        sitk.Cast(current_mask, sitk.sitkFloat32),
        sitk.Cast(prior_mask, sitk.sitkFloat32),
        base,
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMeanSquares()
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=200, gradientMagnitudeTolerance=1e-6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def map_prior_points(transform: sitk.Transform, points_world_mm: Sequence[Sequence[float]]):
    """Prior world points (x, y, z mm) -> current world points through ``transform``'s inverse."""
    inverse = transform.GetInverse()
    return [tuple(inverse.TransformPoint(tuple(float(v) for v in p))) for p in points_world_mm]


def match_nodules(
    current: Sequence[MeasuredNodule],
    prior_in_current: Sequence[MeasuredNodule],
    max_distance_mm: float = MAX_MATCH_DISTANCE_MM,
) -> list[tuple[int, int, float]]:
    """Hungarian matching of nodules by centre distance (module docstring, step 2).

    Args:
        current: current nodules.
        prior_in_current: prior nodules with centres already mapped into the current scan.
        max_distance_mm: distance allowed on top of the larger radius (mm).

    Returns:
        ``(current_index, prior_index, distance_mm)`` of every allowed matched pair.
    """
    if not current or not prior_in_current:
        return []
    a = np.asarray([n.centroid_world_mm for n in current], dtype=np.float64)
    b = np.asarray([n.centroid_world_mm for n in prior_in_current], dtype=np.float64)
    distance = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    radius = (
        np.maximum(
            np.asarray([n.mean_diameter_mm for n in current])[:, None],
            np.asarray([n.mean_diameter_mm for n in prior_in_current])[None, :],
        )
        / 2.0
    )
    allowed = distance <= max_distance_mm + radius
    cost = np.where(allowed, distance, distance.max() * 10.0 + 1e6)
    rows, cols = linear_sum_assignment(cost)
    return [(int(i), int(j), float(distance[i, j])) for i, j in zip(rows, cols, strict=True)
            if allowed[i, j]]  # fmt: skip


def compare_nodules(
    current: Sequence[MeasuredNodule],
    prior_in_current: Sequence[MeasuredNodule],
    interval_days: float,
    max_distance_mm: float = MAX_MATCH_DISTANCE_MM,
) -> list[NoduleComparison]:
    """Match and compare: one entry per current nodule (in order), then resolved prior ones.

    Raises:
        ValueError: if ``interval_days`` is not a positive finite number of days.
    """
    if not (isinstance(interval_days, (int, float)) and math.isfinite(interval_days)
            and interval_days > 0):  # fmt: skip
        raise ValueError(f"interval_days={interval_days!r} must be a positive number of days")
    months = interval_days / DAYS_PER_MONTH
    pairs = {i: (j, d) for i, j, d in match_nodules(current, prior_in_current, max_distance_mm)}
    out: list[NoduleComparison] = []
    for i, nodule in enumerate(current):
        if i not in pairs:
            out.append(NoduleComparison(i, None, "new"))
            continue
        j, dist = pairs[i]
        prior = prior_in_current[j]
        vdt = volume_doubling_time_days(prior.volume_mm3, nodule.volume_mm3, interval_days)
        out.append(
            NoduleComparison(
                current_index=i,
                prior_index=j,
                status=growth_status_volumetric(
                    prior.mean_diameter_mm,
                    nodule.mean_diameter_mm,
                    prior.volume_mm3,
                    nodule.volume_mm3,
                    months,
                ),
                distance_mm=dist,
                prior_mean_diameter_mm=prior.mean_diameter_mm,
                prior_volume_mm3=prior.volume_mm3,
                diameter_change_mm=nodule.mean_diameter_mm - prior.mean_diameter_mm,
                vdt_days=None if math.isinf(vdt) else vdt,
                lungrads_growth=is_lungrads_growth(
                    prior.mean_diameter_mm, nodule.mean_diameter_mm, months
                ),
            )
        )
    matched = {j for j, _ in pairs.values()}
    for j, prior in enumerate(prior_in_current):
        if j not in matched:
            out.append(
                NoduleComparison(
                    None, j, "resolved",
                    prior_mean_diameter_mm=prior.mean_diameter_mm, prior_volume_mm3=prior.volume_mm3,
                )
            )  # fmt: skip
    return out


def compare_with_prior(
    current: Sequence[MeasuredNodule],
    prior: Sequence[MeasuredNodule],
    current_lungs: sitk.Image,
    prior_lungs: sitk.Image,
    interval_days: float,
    transform: str = "rigid",
    max_distance_mm: float = MAX_MATCH_DISTANCE_MM,
) -> tuple[list[NoduleComparison], sitk.Transform]:
    """Register the prior on the lungs, map its nodules into the current scan and compare."""
    fitted = register_lungs(current_lungs, prior_lungs, transform)
    mapped_centres = map_prior_points(fitted, [n.centroid_world_mm for n in prior])
    mapped = [
        MeasuredNodule(c, n.mean_diameter_mm, n.volume_mm3)
        for c, n in zip(mapped_centres, prior, strict=True)
    ]
    return compare_nodules(current, mapped, interval_days, max_distance_mm), fitted
