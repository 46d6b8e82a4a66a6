"""Hounsfield-unit constants, display windowing and the one named HU normalisation.

Typical values come from the HU table of ``reference/dicom-ct.md`` (Hounsfield scale; radclass,
radgray, uvm.edu; Siegelman, AJR 1980; PMC8184508, PMC3388248). Ranges differ between sources,
so every constant except air and water (which define the scale) is an approximate, typical value,
not a threshold to classify tissue with.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Air, -1000 HU by definition of the Hounsfield scale.
HU_AIR: float = -1000.0
#: Water, 0 HU by definition of the Hounsfield scale.
HU_WATER: float = 0.0
#: Lung parenchyma in inspiration (about -850 to -910 HU; other sources give -500 to -950 HU).
HU_LUNG: float = -850.0
#: Fat (about -50 to -100 HU).
HU_FAT: float = -100.0
#: Soft tissue (about +20 to +80 HU); the middle of that range.
HU_SOFT_TISSUE: float = 50.0
#: Blood (about +45 to +65 HU); the middle of that range.
HU_BLOOD: float = 55.0
#: Ground-glass nodule: the middle of the reported -800 to -600 HU; there is no standard range.
HU_GROUND_GLASS: float = -700.0
#: Solid nodule: mean of primary malignancies, 92 +/- 18 HU (Siegelman, AJR 1980).
HU_SOLID_NODULE: float = 92.0
#: Calcified nodule: benign nodules were often >= 164 HU "representative CT number" (Siegelman 1980).
HU_CALCIFIED_NODULE: float = 164.0
#: Trabecular bone (about +300 HU).
HU_BONE_TRABECULAR: float = 300.0
#: Cortical bone (about +1000 HU and above, 700-3000 HU).
HU_BONE_CORTICAL: float = 1000.0

#: Lung display window as (center_hu, width_hu) = (-600, 1500), i.e. -1350 .. +150 HU.
#: A common display convention (DICOM WindowCenter/WindowWidth are display-only), not a
#: clinical standard; Lung-RADS only asks that nodules be measured "on lung windows".
LUNG_WINDOW: tuple[float, float] = (-600.0, 1500.0)

#: Default clip range (hu_min, hu_max) of :func:`normalize_hu`: air up to dense soft tissue /
#: trabecular bone. A project choice; the values used are saved with each checkpoint.
DEFAULT_NORMALIZATION_RANGE_HU: tuple[float, float] = (-1000.0, 400.0)


def default_normalization() -> dict[str, float]:
    """``{"hu_min": ..., "hu_max": ...}`` of :data:`DEFAULT_NORMALIZATION_RANGE_HU` (a new dict)."""
    hu_min, hu_max = DEFAULT_NORMALIZATION_RANGE_HU
    return {"hu_min": hu_min, "hu_max": hu_max}


def _check_range(lower_name: str, lower: float, upper_name: str, upper: float) -> None:
    if not (math.isfinite(lower) and math.isfinite(upper)):
        raise ValueError(
            f"{lower_name}={lower!r} and {upper_name}={upper!r} must be finite numbers (HU)"
        )
    if upper <= lower:
        raise ValueError(f"{upper_name}={upper!r} must be greater than {lower_name}={lower!r} (HU)")


def window_hu(image_hu: ArrayLike, center_hu: float, width_hu: float) -> NDArray[np.float32]:
    """Map HU to display intensities in [0, 1] with a linear window.

    Values at or below ``center_hu - width_hu / 2`` map to 0 and values at or above
    ``center_hu + width_hu / 2`` to 1 (a plain linear window, as DICOM WindowCenter /
    WindowWidth are used for display; see ``reference/dicom-ct.md``). For the lung window
    pass ``*LUNG_WINDOW``.

    Args:
        image_hu: Image in Hounsfield units, any shape, e.g. (z, y, x).
        center_hu: Window centre (HU).
        width_hu: Window width (HU), > 0.

    Returns:
        float32 array of the same shape with values in [0, 1].

    Raises:
        ValueError: if ``width_hu`` is not a positive finite number or ``center_hu`` is not finite.
    """
    if not math.isfinite(center_hu):
        raise ValueError(f"center_hu={center_hu!r} must be a finite number (HU)")
    if not (math.isfinite(width_hu) and width_hu > 0):
        raise ValueError(f"width_hu={width_hu!r} must be a positive finite number (HU)")
    lower_hu = center_hu - width_hu / 2.0
    return normalize_hu(image_hu, hu_min=lower_hu, hu_max=lower_hu + width_hu)


def normalize_hu(
    image_hu: ArrayLike,
    hu_min: float = DEFAULT_NORMALIZATION_RANGE_HU[0],
    hu_max: float = DEFAULT_NORMALIZATION_RANGE_HU[1],
) -> NDArray[np.float32]:
    """Clip HU to [hu_min, hu_max] and scale linearly to [0, 1].

    This is the project's one named normalisation step (DESIGN.md): ``hu_min`` and ``hu_max``
    are saved with each checkpoint so inference normalises exactly as training did. It equals
    MONAI ``ScaleIntensityRange(a_min=hu_min, a_max=hu_max, b_min=0, b_max=1, clip=True)``.

    Args:
        image_hu: Image in Hounsfield units, any shape, e.g. (z, y, x).
        hu_min: Lower clip bound (HU), maps to 0.
        hu_max: Upper clip bound (HU), maps to 1; must exceed ``hu_min``.

    Returns:
        float32 array of the same shape with values in [0, 1].

    Raises:
        ValueError: if the bounds are not finite or ``hu_max <= hu_min``.
    """
    _check_range("hu_min", hu_min, "hu_max", hu_max)
    image = np.asarray(image_hu, dtype=np.float64)
    scaled = (np.clip(image, hu_min, hu_max) - hu_min) / (hu_max - hu_min)
    return scaled.astype(np.float32)


def denormalize_hu(
    image_norm: ArrayLike,
    hu_min: float = DEFAULT_NORMALIZATION_RANGE_HU[0],
    hu_max: float = DEFAULT_NORMALIZATION_RANGE_HU[1],
) -> NDArray[np.float32]:
    """Invert :func:`normalize_hu`: map [0, 1] back to HU in [hu_min, hu_max].

    Values clipped by :func:`normalize_hu` cannot be recovered; they come back as the bound.

    Args:
        image_norm: Normalised image, any shape.
        hu_min: The ``hu_min`` used to normalise (HU).
        hu_max: The ``hu_max`` used to normalise (HU).

    Returns:
        float32 array in Hounsfield units.

    Raises:
        ValueError: if the bounds are not finite or ``hu_max <= hu_min``.
    """
    _check_range("hu_min", hu_min, "hu_max", hu_max)
    image = np.asarray(image_norm, dtype=np.float64)
    return (image * (hu_max - hu_min) + hu_min).astype(np.float32)
