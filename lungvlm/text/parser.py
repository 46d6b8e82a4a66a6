"""Rule-based reader of screening reports: the clinical-accuracy labeller of generated text.

:func:`parse_report` reads every wording :mod:`lungvlm.text.renderer` writes, and common
radiologist phrasing it does not (see :mod:`lungvlm.text.patterns`), into a
:class:`ParsedReport` whose per-nodule field names are the schema's
(:data:`~lungvlm.text.vocabulary.NODULE_VALUE_FIELDS`). A field the report does not state is
None; :meth:`ParsedNodule.with_defaults` fills the documented omission defaults.

Segmentation: the FINDINGS section (or the whole text when it has no section headers) is split
into sentences. A sentence that names a nodule ("nodule", "opacity", "GGN", ...) together with a
location or a current size starts a new nodule; a following sentence that states nodule
descriptors (calcification, change since prior, ...) without naming another nodule continues
it; an emphysema sentence, or any other sentence, ends it. A sentence about a nodule that also
mentions emphysema counts as a nodule sentence. Conventions chosen here: a size
given as "L x S mm" has mean diameter (L + S) / 2 (the first two of three dimensions); the
management is the impression text after the Lung-RADS category; a sentence that describes
several nodules at once is read as one nodule.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from lungvlm.text import patterns as pt
from lungvlm.text.schema import round_half_up
from lungvlm.text.sizes import read_sizes
from lungvlm.text.vocabulary import OMISSION_DEFAULTS


@dataclass
class ParsedNodule:
    """What a report states about one nodule; None where it states nothing."""

    side: str | None = None
    lobe: str | None = None
    mean_diameter_mm: float | None = None
    attenuation: str | None = None
    solid_component_mm: float | None = None
    margin: str | None = None
    calcification: str | None = None
    shape: str | None = None
    pleural_relation: str | None = None
    contains_fat: bool | None = None
    change_status: str | None = None
    prior_mean_diameter_mm: float | None = None
    interval_months: float | None = None
    volume_mm3: float | None = None
    slice_index: int | None = None

    def field_values(self) -> dict[str, Any]:
        """All fields by schema field name (None where unstated), like
        :meth:`lungvlm.text.schema.NoduleFinding.field_values`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def stated_fields(self) -> dict[str, Any]:
        """The fields the report states, by schema field name."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    def with_defaults(self) -> ParsedNodule:
        """A copy with unstated calcification, pleural relation and fat set to their defaults."""
        defaults = {
            name: OMISSION_DEFAULTS[name]
            for name in ("calcification", "pleural_relation", "contains_fat")
            if getattr(self, name) is None
        }
        return replace(self, **defaults)


@dataclass
class ParsedReport:
    """What a report states about an exam.

    Attributes:
        nodules: one entry per nodule, in report order.
        emphysema: grade, or None when emphysema is not mentioned (default "none").
        laa950_percent: LAA-950 in %, or None.
        other_findings: findings sentences that are neither nodules nor emphysema (no final
            full stop).
        category: Lung-RADS category, or None.
        s_modifier: True when the category carries the "S" modifier.
        management: impression text after the category, or None.
    """

    nodules: list[ParsedNodule] = field(default_factory=list)
    emphysema: str | None = None
    laa950_percent: float | None = None
    other_findings: list[str] = field(default_factory=list)
    category: str | None = None
    s_modifier: bool = False
    management: str | None = None

    def with_defaults(self) -> ParsedReport:
        """A copy with the omission defaults filled (nodule defaults, emphysema "none")."""
        return replace(
            self,
            nodules=[nodule.with_defaults() for nodule in self.nodules],
            emphysema=self.emphysema or OMISSION_DEFAULTS["emphysema"],
            other_findings=list(self.other_findings),
        )


def parse_report(text: str) -> ParsedReport:
    """Parse a screening report (full, findings-only or header-less).

    Raises:
        TypeError: if ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"text={text!r} must be a string")
    findings_text, impression_text = _split_sections(text)
    report = ParsedReport()
    group: list[str] | None = None
    groups: list[list[str]] = []
    for sentence in _sentences(findings_text):
        kind = _classify(sentence, continuing=group is not None)
        if kind == "nodule":
            group = [sentence]
            groups.append(group)
            continue
        if kind == "continuation":
            group.append(sentence)
            continue
        group = None
        if kind == "emphysema":
            _read_emphysema(sentence, report)
        elif kind == "other":
            report.other_findings.append(sentence[:-1] if sentence.endswith(".") else sentence)
    report.nodules = [parse_nodule_text(" ".join(g)) for g in groups]
    _read_impression(impression_text, findings_text, report)
    return report


def parse_findings_fields(text: str) -> list[dict[str, Any]]:
    """Per nodule of a report, the stated fields keyed by schema field name."""
    return [nodule.stated_fields() for nodule in parse_report(text).nodules]


def parse_nodule_text(text: str) -> ParsedNodule:
    """Read the fields of one nodule from the sentences that describe it."""
    sizes = read_sizes(text)
    nodule = ParsedNodule(
        mean_diameter_mm=sizes.mean_diameter_mm,
        solid_component_mm=sizes.solid_component_mm,
        prior_mean_diameter_mm=sizes.prior_mean_diameter_mm,
        volume_mm3=sizes.volume_mm3,
        slice_index=sizes.slice_index,
    )
    location = pt.LOCATION_RE.search(text)
    if location:
        nodule.side, nodule.lobe = _location(location)
    nodule.attenuation = _attenuation(text, nodule.solid_component_mm is not None)
    nodule.margin = _first_value(pt.MARGIN_RE, text)
    nodule.shape = _first_value(pt.SHAPE_RE, text)
    calcification = _first_value(pt.CALCIFICATION_RE, text)
    nodule.calcification = "diffuse" if calcification == "calcified" else calcification
    nodule.pleural_relation = _first_value(pt.PLEURAL_RE, text)
    fat = _first_value(pt.FAT_RE, text)
    nodule.contains_fat = None if fat is None else fat == "present"
    nodule.change_status = _first_value(pt.CHANGE_RE, text)
    interval = pt.INTERVAL_RE.search(sizes.remaining_text)
    if interval:
        count = interval.group("n")
        number = float(count) if count else float(pt.WORD_NUMBERS[interval.group("w").lower()])
        factor = 12.0 if interval.group("u").lower().startswith("y") else 1.0
        nodule.interval_months = round_half_up(number * factor, 1)
    return nodule


def _split_sections(text: str) -> tuple[str, str]:
    """(findings text, impression text); header-less text is all findings."""
    headers = list(pt.SECTION_RE.finditer(text))
    if not headers:
        return text, ""
    findings = [text[: headers[0].start()]]
    impression: list[str] = []
    for header, following in zip(headers, headers[1:] + [None], strict=True):
        body = text[header.end() : following.start() if following else len(text)]
        name = " ".join(header.group("name").lower().split())
        if name in pt.IMPRESSION_SECTIONS:
            impression.append(body)
        elif name not in pt.IGNORED_SECTIONS:
            findings.append(body)
    return "\n".join(findings), "\n".join(impression)


def _sentences(text: str) -> list[str]:
    """Split findings text into sentences (decimal points and abbreviations do not split)."""
    sentences: list[str] = []
    for raw_line in text.splitlines():
        line = pt.LIST_MARKER_RE.sub("", raw_line, count=1)
        start = 0
        for end in pt.SENTENCE_END_RE.finditer(line):
            if pt.ABBREVIATION_RE.search(line[start : end.start()]):
                continue
            sentences.append(line[start : end.end()].strip())
            start = end.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if s]


def _classify(sentence: str, continuing: bool) -> str:
    """One of "nodule", "continuation", "emphysema", "skip" or "other"."""
    if pt.NO_NODULE_RE.search(sentence):
        return "skip"
    if pt.EXTRAPULMONARY_RE.search(sentence):
        return "other"
    if pt.NODULE_NOUN_RE.search(sentence) and (
        pt.LOCATION_RE.search(sentence) or read_sizes(sentence).mean_diameter_mm is not None
    ):
        return "nodule"
    if pt.CATEGORY_RE.search(sentence):
        return "skip"
    if pt.EMPHYSEMA_SENTENCE_RE.search(sentence):
        return "emphysema"
    if continuing and _states_descriptor(sentence):
        return "continuation"
    return "other"


def _states_descriptor(sentence: str) -> bool:
    """Whether a sentence states any nodule field (cheap: stops at the first)."""
    if any(regex.search(sentence) for regex in pt.DESCRIPTOR_RES):
        return True
    sizes = read_sizes(sentence)
    return any(value is not None for value in dataclasses.astuple(sizes)[:-1])


def _read_emphysema(sentence: str, report: ParsedReport) -> None:
    grade = _first_value(pt.EMPHYSEMA_GRADE_RE, sentence)
    if grade is not None and report.emphysema is None:
        report.emphysema = grade
    percent = pt.PERCENT_RE.search(sentence)
    if percent and report.laa950_percent is None:
        report.laa950_percent = round_half_up(float(percent.group("p")), 1)


def _read_impression(impression: str, findings: str, report: ParsedReport) -> None:
    match = pt.CATEGORY_RE.search(impression)
    rest = impression[match.end() :] if match else ""
    if match is None:
        match = pt.CATEGORY_RE.search(findings)
        rest = findings[match.end() :].split("\n", 1)[0] if match else ""
    if match is None:
        return
    report.category = re.sub(r"\s+", "", match.group("c")).upper()
    report.s_modifier = match.group("s") is not None
    management = pt.MANAGEMENT_PREFIX_RE.sub("", " ".join(rest.split()), count=1).strip()
    management = management[:-1].rstrip() if management.endswith(".") else management
    report.management = management or None


def _location(match: re.Match[str]) -> tuple[str, str]:
    groups = match.groupdict()
    if groups["side"]:
        return groups["side"].lower(), groups["lobe"].lower()
    if groups["side_of"]:
        return groups["side_of"].lower(), groups["lobe_of"].lower()
    if groups["abbr"]:
        return pt.ABBREVIATED_LOBES[groups["abbr"]]
    if groups["lingula"]:
        return "left", "upper"
    return "right", "middle"


def _first_value(regex: re.Pattern[str], text: str) -> str | None:
    """Value of the first match in text order that states one (``skip_*`` groups do not)."""
    for match in regex.finditer(text):
        if not match.lastgroup.startswith("skip"):
            return match.lastgroup
    return None


def _attenuation(text: str, has_solid_component: bool) -> str | None:
    """Part-solid wins (or a solid component size); then the first of ground-glass/solid."""
    found = [m.lastgroup for m in pt.ATTENUATION_RE.finditer(text)]
    if "part_solid" in found or (has_solid_component and found):
        return "part_solid"
    for value in found:
        if value in ("ground_glass", "solid"):
            return value
    return None
