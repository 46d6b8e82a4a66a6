"""Questions about one reported nodule: the answer, its heatmap and the measured evidence.

Nodule ``K`` is numbered as in the report (1 = highest malignancy x volume). Without a report
folder the scan is segmented and ranked exactly as the report does; with ``report_dir`` (a
folder written by ``lungvlm report`` for the same scan) the nodule centres and the label map are
read from ``report.json`` and ``segmentation.nii.gz`` instead, which skips the whole-scan
segmentation (seconds instead of a minute on a CPU).

The nodule's crops go through the encoder once; the decoder reads ``Q: <question> A:`` and
writes the answer (greedy, KV cache; the crop's visual keys/values are projected once and
reused for every answer token and every question). Its heatmap averages the answer tokens'
cross-attention, back-projected to voxels. The answer is the model's; the measured size
(segmentation) and the risk head's outputs are returned beside it as evidence, labelled as such.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from lungvlm.export.overlays import nodule_overlay_png
from lungvlm.export.writer import write_text_atomic
from lungvlm.imaging.lung_mask import lung_mask
from lungvlm.imaging.volume import affine_lps
from lungvlm.inference.nodule_heads import (
    answer_heatmap,
    box_around,
    encode_nodule,
    heatmap_on_original_box,
    run_nodule_heads,
)
from lungvlm.inference.report_analysis import (
    ReportModel,
    analyse_scan,
    rank_nodules,
    ranked_label_map,
)
from lungvlm.inference.scan import prepare_scan
from lungvlm.text.qa import qa_prompt

#: Side of the overlay field of view (mm).
OVERLAY_FOV_MM: float = 60.0


@dataclass
class Answer:
    """One question, the model's answer and its heatmap on the nodule's crop grid."""

    question: str
    answer: str
    heatmap: NDArray[np.float32] = field(repr=False)


@dataclass
class NoduleAnswers:
    """Answers about nodule ``nodule`` of a scan.

    Attributes:
        nodule: the nodule's number as in the report (1-based).
        centroid_voxel_zyx: its centre, original-grid (z, y, x) voxel indices.
        evidence: measured ``mean_diameter_mm`` and ``volume_mm3`` (segmentation) and the risk
            head's ``malignancy_probability``, ``lungrads_model`` and ``growth_probability_12m``.
        answers: one :class:`Answer` per question.
    """

    nodule: int
    centroid_voxel_zyx: tuple[float, float, float]
    evidence: dict
    answers: list[Answer]
    labels: NDArray = field(repr=False, default=None)
    crop_start_vox: object = field(repr=False, default=None)
    zoom: tuple[float, float, float] = field(repr=False, default=(1.0, 1.0, 1.0))


def _nodules_from_report(folder: Path, volume) -> tuple[list[dict], np.ndarray]:
    """Nodules of ``folder/report.json`` and the label map of ``folder/segmentation.nii.gz``."""
    import SimpleITK as sitk

    path = folder / "report.json"
    try:
        nodules = json.loads(path.read_text(encoding="utf-8"))["nodules"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"report folder {folder}: cannot read nodules from {path} ({err})"
        ) from err
    seg_path = folder / "segmentation.nii.gz"
    try:
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_path))).astype(np.int32)
    except RuntimeError as err:
        raise ValueError(f"report folder {folder}: cannot read {seg_path} ({err})") from err
    if labels.shape != tuple(volume.array_hu.shape):
        raise ValueError(
            f"report folder {folder}: segmentation shape {labels.shape} does not match the scan "
            f"{tuple(volume.array_hu.shape)}; was the report made from another scan?"
        )
    return nodules, labels


def _check_nodule(k: int, count: int, scan_label: str) -> None:
    if not 1 <= k <= count:
        raise ValueError(
            f"nodule {k} is out of range: {scan_label} has {count} nodule(s)"
            + (f"; choose 1..{count}" if count else "")
        )


def answer_questions(
    rm: ReportModel,
    volume,
    nodule: int,
    questions: Sequence[str],
    report_dir: str | Path | None = None,
    cascade: bool = False,
    confirm: bool | None = None,
    lungs: NDArray | None = None,
    scan_label: str = "the scan",
) -> NoduleAnswers:
    """Answer ``questions`` about nodule ``nodule`` (numbered as in the report) of ``volume``.

    Args:
        rm: the loaded stage-3 model.
        volume: CTVolume-like scan.
        nodule: 1-based nodule number as in the report.
        questions: one or more non-empty questions.
        report_dir: a ``lungvlm report`` folder of the same scan (skips the segmentation).
        cascade: segment with the adaptive-resolution cascade (as the report's ``cascade``).
        confirm: as the report: None keeps the candidates above the checkpoint's detection
            threshold (or, without one, those whose findings describe a nodule); False keeps all.
        lungs: the lung mask, when the caller has it (else computed).
        scan_label: how errors name the scan (e.g. its path).

    Raises:
        ValueError: an empty question, a nodule out of range, an unreadable report folder.
    """
    for question in questions:
        qa_prompt(question)  # raises on an empty question
    questions = [" ".join(q.split()) for q in questions]
    if nodule < 1:
        raise ValueError(f"nodule {nodule} is out of range: nodules are numbered from 1")
    model, s = rm.model, rm.settings
    if report_dir is not None:
        nodules, labels = _nodules_from_report(Path(report_dir), volume)
        _check_nodule(nodule, len(nodules), scan_label)
        prepared = prepare_scan(
            volume.array_hu, volume.spacing_mm, s.spacing_mm, model.normalization,
            affine=affine_lps(volume.spacing_mm, volume.origin_lps_mm, getattr(volume, "direction", None)),
        )  # fmt: skip
        entry = nodules[nodule - 1]
        centre_original = np.asarray(entry["centroid_voxel_zyx"], dtype=np.float64)
        centre = centre_original * np.asarray(prepared.zoom)
        measured = {k: entry[k] for k in ("mean_diameter_mm", "volume_mm3")}
    else:
        if lungs is None:
            lungs = lung_mask(volume.array_hu, volume.spacing_mm)
        analysis = analyse_scan(rm, volume, lungs, cascade=cascade, confirm=confirm)
        order = rank_nodules(analysis)
        _check_nodule(nodule, len(order), scan_label)
        prepared = analysis.prepared
        labels = ranked_label_map(analysis, order)
        instance = analysis.segmentation.instances[order[nodule - 1]]
        centre, centre_original = instance.centroid_vox, instance.centroid_original_vox
        measured = {
            "mean_diameter_mm": instance.mean_diameter_mm,
            "volume_mm3": instance.volume_mm3,
        }
    crops = encode_nodule(
        model, prepared.image, centre, s.crop_size_vox, s.context_scale, prepared.normalization
    )
    head = run_nodule_heads(
        model, prepared.image, centre, s.crop_size_vox, s.context_scale,
        prepared.normalization, s.malignancy_map(), crops=crops,
    )  # fmt: skip
    answers = []
    with torch.no_grad():
        for question in questions:
            gen = model.vl.answer_question(crops.visual_tokens, question)
            answers.append(Answer(question, gen.sequences[0].strip(), answer_heatmap(gen, crops)))
    evidence = {
        **{k: round(float(v), 2) for k, v in measured.items()},
        "malignancy_probability": round(head.malignancy_probability, 4),
        "lungrads_model": head.lungrads_prediction,
        "growth_probability_12m": round(head.growth_probability_12m, 4),
    }
    return NoduleAnswers(
        nodule, tuple(float(v) for v in centre_original), evidence, answers, labels,
        crops.crop_start_vox, tuple(prepared.zoom),
    )  # fmt: skip


def write_answers(
    out: str | Path, result: NoduleAnswers, volume, extra: dict | None = None
) -> Path:
    """Write ``answer.json`` and one ``answer_nodule_KK_qN.png`` per answer (atomically).

    The PNGs show axial, coronal and sagittal planes through the nodule with its mask contour
    and the answer's heatmap.

    Returns:
        The path of ``answer.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    image, spacing = volume.array_hu, volume.spacing_mm
    centre = np.asarray(result.centroid_voxel_zyx)
    box = box_around(centre, image.shape, spacing, OVERLAY_FOV_MM)
    mask = result.labels[box] == result.nodule
    local = np.clip(centre - [b.start for b in box], 0, np.asarray(mask.shape) - 1)
    for n, item in enumerate(result.answers, start=1):
        name = f"answer_nodule_{result.nodule:02d}_q{n}.png"
        on_box = heatmap_on_original_box(item.heatmap, result.crop_start_vox, result.zoom, box)
        caption = f"Q: {item.question}  A: {item.answer}"
        caption = caption if len(caption) <= 100 else caption[:97] + "..."
        fd, tmp = tempfile.mkstemp(dir=out, suffix=".png")
        os.close(fd)
        nodule_overlay_png(image[box], spacing, mask, local, on_box, tmp, caption, None)
        os.replace(tmp, out / name)
        rows.append({"question": item.question, "answer": item.answer, "heatmap": name})
    payload = {
        **(extra or {}),
        "nodule": result.nodule,
        "centroid_voxel_zyx": [round(float(v), 2) for v in result.centroid_voxel_zyx],
        "evidence": result.evidence,
        "answers": rows,
    }
    path = out / "answer.json"
    write_text_atomic(path, json.dumps(payload, indent=2))
    return path
