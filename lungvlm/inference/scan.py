"""Whole-scan inference: resample and normalise a CT, segment it by sliding
windows, and turn the probability map into measured nodule instances.

Grids. The original scan is (z, y, x) with spacing ``spacing_mm`` and a 4x4 ``affine`` taking a
homogeneous (z, y, x, 1) index to LPS world (x, y, z, 1) mm (the layout of
``CTVolume.affine_lps``). The prepared grid keeps the centre of voxel (0, 0, 0) and the
direction and has ``target_spacing_mm`` voxels: prepared index ``o`` lies at original index
``o * target / spacing`` and each axis has ``round(n * spacing / target)`` voxels, as the
training cache (``data_modules/cache.py``) resamples. HU are resampled linearly by the one resampler,
:mod:`lungvlm.imaging.resample`, as the training cache does (edge voxels repeat beyond the last
original voxel centre) and then normalised with the checkpoint's
``hu_min``/``hu_max`` through :func:`lungvlm.clinical.hu.normalize_hu`, as training did.
Sliding windows: :mod:`lungvlm.inference.windows`.

Candidates: every connected component of the thresholded probability is a candidate. With a
``candidate_floor`` below the threshold (the default when the model has a candidate head), the
components of ``probability >= candidate_floor`` that hold no voxel at or above the threshold
are candidates too ("weak" candidates: the segmentation saw something, but never with
confidence); each is the part of its component at or above half its peak probability (and the
floor), so a confident instance is exactly what it was without the floor. On 6 phantom
validation chests a floor of 0.15 found 11 of 15 nodules among the candidates instead of 9; the
candidate head decides which of them are nodules. When the
model has a candidate head, each gets ``candidate_probability`` from it
(:mod:`lungvlm.inference.candidate_score`) and the candidates are ranked by it; otherwise by
``score``, the component's peak probability. Label 1 is the top-ranked candidate. The
``tta_top_k`` best-scored candidates of a scan are scored again with flip test-time augmentation
(the mean over four mirrored views, :mod:`lungvlm.inference.candidate_score`); the others keep
their single-pass probability.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import ArrayLike, NDArray
from torch import nn

from lungvlm.clinical.hu import default_normalization, normalize_hu
from lungvlm.clinical.measure import measure_nodule
from lungvlm.imaging.resample import resample_grid
from lungvlm.imaging.volume import affine_lps
from lungvlm.inference.candidate_score import (
    FLIP_DIMS,
    candidate_probabilities,
    has_candidate_head,
)
from lungvlm.inference.guard import InferenceGuard
from lungvlm.inference.windows import dilate_mm, sliding_window_probability, window_selector
from lungvlm.metrics.segmentation import NoduleInstance, label_components

#: Volume (mm³) of a 3 mm sphere: LUNA16 ignores findings under 3 mm (``reference/luna16.md``),
#: so smaller components are dropped by default (a project choice).
MIN_NODULE_VOLUME_MM3: float = 4.0 / 3.0 * math.pi * 1.5**3

#: Candidates per scan re-scored with flip test-time augmentation (module docstring). Chosen on
#: phantom validation chests (benchmarks/RESULTS.md, issue 15's note): the operating point and
#: the FROC up to 8 FPs/scan are decided among the top few dozen candidates of a scan.
DEFAULT_TTA_TOP_K: int = 16

#: Probability floor of the weak candidates (module docstring), used with a candidate head.
DEFAULT_CANDIDATE_FLOOR: float = 0.15


def _check_spacing(name: str, spacing_mm: ArrayLike) -> tuple[float, float, float]:
    values = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{name}={spacing_mm!r} must be three positive (z, y, x) spacings in mm")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def grid_affine(
    spacing_mm: Sequence[float], origin_lps_mm: Sequence[float] = (0.0, 0.0, 0.0)
) -> NDArray[np.float64]:
    """4x4 affine (z, y, x, 1) index -> LPS (x, y, z, 1) mm of an identity-direction grid."""
    return affine_lps(spacing_mm, origin_lps_mm)


@dataclass(frozen=True)
class PreparedScan:
    """A scan resampled to the model's spacing and normalised.

    Attributes:
        image: normalised intensities in [0, 1], (z, y, x) float32 at ``spacing_mm``.
        spacing_mm: prepared (target) spacing (z, y, x) in mm.
        original_spacing_mm: spacing (z, y, x) of the scan as given (mm).
        original_shape: shape (z, y, x) of the scan as given.
        zoom: prepared / original voxel count ratio per axis, ``original_spacing / spacing``.
        affine: 4x4 (z, y, x, 1) original index -> LPS (x, y, z, 1) mm.
        normalization: the ``hu_min``/``hu_max`` used (HU).
    """

    image: NDArray[np.float32]
    spacing_mm: tuple[float, float, float]
    original_spacing_mm: tuple[float, float, float]
    original_shape: tuple[int, int, int]
    zoom: tuple[float, float, float]
    affine: NDArray[np.float64]
    normalization: dict[str, float]

    def to_original_index(self, index_zyx: ArrayLike) -> NDArray[np.float64]:
        """Prepared (z, y, x) indices (..., 3) -> original (z, y, x) indices."""
        return np.asarray(index_zyx, dtype=np.float64) / np.asarray(self.zoom)

    def to_world(self, original_index_zyx: ArrayLike) -> NDArray[np.float64]:
        """Original (z, y, x) indices (..., 3) -> LPS world (x, y, z) in mm."""
        idx = np.asarray(original_index_zyx, dtype=np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def to_prepared_grid(self, volume: ArrayLike, order: int) -> NDArray:
        """Resample an original-grid (z, y, x) array onto the prepared grid (order 0 or 1)."""
        return resample_grid(
            np.asarray(volume), self.image.shape, 1.0 / np.asarray(self.zoom), order
        )

    def to_original_grid(self, volume: ArrayLike, order: int) -> NDArray:
        """Resample a prepared-grid (z, y, x) array back onto the original grid (order 0 or 1)."""
        return resample_grid(np.asarray(volume), self.original_shape, np.asarray(self.zoom), order)


def prepare_scan(
    image_hu: ArrayLike,
    spacing_mm: Sequence[float],
    target_spacing_mm: float | Sequence[float] = 1.0,
    normalization: dict[str, float] | None = None,
    origin_lps_mm: Sequence[float] | None = None,
    affine: ArrayLike | None = None,
) -> PreparedScan:
    """Resample a CT (HU) to ``target_spacing_mm`` and normalise it exactly as training did.

    Args:
        image_hu: CT volume (z, y, x) in HU.
        spacing_mm: its voxel spacing (z, y, x) in mm.
        target_spacing_mm: the model's spacing, one number (isotropic) or (z, y, x), mm.
        normalization: ``{"hu_min", "hu_max"}`` (HU) from the checkpoint (``model.normalization``);
            ``None`` uses the defaults of :func:`normalize_hu`.
        origin_lps_mm: world (x, y, z) of voxel (0, 0, 0) for an identity-direction scan.
        affine: 4x4 (z, y, x, 1) -> LPS (x, y, z, 1) matrix (``CTVolume.affine_lps()``);
            overrides ``origin_lps_mm``. Neither: origin 0 and identity direction.

    Raises:
        ValueError: a non-3-D image, bad spacings, or a bad affine.
    """
    image = np.asarray(image_hu)
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"image_hu must be a non-empty 3-D (z, y, x) array; got {image.shape}")
    spacing = _check_spacing("spacing_mm", spacing_mm)
    target = np.broadcast_to(np.asarray(target_spacing_mm, dtype=np.float64), (3,))
    target = _check_spacing("target_spacing_mm", target)
    norm = {**default_normalization(), **(normalization or {})}
    if affine is None:
        affine = grid_affine(spacing, origin_lps_mm if origin_lps_mm is not None else (0, 0, 0))
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix; got shape {affine.shape}")
    shape = tuple(
        max(1, round(n * s / t)) for n, s, t in zip(image.shape, spacing, target, strict=True)
    )
    zoom = tuple(s / t for s, t in zip(spacing, target, strict=True))
    resampled = resample_grid(image.astype(np.float32), shape, 1.0 / np.asarray(zoom), order=1)
    normalized = normalize_hu(resampled, float(norm["hu_min"]), float(norm["hu_max"]))
    return PreparedScan(
        image=normalized,
        spacing_mm=target,
        original_spacing_mm=spacing,
        original_shape=tuple(int(n) for n in image.shape),  # type: ignore[arg-type]
        zoom=zoom,  # type: ignore[arg-type]
        affine=affine,
        normalization={k: float(norm[k]) for k in ("hu_min", "hu_max")},
    )


@dataclass(frozen=True)
class DetectedNodule:
    """One segmented nodule of a scan, measured at the prepared spacing.

    Attributes:
        label: its value in :attr:`ScanSegmentation.labels` (1 = top-ranked, see
            :attr:`ranking_score`).
        score: maximum probability inside the component.
        num_voxels: component size in prepared voxels.
        centroid_vox: mean prepared-grid index (z, y, x).
        centroid_original_vox: the same point as an original-grid index (z, y, x).
        centroid_world_mm: the same point in LPS world (x, y, z) mm.
        volume_mm3: voxel count x prepared voxel volume (mm³).
        mean_diameter_mm: Lung-RADS mean of long and short axis (mm), see
            :func:`lungvlm.clinical.measure.measure_nodule`.
        long_axis_mm: long axis on the axial slice of greatest area (mm).
        short_axis_mm: perpendicular short axis on that slice (mm).
        candidate_probability: the candidate head's nodule probability of the crop centred on
            the component; None when the model has no candidate head.
    """

    label: int
    score: float
    num_voxels: int
    centroid_vox: tuple[float, float, float]
    centroid_original_vox: tuple[float, float, float]
    centroid_world_mm: tuple[float, float, float]
    volume_mm3: float
    mean_diameter_mm: float
    long_axis_mm: float
    short_axis_mm: float
    candidate_probability: float | None = None

    @property
    def ranking_score(self) -> float:
        """What ranks candidates (and the FROC): ``candidate_probability``, else ``score``."""
        return self.score if self.candidate_probability is None else self.candidate_probability

    def to_dict(self) -> dict:
        """JSON-serialisable fields."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class ScanSegmentation:
    """Result of whole-scan segmentation on the prepared grid.

    Attributes:
        probability: nodule probability (z, y, x) float32 at the prepared spacing.
        labels: int32 instance map (0 = background), same grid, numbered like ``instances``.
        instances: detected nodules by decreasing :attr:`DetectedNodule.ranking_score`.
        prepared: the prepared scan (grids and world mapping).
        windows_total: full-resolution windows covering the scan.
        windows_processed: full-resolution windows the model actually ran on.
        timings_s: seconds per step ("lung_mask", "sliding_window", "components", ...).
        details: extra numbers of the method (e.g. the cascade's triage pass).
    """

    probability: NDArray[np.float32]
    labels: NDArray[np.int32]
    instances: list[DetectedNodule]
    prepared: PreparedScan
    windows_total: int
    windows_processed: int
    timings_s: dict[str, float] = field(default_factory=dict)
    details: dict[str, float] = field(default_factory=dict)

    @property
    def window_fraction(self) -> float:
        """Fraction of the full-resolution windows that were processed."""
        return self.windows_processed / max(1, self.windows_total)


def prepared_lung_mask(
    prepared: PreparedScan, lung_mask: ArrayLike, margin_mm: float
) -> NDArray[np.bool_]:
    """A lung mask on the original or prepared grid -> dilated boolean mask on the prepared grid."""
    mask = np.asarray(lung_mask)
    if mask.shape == prepared.image.shape:
        mask = mask.astype(bool)
    elif mask.shape == prepared.original_shape:
        mask = prepared.to_prepared_grid(mask.astype(np.uint8), order=0).astype(bool)
    else:
        raise ValueError(
            f"lung_mask has shape {mask.shape}; expected the original {prepared.original_shape} "
            f"or the prepared {prepared.image.shape} grid"
        )
    return dilate_mm(mask, margin_mm, prepared.spacing_mm)


def extract_instances(
    probability: NDArray[np.float32],
    prepared: PreparedScan,
    threshold: float = 0.5,
    min_volume_mm3: float = MIN_NODULE_VOLUME_MM3,
    guard: InferenceGuard | None = None,
    candidate_floor: float | None = None,
) -> tuple[NDArray[np.int32], list[DetectedNodule]]:
    """Connected components (26-connected) of ``probability >= threshold``, measured.

    Components smaller than ``min_volume_mm3`` are dropped; each kept one is measured with
    :func:`lungvlm.clinical.measure.measure_nodule` at the prepared spacing. A
    ``candidate_floor`` below ``threshold`` adds the weak candidates (module docstring,
    :func:`add_weak_candidates`) after them. A ``guard`` checks the component count before they
    are measured and their sizes after.

    Raises:
        RunawayInferenceError: a ``guard`` limit is exceeded
            (:mod:`lungvlm.inference.guard`).
    """
    voxel_mm3 = float(np.prod(prepared.spacing_mm))
    min_voxels = max(1, math.ceil(min_volume_mm3 / voxel_mm3 - 1e-9))
    labels, components = label_components(probability, threshold, min_voxels, score="max")
    if candidate_floor is not None and candidate_floor < threshold:
        components += add_weak_candidates(
            probability, labels, threshold, candidate_floor, min_voxels
        )
    if guard is not None:
        guard.check_count(len(components))
    instances = []
    for comp in components:
        size = measure_nodule(labels[comp.bbox] == comp.label, prepared.spacing_mm)
        original = prepared.to_original_index(comp.centroid_vox)
        instances.append(
            DetectedNodule(
                label=comp.label,
                score=comp.score,
                num_voxels=comp.num_voxels,
                centroid_vox=comp.centroid_vox,
                centroid_original_vox=tuple(float(v) for v in original),
                centroid_world_mm=tuple(float(v) for v in prepared.to_world(original)),
                volume_mm3=size.volume_mm3,
                mean_diameter_mm=size.mean_diameter_mm,
                long_axis_mm=size.long_axis_mm,
                short_axis_mm=size.short_axis_mm,
            )
        )
    if guard is not None:
        guard.check_sizes(
            [n.mean_diameter_mm for n in instances], [n.volume_mm3 for n in instances]
        )
    return labels, instances


def add_weak_candidates(
    probability: NDArray[np.float32],
    labels: NDArray[np.int32],
    threshold: float,
    candidate_floor: float,
    min_voxels: int,
) -> list[NoduleInstance]:
    """Add the weak candidates of ``probability`` to ``labels`` (in place) and return them.

    A weak candidate is a 26-connected component of ``probability >= candidate_floor`` whose
    peak is below ``threshold``; its region is the part at or above
    ``max(candidate_floor, peak / 2)``, kept when it has at least ``min_voxels`` voxels. New
    labels follow the largest one in ``labels``, by decreasing peak.
    """
    if not 0.0 < candidate_floor < threshold:
        raise ValueError(
            f"candidate_floor={candidate_floor!r} must lie in (0, threshold={threshold!r})"
        )
    low, components = label_components(probability, candidate_floor, min_voxels, score="max")
    added: list[NoduleInstance] = []
    next_label = int(labels.max(initial=0)) + 1
    for comp in components:  # by decreasing peak
        if comp.score >= threshold:
            continue
        region = (low[comp.bbox] == comp.label) & (
            probability[comp.bbox] >= max(candidate_floor, comp.score / 2.0)
        )
        count = int(region.sum())
        if count < min_voxels:
            continue
        labels[comp.bbox][region] = next_label
        centre = np.argwhere(region).mean(axis=0) + [s.start for s in comp.bbox]
        added.append(
            NoduleInstance(
                next_label, tuple(float(c) for c in centre), comp.score, count, comp.bbox
            )
        )
        next_label += 1
    return added


def rank_instances(
    labels: NDArray[np.int32], instances: Sequence[DetectedNodule]
) -> tuple[NDArray[np.int32], list[DetectedNodule]]:
    """Order instances by decreasing ``ranking_score`` (ties keep their order) and renumber them
    and the label map so that label k is the k-th."""
    order = sorted(range(len(instances)), key=lambda i: -instances[i].ranking_score)
    lookup = np.zeros(max((n.label for n in instances), default=0) + 1, dtype=np.int32)
    ranked = []
    for new, position in enumerate(order, start=1):
        lookup[instances[position].label] = new
        ranked.append(replace(instances[position], label=new))
    return lookup[labels].astype(np.int32), ranked


def score_candidates(
    model: nn.Module,
    prepared: PreparedScan,
    labels: NDArray[np.int32],
    instances: Sequence[DetectedNodule],
    crop_size_vox: int,
    context_scale: float = 2.0,
    batch_size: int = 4,
    tta_top_k: int = DEFAULT_TTA_TOP_K,
) -> tuple[NDArray[np.int32], list[DetectedNodule]]:
    """Give each instance its ``candidate_probability`` and rank by it (module docstring).

    The ``tta_top_k`` instances with the highest single-pass probability are scored again with
    flip test-time augmentation and keep that mean; 0 turns it off.
    """
    if not isinstance(tta_top_k, (int, np.integer)) or tta_top_k < 0:
        raise ValueError(f"tta_top_k={tta_top_k!r} must be an int >= 0")
    centres = [n.centroid_vox for n in instances]
    probabilities = candidate_probabilities(
        model, prepared.image, centres, crop_size_vox, context_scale, batch_size,
        prepared.normalization,
    )  # fmt: skip
    top = sorted(range(len(centres)), key=lambda i: -probabilities[i])[: int(tta_top_k)]
    if top:
        # The crop as sampled is already scored: only its mirrorings are run, then averaged in.
        mirrored = FLIP_DIMS[1:]
        averaged = candidate_probabilities(
            model, prepared.image, [centres[i] for i in top], crop_size_vox, context_scale,
            batch_size, prepared.normalization, views=mirrored,
        )  # fmt: skip
        for i, p in zip(top, averaged, strict=True):
            probabilities[i] = (probabilities[i] + len(mirrored) * p) / (len(mirrored) + 1)
    scored = [
        replace(n, candidate_probability=float(p))
        for n, p in zip(instances, probabilities, strict=True)
    ]
    return rank_instances(labels, scored)


def segment_scan(
    model: nn.Module,
    prepared: PreparedScan,
    roi_size_vox: int | Sequence[int] = 32,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    lung_mask: ArrayLike | None = None,
    context_scale: float = 2.0,
    threshold: float = 0.5,
    min_volume_mm3: float = MIN_NODULE_VOLUME_MM3,
    lung_margin_mm: float = 5.0,
    region: NDArray[np.bool_] | None = None,
    progress: bool = False,
    guard: InferenceGuard | None = None,
    tta_top_k: int = DEFAULT_TTA_TOP_K,
    candidate_floor: float | None = DEFAULT_CANDIDATE_FLOOR,
) -> ScanSegmentation:
    """Segment a prepared scan by sliding windows and list its nodules.

    Args:
        model: a segmentation model (e.g. from :func:`load_model`), already on its device.
        prepared: output of :func:`prepare_scan`.
        roi_size_vox: window size (voxels); use the training crop size.
        overlap: overlap fraction of neighbouring windows.
        sw_batch_size: windows per forward pass.
        lung_mask: boolean lung mask on the original or prepared grid. When given it is dilated
            by ``lung_margin_mm`` (so juxtapleural nodules stay in), windows outside it are
            skipped and probabilities outside it are set to 0.
        context_scale: context crop field of view / window field of view (training's value).
        threshold: probability threshold of the instances.
        min_volume_mm3: smaller components are dropped (default: a 3 mm sphere).
        lung_margin_mm: dilation of the lung mask (mm).
        region: optional boolean prepared-grid mask; only windows touching it run (the cascade).
        progress: show a progress bar over window batches.
        guard: limits checked on the components right after the segmentation, before the
            candidate head scores them (:mod:`lungvlm.inference.guard`); None checks nothing.
        tta_top_k: candidates re-scored with flip test-time augmentation (0: none).
        candidate_floor: probability floor of the weak candidates (module docstring); used only
            when the model has a candidate head to judge them; None: none.

    With a candidate head on the model, every instance gets ``candidate_probability`` (crops of
    ``roi_size_vox``, ``sw_batch_size`` per forward pass) and instances are ranked by it
    (``timings_s["candidate_score"]``); otherwise they are ranked by ``score``.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    mask = None if lung_mask is None else prepared_lung_mask(prepared, lung_mask, lung_margin_mm)
    timings["lung_mask"] = time.perf_counter() - start
    run_region = region if mask is None else (mask if region is None else mask & region)
    select = None if run_region is None else window_selector(run_region)
    start = time.perf_counter()
    prob, n_total, n_run = sliding_window_probability(
        model, prepared.image, roi_size_vox, overlap, sw_batch_size, context_scale, select, progress
    )
    if mask is not None:
        prob[~mask] = 0.0
    timings["sliding_window"] = time.perf_counter() - start
    start = time.perf_counter()
    scored = has_candidate_head(model)
    labels, instances = extract_instances(
        prob, prepared, threshold, min_volume_mm3, guard, candidate_floor if scored else None
    )
    timings["components"] = time.perf_counter() - start
    if scored:
        sides = {int(v) for v in np.broadcast_to(np.asarray(roi_size_vox), (3,))}
        if len(sides) != 1:
            raise ValueError(
                f"roi_size_vox={roi_size_vox!r}: the candidate score needs cubic crops"
            )
        start = time.perf_counter()
        labels, instances = score_candidates(
            model, prepared, labels, instances, sides.pop(), context_scale, sw_batch_size,
            tta_top_k,
        )  # fmt: skip
        timings["candidate_score"] = time.perf_counter() - start
    return ScanSegmentation(prob, labels, instances, prepared, n_total, n_run, timings)
