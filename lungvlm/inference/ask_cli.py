"""``lungvlm ask SCAN --ckpt CKPT --nodule K "question"``: ask the model about one nodule.

Nodule ``K`` is numbered as in ``lungvlm report`` (1 = highest malignancy x volume). Without
``--report`` the scan is segmented and ranked exactly as ``report`` does; with ``--report DIR``
(a folder written by ``lungvlm report`` for the same scan) the nodule centres and the label map
are read from ``DIR/report.json`` and ``DIR/segmentation.nii.gz`` instead, which skips the
whole-scan segmentation (seconds instead of a minute on a CPU).

The nodule's crops go through the encoder once; the decoder reads ``Q: <question> A:`` and
writes the answer (greedy, KV cache; the crop's visual keys/values are projected once and
reused for every answer token and every question given). Its heatmap averages the answer
tokens' cross-attention, back-projected to voxels. The answer is the model's; the measured size
(segmentation) and the risk head's outputs are printed beside it as evidence, labelled as such.

Outputs (with ``--out DIR``): ``answer.json`` and ``answer_nodule_KK_qN.png`` (axial, coronal and
sagittal through the nodule: mask contour and the answer's heatmap), written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from lungvlm.text.qa import qa_prompt

#: Side of the overlay field of view (mm).
OVERLAY_FOV_MM: float = 60.0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``ask`` subcommand."""
    parser = subparsers.add_parser(
        "ask",
        help="answer questions about one segmented nodule, with the answer's heatmap",
        description="Answer questions about nodule K of a scan (numbered as in `lungvlm report`), "
        "with the heatmap of each answer.",
    )
    parser.add_argument("scan", help="DICOM series folder, NIfTI (.nii/.nii.gz) or MetaImage")
    parser.add_argument("question", nargs="+", help="one or more questions (quote each)")
    parser.add_argument("--ckpt", required=True, help="stage-3 checkpoint")
    parser.add_argument(
        "--nodule", type=int, required=True, metavar="K", help="nodule number as in the report"
    )
    parser.add_argument("--report", type=Path, help="folder of `lungvlm report` for this scan")
    parser.add_argument("--out", type=Path, help="write answer.json and heatmap PNGs here")
    parser.add_argument(
        "--cascade", action="store_true", help="adaptive-resolution cascade (as `report --cascade`)"
    )
    parser.add_argument(
        "--keep-unconfirmed", action="store_true",
        help="number every segmentation component (as `report --keep-unconfirmed`)",
    )  # fmt: skip
    parser.set_defaults(func=run)
    return parser


def _nodules_from_report(folder: Path, volume) -> tuple[list[dict], np.ndarray]:
    """Nodules of ``folder/report.json`` and the label map of ``folder/segmentation.nii.gz``."""
    from data_modules.io import read_nifti

    path = folder / "report.json"
    try:
        nodules = json.loads(path.read_text(encoding="utf-8"))["nodules"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"--report {folder}: cannot read nodules from {path} ({err})") from err
    labels = np.asarray(read_nifti(folder / "segmentation.nii.gz").array_hu).astype(np.int32)
    if labels.shape != tuple(volume.array_hu.shape):
        raise ValueError(
            f"--report {folder}: segmentation shape {labels.shape} does not match the scan "
            f"{tuple(volume.array_hu.shape)}; was the report made from another scan?"
        )
    return nodules, labels


def _check_nodule(k: int, count: int, scan) -> None:
    if not 1 <= k <= count:
        raise ValueError(
            f"--nodule {k} is out of range: {scan} has {count} nodule(s)"
            + (f"; choose 1..{count}" if count else "")
        )


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    """The ``ask`` subcommand."""
    import torch

    from data_modules.lung_mask import lung_mask
    from lungvlm.export.overlays import nodule_overlay_png
    from lungvlm.inference.nodule_heads import (
        answer_heatmap,
        box_around,
        encode_nodule,
        heatmap_on_original_box,
        run_nodule_heads,
    )
    from lungvlm.inference.report_analysis import (
        analyse_scan,
        load_report_model,
        rank_nodules,
        ranked_label_map,
        volume_affine,
    )
    from lungvlm.inference.report_cli import read_scan
    from lungvlm.inference.scan import prepare_scan

    for question in args.question:
        qa_prompt(question)  # raises on an empty question
    questions = [" ".join(q.split()) for q in args.question]
    if args.nodule < 1:
        raise ValueError(f"--nodule {args.nodule} is out of range: nodules are numbered from 1")
    start = time.perf_counter()
    volume = read_scan(args.scan)[0]
    rm = load_report_model(args.ckpt)
    model, s = rm.model, rm.settings
    if args.report is not None:
        nodules, labels = _nodules_from_report(args.report, volume)
        _check_nodule(args.nodule, len(nodules), args.scan)
        prepared = prepare_scan(
            volume.array_hu, volume.spacing_mm, s.spacing_mm, model.normalization,
            affine=volume_affine(volume),
        )  # fmt: skip
        entry = nodules[args.nodule - 1]
        centre_original = np.asarray(entry["centroid_voxel_zyx"], dtype=np.float64)
        centre = centre_original * np.asarray(prepared.zoom)
        measured = {k: entry[k] for k in ("mean_diameter_mm", "volume_mm3")}
    else:
        lungs = lung_mask(volume.array_hu, volume.spacing_mm)
        analysis = analyse_scan(
            rm, volume, lungs, cascade=args.cascade, confirm=not args.keep_unconfirmed
        )
        order = rank_nodules(analysis)
        _check_nodule(args.nodule, len(order), args.scan)
        prepared = analysis.prepared
        labels = ranked_label_map(analysis, order)
        instance = analysis.segmentation.instances[order[args.nodule - 1]]
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
        prepared.normalization, s.malignancy_temperature, crops=crops,
    )  # fmt: skip
    answers = []
    with torch.no_grad():
        for question in questions:
            gen = model.vl.answer_question(crops.visual_tokens, question)
            answers.append((question, gen.sequences[0].strip(), answer_heatmap(gen, crops)))
    evidence = {
        **{k: round(float(v), 2) for k, v in measured.items()},
        "malignancy_probability": round(head.malignancy_probability, 4),
        "lungrads_model": head.lungrads_prediction,
        "growth_probability_12m": round(head.growth_probability_12m, 4),
    }
    print(
        f"Nodule {args.nodule}: measured mean diameter {evidence['mean_diameter_mm']:.1f} mm, "
        f"volume {evidence['volume_mm3']:.0f} mm3 (segmentation); risk head: malignancy "
        f"{100 * head.malignancy_probability:.1f} %, Lung-RADS {head.lungrads_prediction}"
    )
    for question, answer, _ in answers:
        print(f"Q: {question}\nA: {answer or '(no answer)'}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = []
        image, spacing = volume.array_hu, volume.spacing_mm
        box = box_around(centre_original, image.shape, spacing, OVERLAY_FOV_MM)
        mask = labels[box] == args.nodule
        local = np.clip(
            np.asarray(centre_original) - [b.start for b in box], 0, np.asarray(mask.shape) - 1
        )
        for n, (question, answer, heat) in enumerate(answers, start=1):
            name = f"answer_nodule_{args.nodule:02d}_q{n}.png"
            on_box = heatmap_on_original_box(heat, crops.crop_start_vox, prepared.zoom, box)
            caption = f"Q: {question}  A: {answer}"
            caption = caption if len(caption) <= 100 else caption[:97] + "..."
            fd, tmp = tempfile.mkstemp(dir=args.out, suffix=".png")
            os.close(fd)
            nodule_overlay_png(image[box], spacing, mask, local, on_box, tmp, caption, None)
            os.replace(tmp, args.out / name)
            rows.append({"question": question, "answer": answer, "heatmap": name})
        payload = {
            "scan": str(args.scan),
            "checkpoint": str(args.ckpt),
            "nodule": args.nodule,
            "centroid_voxel_zyx": [round(float(v), 2) for v in centre_original],
            "evidence": evidence,
            "answers": rows,
            "seconds": round(time.perf_counter() - start, 2),
        }
        _write_atomic(args.out / "answer.json", json.dumps(payload, indent=2))
        print(f"wrote {args.out / 'answer.json'}")
    return 0
