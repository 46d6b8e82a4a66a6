"""Write the outputs of ``lungvlm report`` into one case folder, atomically.

Layout (built in a temporary sibling and renamed into place by
:func:`lungvlm.export.writer.atomic_output_dir`)::

    <out>/report.json                          ExamReport (schema lungvlm.export.schema)
    <out>/report.md                            narrative (lungvlm.export.json_report)
    <out>/index.html                           report beside the overlays
    <out>/segmentation.nii.gz                  nodule label map on the scan grid (value = index)
    <out>/probability.nii.gz                   the segmentation's nodule probability (float32)
    <out>/heatmaps/nodule_NN_sentence_MM.nii.gz each sentence's heatmap on its overlay box,
                                               placed in world space (opens beside the scan in
                                               3D Slicer / ITK-SNAP)
    <out>/overlays/nodule_NN.png               nodule overlay with its mean sentence heatmap
    <out>/overlays/nodule_NN_sentence_MM.png   one overlay per generated sentence
    <out>/dicom/seg.dcm, dicom/sr.dcm          DICOM SEG + SR (DICOM input with >= 1 nodule)

While it is built the folder is ``.<out>.<random>.partial`` holding :data:`WRITER_FILE` (the
writer's pid); a ``.partial`` folder whose writer is dead (a killed run) is removed by the next
:func:`write_report_outputs` into the same parent folder (:func:`remove_stale_partials`).

Overlays show an :data:`OVERLAY_FOV_MM` cube around the nodule; heatmaps are resampled from the
fine crop onto that box only (never onto the whole scan, to bound memory).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray

from lungvlm.export.dicom_seg import write_dicom_seg
from lungvlm.export.dicom_sr import write_dicom_sr
from lungvlm.export.html import write_case_html
from lungvlm.export.json_report import format_mm, report_markdown, write_report_json
from lungvlm.export.nifti import write_heatmap_nifti, write_label_nifti, write_probability_nifti
from lungvlm.export.overlays import nodule_overlay_png
from lungvlm.export.schema import ExamReport
from lungvlm.export.writer import atomic_output_dir, write_text_atomic
from lungvlm.inference.nodule_heads import box_around, heatmap_on_original_box
from lungvlm.inference.report_analysis import ScanAnalysis
from lungvlm.processes import pid_alive
from lungvlm.progress import update as progress_update

log = logging.getLogger(__name__)

OVERLAY_FOV_MM = 80.0
SEGMENTATION_FILE = "segmentation.nii.gz"
PROBABILITY_FILE = "probability.nii.gz"


def sentence_heatmap_nifti(png_name: str) -> Path:
    """``heatmaps/<stem>.nii.gz`` beside a sentence's overlay ``overlays/<stem>.png``."""
    return Path("heatmaps") / (Path(png_name).stem + ".nii.gz")


def _overlays(tmp: Path, report: ExamReport, analysis: ScanAnalysis, order, volume, labels):
    image, spacing = volume.array_hu, volume.spacing_mm
    files = {}
    for done, (nodule, position) in enumerate(zip(report.nodules, order, strict=True)):
        progress_update("overlays", done, len(report.nodules))
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
            on_box = heat(generated.heatmap)
            nodule_overlay_png(image[box], spacing, mask, centre, on_box,
                               tmp / sentence.heatmap_file, caption, None)  # fmt: skip
            nifti = tmp / sentence_heatmap_nifti(sentence.heatmap_file)
            write_heatmap_nifti(on_box.astype(np.float32), box, volume, nifti)
    progress_update("overlays", len(report.nodules), len(report.nodules))
    return files


def with_narrative(report: ExamReport, extra_markdown: Sequence[str] = ()) -> ExamReport:
    """The report with its markdown narrative, ``extra_markdown`` inserted before IMPRESSION."""
    narrative = report_markdown(report)
    if extra_markdown:
        head, sep, tail = narrative.partition("## IMPRESSION")
        narrative = head + "\n".join(extra_markdown) + "\n" + sep + tail
    return replace(report, narrative=narrative)


#: Written into a report's ``.partial`` folder while it is built; holds the writer's pid.
WRITER_FILE = ".writer-pid"
#: A ``.partial`` folder without :data:`WRITER_FILE` (written before it existed) is stale
#: after this long untouched.
UNOWNED_STALE_S = 3600.0
#: An *empty* ``.partial`` folder without :data:`WRITER_FILE` is stale after this long: its
#: writer writes that file right after creating the folder, so it was killed in between (s).
UNOWNED_EMPTY_STALE_S = 2.0
#: A ``.old`` folder (an overwritten report moved aside) untouched this long is settled (s).
OLD_SETTLE_S = 60.0


def remove_stale_partials(parent: str | Path) -> list[Path]:
    """Delete ``.<name>.*.partial`` folders in ``parent`` left by a killed ``lungvlm report``
    (and settle its ``.old`` folders: :func:`_settle_old_folders`).

    A folder is removed when the pid in its :data:`WRITER_FILE` is dead on this machine, or,
    lacking that file, when it was not modified for :data:`UNOWNED_STALE_S`
    (:data:`UNOWNED_EMPTY_STALE_S` when it is empty: killed before it was claimed). The folder of a
    report still being written is kept.

    Returns:
        The folders removed.
    """
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for folder in parent.glob(".*.partial"):
        if not folder.is_dir():
            continue
        try:
            pid = int((folder / WRITER_FILE).read_text().strip())
            stale = not pid_alive(pid)
        except (OSError, ValueError):
            try:
                empty = not any(folder.iterdir())
                limit = UNOWNED_EMPTY_STALE_S if empty else UNOWNED_STALE_S
                stale = time.time() - folder.stat().st_mtime > limit
            except OSError:
                continue  # removed meanwhile
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    removed += _settle_old_folders(parent)
    return removed


def _settle_old_folders(parent: Path) -> list[Path]:
    """``.<name>.*.old`` folders (the previous report moved aside by an overwrite) left by a run
    killed between its two renames (:func:`~lungvlm.export.writer.atomic_output_dir`): deleted
    when ``<name>`` exists again, else renamed back to ``<name>`` (the previous report, whole).
    Only folders untouched for :data:`OLD_SETTLE_S` are handled, so a live overwrite is left alone.
    Returns the ``.old`` folders deleted or restored."""
    settled = []
    for folder in parent.glob(".*.old"):
        name = folder.name[1:].rsplit(".", 2)[0]
        try:
            if not folder.is_dir() or time.time() - folder.stat().st_mtime < OLD_SETTLE_S:
                continue
        except OSError:
            continue
        final = parent / name
        if final.exists():
            shutil.rmtree(folder, ignore_errors=True)
        else:
            try:
                os.replace(folder, final)
            except OSError as err:  # e.g. another run wrote the folder meanwhile: leave both
                log.warning("could not restore %s from %s: %s", final, folder, err)
                continue
            log.warning("restored %s from %s, left by a killed report", final, folder)
        settled.append(folder)
    return settled


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
    for stale in remove_stale_partials(out_dir.parent):
        log.warning("removed %s, left by a killed report", stale)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / WRITER_FILE).write_text(str(os.getpid()))  # so a later run can tell it is stale
        start = time.perf_counter()
        overlays = _overlays(tmp, report, analysis, order, volume, labels)
        write_label_nifti(labels, volume, tmp / SEGMENTATION_FILE)
        probability = analysis.prepared.to_original_grid(analysis.segmentation.probability, order=1)
        write_probability_nifti(np.clip(probability, 0.0, 1.0), volume, tmp / PROBABILITY_FILE)
        if source_datasets is not None and report.nodules:
            indices = [n.index for n in report.nodules]
            write_dicom_seg(source_datasets, labels, indices, tmp / "dicom" / "seg.dcm")
            seg = pydicom.dcmread(tmp / "dicom" / "seg.dcm")
            write_dicom_sr(source_datasets, seg, report.nodules, tmp / "dicom" / "sr.dcm")
        timings = {**report.timings_s, "export": time.perf_counter() - start}
        report = with_narrative(replace(report, timings_s=timings), extra_markdown)
        narrative = report.narrative
        write_case_html(report, overlays, tmp / "index.html")
        write_text_atomic(tmp / "report.md", narrative)
        write_report_json(report, tmp / "report.json")
        (tmp / WRITER_FILE).unlink()
    return report
