"""Render :class:`~lungvlm.text.schema.ExamFindings` as a screening report with field spans.

The wording varies with a seed (synonyms, descriptor order, number formats, sentence templates,
whether default values are mentioned) so that a report decoder cannot learn one template; the
same seed always gives the same text. Every number is written exactly at its schema resolution
(0.1 mm, whole mm³, 0.1 %), and a field left unstated has the documented default of
:data:`~lungvlm.text.vocabulary.OMISSION_DEFAULTS`, so :func:`lungvlm.text.parser.parse_report`
recovers the findings without loss.

Layout (a convention chosen here, after the structure suggested in ``report-language.md``)::

    FINDINGS:
    <one line per nodule: main sentence, then negatives / change since prior>
    <emphysema line>
    <one line per other finding>

    IMPRESSION:
    <Lung-RADS category and management>
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lungvlm.text.phrases import Piece, nodule_lines
from lungvlm.text.schema import ExamFindings
from lungvlm.text.vocabulary import EMPHYSEMA_ADJECTIVES, NO_NODULE_SENTENCES
from lungvlm.types import ReportSpan

#: Sentence templates of the main nodule sentence.
SENTENCE_TEMPLATES: tuple[str, ...] = (
    "there_is",  # "There is a 7 mm solid nodule in the RUL, ..."
    "is_seen",  # "A 7 mm solid nodule is seen in the RUL, ..."
    "noun_first",  # "7 mm solid nodule in the RUL, ..."
    "location_first",  # "In the RUL, there is a 7 mm solid nodule, ..."
    "telegraphic",  # "RUL: 7 mm solid nodule, spiculated margin, ..."
)
#: Number formats of a diameter: "7 mm" (integer when whole), "7.0 mm", "0.7 cm", "7.0 millimeters".
SIZE_FORMATS: tuple[str, ...] = ("mm", "mm_decimal", "cm", "millimeters")
FINDINGS_HEADER = "FINDINGS:"
IMPRESSION_HEADER = "IMPRESSION:"


@dataclass(frozen=True)
class RenderStyle:
    """Which variations the renderer may draw from.

    Attributes:
        templates: allowed main-sentence templates (subset of :data:`SENTENCE_TEMPLATES`).
        size_formats: allowed diameter formats (subset of :data:`SIZE_FORMATS`).
        abbreviate_lobes: allow "RUL"-style and "upper lobe of the right lung" lobe names.
        mention_defaults: probability of stating a field whose value is its omission default
            (no calcification, no pleural contact, no fat, no emphysema, no nodules).
        shuffle_descriptors: shuffle the order of descriptors and of follow-up sentences.
    """

    templates: tuple[str, ...] = SENTENCE_TEMPLATES
    size_formats: tuple[str, ...] = SIZE_FORMATS
    abbreviate_lobes: bool = True
    mention_defaults: float = 0.5
    shuffle_descriptors: bool = True

    def __post_init__(self) -> None:
        for name, given, allowed in (
            ("templates", self.templates, SENTENCE_TEMPLATES),
            ("size_formats", self.size_formats, SIZE_FORMATS),
        ):
            if not given or not set(given) <= set(allowed):
                raise ValueError(f"{name}={given!r} must be a non-empty subset of {allowed}")
        if not 0.0 <= self.mention_defaults <= 1.0:
            raise ValueError(f"mention_defaults={self.mention_defaults!r} must be in [0, 1]")

    @classmethod
    def canonical(cls) -> RenderStyle:
        """One fixed wording: first template, "7.0 mm", full lobe names, defaults stated."""
        return cls(
            templates=("there_is",),
            size_formats=("mm_decimal",),
            abbreviate_lobes=False,
            mention_defaults=1.0,
            shuffle_descriptors=False,
        )


@dataclass(frozen=True)
class RenderedReport:
    """A rendered report.

    Attributes:
        text: the full report, ``findings_text + "\\n\\n" + impression_text``.
        findings_text: the FINDINGS section (header included), a prefix of ``text``; the risk
            head's text input, which must not contain the impression.
        impression_text: the IMPRESSION section (header included), a suffix of ``text``.
        spans: one span per stated field (offsets into ``text``, and into ``findings_text``
            for findings fields). Two fields share one span when one phrase states both
            ("No calcification or fat").
    """

    text: str
    findings_text: str
    impression_text: str
    spans: list[ReportSpan]


class Chooser:
    """Seeded choices; without a seed every choice takes the first (canonical) option."""

    def __init__(self, seed: int | None, style: RenderStyle) -> None:
        self._rng = random.Random(seed) if seed is not None else None
        self.style = style

    def pick(self, options: tuple | list):
        """One option (the first when unseeded)."""
        return options[0] if self._rng is None else self._rng.choice(options)

    def chance(self, probability: float) -> bool:
        """True with ``probability`` (unseeded: when it is at least 0.5)."""
        return probability >= 0.5 if self._rng is None else self._rng.random() < probability

    def shuffle(self, items: list) -> None:
        """Shuffle in place when seeded and the style allows it."""
        if self._rng is not None and self.style.shuffle_descriptors:
            self._rng.shuffle(items)


def render_report(
    findings: ExamFindings, seed: int | None = None, style: RenderStyle | None = None
) -> RenderedReport:
    """Render findings as report text with one span per stated field.

    Args:
        findings: what to report.
        seed: seed of the wording variation; None gives one fixed wording.
        style: allowed variations (default: all).

    Returns:
        The report, its FINDINGS and IMPRESSION sections, and the field spans.
    """
    if not isinstance(findings, ExamFindings):
        raise TypeError(f"findings={findings!r} must be an ExamFindings")
    chooser = Chooser(seed, style or RenderStyle())
    lines: list[list[Piece]] = []
    for index, nodule in enumerate(findings.nodules):
        lines.append(nodule_lines(nodule, index, chooser))
    if not findings.nodules and chooser.chance(chooser.style.mention_defaults):
        lines.append([Piece(chooser.pick(NO_NODULE_SENTENCES) + ".")])
    emphysema = _emphysema_pieces(findings, chooser)
    if emphysema:
        lines.append(emphysema)
    for other in findings.other_findings:
        lines.append([Piece(other, "other"), Piece(".")])

    pieces = [Piece(FINDINGS_HEADER)]
    for line in lines:
        pieces.append(Piece("\n"))
        pieces.extend(line)
    pieces.append(Piece("\n\n"))
    pieces.extend(_impression_pieces(findings, chooser))

    text_parts: list[str] = []
    spans: list[ReportSpan] = []
    offset = 0
    findings_end = 0
    for piece in pieces:
        if piece.text == "\n\n":
            findings_end = offset
        for name in (piece.field, *piece.also) if piece.field else ():
            spans.append(ReportSpan(offset, offset + len(piece.text), piece.nodule, name))
        text_parts.append(piece.text)
        offset += len(piece.text)
    text = "".join(text_parts)
    return RenderedReport(
        text=text,
        findings_text=text[:findings_end],
        impression_text=text[findings_end + 2 :],
        spans=spans,
    )


def _emphysema_pieces(findings: ExamFindings, chooser: Chooser) -> list[Piece]:
    grade, laa = findings.emphysema, findings.laa950_percent
    if grade == "none" and laa is None and not chooser.chance(chooser.style.mention_defaults):
        return []
    adjective = EMPHYSEMA_ADJECTIVES[grade]
    if laa is None:
        options = [f"{adjective} emphysema"]
        if grade == "none":
            options.append("No evidence of emphysema")
        else:
            options.append(f"Emphysema: {adjective.lower()}")
    else:
        percent = f"{laa:.1f}%"
        options = [
            f"{adjective} emphysema (LAA-950 {percent})",
            f"{adjective} emphysema, LAA-950 {percent}",
            f"{adjective} emphysema with {percent} of lung volume below -950 HU",
        ]
        if grade != "none":
            options.append(f"Emphysema: {adjective.lower()}; LAA-950 {percent}")
    return [Piece(chooser.pick(options), "emphysema"), Piece(".")]


def _impression_pieces(findings: ExamFindings, chooser: Chooser) -> list[Piece]:
    category = findings.impression.category
    management = findings.impression.management
    template = chooser.pick(
        (
            ("Lung-RADS {c}", ": ", ""),
            ("Lung-RADS category {c}", ". Recommendation: ", ""),
            ("Lung-RADS v2022 category {c}", "; management: ", ""),
            ("Lung-RADS {c}", ". ", ""),
        )
    )
    head, separator, _ = template
    end = "" if re.search(r"[.!?]$", management) else "."
    return [
        Piece(IMPRESSION_HEADER + "\n"),
        Piece(head.format(c=category), "category"),
        Piece(separator),
        Piece(management, "management"),
        Piece(end),
    ]
