"""Regenerate ``docs/case_page.png``: the case page (``index.html``) of a five-nodule phantom chest.

Run from the repository root::

    .venv/bin/python docs/make_case_page_screenshot.py [--out docs/case_page.png] [--keep DIR]

The scan, nodule masks, measurements, locations and attenuation come from a phantom chest CT
(``data_modules.phantom``). The model outputs are stand-ins, not a trained model's: the
sentences are the phantom's own report lines with seeded confidences, the malignancy estimates
are the phantom's malignancy scores, and the grounding heatmaps are Gaussian blobs around each
nodule. The case folder is written by :func:`lungvlm.export.export_case`, the same code as
``lungvlm report``, and photographed with headless Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from data_modules.phantom import PhantomConfig, generate_case
from lungvlm.clinical.emphysema import emphysema_severity, laa950_percent
from lungvlm.clinical.lungrads import EXAM_PRIORITY, MANAGEMENT
from lungvlm.export import export_case
from lungvlm.export.schema import (
    Emphysema,
    ExamReport,
    ExamSummary,
    ModelInfo,
    NoduleAttributes,
    NoduleReport,
    Sentence,
    Source,
)

WINDOW_PX = (1280, 1700)  # (width, height) of the browser window
SENTENCE_THRESHOLD = 0.5  # uncalibrated default of `lungvlm report`
PHANTOM_SEED = 3  # five solid nodules from 3.5 to 19.2 mm, exam category 4X
HEATMAP_SIGMA_MM = 4.0


def _heatmap(shape, spacing_mm, centre_zyx, rng) -> np.ndarray:
    """A Gaussian blob a few mm off the nodule centre, standing in for a grounding map."""
    offset_vox = rng.uniform(-3.0, 3.0, 3) / np.asarray(spacing_mm)
    grid = np.indices(shape, dtype=np.float32)
    d2 = sum(((grid[a] - centre_zyx[a] - offset_vox[a]) * spacing_mm[a]) ** 2 for a in range(3))
    return np.exp(-d2 / (2 * HEATMAP_SIGMA_MM**2)).astype(np.float32)


def build_case(seed: int = PHANTOM_SEED):
    """(report, image_hu, spacing_mm, label_map, heatmaps) of one phantom chest."""
    case = generate_case(seed, PhantomConfig(shape_zyx=(128, 256, 256), n_nodules=(5, 5)))
    rng = np.random.default_rng(seed)
    # Rank by malignancy x volume as `lungvlm report` does; report index k is rank k.
    order = sorted(case.nodules, key=lambda n: -n.malignancy_score * n.volume_mm3)
    lines = [line for line in case.findings_text.splitlines()[1:] if "nodul" in line]
    labels = np.zeros(case.image_hu.shape, np.int32)
    nodules, reasons, heatmaps = [], [], {}
    for rank, n in enumerate(order, start=1):
        labels[case.nodule_labels == n.index + 1] = rank
        confidences = rng.uniform(0.3, 0.97, 2)
        text = lines[n.index].split(", with a volume")[0].rstrip(".") + "."
        sentences = [
            Sentence(text, float(confidences[0]), bool(confidences[0] < SENTENCE_THRESHOLD)),
            Sentence(
                f"Lung-RADS category {n.lungrads_category}.",
                float(confidences[1]),
                bool(confidences[1] < SENTENCE_THRESHOLD),
            ),
        ]
        low = sum(s.uncertain for s in sentences)
        if low:
            reasons.append(
                f"nodule {rank}: {low} generated sentence(s) below the confidence threshold "
                f"{SENTENCE_THRESHOLD:.2f}"
            )
        if rank == 2:
            reasons.append(
                f"nodule {rank}: the two most probable Lung-RADS categories differ by 0.06 (< 0.1)"
            )
        heatmaps[rank] = _heatmap(case.image_hu.shape, case.spacing_mm, n.centroid_voxel, rng)
        nodules.append(
            NoduleReport(
                index=rank,
                centroid_world_lps_mm=n.centroid_lps_mm,
                centroid_voxel_zyx=n.centroid_voxel,
                long_axis_mm=n.long_axis_mm,
                short_axis_mm=min(n.short_axis_mm, n.long_axis_mm),
                mean_diameter_mm=n.mean_diameter_mm,
                volume_mm3=n.volume_mm3,
                attenuation=n.attenuation,
                malignancy_probability=float(n.malignancy_score),
                lungrads_category=n.lungrads_category,
                solid_component_mm=n.solid_component_mm,
                side=n.side,
                lobe=n.lobe,
                attributes=NoduleAttributes(n.margin, n.calcification),
                sentences=sentences,
            )
        )
    category = max((n.lungrads_category for n in nodules), key=EXAM_PRIORITY.index)
    laa = laa950_percent(case.image_hu, case.lung_mask > 0)
    report = ExamReport(
        case_id=f"PHANTOM-{seed:04d}",
        source=Source(f"phantom/PHANTOM-{seed:04d}", "dicom", "1.2.826.0.1.3680043.8.498.1"),
        model=ModelInfo("runs/stage3/checkpoints/last.ckpt", "vision_language", "0.1.0"),
        exam=ExamSummary(
            category,
            MANAGEMENT[category],
            bool(reasons),
            reasons,
            Emphysema(laa, emphysema_severity(laa)),
        ),
        nodules=nodules,
    )
    return report, case.image_hu, case.spacing_mm, labels, heatmaps


def screenshot(html: Path, png: Path, window_px: tuple[int, int] = WINDOW_PX) -> Path:
    """Render ``html`` with headless Chromium into ``png`` (no network, throwaway profile)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise FileNotFoundError("chromium is not installed; run `apt-get install -y chromium`")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--screenshot={png}", f"--window-size={window_px[0]},{window_px[1]}",
             html.resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    return png


def shrink_png(png: Path, colors: int = 128) -> Path:
    """Re-save ``png`` with a 128-colour palette (a page screenshot: ~130 kB instead of ~350 kB)."""
    from PIL import Image

    with Image.open(png) as image:
        palette = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    palette.save(png, optimize=True)
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("case_page.png"))
    parser.add_argument("--keep", type=Path, help="also keep the case folder here")
    args = parser.parse_args(argv)
    report, image, spacing, labels, heatmaps = build_case()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp) / "PHANTOM"
        written = export_case(folder, report, image, spacing, labels, heatmaps, overwrite=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(written.html, args.out)
    shrink_png(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
