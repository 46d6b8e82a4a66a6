"""One nodule's section of the case page: measurements, generated sentences, captioned overlay.

Every piece of report text is escaped with :func:`escape_html`; generated sentences are model
output and may contain ``<``.
"""

from __future__ import annotations

import html
from pathlib import PurePosixPath
from urllib.parse import quote

from lungvlm.export.json_report import (
    UNCERTAIN_MARKER,
    format_mm,
    format_percent,
    nodule_location,
)
from lungvlm.export.overlays import LUNG_WINDOW_CENTER_HU, LUNG_WINDOW_WIDTH_HU
from lungvlm.export.schema import NoduleReport
from lungvlm.text.schema import round_half_up


def escape_html(value: object) -> str:
    """``value`` as HTML text or attribute value (``&``, ``<``, ``>`` and quotes escaped)."""
    return html.escape(str(value), quote=True)


def plural(count: int, word: str) -> str:
    """``count`` and ``word``, plural unless one: "1 reason", "2 reasons"."""
    return f"{count} {word}" + ("" if count == 1 else "s")


def attenuation_words(n: NoduleReport) -> str:
    """The attenuation as written in reports: solid, part-solid or ground-glass."""
    return n.attenuation.replace("_", "-")


def _row(name: str, value: str) -> str:
    return f"<tr><th>{escape_html(name)}</th><td>{escape_html(value)}</td></tr>"


def _nodule_rows(n: NoduleReport) -> list[str]:
    rows = [
        _row("Mean diameter", format_mm(n.mean_diameter_mm)),
        _row("Long / short axis", f"{format_mm(n.long_axis_mm)} / {format_mm(n.short_axis_mm)}"),
        _row("Volume", f"{round_half_up(n.volume_mm3, 0):.0f} mm³"),
        _row("Attenuation", attenuation_words(n)),
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


def _png_link(file: str | None) -> str | None:
    """A sentence heatmap PNG relative to the case folder as a URL path, or None if not one."""
    if file is None:
        return None
    path = PurePosixPath(file)
    if path.is_absolute() or ".." in path.parts or ":" in file or path.suffix.lower() != ".png":
        return None
    return quote(path.as_posix())


def _sentences(n: NoduleReport) -> str:
    items = []
    for s in n.sentences:
        conf = f'<span class="conf">(confidence {s.confidence:.2f})</span>'
        href = _png_link(s.heatmap_file)
        if href is not None:
            conf += f' <a class="conf" href="{escape_html(href)}">heatmap</a>'
        text = escape_html(s.text)
        if s.uncertain:
            items.append(
                f'<li class="uncertain">{escape_html(UNCERTAIN_MARKER)} {text} {conf}</li>'
            )
        else:
            items.append(f"<li>{text} {conf}</li>")
    return f"<p>Generated description:</p><ul>{''.join(items)}</ul>" if items else ""


def figure_caption(n: NoduleReport) -> str:
    """What a nodule's overlay shows: planes, slices, window, contour and heatmap meaning."""
    z, y, x = (round(v) for v in n.centroid_voxel_zyx)  # the slices nodule_overlay_png picks
    low = LUNG_WINDOW_CENTER_HU - LUNG_WINDOW_WIDTH_HU / 2.0
    high = LUNG_WINDOW_CENTER_HU + LUNG_WINDOW_WIDTH_HU / 2.0
    return (
        f"Nodule {n.index} ({nodule_location(n)}, {attenuation_words(n)}, mean diameter "
        f"{format_mm(n.mean_diameter_mm)}): axial, coronal and sagittal slices through its "
        f"centre, scan slice z = {z}, row y = {y}, column x = {x}; lung window {low:.0f} to "
        f"{high:.0f} HU. Green outline: the segmented nodule. Coloured overlay, where drawn: "
        "the model's grounding heatmap, i.e. where it looked while writing this nodule's "
        "sentences (brighter = more weight); it is neither a segmentation nor a cancer risk."
    )


def nodule_section(n: NoduleReport, image_href: str | None, reasons: list[str]) -> str:
    """The ``<section id="nodule-i">`` of ``n``; ``image_href`` is its overlay URL or None.

    ``reasons`` are the nodule's review reasons; when any, the section links to its review line.
    """
    flag = (
        f'<p class="flag">⚠ Needs review ({plural(len(reasons), "reason")}): '
        f'<a href="#review-nodule-{n.index}">see why</a></p>'
        if reasons
        else ""
    )
    figure = (
        f'<figure><img src="{escape_html(image_href)}" alt="Nodule {n.index} overlay" '
        f'loading="lazy"><figcaption>{escape_html(figure_caption(n))}</figcaption></figure>'
        if image_href is not None
        else '<p class="conf">No overlay image.</p>'
    )
    return (
        f'<section class="nodule" id="nodule-{n.index}"><div class="text">'
        f"<h3>Nodule {n.index}: {escape_html(nodule_location(n))}</h3>{flag}"
        f"<table>{''.join(_nodule_rows(n))}</table>{_sentences(n)}</div>{figure}</section>"
    )
