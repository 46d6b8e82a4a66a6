"""The operating point of a whole-scan detection evaluation and its scanner-profile subsets.

Conventions in :mod:`lungvlm.evaluation.detection` (module docstring): candidates are LUNA16
hits within half the reference diameter; the operating point keeps the candidates scoring at or
above the checkpoint's calibrated candidate threshold (every instance when there is none);
the large-nodule sensitivity counts reference nodules whose mean diameter, rounded to 0.1 mm
as Lung-RADS reports it, is >= :data:`LARGE_NODULE_MIN_MM`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from lungvlm.clinical.lungrads import round_diameter_mm
from lungvlm.evaluation.subsets import SUBSETS, difference_points, split_by_profile
from lungvlm.metrics.froc import froc

if TYPE_CHECKING:
    from lungvlm.evaluation.detection import ScanEvaluation

#: Lower bound (mm) of the large-nodule sensitivity at the operating point.
LARGE_NODULE_MIN_MM: float = 6.0
#: LUNA16 FROC points as summary keys ("0.125" ... "8.0").
FROC_KEYS: tuple[str, ...] = ("0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0")


def candidate_hits(
    candidates: Sequence[Sequence[float]], references: Sequence[Sequence[float]]
) -> NDArray[np.bool_]:
    """LUNA16 hit matrix: entry (i, j) is True when candidate i, ``(x, y, z, score)`` in world
    mm, lies closer than half its diameter to reference j, ``(x, y, z, diameter_mm)``.

    Returns:
        bool (n_candidates, n_references).
    """
    hits = np.zeros((len(candidates), len(references)), dtype=bool)
    if len(candidates) and len(references):
        cand = np.asarray(candidates, dtype=np.float64)[:, None, :3]
        ref = np.asarray(references, dtype=np.float64)
        dist2 = ((cand - ref[None, :, :3]) ** 2).sum(-1)
        hits = dist2 < (ref[None, :, 3] / 2.0) ** 2
    return hits


def scan_operating_point(
    scan: ScanEvaluation, candidate_threshold: float | None = None
) -> tuple[list[bool], int]:
    """Per reference nodule whether it is hit, and the false-positive count, counting only the
    candidates scoring ``>= candidate_threshold`` (every candidate when None)."""
    kept = [
        c for c in scan.candidates if candidate_threshold is None or c[3] >= candidate_threshold
    ]
    hits = candidate_hits(kept, scan.references)
    return hits.any(axis=0).tolist(), int((~hits.any(axis=1)).sum())


def operating_point(
    scans: Sequence[ScanEvaluation],
    candidate_threshold: float | None = None,
    min_diameter_mm: float = LARGE_NODULE_MIN_MM,
) -> dict:
    """Sensitivity (all and >= ``min_diameter_mm``) and FPs per scan at the operating point.

    Args:
        scans: per-scan evaluations.
        candidate_threshold: keep candidates whose ranking score is ``>=`` it; None keeps every
            instance (all lie above the segmentation probability threshold).
        min_diameter_mm: bound of the large-nodule sensitivity, on the reference diameter
            rounded to 0.1 mm.

    Returns:
        ``n_scans``, ``n_nodules``, ``n_detected``, ``sensitivity``, ``n_false_positives``,
        ``fps_per_scan``, ``n_nodules_ge_6mm``, ``n_detected_ge_6mm``, ``sensitivity_ge_6mm``
        (the 6 mm keys name :data:`LARGE_NODULE_MIN_MM`; None where undefined).
    """
    found, large, n_fp = [], [], 0
    for scan in scans:
        detected, fps = scan_operating_point(scan, candidate_threshold)
        n_fp += fps
        found += detected
        large += [
            hit
            for hit, ref in zip(detected, scan.references, strict=True)
            if round_diameter_mm(ref[3]) >= min_diameter_mm
        ]
    return {
        "n_scans": len(scans),
        "n_nodules": len(found),
        "n_detected": int(sum(found)),
        "sensitivity": float(np.mean(found)) if found else None,
        "n_false_positives": n_fp,
        "fps_per_scan": n_fp / len(scans) if scans else None,
        "n_nodules_ge_6mm": len(large),
        "n_detected_ge_6mm": int(sum(large)),
        "sensitivity_ge_6mm": float(np.mean(large)) if large else None,
    }


def detection_figures(
    scans: Sequence[ScanEvaluation], candidate_threshold: float | None = None
) -> dict:
    """CPM, FROC sensitivities at :data:`FROC_KEYS` FPs/scan and the :func:`operating_point`
    figures of a set of scans (the FROC figures are None without reference nodules)."""
    references = [(s.scan_id, *r) for s in scans for r in s.references]
    result = None
    if references:
        candidates = [(s.scan_id, *c) for s in scans for c in s.candidates]
        result = froc(candidates, references, scan_ids=[s.scan_id for s in scans])
    at = {} if result is None else {str(k): v for k, v in result.sensitivities_at_points.items()}
    return {
        "cpm": None if result is None else result.cpm,
        **{f"sensitivity_at_{k}_fps": at.get(k) for k in FROC_KEYS},
        **operating_point(scans, candidate_threshold),
    }


def subset_summary(
    scans: Sequence[ScanEvaluation], candidate_threshold: float | None = None
) -> dict:
    """:func:`detection_figures` on all scans, the thick-slice low-dose ones and the rest, and
    the subset's difference from the rest in percentage points
    (:func:`lungvlm.evaluation.subsets.difference_points`)."""
    groups = split_by_profile(list(scans), lambda s: s.profile)
    out = {name: detection_figures(groups[name], candidate_threshold) for name in SUBSETS}
    keys = ["cpm", *(f"sensitivity_at_{k}_fps" for k in FROC_KEYS), "sensitivity",
            "sensitivity_ge_6mm"]  # fmt: skip
    out["thick_low_dose_minus_rest"] = difference_points(out["thick_low_dose"], out["rest"], keys)
    return out
