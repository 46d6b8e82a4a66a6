"""Group LIDC readers' annotations into nodules, build consensus masks, aggregate ratings.

Follows the description of pylidc's ``cluster_annotations`` and ``consensus`` in lidc-idri.md
("pylidc algorithms"), with the differences stated in each docstring. Malignancy labels are not
standardised (lidc-idri.md, "Common conventions"): ``binarize_malignancy`` offers the public
variants and each caller must record which one it used.
"""

from __future__ import annotations

import difflib
import statistics
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from data_modules.io.errors import AnnotationError, ClusterError
from data_modules.io.lidc_xml import ReaderNodule, roi_slice_index
from lungvlm.imaging.volume import CTVolume

MAX_ANNOTATIONS_PER_NODULE = 4  # four readers: a larger cluster merged two nodules
MALIGNANCY_RULES = ("mean_gt3", "mean_le2_ge4", "median_high")


def _contour_points_mm(nodule: ReaderNodule, volume: CTVolume) -> NDArray[np.float64]:
    """All contour points of one annotation as world (x, y, z) mm, plus their slice index."""
    zyx = [
        np.column_stack(
            [
                np.full(
                    len(roi.xy), roi_slice_index(roi.z_mm, roi.sop_uid, volume, nodule.source_path)
                ),
                roi.xy[:, 1],
                roi.xy[:, 0],
            ]
        )
        for roi in nodule.rois
        if len(roi.xy)
    ]
    if not zyx:
        raise AnnotationError(
            f"{nodule.source_path}: nodule {nodule.nodule_id!r} of reader {nodule.reader_index} "
            "has no contour points",
            nodule.source_path,
        )
    return np.concatenate(zyx).astype(np.float64)


def cluster_annotations(
    nodules: Sequence[ReaderNodule],
    volume: CTVolume,
    tol_mm: float | None = None,
    factor: float = 0.9,
    min_tol_mm: float = 0.1,
) -> list[list[ReaderNodule]]:
    """Group annotations of several readers into physical nodules.

    Two annotations are adjacent when the minimum distance between their contour points is
    <= ``tol_mm``; clusters are the connected components. While a cluster has more than four
    annotations, the tolerance is multiplied by ``factor``. This is pylidc's ``metric='min'``
    algorithm, with one deliberate difference: distances are measured in **world mm** (contour
    points mapped through the volume's geometry), whereas pylidc measures them in (i, j, k)
    index units and compares them with SliceThickness in mm. Here tolerance and distance share a
    unit, so anisotropic voxels do not distort the grouping.

    Args:
        nodules: annotations of one series (typically those with ``has_complete_ratings``).
        volume: the series, to place each roi on its slice and in mm.
        tol_mm: adjacency distance in mm; default SliceThickness from the metadata (pylidc's
            default value), else the slice spacing.
        factor: shrink factor applied while some cluster holds more than four annotations.
        min_tol_mm: the tolerance below which grouping gives up.

    Returns:
        Clusters sorted by the mean slice index of their contour points; within a cluster the
        input order is kept.

    Raises:
        ClusterError: the tolerance fell below ``min_tol_mm`` with a cluster still over four.
        AnnotationError: an annotation with no contour point or an roi matching no slice.
    """
    if not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1), got {factor}")
    if not nodules:
        return []
    tol = tol_mm or volume.metadata.get("slice_thickness_mm") or volume.spacing_mm[0]
    if tol <= 0:
        raise ValueError(f"tol_mm must be positive, got {tol}")
    zyx = [_contour_points_mm(n, volume) for n in nodules]
    xyz = [volume.voxel_to_world(p) for p in zyx]
    count = len(nodules)
    dist = np.zeros((count, count))
    for i in range(count):
        for j in range(i + 1, count):
            dist[i, j] = dist[j, i] = cdist(xyz[i], xyz[j]).min()
    while True:
        n_comp, labels = connected_components(dist <= tol, directed=False)
        if np.bincount(labels).max() <= MAX_ANNOTATIONS_PER_NODULE:
            break
        tol *= factor
        if tol < min_tol_mm:
            source = nodules[0].source_path
            raise ClusterError(
                f"{source}: a cluster still holds more than {MAX_ANNOTATIONS_PER_NODULE} "
                f"annotations at tolerance {tol:.3f} mm < min_tol_mm {min_tol_mm}",
                source,
            )
    mean_k = [
        np.mean(np.concatenate([zyx[i][:, 0] for i in np.flatnonzero(labels == c)]))
        for c in range(n_comp)
    ]
    order = sorted(range(n_comp), key=lambda c: (mean_k[c], np.flatnonzero(labels == c)[0]))
    return [[nodules[i] for i in np.flatnonzero(labels == c)] for c in order]


def consensus_mask(masks: Sequence[NDArray[np.bool_]], level: float = 0.5) -> NDArray[np.bool_]:
    """Voxels included by at least ``level`` of the masks (pylidc ``consensus``, clevel=0.5).

    Args:
        masks: one boolean (z, y, x) mask per annotation of a cluster, all the same shape.
        level: fraction in (0, 1]; a voxel is in when ``mean(masks) >= level``.
    """
    if not masks:
        raise ValueError("masks must hold at least one mask, got an empty sequence")
    if not 0 < level <= 1:
        raise ValueError(f"level must be in (0, 1], got {level}")
    shapes = {np.shape(m) for m in masks}
    if len(shapes) != 1:
        raise ValueError(f"masks must share one shape, got {sorted(shapes)}")
    return np.mean(np.stack([np.asarray(m, dtype=bool) for m in masks]), axis=0) >= level


def aggregate_ratings(
    characteristics: Sequence[Mapping[str, int] | None],
) -> dict[str, dict[str, float]]:
    """Summarise the readers' ratings of one nodule, per characteristic.

    ``None`` entries (readers without ratings) and 0 values (blank, as pylidc treats them) are
    skipped. Ratings are ordinal scales (lidc-idri.md, "Characteristics"); the mean is given
    because public labels use it, not because the scales are interval.

    Returns:
        name -> {"mean", "median", "median_high", "n"}; a name with no rating is absent.
    """
    values: dict[str, list[int]] = {}
    for chars in characteristics:
        for name, value in (chars or {}).items():
            if value:
                values.setdefault(name, []).append(int(value))
    return {
        name: {
            "mean": float(np.mean(v)),
            "median": float(np.median(v)),
            "median_high": float(statistics.median_high(v)),
            "n": float(len(v)),
        }
        for name, v in values.items()
    }


def binarize_malignancy(ratings: Sequence[int], rule: str = "mean_gt3") -> int | None:
    """Turn one nodule's malignancy ratings (1-5) into 1 (malignant), 0 (benign) or None.

    Rules (public variants from lidc-idri.md; none is authoritative, record the one used):
        ``"mean_gt3"``: mean > 3 -> 1, mean < 3 -> 0, mean == 3 -> None (dropped).
        ``"mean_le2_ge4"``: mean <= 2 -> 0, mean >= 4 -> 1, otherwise None.
        ``"median_high"``: the higher median of the ratings (``statistics.median_high``) with
            the same thresholds as ``mean_gt3``; that threshold is this project's choice.

    Raises:
        ValueError: an empty list, a rating outside 1-5, or an unknown rule.
    """
    if rule not in MALIGNANCY_RULES:
        close = difflib.get_close_matches(rule, MALIGNANCY_RULES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"rule must be one of {MALIGNANCY_RULES}, got {rule!r}{hint}")
    if len(ratings) == 0 or any(int(r) != r or not 1 <= r <= 5 for r in ratings):
        raise ValueError(f"ratings must be a non-empty list of integers 1-5, got {list(ratings)}")
    if rule == "mean_le2_ge4":
        mean = float(np.mean(ratings))
        return 0 if mean <= 2 else 1 if mean >= 4 else None
    score = float(np.mean(ratings)) if rule == "mean_gt3" else statistics.median_high(ratings)
    return 1 if score > 3 else 0 if score < 3 else None
