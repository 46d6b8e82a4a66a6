"""Limits of one whole-scan run: a memory budget before resampling, plausibility after segmenting.

A checkpoint that is under-trained, or was trained on other data, can segment much of a chest:
then every connected component becomes a candidate that the candidate head, the nodule heads
and the report decoder each process in turn (minutes to hours, with no output), and the report
confidently describes a "nodule" of several litres. An :class:`InferenceGuard` stops such a run
right after the segmentation, before any per-candidate work, with an error that says what was
found and how to go on anyway. Its limits (project choices, each a module constant):

- :data:`DEFAULT_MAX_CANDIDATES` = 500 connected components on one scan: five times the 100 CAD
  marks per scan that the LUNA16 evaluation keeps (``reference/luna16.md``), whose FROC runs
  from 1/8 to 8 false positives per scan;
- :data:`MAX_FINDING_DIAMETER_MM` = 100 mm mean diameter: a pulmonary nodule is at most 30 mm
  (``reference/report-language.md``); larger lesions are masses, which are real and can reach
  several centimetres, so the limit is over three times the nodule limit, while a segmentation
  of a whole lung measures 200 mm or more;
- :data:`MAX_FINDING_VOLUME_MM3`: the volume of a sphere of that diameter (0.52 litres).

Before resampling, :meth:`InferenceGuard.check_memory` compares the memory the run would need
(:func:`estimate_memory_gib`) with a budget, :data:`DEFAULT_MAX_MEMORY_GIB`, so that a scan
whose resampled grid would be enormous fails with a number instead of an allocation error.

Each check raises a :class:`GuardError` (a ``ValueError``); the message names the flag of
``lungvlm report`` / ``predict`` that goes on anyway. The checks are pure (no I/O, no model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Most connected components a whole chest CT plausibly yields (module docstring).
DEFAULT_MAX_CANDIDATES = 500
#: Largest plausible mean diameter (mm) of one finding (module docstring).
MAX_FINDING_DIAMETER_MM = 100.0
#: Largest plausible volume (mm³) of one finding: a sphere of :data:`MAX_FINDING_DIAMETER_MM`.
MAX_FINDING_VOLUME_MM3 = math.pi / 6.0 * MAX_FINDING_DIAMETER_MM**3
#: Default memory budget (GiB) of one report run; a thin-slice chest (600 x 512 x 512 voxels of
#: 0.625 x 0.7 x 0.7 mm) at 1 mm needs about 5 GiB by :func:`estimate_memory_gib`.
DEFAULT_MAX_MEMORY_GIB = 16.0
#: Bytes held per voxel of the resampled (prepared) grid at the peak of a report run: the
#: resampled and normalised images (2 x 4 B), MONAI's two-channel sum and its count map
#: (3 x 4 B), the probability and its division temporaries (2 x 4 B), the instance labels and
#: the component labelling (2 x 4 B), the padded window input (4 B) and the dilated lung mask.
BYTES_PER_PREPARED_VOXEL = 40
#: Bytes held per voxel of the original grid: the HU volume (4 B), the lung mask and its
#: labelling (about 6 B), and the label and probability maps resampled back for export (8 B).
BYTES_PER_ORIGINAL_VOXEL = 18
_GIB = float(1 << 30)
MM3_PER_LITRE = 1e6


class GuardError(ValueError):
    """A run stopped by an :class:`InferenceGuard` limit (the message says which and why)."""


class RunawayInferenceError(GuardError):
    """The segmentation found more candidates, or a larger one, than a chest plausibly holds."""


class MemoryBudgetError(GuardError):
    """The resampled scan would need more memory than the budget allows."""


def prepared_shape(
    shape_zyx: Sequence[int], spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]
) -> tuple[int, int, int]:
    """Voxel counts (z, y, x) of a scan resampled to ``target_spacing_mm`` (as
    :func:`lungvlm.inference.scan.prepare_scan` rounds them)."""
    return tuple(  # type: ignore[return-value]
        max(1, round(n * s / t))
        for n, s, t in zip(shape_zyx, spacing_mm, target_spacing_mm, strict=True)
    )


def estimate_memory_gib(
    shape_zyx: Sequence[int], spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]
) -> float:
    """Memory (GiB) a report run holds at its peak for a scan of this size (an estimate).

    Args:
        shape_zyx: voxel counts (z, y, x) of the scan as read.
        spacing_mm: its voxel size (z, y, x) in mm.
        target_spacing_mm: the model's voxel size (z, y, x) in mm.

    Returns:
        ``(original voxels x BYTES_PER_ORIGINAL_VOXEL + resampled voxels x
        BYTES_PER_PREPARED_VOXEL) / 2**30``.
    """
    original = math.prod(int(n) for n in shape_zyx)
    prepared = math.prod(prepared_shape(shape_zyx, spacing_mm, target_spacing_mm))
    return (original * BYTES_PER_ORIGINAL_VOXEL + prepared * BYTES_PER_PREPARED_VOXEL) / _GIB


def _positive_or_none(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} must be a positive number or None (no limit)")


@dataclass(frozen=True)
class InferenceGuard:
    """The limits of one whole-scan run; a limit of None is not checked.

    Attributes:
        max_candidates: most connected components of the segmentation (``--max-candidates``).
        max_diameter_mm: largest mean diameter (mm) of one component.
        max_volume_mm3: largest volume (mm³) of one component.
        max_memory_gib: memory budget (GiB) of the run (``--max-memory-gb``).
    """

    max_candidates: int | None = DEFAULT_MAX_CANDIDATES
    max_diameter_mm: float | None = MAX_FINDING_DIAMETER_MM
    max_volume_mm3: float | None = MAX_FINDING_VOLUME_MM3
    max_memory_gib: float | None = DEFAULT_MAX_MEMORY_GIB

    def __post_init__(self) -> None:
        if self.max_candidates is not None and (
            isinstance(self.max_candidates, bool)
            or not isinstance(self.max_candidates, int)
            or self.max_candidates < 1
        ):
            raise ValueError(f"max_candidates={self.max_candidates!r} must be an int >= 1 or None")
        _positive_or_none("max_diameter_mm", self.max_diameter_mm)
        _positive_or_none("max_volume_mm3", self.max_volume_mm3)
        _positive_or_none("max_memory_gib", self.max_memory_gib)

    @classmethod
    def memory_only(cls, max_memory_gib: float | None = DEFAULT_MAX_MEMORY_GIB) -> InferenceGuard:
        """No plausibility limit (``--no-guard``), only the memory budget."""
        return cls(None, None, None, max_memory_gib)

    def check_memory(
        self,
        shape_zyx: Sequence[int],
        spacing_mm: Sequence[float],
        target_spacing_mm: Sequence[float],
    ) -> None:
        """Refuse a scan whose run would exceed :attr:`max_memory_gib` (before resampling).

        Raises:
            MemoryBudgetError: the estimate (:func:`estimate_memory_gib`) is over the budget.
        """
        if self.max_memory_gib is None:
            return
        need = estimate_memory_gib(shape_zyx, spacing_mm, target_spacing_mm)
        if need > self.max_memory_gib:
            grid = " x ".join(
                str(n) for n in prepared_shape(shape_zyx, spacing_mm, target_spacing_mm)
            )
            original = " x ".join(str(int(n)) for n in shape_zyx)
            raise MemoryBudgetError(
                f"the scan ({original} voxels of {_mm(spacing_mm)} mm) resampled to the model's "
                f"{_mm(target_spacing_mm)} mm is a {grid} grid; the run would need about "
                f"{need:.3g} GiB, over the memory budget of {self.max_memory_gib:g} GiB; raise "
                "it with --max-memory-gb if the machine has the memory"
            )

    def check_count(self, n_candidates: int) -> None:
        """Refuse more connected components than :attr:`max_candidates` (before scoring them).

        Raises:
            RunawayInferenceError: ``n_candidates > max_candidates``.
        """
        if self.max_candidates is not None and n_candidates > self.max_candidates:
            raise RunawayInferenceError(
                f"the segmentation found {n_candidates} candidate components, more than the "
                f"{self.max_candidates} a chest CT plausibly holds: the checkpoint fires on much "
                "of the scan (under-trained, or trained on other data); stopped before scoring "
                "and describing them. Pass --no-guard (or a larger --max-candidates) to go on"
            )

    def check_sizes(self, mean_diameters_mm: Sequence[float], volumes_mm3: Sequence[float]) -> None:
        """Refuse a component larger than :attr:`max_diameter_mm` or :attr:`max_volume_mm3`.

        Args:
            mean_diameters_mm: mean diameter (mm) of each component.
            volumes_mm3: volume (mm³) of each component, same order.

        Raises:
            RunawayInferenceError: one component is over a limit (the message gives the
                largest one and how many are over).
        """
        if len(mean_diameters_mm) != len(volumes_mm3):
            raise ValueError(
                f"{len(mean_diameters_mm)} diameters but {len(volumes_mm3)} volumes; one each"
            )
        max_d = math.inf if self.max_diameter_mm is None else self.max_diameter_mm
        max_v = math.inf if self.max_volume_mm3 is None else self.max_volume_mm3
        over = [
            i for i, (d, v) in enumerate(zip(mean_diameters_mm, volumes_mm3, strict=True))
            if d > max_d or v > max_v
        ]  # fmt: skip
        if not over:
            return
        worst = max(over, key=lambda i: volumes_mm3[i])
        litres = None if self.max_volume_mm3 is None else self.max_volume_mm3 / MM3_PER_LITRE
        raise RunawayInferenceError(
            f"{len(over)} of {len(volumes_mm3)} segmented component(s) are larger than any chest "
            f"finding: the largest measures {mean_diameters_mm[worst]:.1f} mm mean diameter and "
            f"{volumes_mm3[worst] / MM3_PER_LITRE:.3g} litres (limits "
            f"{_limit(self.max_diameter_mm, 'mm')} and {_limit(litres, 'litres')}; "
            "a nodule is at most 30 mm): the checkpoint segments whole organs (under-trained, or "
            "trained on other data); stopped before the nodule heads and the report. Pass "
            "--no-guard to go on"
        )


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{float(v):.4g}" for v in values)


def _limit(value: float | None, unit: str) -> str:
    return "none" if value is None else f"{value:.3g} {unit}"
