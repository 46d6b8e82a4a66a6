"""Write the outputs of ``lungvlm report`` into one case folder, atomically.

Layout (built in a temporary sibling and renamed into place by
:func:`lungvlm.export.writer.atomic_output_dir`)::

    <out>/report.json                          ExamReport (schema lungvlm.export.schema)
    <out>/report.md                            narrative (lungvlm.export.json_report)
    <out>/index.html                           report beside the overlays
    <out>/segmentation.nii.gz                  nodule label map on the scan grid (value = index)
    <out>/overlays/nodule_NN.png               nodule overlay with its mean sentence heatmap
    <out>/overlays/nodule_NN_sentence_MM.png   one overlay per generated sentence
    <out>/dicom/seg.dcm, dicom/sr.dcm          DICOM SEG + SR (DICOM input with >= 1 nodule)

Overlays show an :data:`OVERLAY_FOV_MM` cube around the nodule; heatmaps are resampled from the
fine crop onto that box only (never onto the whole scan, to bound memory).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from numpy.typing import NDArray

from lungvlm.export.dicom_seg import write_dicom_seg
from lungvlm.export.dicom_sr import write_dicom_sr
from lungvlm.export.html import write_case_html
from lungvlm.export.json_report import format_mm, report_markdown, write_report_json
from lungvlm.export.overlays import nodule_overlay_png
from lungvlm.export.schema import ExamReport
from lungvlm.export.writer import atomic_output_dir, write_text_atomic
from lungvlm.inference.nodule_heads import box_around, heatmap_on_original_box
from lungvlm.inference.report_analysis import ScanAnalysis

OVERLAY_FOV_MM = 80.0
SEGMENTATION_FILE = "segmentation.nii.gz"


def write_label_nifti(label_map: NDArray, volume, path: Path) -> Path:
    """Write the (z, y, x) label map with the scan's LPS geometry (SimpleITK writes NIfTI)."""
    image = sitk.GetImageFromArray(np.asarray(label_map).astype(np.uint16))
    image.SetSpacing(tuple(float(s) for s in volume.spacing_mm)[::-1])
    image.SetOrigin(tuple(float(v) for v in volume.origin_lps_mm))
    direction = np.asarray(getattr(volume, "direction", np.eye(3)), dtype=np.float64)
    image.SetDirection(tuple(direction.reshape(-1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def _overlays(tmp: Path, report: ExamReport, analysis: ScanAnalysis, order, volume, labels):
    image, spacing = volume.array_hu, volume.spacing_mm
    files = {}
    for nodule, position in zip(report.nodules, order, strict=True):
        head = analysis.heads[position]
        box = box_around(nodule.centroid_voxel_zyx, image.shape, spacing, OVERLAY_FOV_MM)
        mask = labels[box] == nodule.index
        centre = np.asarray(nodule.centroid_voxel_zyx) - [s.start for s in box]
        centre = np.clip(centre, 0, np.asarray(mask.shape) - 1)
        zoom = analysis.prepared.zoom

        def heat(crop_map, head=head, box=box, zoom=zoom):
            return heatmap_on_original_box(crop_map, head.crop_start_vox, zoom, box)

        name = Path("overlays") / f"nodule_{nodule.index:02d}.png"
        title = (
            f"Nodule {nodule.index}: {nodule.attenuation.replace('_', '-')}, mean diameter "
            f"{format_mm(nodule.mean_diameter_mm)}, Lung-RADS {nodule.lungrads_category}"
        )
        mean_map = heat(head.nodule_heatmap()) if head.sentences else None
        nodule_overlay_png(image[box], spacing, mask, centre, mean_map, tmp / name, title, None)
        files[nodule.index] = tmp / name
        for sentence, generated in zip(nodule.sentences, head.sentences, strict=True):
            caption = sentence.text if len(sentence.text) <= 90 else sentence.text[:87] + "..."
            nodule_overlay_png(image[box], spacing, mask, centre, heat(generated.heatmap),
                               tmp / sentence.heatmap_file, caption, None)  # fmt: skip
    return files


def write_report_outputs(
    out_dir: str | Path,
    report: ExamReport,
    analysis: ScanAnalysis,
    order: Sequence[int],
    volume,
    label_map: NDArray,
    source_datasets: Sequence[pydicom.Dataset] | None = None,
    extra_markdown: Sequence[str] = (),
    overwrite: bool = False,
) -> ExamReport:
    """Write every output of one case (module docstring); returns the report as written.

    Args:
        out_dir: case folder to create.
        report: the assembled report (nodule ``index`` k is ``order[k - 1]``).
        analysis: the scan analysis (heatmaps, grids).
        order: instance positions by rank.
        volume: the CTVolume-like scan (original grid).
        label_map: nodule label map on the original grid (value = report index).
        source_datasets: the DICOM slices in the volume's z order (enables SEG + SR).
        extra_markdown: lines inserted before the narrative's IMPRESSION section.
        overwrite: replace an existing ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    labels = np.asarray(label_map)
    if labels.shape != tuple(volume.array_hu.shape):
        raise ValueError(f"label_map has shape {labels.shape}; expected {volume.array_hu.shape}")
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        start = time.perf_counter()
        overlays = _overlays(tmp, report, analysis, order, volume, labels)
        write_label_nifti(labels, volume, tmp / SEGMENTATION_FILE)
        if source_datasets is not None and report.nodules:
            indices = [n.index for n in report.nodules]
            write_dicom_seg(source_datasets, labels, indices, tmp / "dicom" / "seg.dcm")
            seg = pydicom.dcmread(tmp / "dicom" / "seg.dcm")
            write_dicom_sr(source_datasets, seg, report.nodules, tmp / "dicom" / "sr.dcm")
        timings = {**report.timings_s, "export": time.perf_counter() - start}
        report = replace(report, timings_s=timings)
        narrative = report_markdown(report)
        if extra_markdown:
            head, sep, tail = narrative.partition("## IMPRESSION")
            narrative = head + "\n".join(extra_markdown) + "\n" + sep + tail
        report = replace(report, narrative=narrative)
        write_case_html(report, overlays, tmp / "index.html")
        write_text_atomic(tmp / "report.md", narrative)
        write_report_json(report, tmp / "report.json")
    return report
