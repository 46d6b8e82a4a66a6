"""Scan-level inference and evaluation (no ``data_modules`` import outside ``evaluate_cli``).

- :mod:`.scan`: :func:`load_model`, :func:`prepare_scan`, :func:`segment_scan`
  (sliding windows -> probability -> measured :class:`DetectedNodule` instances);
- :mod:`.windows`: the MONAI sliding-window pass with context crops and window skipping;
- :mod:`.cascade`: :func:`segment_scan_cascade`, the low-resolution triage cascade;
- :mod:`.evaluate`: :func:`evaluate_scans` (per-nodule Dice, sensitivity, FPs/scan, FROC/CPM);
- :mod:`.evaluate_cli`: ``lungvlm evaluate`` (phantom chests or one scan; CLI wiring).
"""

from lungvlm.inference.cascade import segment_scan_cascade
from lungvlm.inference.evaluate import (
    EvaluationResult,
    EvaluationScan,
    ScanEvaluation,
    evaluate_scans,
)
from lungvlm.inference.scan import (
    DetectedNodule,
    PreparedScan,
    ScanSegmentation,
    load_model,
    prepare_scan,
    segment_scan,
)

__all__ = [
    "DetectedNodule",
    "EvaluationResult",
    "EvaluationScan",
    "PreparedScan",
    "ScanEvaluation",
    "ScanSegmentation",
    "evaluate_scans",
    "load_model",
    "prepare_scan",
    "segment_scan",
    "segment_scan_cascade",
]
