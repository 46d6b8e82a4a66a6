"""A self-contained HTML page of one case, laid out to be read at a glance.

Top to bottom: title and case line; impression (exam Lung-RADS category, management, highest
malignancy estimate, emphysema, review banner); one overview table row per nodule; review
reasons grouped into one line per nodule (all reasons folded in ``<details>``); one section per
nodule with its measurements, generated sentences and captioned overlay (sections after
:data:`NODULES_SHOWN_OPEN` are folded); the narrative (folded) and the provenance line.

The page has inline CSS and no scripts; images are linked by paths relative to the HTML file,
so the output folder can be moved or zipped as a whole. Every piece of report text is escaped
with :func:`html.escape` (generated sentences are model output and may contain ``<``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from urllib.parse import quote

from lungvlm.clinical.lungrads import round_diameter_mm
from lungvlm.export.html_nodule import attenuation_words, nodule_section, plural
from lungvlm.export.html_nodule import escape_html as _e
from lungvlm.export.json_report import format_percent, identifiers_note, nodule_location
from lungvlm.export.schema import ExamReport, NoduleReport
from lungvlm.export.writer import write_text_atomic
from lungvlm.text.schema import round_half_up

#: The page heading: what the document is. The case id goes on a line of its own, because by
#: default it is the input folder's name (e.g. "dicom"), which must not read as the exam type.
PAGE_TITLE = "Chest CT report"
#: Nodule sections and per-nodule review lines shown unfolded; the rest sit in one <details>.
NODULES_SHOWN_OPEN = 20
#: Exam-level review reasons listed before the rest are folded.
EXAM_REASONS_SHOWN = 3
_SOURCE_WORDS = {"dicom": "DICOM series", "nifti": "NIfTI volume", "metaimage": "MetaImage volume"}
#: Reasons about one nodule start "nodule <index>:" (lungvlm.inference.report_analysis).
_NODULE_REASON = re.compile(r"nodule (\d+)(?::\s*|\s+)(\S.*)", re.IGNORECASE | re.DOTALL)
_TABLE_HEADER = ("#", "Location", "Attenuation", "Mean diameter (mm)", "Volume (mm³)",
                 "Lung-RADS", "Malignancy, model (%)", "Review")  # fmt: skip

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1280px;padding:0 1em;color:#111}
h1{margin:0} .case{color:#444;margin:.2em 0 1em} h2{margin-top:1.4em} a{color:#0b57a4}
.impression{background:#f3f6fa;border:1px solid #c9d6e6;padding:.4em 1em;border-radius:4px}
.impression h2{margin-top:.4em} .category{font-size:1.35em;margin:.3em 0}
.banner{background:#fde2e1;border:2px solid #c0392b;padding:.5em 1em;font-weight:bold}
table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
table.overview th{background:#eef1f4;position:sticky;top:0} td.num{text-align:right}
tr.flagged td{background:#fff4e5} .review-line{margin:.25em 0} summary{cursor:pointer}
.nodule{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start;border-top:1px solid #ccc;
padding:1em 0} .nodule .text{flex:1 1 380px} .nodule figure{flex:2 1 560px;margin:0}
figure img{width:100%;height:auto;background:#000}
figcaption{font-size:.85em;color:#333;margin-top:.3em}
.flag{color:#a04000;font-weight:bold} .uncertain{color:#a04000;font-style:italic}
.conf{color:#666;font-size:.85em} pre.narrative{white-space:pre-wrap;background:#f6f6f6;padding:1em}
"""


def group_review_reasons(
    reasons: Sequence[str], indices: Iterable[int]
) -> tuple[dict[int, list[str]], list[str]]:
    """Split review reasons into per-nodule lists and exam-level reasons, keeping their order.

    A reason is about nodule ``i`` when it reads "nodule i: ..." (or "nodule i ...") and ``i``
    is in ``indices``; that prefix is dropped. Every other reason is exam-level.

    Returns:
        (nodule index -> its reasons, exam-level reasons).
    """
    known = set(indices)
    per_nodule: dict[int, list[str]] = {}
    exam: list[str] = []
    for reason in reasons:
        match = _NODULE_REASON.fullmatch(reason.strip())
        if match is not None and int(match.group(1)) in known:
            per_nodule.setdefault(int(match.group(1)), []).append(match.group(2))
        else:
            exam.append(reason)
    return per_nodule, exam


def _folded(items: list[str], shown: int, label: str, wrap: str = "{}") -> str:
    """The first ``shown`` items, then the rest inside one closed <details>.

    Nothing is folded when only one item would be; ``label`` gets the folded count and
    ``wrap`` (e.g. ``"<ul>{}</ul>"``) encloses each run of items.
    """
    if len(items) <= shown + 1:
        return wrap.format("".join(items))
    rest = items[shown:]
    return (
        wrap.format("".join(items[:shown]))
        + f"<details><summary>{_e(label.format(len(rest)))}</summary>"
        + wrap.format("".join(rest))
        + "</details>"
    )


def _header(report: ExamReport) -> str:
    source = _SOURCE_WORDS.get(report.source.format, report.source.format)
    series = f" · series UID {_e(report.source.series_uid)}" if report.source.series_uid else ""
    return (
        f'<header><h1>{_e(PAGE_TITLE)}</h1><p class="case">Case ID <b>{_e(report.case_id)}</b>'
        f" · {_e(source)}{series} · draft generated by LungVLM</p></header>"
    )


def _impression(report: ExamReport, flagged: dict[int, list[str]], exam_reasons: list[str]) -> str:
    exam = report.exam
    parts = [
        '<section class="impression" id="impression"><h2>Impression</h2>',
        f'<p class="category">Lung-RADS v2022 category <b>{_e(exam.lungrads_category)}</b></p>',
        f"<p><b>Management:</b> {_e(exam.management)}</p>",
    ]
    if report.nodules:
        top = max(report.nodules, key=lambda n: n.malignancy_probability)
        parts.append(
            f"<p>{plural(len(report.nodules), 'nodule')}. Highest model malignancy estimate: "
            f'<a href="#nodule-{top.index}">nodule {top.index}</a>, '
            f"{_e(format_percent(top.malignancy_probability))} (a model estimate, not a "
            "diagnosis).</p>"
        )
    else:
        parts.append("<p>No pulmonary nodule was detected.</p>")
    if exam.emphysema is None:
        parts.append("<p>Emphysema: not measured.</p>")
    else:
        e = exam.emphysema
        parts.append(
            f"<p>Emphysema: %LAA-950 {round_half_up(e.laa950_percent, 1):.1f} % "
            f"({_e(e.severity)}).</p>"
        )
    if exam.needs_review:
        counts = [plural(len(flagged), "nodule") + " flagged"] if flagged else []
        counts += [plural(len(exam_reasons), "exam-level reason")] if exam_reasons else []
        parts.append(
            f'<p class="banner">⚠ Needs radiologist review: {_e(", ".join(counts))}. '
            '<a href="#review">See the review reasons</a>.</p>'
        )
    return "".join(parts) + "</section>"


def _overview_table(nodules: list[NoduleReport], flagged: dict[int, list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in _TABLE_HEADER)
    rows = []
    for n in nodules:
        count = len(flagged.get(n.index, ()))
        review = (
            f'<a href="#review-nodule-{n.index}" title="{plural(count, "review reason")}">'
            f"⚠ {count}</a>"
            if count
            else ""
        )
        flag_class = ' class="flagged"' if count else ""
        rows.append(
            f"<tr{flag_class}>"
            f'<td class="num"><a href="#nodule-{n.index}">{n.index}</a></td>'
            f"<td>{_e(nodule_location(n))}</td><td>{_e(attenuation_words(n))}</td>"
            f'<td class="num">{round_diameter_mm(n.mean_diameter_mm):.1f}</td>'
            f'<td class="num">{round_half_up(n.volume_mm3, 0):.0f}</td>'
            f"<td>{_e(n.lungrads_category)}</td>"
            f'<td class="num">{round_half_up(100.0 * n.malignancy_probability, 1):.1f}</td>'
            f"<td>{review}</td></tr>"
        )
    body = "".join(rows)
    return f'<table class="overview"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _review_line(index: int, reasons: list[str]) -> str:
    link = f'<a href="#nodule-{index}">Nodule {index}</a>'
    count = plural(len(reasons), "reason")
    anchor = f'class="review-line" id="review-nodule-{index}"'
    if len(reasons) == 1:
        return f"<p {anchor}>{link} ({count}): {_e(reasons[0])}</p>"
    items = "".join(f"<li>{_e(r)}</li>" for r in reasons)
    return (
        f"<details {anchor}><summary>{link} ({count}): "
        f"{_e(reasons[0])} (+{len(reasons) - 1} more)</summary><ul>{items}</ul></details>"
    )


def _review_section(
    nodules: list[NoduleReport], flagged: dict[int, list[str]], exam_reasons: list[str]
) -> str:
    if not flagged and not exam_reasons:
        return ""
    parts = ['<section id="review"><h2>Review reasons</h2>']
    if exam_reasons:
        items = [f"<li>{_e(r)}</li>" for r in exam_reasons]
        listed = _folded(items, EXAM_REASONS_SHOWN, "{} more exam-level reasons", "<ul>{}</ul>")
        parts.append(f"<h3>Exam ({plural(len(exam_reasons), 'reason')})</h3>{listed}")
    lines = [_review_line(n.index, flagged[n.index]) for n in nodules if n.index in flagged]
    if lines:
        parts.append(f"<h3>Nodules ({len(lines)} flagged)</h3>")
        parts.append(_folded(lines, NODULES_SHOWN_OPEN, "{} more flagged nodules"))
    return "".join(parts) + "</section>"


def write_case_html(
    report: ExamReport,
    overlay_files: Mapping[int, str | PathLike[str]],
    path: str | PathLike[str],
) -> Path:
    """Write the case page to ``path`` atomically (layout: module docstring).

    Args:
        report: the validated report.
        overlay_files: nodule ``index`` -> overlay PNG path; nodules without an entry get
            "No overlay image". Links are written relative to ``path``'s folder. Sentence
            ``heatmap_file`` PNGs are linked as given, i.e. relative to the case folder.
        path: the HTML file to write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if ``report`` is not an :class:`ExamReport`.
        ValueError: if ``overlay_files`` names a nodule index the report does not have.
    """
    if not isinstance(report, ExamReport):
        raise TypeError(f"report must be an ExamReport, got {type(report).__name__}")
    path = Path(path)
    known = [n.index for n in report.nodules]
    unknown = sorted(set(overlay_files) - set(known))
    if unknown:
        raise ValueError(f"overlay_files names nodule index {unknown}; report has {sorted(known)}")
    hrefs = {
        index: quote(Path(os.path.relpath(Path(file), path.parent)).as_posix())
        for index, file in overlay_files.items()
    }
    flagged, exam_reasons = group_review_reasons(report.exam.review_reasons, known)
    nodules = report.nodules
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(f'{PAGE_TITLE} · case ID {report.case_id}')}</title>",
        f"<style>{_CSS}</style></head><body>",
        _header(report),
        _impression(report, flagged, exam_reasons),
        f'<section id="nodules"><h2>Nodules ({len(nodules)})</h2>',
        _overview_table(nodules, flagged) if nodules else "<p>None detected.</p>",
        "</section>",
        _review_section(nodules, flagged, exam_reasons),
    ]
    if nodules:
        sections = [
            nodule_section(n, hrefs.get(n.index), flagged.get(n.index, [])) for n in nodules
        ]
        parts.append('<section id="findings"><h2>Nodule details</h2>')
        parts.append(_folded(sections, NODULES_SHOWN_OPEN, "{} more nodules") + "</section>")
    if report.narrative:
        parts.append(
            "<details><summary>Full narrative report (report.md)</summary>"
            f'<pre class="narrative">{_e(report.narrative)}</pre></details>'
        )
    m = report.model
    parts.append(
        f'<footer><p class="conf">LungVLM {_e(m.lungvlm_version)}, stage {_e(m.stage)}, '
        f"checkpoint {_e(m.checkpoint_path or 'none')}; schema {_e(report.schema_version)}; "
        + (f"source {_e(report.source.path)}; " if report.source.path else "")
        + f"{_e(identifiers_note(report))}</p></footer></body></html>"
    )
    return write_text_atomic(path, "\n".join(parts) + "\n")
