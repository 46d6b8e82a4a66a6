"""Overlay PNGs (size, panels, aspect ratio, contour, heatmap), case HTML and export_case."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from lungvlm.export import export_case
from lungvlm.export.html import write_case_html
from lungvlm.export.overlays import nodule_overlay_png
from lungvlm.export.schema import Sentence
from tests.test_export_json import make_nodule, make_report

SHAPE = (10, 20, 20)
SPACING_MM = (3.0, 1.0, 1.0)  # coronal/sagittal panels are 20 mm wide and 30 mm tall


def _phantom():
    """Uniform -600 HU (mid-grey in the lung window) with a 5-voxel-radius sphere mask."""
    image = np.full(SHAPE, -600.0, dtype=np.float32)
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    mask = (z - 5) ** 2 + (y - 10) ** 2 + (x - 10) ** 2 <= 16
    return image, mask


def _grey_boxes(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of each run of columns holding mid-grey CT pixels.

    A row or column counts only with more than 20 grey pixels, so anti-aliased title text
    (grey pixels on black) is ignored.
    """
    grey = (np.abs(rgb[..., 0] - 0.5) < 0.03) & (np.abs(rgb - rgb[..., :1]).max(axis=-1) < 0.01)
    columns = np.flatnonzero(grey.sum(axis=0) > 20)
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    boxes = []
    for run in runs:
        rows = np.flatnonzero(grey[:, run].sum(axis=1) > 20)
        boxes.append((int(rows[0]), int(rows[-1]), int(run[0]), int(run[-1])))
    return boxes


def _lime(rgba: np.ndarray) -> np.ndarray:
    return (rgba[..., 1] > 0.6) & (rgba[..., 0] < 0.4) & (rgba[..., 2] < 0.4)


def _coloured(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3]
    return (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.1


def test_overlay_png_size_panels_aspect_and_contour(tmp_path):
    image, mask = _phantom()
    path = nodule_overlay_png(image, SPACING_MM, mask, (5, 10, 10), None, tmp_path / "a.png",
                              "Nodule 1")  # fmt: skip
    assert path.stat().st_size > 0
    rgba = mpimg.imread(path)
    assert rgba.shape == (460, 1200, 4)  # (4.0 + 0.6) in x 12 in at 100 dpi
    boxes = _grey_boxes(rgba[..., :3])
    assert len(boxes) == 3
    ratios = [
        (right - left + 1) / (bottom - top + 1) for top, bottom, left, right in boxes
    ]  # width / height
    assert ratios == pytest.approx([1.0, 20 / 30, 20 / 30], abs=0.03)
    assert int(_lime(rgba).sum()) > 50
    # No heatmap given: apart from the contour's anti-aliased edge, every pixel is grey.
    assert int((_coloured(rgba) & ~_lime(rgba)).sum()) < 0.3 * int(_lime(rgba).sum())


def test_overlay_heatmap_adds_colour_and_fov_crops(tmp_path):
    image, mask = _phantom()
    heat = mask.astype(np.float32) * 3.0
    path = nodule_overlay_png(image, SPACING_MM, mask, (5, 10, 10), heat, tmp_path / "h.png",
                              field_of_view_mm=10.0)  # fmt: skip
    rgba = mpimg.imread(path)
    assert int((_coloured(rgba) & ~_lime(rgba)).sum()) > 100
    path = nodule_overlay_png(image, SPACING_MM, mask, (5, 10, 10), None, tmp_path / "c.png",
                              field_of_view_mm=10.0)  # fmt: skip
    rgba = mpimg.imread(path)
    # A 10 mm field of view keeps 5 slices of 3 mm around z=5 (indices 3..7) by 11 x 11 voxels.
    boxes = _grey_boxes(rgba[..., :3])
    ratios = [(right - left + 1) / (bottom - top + 1) for top, bottom, left, right in boxes]
    assert ratios == pytest.approx([1.0, 11 / 15, 11 / 15], abs=0.03)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"mask": np.zeros((2, 2, 2), bool)}, r"mask has shape \(2, 2, 2\); expected image"),
        ({"centroid_zyx": (5, 10, 25)}, r"centroid_zyx=\[5\.0, 10\.0, 25\.0\] lies outside"),
        ({"spacing_mm": (1.0, -1.0, 1.0)}, r"spacing_mm must be 3 positive"),
        ({"heatmap": np.zeros((1, 2, 3))}, r"heatmap has shape \(1, 2, 3\)"),
        ({"field_of_view_mm": 0.0}, r"field_of_view_mm=0\.0 must be > 0 mm"),
    ],
)
def test_overlay_rejects_bad_input(tmp_path, kwargs, pattern):
    image, mask = _phantom()
    args = dict(image_hu=image, spacing_mm=SPACING_MM, mask=mask, centroid_zyx=(5, 10, 10),
                heatmap=None, path=tmp_path / "x.png")  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        nodule_overlay_png(**args)


def test_case_html_escapes_text_and_links_relative(tmp_path):
    nodule = make_nodule(1, sentences=[])
    report = make_report(nodules=[nodule])
    report.nodules[0].sentences.append(Sentence("<script>alert(1)</script> & more", 0.2, True))
    png = tmp_path / "overlays" / "nodule_01.png"
    page = write_case_html(report, {1: png}, tmp_path / "index.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert '<img src="overlays/nodule_01.png"' in page
    assert "Needs radiologist review" in page
    with pytest.raises(ValueError, match=r"overlay_files names nodule index \[7\]"):
        write_case_html(report, {7: png}, tmp_path / "bad.html")


def test_export_case_writes_the_folder(tmp_path):
    image, mask = _phantom()
    labels = mask.astype(np.uint8)
    report = make_report(nodules=[make_nodule(1, centroid_voxel_zyx=(5.0, 10.0, 10.0))])
    written = export_case(tmp_path / "case", report, image, SPACING_MM, labels)
    names = sorted(p.relative_to(written.folder).as_posix() for p in written.folder.rglob("*"))
    assert names == [
        "index.html", "overlays", "overlays/nodule_01.png", "report.json", "report.md"
    ]  # fmt: skip
    assert written.dicom_seg is None and written.dicom_sr is None
    data = json.loads(written.report_json.read_text(encoding="utf-8"))
    assert data["narrative"] == written.report_md.read_text(encoding="utf-8")
    assert data["narrative"].startswith("# Screening chest CT report: case-001")
    assert set(data["timings_s"]) == {"segment", "report", "export"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]
    with pytest.raises(ValueError, match="nodule index 1 has no voxel in label_map"):
        export_case(tmp_path / "empty", report, image, SPACING_MM, np.zeros_like(labels))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]
