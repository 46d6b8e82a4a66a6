"""Clinical exports of ``lungvlm report``: JSON, Markdown, PNG overlays, HTML, DICOM SEG and SR.

:func:`export_case` writes one case folder atomically::

    <out_dir>/
      report.json              the validated ExamReport (schema: docs/report_json_schema.md)
      report.md                the narrative (ExamReport.narrative)
      index.html               report beside the overlays (relative links)
      overlays/nodule_<i>.png  axial/coronal/sagittal overlay of nodule i
      dicom/seg.dcm            DICOM SEG, one segment per nodule (only with source_datasets)
      dicom/sr.dcm             DICOM Comprehensive 3D SR, TID 1500 (only with source_datasets)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import ArrayLike
from pydicom.dataset import Dataset

from lungvlm.export.dicom_seg import write_dicom_seg
from lungvlm.export.dicom_sr import write_dicom_sr
from lungvlm.export.html import write_case_html
from lungvlm.export.json_report import format_mm, report_markdown, write_report_json
from lungvlm.export.overlays import nodule_overlay_png
from lungvlm.export.schema import REPORT_SCHEMA_VERSION, ExamReport, NoduleReport
from lungvlm.export.writer import atomic_output_dir, write_text_atomic

__all__ = ["REPORT_SCHEMA_VERSION", "CaseExport", "ExamReport", "NoduleReport", "export_case"]


@dataclass(frozen=True)
class CaseExport:
    """Paths written by :func:`export_case` (all inside ``folder``)."""

    folder: Path
    report_json: Path
    report_md: Path
    html: Path
    overlays: dict[int, Path]
    dicom_seg: Path | None
    dicom_sr: Path | None


def _overlay_title(n: NoduleReport) -> str:
    return (
        f"Nodule {n.index}: {n.attenuation.replace('_', '-')}, mean diameter "
        f"{format_mm(n.mean_diameter_mm)}, Lung-RADS {n.lungrads_category}"
    )


def export_case(
    out_dir: str | PathLike[str],
    report: ExamReport,
    image_hu: ArrayLike,
    spacing_mm: Sequence[float],
    label_map: ArrayLike,
    heatmaps: Mapping[int, ArrayLike] | None = None,
    source_datasets: Sequence[Dataset] | None = None,
    overwrite: bool = False,
) -> CaseExport:
    """Write every export of one case into ``out_dir``, atomically (all files or none).

    Args:
        out_dir: case folder to create.
        report: the case report; an empty ``narrative`` is filled with
            :func:`~lungvlm.export.json_report.report_markdown`. Export timings are added to
            ``timings_s`` under ``"export"``.
        image_hu: CT in HU, (z, y, x).
        spacing_mm: voxel size (z, y, x) in mm.
        label_map: (z, y, x) integer map on the image grid; voxels of nodule i hold
            ``report.nodules[k].index == i``.
        heatmaps: optional nodule index -> (z, y, x) grounding heatmap for its overlay.
        source_datasets: CT slices (headers suffice) in the volume's z order; when given, the
            image grid must be the native DICOM grid and SEG + SR are written (only when the
            report has at least one nodule: a SEG needs one segment or more).
        overwrite: replace an existing ``out_dir``.

    Returns:
        The written paths.

    Raises:
        ValueError: if ``label_map`` and ``image_hu`` differ in shape or a nodule has no voxel.
        FileExistsError: if ``out_dir`` exists and ``overwrite`` is False.
    """
    if not isinstance(report, ExamReport):
        raise TypeError(f"report must be an ExamReport, got {type(report).__name__}")
    image = np.asarray(image_hu)
    labels = np.asarray(label_map)
    if labels.shape != image.shape:
        raise ValueError(f"label_map has shape {labels.shape}; expected {image.shape}")
    heatmaps = dict(heatmaps or {})
    out_dir = Path(out_dir)
    start = time.perf_counter()
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        overlays = {}
        for n in report.nodules:
            mask = labels == n.index
            if not mask.any():
                raise ValueError(f"nodule index {n.index} has no voxel in label_map")
            name = Path("overlays") / f"nodule_{n.index:02d}.png"
            nodule_overlay_png(image, spacing_mm, mask, n.centroid_voxel_zyx,
                               heatmaps.get(n.index), tmp / name, _overlay_title(n))  # fmt: skip
            overlays[n.index] = name
        seg_name = sr_name = None
        if source_datasets is not None and report.nodules:
            seg_name, sr_name = Path("dicom") / "seg.dcm", Path("dicom") / "sr.dcm"
            nodule_labels = [n.index for n in report.nodules]
            write_dicom_seg(source_datasets, labels, nodule_labels, tmp / seg_name)
            seg = pydicom.dcmread(tmp / seg_name)
            write_dicom_sr(source_datasets, seg, report.nodules, tmp / sr_name)
        timings = {**report.timings_s, "export": time.perf_counter() - start}
        report = dataclasses.replace(
            report, narrative=report.narrative or report_markdown(report), timings_s=timings
        )
        write_case_html(report, {i: tmp / p for i, p in overlays.items()}, tmp / "index.html")
        write_text_atomic(tmp / "report.md", report.narrative)
        write_report_json(report, tmp / "report.json")
    return CaseExport(
        folder=out_dir,
        report_json=out_dir / "report.json",
        report_md=out_dir / "report.md",
        html=out_dir / "index.html",
        overlays={i: out_dir / p for i, p in overlays.items()},
        dicom_seg=None if seg_name is None else out_dir / seg_name,
        dicom_sr=None if sr_name is None else out_dir / sr_name,
    )
