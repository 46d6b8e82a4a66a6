"""Quantitative emphysema: %LAA-950 (low-attenuation area) on inspiratory CT.

Source: ``reference/dicom-ct.md`` and ``reference/report-language.md`` (PMC4161463: emphysema as
voxels <= -950 HU on inspiratory CT; one study defines quantitative emphysema as >= 5 %; report
the value rather than a label). Visual grading follows the Fleischner Society COPD statement
(Lynch et al., Radiology 2015), which this module does not attempt.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

#: Voxels at or below this value count as low-attenuation (emphysema) area (HU).
EMPHYSEMA_LAA_THRESHOLD_HU: float = -950.0

#: Upper bounds (%, exclusive) of the display words of :func:`emphysema_severity`:
#: "none" < 5 <= "mild" < 15 <= "moderate" < 25 <= "severe". Project display convention.
EMPHYSEMA_SEVERITY_BOUNDS_PERCENT: tuple[tuple[str, float], ...] = (
    ("none", 5.0),
    ("mild", 15.0),
    ("moderate", 25.0),
)


def laa950_percent(image_hu: ArrayLike, lung_mask: ArrayLike) -> float:
    """Percentage of lung voxels at or below -950 HU (%LAA-950, PMC4161463).

    Meaningful on inspiratory CT in HU (not normalised intensities); the lung mask should
    exclude airways and vessels as far as the segmentation allows.

    Args:
        image_hu: CT image in HU, (z, y, x).
        lung_mask: Binary lung mask of the same shape; non-zero is lung.

    Returns:
        %LAA-950 in [0, 100].

    Raises:
        ValueError: if the shapes differ or ``lung_mask`` has no voxel.
    """
    image = np.asarray(image_hu)
    mask = np.asarray(lung_mask).astype(bool)
    if image.shape != mask.shape:
        raise ValueError(
            f"image_hu has shape {image.shape} but lung_mask has shape {mask.shape}; expected equal"
        )
    lung_voxels = int(mask.sum())
    if lung_voxels == 0:
        raise ValueError("lung_mask is empty (no lung voxel); expected at least one voxel")
    low = int(np.count_nonzero(image[mask] <= EMPHYSEMA_LAA_THRESHOLD_HU))
    return 100.0 * low / lung_voxels


def emphysema_severity(laa_percent: float) -> str:
    """Word for a %LAA-950 value: "none", "mild", "moderate" or "severe".

    Project display convention, NOT a clinical standard: "none" < 5 %, "mild" 5 to <15 %,
    "moderate" 15 to <25 %, "severe" >= 25 %. Only the 5 % cut-off comes from the literature
    (one study's definition of quantitative emphysema, ``reference/report-language.md``), which
    also advises reporting the value rather than the label; reports should give the percentage
    alongside the word. Visual Fleischner grades (trace ... advanced destructive) are different.

    Raises:
        ValueError: if ``laa_percent`` is not a finite number in [0, 100].
    """
    if not (math.isfinite(laa_percent) and 0.0 <= laa_percent <= 100.0):
        raise ValueError(f"laa_percent={laa_percent!r} must be a finite percentage in [0, 100]")
    for word, upper_percent in EMPHYSEMA_SEVERITY_BOUNDS_PERCENT:
        if laa_percent < upper_percent:
            return word
    return "severe"
