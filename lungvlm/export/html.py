"""A self-contained HTML page of one case: the report beside each nodule's overlay PNG.

The page has inline CSS and no scripts; images are linked by paths relative to the HTML file,
so the output folder can be moved or zipped as a whole. Every piece of report text is escaped
with :func:`html.escape` (generated sentences are model output and may contain ``<``).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

from lungvlm.export.json_report import UNCERTAIN_MARKER, format_mm, format_percent
from lungvlm.export.schema import ExamReport, NoduleReport
from lungvlm.export.writer import write_text_atomic
from lungvlm.text.schema import round_half_up

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px;color:#111}
.banner{background:#fde2e1;border:2px solid #c0392b;padding:.6em 1em;font-weight:bold}
.nodule{display:flex;gap:1.5em;align-items:flex-start;border-top:1px solid #ccc;padding:1em 0}
.nodule .text{flex:1 1 45%} .nodule .image{flex:1 1 55%} .nodule img{max-width:100%}
table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
.uncertain{color:#a04000;font-style:italic} .conf{color:#666;font-size:.85em}
pre.narrative{white-space:pre-wrap;background:#f6f6f6;padding:1em}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _row(name: str, value: str) -> str:
    return f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>"


def _nodule_rows(n: NoduleReport) -> list[str]:
    rows = [
        _row("Mean diameter", format_mm(n.mean_diameter_mm)),
        _row("Long / short axis", f"{format_mm(n.long_axis_mm)} / {format_mm(n.short_axis_mm)}"),
        _row("Volume", f"{round_half_up(n.volume_mm3, 0):.0f} mm³"),
        _row("Attenuation", n.attenuation.replace("_", "-")),
    ]
    if n.solid_component_mm is not None:
        rows.append(_row("Solid component", format_mm(n.solid_component_mm)))
    if n.attributes.margin is not None:
        rows.append(_row("Margin", n.attributes.margin.replace("_", "-")))
    if n.attributes.calcification is not None:
        rows.append(_row("Calcification", n.attributes.calcification))
    rows += [
        _row("Lung-RADS", n.lungrads_category),
        _row("Malignancy (model estimate)", format_percent(n.malignancy_probability)),
    ]
    if n.growth_probability_12m is not None:
        rows.append(
            _row("12-month growth (model estimate)", format_percent(n.growth_probability_12m))
        )
    if n.comparison is not None:
        rows.append(_row("Change since prior", n.comparison.status))
    x, y, z = n.centroid_world_lps_mm
    rows.append(_row("Centre LPS (mm)", f"({x:.1f}, {y:.1f}, {z:.1f})"))
    return rows


def _sentences(n: NoduleReport) -> str:
    items = []
    for s in n.sentences:
        conf = f'<span class="conf">(confidence {s.confidence:.2f})</span>'
        if s.uncertain:
            items.append(f'<li class="uncertain">{_e(UNCERTAIN_MARKER)} {_e(s.text)} {conf}</li>')
        else:
            items.append(f"<li>{_e(s.text)} {conf}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""


def _nodule_block(n: NoduleReport, image_href: str | None) -> str:
    image = (
        f'<img src="{_e(image_href)}" alt="{_e(f"Nodule {n.index} overlay")}">'
        if image_href is not None
        else "<p>No overlay.</p>"
    )
    return (
        f'<section class="nodule" id="nodule-{n.index}"><div class="text">'
        f"<h3>Nodule {n.index}</h3><table>{''.join(_nodule_rows(n))}</table>"
        f'{_sentences(n)}</div><div class="image">{image}</div></section>'
    )


def write_case_html(
    report: ExamReport,
    overlay_files: Mapping[int, str | PathLike[str]],
    path: str | PathLike[str],
) -> Path:
    """Write the case page to ``path`` atomically.

    Args:
        report: the validated report.
        overlay_files: nodule ``index`` -> overlay PNG path; nodules without an entry get
            "No overlay". Links are written relative to ``path``'s folder.
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
    known = {n.index for n in report.nodules}
    unknown = sorted(set(overlay_files) - known)
    if unknown:
        raise ValueError(f"overlay_files names nodule index {unknown}; report has {sorted(known)}")
    hrefs = {
        index: Path(os.path.relpath(Path(file), path.parent)).as_posix()
        for index, file in overlay_files.items()
    }
    exam = report.exam
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(f'LungVLM report {report.case_id}')}</title><style>{_CSS}</style></head>",
        f"<body><h1>Screening chest CT: {_e(report.case_id)}</h1>",
    ]
    if exam.needs_review:
        reasons = "".join(f"<li>{_e(r)}</li>" for r in exam.review_reasons)
        parts.append(f'<div class="banner">Needs radiologist review<ul>{reasons}</ul></div>')
    parts.append(
        f"<h2>Impression</h2><p>Lung-RADS v2022 category <b>{_e(exam.lungrads_category)}</b>: "
        f"{_e(exam.management)}</p>"
    )
    if exam.emphysema is not None:
        e = exam.emphysema
        parts.append(
            f"<p>Emphysema: %LAA-950 {round_half_up(e.laa950_percent, 1):.1f} % "
            f"({_e(e.severity)})</p>"
        )
    parts.append(f"<h2>Findings ({len(report.nodules)} nodule(s))</h2>")
    parts += [_nodule_block(n, hrefs.get(n.index)) for n in report.nodules]
    if report.narrative:
        parts.append(f'<h2>Narrative</h2><pre class="narrative">{_e(report.narrative)}</pre>')
    m = report.model
    parts.append(
        f'<p class="conf">LungVLM {_e(m.lungvlm_version)}, stage {_e(m.stage)}, checkpoint '
        f"{_e(m.checkpoint_path or 'none')}; schema {_e(report.schema_version)}</p></body></html>"
    )
    return write_text_atomic(path, "\n".join(parts) + "\n")
