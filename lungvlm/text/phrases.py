"""Seeded wording of one nodule's report line (used by :mod:`lungvlm.text.renderer`).

A line is a list of :class:`Piece`; pieces that state a field carry its span field name, so the
renderer can compute character spans while it concatenates them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lungvlm.text.schema import NoduleChange, NoduleFinding
from lungvlm.text.vocabulary import (
    ATTENUATION_ADJECTIVES,
    CALCIFICATION_ADJECTIVES,
    CALCIFICATION_NONE_SENTENCES,
    CALCIFICATION_PHRASES,
    CHANGE_TEMPLATES,
    FAT_ADJECTIVES,
    FAT_NONE_SENTENCES,
    FAT_PHRASES,
    LOBE_PHRASES,
    MARGIN_ADJECTIVES,
    MARGIN_PHRASES,
    NODULE_NOUNS,
    PLEURAL_ADJECTIVES,
    PLEURAL_PHRASES,
    SHAPE_ADJECTIVES,
    SHAPE_PHRASES,
)

if TYPE_CHECKING:
    from lungvlm.text.renderer import Chooser

_AN_RE = re.compile(r"(?:[aeiou]|8|1[18](?!\d))", re.IGNORECASE)


@dataclass(frozen=True)
class Piece:
    """A run of report text.

    Attributes:
        text: the characters.
        field: the span field it states (None for glue text).
        nodule: nodule index of the span (-1: exam level).
        also: further span fields the same characters state ("No calcification or fat").
    """

    text: str
    field: str | None = None
    nodule: int = -1
    also: tuple[str, ...] = ()


def format_size_mm(value_mm: float, style: str) -> str:
    """Write a diameter exactly at 0.1 mm resolution.

    Args:
        value_mm: diameter already rounded to 0.1 mm.
        style: "mm" ("7 mm" when whole, else "7.3 mm"), "mm_decimal" ("7.0 mm"), "cm"
            ("0.7 cm", "0.73 cm": always exact, 0.1 mm is 0.01 cm) or "millimeters".
    """
    tenths = round(value_mm * 10)
    whole, tenth = divmod(tenths, 10)
    if style == "mm":
        return f"{whole} mm" if tenth == 0 else f"{whole}.{tenth} mm"
    if style == "mm_decimal":
        return f"{whole}.{tenth} mm"
    if style == "millimeters":
        return f"{whole}.{tenth} millimeters"
    if style == "cm":
        centimetres, hundredths = divmod(tenths, 100)
        number = f"{centimetres}.{hundredths:02d}".rstrip("0")
        return (number + "0" if number.endswith(".") else number) + " cm"
    raise ValueError(f"style={style!r} is not a size format")


def format_interval(months: float, chooser: Chooser) -> str:
    """Write an interval in months (0.1 month resolution), or in whole years when exact."""
    tenths = round(months * 10)
    whole, tenth = divmod(tenths, 10)
    if tenth:
        return f"{whole}.{tenth} months"
    options = [f"{whole} month" + ("" if whole == 1 else "s")]
    if whole % 12 == 0:
        years = whole // 12
        options.append(f"{years} year" + ("" if years == 1 else "s"))
    return chooser.pick(options)


def change_sentence(change: NoduleChange, chooser: Chooser) -> str:
    """The change-since-prior sentence, without its full stop."""
    template = chooser.pick(CHANGE_TEMPLATES[change.status])
    prior = ""
    if change.prior_mean_diameter_mm is not None:
        size_style = chooser.pick(chooser.style.size_formats)
        prior = format_size_mm(change.prior_mean_diameter_mm, size_style)
    interval = ""
    if change.interval_months is not None:
        interval = format_interval(change.interval_months, chooser)
    return template.format(
        prior=prior,
        ago=f" {interval} ago" if interval else "",
        ago_comma=f", {interval} ago" if interval else "",
        over=f" over {interval}" if interval else "",
    )


def nodule_lines(nodule: NoduleFinding, index: int, chooser: Chooser) -> list[Piece]:
    """Pieces of one nodule's report line: a main sentence and its follow-up sentences."""
    style = chooser.style

    def piece(text: str, field: str | None = None) -> Piece:
        return Piece(text, field, index if field else -1)

    template = chooser.pick(style.templates)
    telegraphic = template == "telegraphic"
    pre: list[Piece] = []  # adjectives before the noun
    post: list[list[Piece]] = []  # phrases after the location, each led by its joiner
    sentences: list[list[Piece]] = []  # follow-up sentences

    def place(field: str, adjectives: tuple[str, ...], phrases: tuple[str, ...]) -> None:
        if adjectives and not telegraphic and chooser.chance(0.5):
            pre.append(piece(chooser.pick(adjectives), field))
        else:
            post.append([piece(", "), piece(chooser.pick(phrases), field)])

    size = piece(format_size_mm(nodule.mean_diameter_mm, chooser.pick(style.size_formats)), "size")
    size_first = telegraphic or chooser.chance(0.5)
    if size_first:
        size = piece(_adjectival(size.text), "size")
    else:
        lead, trail = chooser.pick(
            ((", measuring ", ""), (", with a mean diameter of ", ""), (" (", ")"))
        )
        post.append([piece(lead), size] + ([piece(trail)] if trail else []))
    attenuation = chooser.pick(ATTENUATION_ADJECTIVES[nodule.attenuation])
    if telegraphic or chooser.chance(0.75):
        pre.append(piece(attenuation, "attenuation"))
    else:
        post.append([piece(", of "), piece(attenuation, "attenuation"), piece(" attenuation")])
    if nodule.solid_component_mm is not None:
        solid = format_size_mm(nodule.solid_component_mm, chooser.pick(style.size_formats))
        lead, core = chooser.pick(
            (
                (", with a ", f"{_adjectival(solid)} solid component"),
                (", with a ", f"solid component of {solid}"),
                (", ", f"solid component measuring {solid}"),
            )
        )
        post.append([piece(lead), piece(core, "solid_component")])
    place("margin", MARGIN_ADJECTIVES[nodule.margin], MARGIN_PHRASES[nodule.margin])
    place("shape", SHAPE_ADJECTIVES[nodule.shape], SHAPE_PHRASES[nodule.shape])

    calcification, fat = nodule.calcification, nodule.contains_fat
    negatives: list[str] = []
    if calcification != "none" or chooser.chance(style.mention_defaults):
        if calcification == "none" and chooser.chance(0.4):
            negatives.append("calcification")
        else:
            place(
                "calcification",
                CALCIFICATION_ADJECTIVES[calcification],
                CALCIFICATION_PHRASES[calcification],
            )
    if nodule.pleural_relation != "none" or chooser.chance(style.mention_defaults):
        relation = nodule.pleural_relation
        place("pleural_relation", PLEURAL_ADJECTIVES[relation], PLEURAL_PHRASES[relation])
    if fat or chooser.chance(style.mention_defaults):
        if not fat and chooser.chance(0.4):
            negatives.append("fat")
        else:
            place("fat", FAT_ADJECTIVES[fat], FAT_PHRASES[fat])
    if nodule.volume_mm3 is not None:
        volume = f"{int(nodule.volume_mm3)} " + chooser.pick(("mm³", "mm3", "cubic millimeters"))
        lead, core, trail = chooser.pick(
            ((" (volume ", volume, ")"), (", with a volume of ", volume, ""))
        )
        post.append([piece(lead), piece(core, "volume")] + ([piece(trail)] if trail else []))

    if negatives == ["calcification", "fat"] and chooser.chance(0.5):
        both = Piece("No calcification or fat", "calcification", index, also=("fat",))
        sentences.append([both])
    else:
        for name in negatives:
            options = (
                CALCIFICATION_NONE_SENTENCES if name == "calcification" else FAT_NONE_SENTENCES
            )
            sentences.append([piece(chooser.pick(options), name)])
    if nodule.change is not None:
        sentences.append([piece(change_sentence(nodule.change, chooser), "change")])

    chooser.shuffle(pre)
    chooser.shuffle(post)
    chooser.shuffle(sentences)
    adjectives = ([size] if size_first else []) + pre
    noun = chooser.pick(NODULE_NOUNS)
    article = "an" if _AN_RE.match(adjectives[0].text if adjectives else noun) else "a"
    names = LOBE_PHRASES[(nodule.side, nodule.lobe)]
    location = [piece(chooser.pick(names if style.abbreviate_lobes else names[:1]), "location")]
    if nodule.slice_index is not None:
        lead, word, trail = chooser.pick(
            ((" (", "image", ")"), (" on ", "image", ""), (" (", "slice", ")"))
        )
        location += [piece(lead), piece(f"{word} {nodule.slice_index}", "slice")]
        location += [piece(trail)] if trail else []
    described: list[Piece] = []
    for adjective in adjectives:
        described += [adjective, piece(" ")]
    trailing = [p for phrase in post for p in phrase]

    if template == "there_is":
        main = [piece(f"There is {article} "), *described, piece(f"{noun} in the "), *location]
    elif template == "is_seen":
        main = [piece(f"{article.capitalize()} "), *described, piece(f"{noun} is seen in the ")]
        main += location
    elif template == "noun_first":
        main = [*described, piece(f"{noun} in the "), *location]
    elif template == "location_first":
        main = [piece("In the "), *location, piece(f", there is {article} "), *described]
        main.append(piece(noun))
    else:
        main = [*location, piece(": "), *described, piece(noun)]
    main = _capitalize_first(main + trailing + [piece(".")])
    for sentence in sentences:
        main += [piece(" "), *_capitalize_first(sentence), piece(".")]
    return main


def _adjectival(size_text: str) -> str:
    """Write "7.3 millimeters" before a noun as "7.3-millimeter" (other formats unchanged)."""
    return size_text.replace(" millimeters", "-millimeter")


def _capitalize_first(pieces: list[Piece]) -> list[Piece]:
    """Upper-case the first character of a sentence (span offsets stay valid)."""
    first = pieces[0]
    text = first.text[:1].upper() + first.text[1:]
    return [Piece(text, first.field, first.nodule, first.also), *pieces[1:]]
