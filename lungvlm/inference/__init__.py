"""Scan -> candidates -> nodules -> findings -> report.

- :mod:`.scan`: :func:`prepare_scan`, :func:`segment_scan` (sliding windows -> probability ->
  measured :class:`DetectedNodule` instances);
- :mod:`.windows`: the MONAI sliding-window pass with context crops and window skipping;
- :mod:`.cascade`: :func:`segment_scan_cascade`, the low-resolution triage cascade;
- :mod:`.nodule_heads`: the stage-3 heads on each nodule's crop;
- :mod:`.report_analysis`, :mod:`.report_findings`, :mod:`.report_pipeline`: the report;
- :mod:`.prior`: comparison with a prior scan; :mod:`.calibration`: sentence confidence and
  malignancy temperature.

Evaluation lives in :mod:`lungvlm.evaluation`, checkpoint loading in
:mod:`lungvlm.lightning.checkpoint`, the command-line wiring in :mod:`lungvlm.commands`.
"""
