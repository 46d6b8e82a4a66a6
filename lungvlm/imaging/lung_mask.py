"""Classical lung segmentation of a chest CT in HU: threshold, drop outside air, keep the lungs.

Steps (project convention; a classical pipeline, not a validated clinical segmenter):

1. air-like voxels: ``image_hu < threshold_hu`` (default -320 HU, between lung parenchyma at
   about -850 HU and soft tissue/fat at about -100 to +80 HU, ``reference/dicom-ct.md``);
2. 3-D connected components (26-connectivity); components touching the **side faces** of the
   volume (first/last row or column) are outside air and are removed. The top and bottom
   slices are not used as "outside": a chest CT routinely cuts through the lungs there;
3. the two largest remaining components are the lungs; the second is dropped when it holds
   less than ``second_lung_min_fraction`` of the largest (the lungs touch and form one
   component, and the second largest is then bowel gas or noise);
4. holes are filled slice by slice (vessels and nodules inside the lung become lung);
5. a morphological closing with a ball of ``closing_radius_mm`` smooths the boundary and pulls
   juxtapleural nodules in; holes are filled again per slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

#: Air-like threshold (HU): lung parenchyma lies below it, soft tissue and fat above.
LUNG_THRESHOLD_HU: float = -320.0


def _ball(radius_mm: float, spacing_mm: Sequence[float]) -> NDArray[np.bool_]:
    """Ellipsoidal structuring element of physical radius ``radius_mm`` on a (z, y, x) grid."""
    half = [max(0, int(math.floor(radius_mm / s))) for s in spacing_mm]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, spacing_mm, strict=True))
    return dist2 <= radius_mm**2 + 1e-9


def _fill_holes_per_slice(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        out[k] = ndimage.binary_fill_holes(mask[k])
    return out


def lung_mask(
    image_hu: ArrayLike,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    threshold_hu: float = LUNG_THRESHOLD_HU,
    closing_radius_mm: float = 2.0,
    second_lung_min_fraction: float = 0.1,
) -> NDArray[np.bool_]:
    """Segment the lungs of a chest CT (see the module docstring for the steps).

    Args:
        image_hu: CT volume (z, y, x) in HU.
        spacing_mm: voxel size (z, y, x) in mm, used for the closing ball.
        threshold_hu: voxels below this value (HU) are air-like.
        closing_radius_mm: radius of the closing ball in mm; 0 disables the closing.
        second_lung_min_fraction: the second largest component is kept as a lung only when
            its voxel count is at least this fraction of the largest's.

    Returns:
        Boolean lung mask (z, y, x); all False when no air-like component stays inside the body.

    Raises:
        ValueError: a non-3-D image, bad spacing, a non-finite threshold, a negative radius or
            a fraction outside [0, 1].
    """
    image = np.asarray(image_hu)
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"image_hu must be a non-empty 3-D (z, y, x) array, got {image.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be 3 positive (z, y, x) values in mm, got {spacing_mm}")
    if not math.isfinite(threshold_hu):
        raise ValueError(f"threshold_hu must be a finite HU value, got {threshold_hu}")
    if not (math.isfinite(closing_radius_mm) and closing_radius_mm >= 0):
        raise ValueError(f"closing_radius_mm must be >= 0 mm, got {closing_radius_mm}")
    if not 0.0 <= second_lung_min_fraction <= 1.0:
        raise ValueError(
            f"second_lung_min_fraction must be in [0, 1], got {second_lung_min_fraction}"
        )
    air = image < threshold_hu
    labels, count = ndimage.label(air, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return np.zeros(image.shape, dtype=bool)
    sides = np.concatenate(
        [labels[:, 0, :].ravel(), labels[:, -1, :].ravel()]
        + [labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]
    )
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    sizes[np.unique(sides)] = 0  # outside air (and anything joined to it)
    order = np.argsort(sizes)[::-1]
    if sizes[order[0]] == 0:
        return np.zeros(image.shape, dtype=bool)
    keep = [order[0]]
    if count > 1 and sizes[order[1]] > 0:
        if sizes[order[1]] >= second_lung_min_fraction * sizes[order[0]]:
            keep.append(order[1])
    mask = _fill_holes_per_slice(np.isin(labels, keep))
    if closing_radius_mm > 0:
        ball = _ball(closing_radius_mm, spacing)
        pad = [(h, h) for h in (s // 2 for s in ball.shape)]
        # Pad so the closing is not clipped by the volume edge, then crop back.
        closed = ndimage.binary_closing(np.pad(mask, pad), structure=ball)
        mask = closed[tuple(slice(p, p + n) for (p, _), n in zip(pad, image.shape, strict=True))]
        mask = _fill_holes_per_slice(mask)
    return mask


def bounding_box(
    mask: ArrayLike, margin_vox: Sequence[int] = (0, 0, 0)
) -> tuple[slice, slice, slice] | None:
    """Tight (z, y, x) bounding box of a mask, grown by ``margin_vox`` and clipped to the array.

    Returns:
        Three slices, or None when the mask is empty.
    """
    array = np.asarray(mask, dtype=bool)
    if array.ndim != 3:
        raise ValueError(f"mask must be 3-D (z, y, x), got shape {array.shape}")
    if len(margin_vox) != 3 or any(int(m) < 0 for m in margin_vox):
        raise ValueError(f"margin_vox must be 3 non-negative voxel counts, got {margin_vox}")
    if not array.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(array.any(axis=other))
        lo = max(0, int(idx[0]) - int(margin_vox[axis]))
        hi = min(array.shape[axis], int(idx[-1]) + 1 + int(margin_vox[axis]))
        box.append(slice(lo, hi))
    return tuple(box)  # type: ignore[return-value]
