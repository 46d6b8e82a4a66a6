"""The case page (index.html): reading order, grouped review reasons, captions, escaping, and a
render in headless Chromium."""

from __future__ import annotations

from html.parser import HTMLParser

import matplotlib.image as mpimg
import numpy as np

from lungvlm.export.html import (
    EXAM_REASONS_SHOWN,
    NODULES_SHOWN_OPEN,
    PAGE_TITLE,
    group_review_reasons,
    write_case_html,
)
from lungvlm.export.overlays import nodule_overlay_png
from lungvlm.export.schema import ExamSummary, Sentence, Source
from tests.browser import needs_chromium, screenshot
from tests.test_export_json import make_nodule, make_report

VOID_TAGS = {"img", "meta", "br", "hr", "link", "input"}
LOW_CONFIDENCE = "2 generated sentence(s) below the confidence threshold 0.50"
NEAR_EDGE = "malignancy probability 12.5 % is near the 15 % risk band edge"


class Element:
    """An HTML element with its children and text in document order."""

    def __init__(self, tag: str, attrs: dict, parent: Element | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.content: list[Element | str] = []

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.content]
        return " ".join("".join(parts).split())

    def iter(self):
        yield self
        for child in self.content:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, tag: str, cls: str | None = None) -> list[Element]:
        return [
            e
            for e in self.iter()
            if e.tag == tag and (cls is None or cls in e.attrs.get("class", "").split())
        ]

    def by_id(self, element_id: str) -> Element:
        (found,) = [e for e in self.iter() if e.attrs.get("id") == element_id]
        return found

    def ancestors(self) -> list[Element]:
        out, node = [], self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def folded(self) -> bool:
        """True when a closed <details> hides this element (its <summary> stays visible)."""
        return any(a.tag == "details" and "open" not in a.attrs for a in self.ancestors())


class TreeBuilder(HTMLParser):
    """A minimal DOM, enough to ask where elements sit; fails on unbalanced tags."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {}, None)
        self.node = self.root

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs}, self.node)
        self.node.content.append(element)
        if tag not in VOID_TAGS:
            self.node = element

    def handle_endtag(self, tag):
        assert self.node.tag == tag, f"</{tag}> closes <{self.node.tag}>"
        self.node = self.node.parent

    def handle_data(self, data):
        self.node.content.append(data)


def parse(page: str) -> Element:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.node is builder.root, f"unclosed <{builder.node.tag}>"
    return builder.root


def flagged_report(n_nodules: int, exam_reasons: int = 1):
    """``n_nodules`` nodules, each with two review reasons, plus ``exam_reasons`` exam-level."""
    nodules = [make_nodule(i, comparison=None) for i in range(1, n_nodules + 1)]
    reasons = [
        f"nodule {i}: {r}" for i in range(1, n_nodules + 1) for r in (LOW_CONFIDENCE, NEAR_EDGE)
    ]
    reasons += [f"exam reason {k}" for k in range(1, exam_reasons + 1)]
    report = make_report(nodules=nodules)
    report.exam.review_reasons = reasons
    return report


def test_group_review_reasons_splits_by_nodule_prefix():
    reasons = [
        "nodule 2: attenuation not stated",
        "no lung found by the lung mask: emphysema not measured",
        "nodule 1 sentence 2 confidence 0.41 < 0.60",
        "Nodule 2: second",
        "nodule 9: names a nodule the report lacks",
        "nodules 1-3 overlap",
    ]
    per_nodule, exam = group_review_reasons(reasons, [1, 2, 3])
    assert per_nodule == {
        2: ["attenuation not stated", "second"],
        1: ["sentence 2 confidence 0.41 < 0.60"],
    }
    assert exam == [reasons[1], reasons[4], reasons[5]]


def test_impression_and_table_come_first(tmp_path):
    report = make_report()
    page = write_case_html(report, {}, tmp_path / "index.html").read_text(encoding="utf-8")
    order = [page.index(s) for s in ('id="impression"', 'class="overview"', 'id="nodule-1"')]
    assert order == sorted(order)
    assert "<h2>Impression</h2>" in page[: page.index('class="overview"')]
    tree = parse(page)
    impression = tree.by_id("impression")
    assert "Lung-RADS v2022 category 4A" in impression.text()
    assert report.exam.management in impression.text()
    # make_report's reason "nodule 1 sentence 2 ..." is about nodule 1.
    assert "Needs radiologist review: 1 nodule flagged." in impression.text()
    (table,) = tree.find_all("table", "overview")
    rows = [
        [td.text() for td in tr.find_all("td")] for tr in table.find_all("tbody")[0].find_all("tr")
    ]
    # make_nodule: 7.25 mm -> 7.3 (half up), 523.6 mm3 -> 524, p = 0.125 -> 12.5 %.
    assert rows == [
        ["1", "right upper lobe", "part-solid", "7.3", "524", "4A", "12.5", "⚠ 1"],
        ["2", "right upper lobe", "part-solid", "7.3", "524", "4A", "12.5", ""],
    ]


def test_title_names_the_document_not_the_folder(tmp_path):
    # `lungvlm report scans/dicom` names the case after its folder by default.
    report = make_report()
    report.case_id = "dicom"
    report.source = Source("/data/patient-7/dicom", "dicom", "1.2.3")
    page = write_case_html(report, {}, tmp_path / "index.html").read_text(encoding="utf-8")
    tree = parse(page)
    (title,) = tree.find_all("title")
    (h1,) = tree.find_all("h1")
    assert h1.text() == PAGE_TITLE == "Chest CT report"
    assert title.text() == "Chest CT report · case ID dicom"
    assert "Screening chest CT" not in page
    (case_line,) = tree.find_all("p", "case")
    assert case_line.text().startswith("Case ID dicom · DICOM series · series UID 1.2.3")


def test_thirty_flagged_nodules_give_one_review_line_each(tmp_path):
    report = flagged_report(30, exam_reasons=EXAM_REASONS_SHOWN + 2)
    page = write_case_html(report, {}, tmp_path / "index.html").read_text(encoding="utf-8")
    tree = parse(page)
    review = tree.by_id("review")
    lines = [e for e in review.iter() if "review-line" in e.attrs.get("class", "").split()]
    assert [e.attrs["id"] for e in lines] == [f"review-nodule-{i}" for i in range(1, 31)]
    summaries = [line.find_all("summary")[0].text() for line in lines]
    assert summaries[16] == f"Nodule 17 (2 reasons): {LOW_CONFIDENCE} (+1 more)"
    assert all(line.tag == "details" and "open" not in line.attrs for line in lines)
    # Lines past the first NODULES_SHOWN_OPEN sit inside one more closed <details>.
    assert [line.folded() for line in lines] == [False] * NODULES_SHOWN_OPEN + [True] * 10
    # Visible text holds the main reason once per nodule, not all 60 raw reasons as lines.
    assert sum(NEAR_EDGE in s for s in summaries) == 0
    assert page.count(f"nodule 17: {LOW_CONFIDENCE}") == 0
    # Exam-level reasons: the first EXAM_REASONS_SHOWN listed, the other 2 folded.
    exam_items = [li.text() for li in review.find_all("li") if li.text().startswith("exam")]
    assert len(exam_items) == EXAM_REASONS_SHOWN + 2
    assert "2 more exam-level reasons" in [s.text() for s in review.find_all("summary")]
    # The overview table flags every nodule with its reason count.
    (table,) = tree.find_all("table", "overview")
    assert [tr.find_all("td")[-1].text() for tr in table.find_all("tr")[1:]] == ["⚠ 2"] * 30
    assert "Needs radiologist review: 30 nodules flagged, 5 exam-level reasons." in page


def test_generated_text_is_escaped(tmp_path):
    evil = '<script>alert(1)</script> & "quoted"'
    nodule = make_nodule(1, sentences=[Sentence(evil, 0.2, True, "javascript:alert(1).png")])
    report = make_report(nodules=[nodule])
    report.case_id = "<b>bold</b>"
    report.narrative = evil
    report.exam.review_reasons = [f"nodule 1: {evil}", evil]
    page = write_case_html(report, {}, tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<script" not in page and "<b>bold</b>" not in page
    assert "javascript:" not in page  # heatmap links only for relative PNG paths
    # Sentence, nodule review line, exam-level reason and narrative.
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot;") == 4


def test_every_image_is_a_captioned_figure(tmp_path):
    nodules = [
        make_nodule(i, comparison=None, centroid_voxel_zyx=(3.4, 4.6, 5.0)) for i in (1, 2, 3)
    ]
    report = make_report(nodules=nodules)
    overlays = {i: tmp_path / "overlays" / f"nodule {i:02d}.png" for i in (1, 3)}
    page = write_case_html(report, overlays, tmp_path / "index.html").read_text(encoding="utf-8")
    images = parse(page).find_all("img")
    assert [img.attrs["src"] for img in images] == [
        "overlays/nodule%2001.png",
        "overlays/nodule%2003.png",
    ]
    for img, index in zip(images, (1, 3), strict=True):
        figure = next(a for a in img.ancestors() if a.tag == "figure")
        (caption,) = figure.find_all("figcaption")
        assert caption.text().startswith(
            f"Nodule {index} (right upper lobe, part-solid, mean diameter 7.3 mm)"
        )
        assert "scan slice z = 3, row y = 5, column x = 5" in caption.text()
        assert "grounding heatmap" in caption.text()
    assert "No overlay image." in page  # nodule 2


def test_page_without_nodules(tmp_path):
    report = make_report(needs_review=False, nodules=[])
    report.exam = ExamSummary("1", "12-month screening LDCT", False)
    page = write_case_html(report, {}, tmp_path / "index.html").read_text(encoding="utf-8")
    tree = parse(page)
    assert "No pulmonary nodule was detected." in page
    assert not tree.find_all("img") and not tree.find_all("table", "overview")
    assert 'id="review"' not in page and 'id="findings"' not in page
    assert "Needs radiologist review" not in page


def test_two_hundred_nodules_fold_after_the_first_sections(tmp_path):
    report = flagged_report(200, exam_reasons=0)
    overlays = {i: tmp_path / f"n{i}.png" for i in range(1, 201)}
    page = write_case_html(report, overlays, tmp_path / "index.html").read_text(encoding="utf-8")
    tree = parse(page)
    findings = tree.by_id("findings")
    sections = findings.find_all("section", "nodule")
    assert len(sections) == 200
    assert [s.folded() for s in sections] == [False] * NODULES_SHOWN_OPEN + [True] * 180
    assert "180 more nodules" in [s.text() for s in findings.find_all("summary")]
    assert len(tree.find_all("table", "overview")[0].find_all("tr")) == 201
    assert all(img.attrs.get("loading") == "lazy" for img in tree.find_all("img"))


def _write_overlays(folder, indices) -> dict:
    image = np.full((12, 24, 24), -850.0, np.float32)
    z, y, x = np.mgrid[:12, :24, :24]
    mask = (z - 6) ** 2 + (y - 12) ** 2 + (x - 12) ** 2 <= 16
    image[mask] = 20.0
    heat = np.exp(-((z - 6) ** 2 + (y - 11) ** 2 + (x - 13) ** 2) / 8.0)
    return {
        i: nodule_overlay_png(
            image,
            (2.0, 1.0, 1.0),
            mask,
            (6, 12, 12),
            heat,
            folder / "overlays" / f"nodule_{i:02d}.png",
            f"Nodule {i}",
            panel_size_in=2.0,
        )  # fmt: skip
        for i in indices
    }


@needs_chromium
def test_page_renders_in_headless_chromium(tmp_path):
    report = flagged_report(3)
    for n in report.nodules:
        n.centroid_voxel_zyx = (6.0, 12.0, 12.0)
    html_path = write_case_html(report, _write_overlays(tmp_path / "case", (1, 2, 3)),
                                tmp_path / "case" / "index.html")  # fmt: skip
    png = screenshot(html_path, tmp_path / "shot.png", tmp_path / "profile", (1280, 1600))
    assert png.is_file() and png.stat().st_size > 20_000
    rgb = mpimg.imread(png)[..., :3]
    assert rgb.shape == (1600, 1280, 3)
    assert rgb.std() > 0.05
    # The overlays have a black background: pure-black pixels mean the relative <img> links
    # resolved (page text is #111, never 0).
    assert (rgb.max(axis=-1) < 0.02).mean() > 0.02
