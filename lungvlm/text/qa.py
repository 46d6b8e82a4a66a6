"""Question/answer pairs about one nodule, made from its labels, and how answers are scored.

Stage 3 trains the report decoder on these pairs beside the reports (the decoder reads
``Q: <question> A:`` and writes the answer, cross-attending to the nodule crop's visual tokens);
``lungvlm ask`` asks the same kinds of questions of a segmented nodule.

Kinds of question (:data:`QUESTION_KINDS`): margin, attenuation, size, calcification, location,
risk (the Lung-RADS category) and why (the category with the findings the Lung-RADS rule used:
attenuation, mean diameter, solid component, benign calcification, fat, spiculation).
Answers use the renderer's canonical wording, so :mod:`lungvlm.text.parser` reads them back and
:func:`answer_correct` scores a generated answer against the labels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lungvlm.text.parser import parse_nodule_text
from lungvlm.text.phrases import format_size_mm
from lungvlm.text.vocabulary import (
    ATTENUATION_ADJECTIVES,
    CALCIFICATION_PHRASES,
    LOBE_PHRASES,
    MARGIN_ADJECTIVES,
    PLEURAL_PHRASES,
)

#: Kinds of question, in a fixed order (ids in metrics and the CLI).
QUESTION_KINDS: tuple[str, ...] = (
    "margin",
    "attenuation",
    "size",
    "calcification",
    "location",
    "risk",
    "why",
)

#: Question wordings per kind; the first is the canonical one (``lungvlm ask --kind``).
QUESTIONS: dict[str, tuple[str, ...]] = {
    "margin": (
        "What are the margins of this nodule?",
        "Describe the margin.",
        "Is the margin smooth or spiculated?",
    ),
    "attenuation": (
        "What is the attenuation of this nodule?",
        "Is it solid, part-solid or ground-glass?",
        "What type of nodule is this?",
    ),
    "size": (
        "How large is this nodule?",
        "What is the mean diameter?",
        "What size is it?",
    ),
    "calcification": (
        "Is this nodule calcified?",
        "Is there calcification?",
        "Does it contain calcium?",
    ),
    "location": (
        "Where is this nodule?",
        "Which lobe is it in?",
        "What is the location?",
    ),
    "risk": (
        "What is the Lung-RADS category?",
        "How should this nodule be categorized?",
        "What is the risk category?",
    ),
    "why": (
        "Why this category?",
        "Why is it categorized this way?",
        "Explain the category.",
    ),
}

#: Prompt format fed to the decoder; the answer follows after a space.
PROMPT_TEMPLATE = "Q: {question} A:"
#: Sizes within this many mm (or this fraction, whichever is larger) count as correct.
SIZE_TOLERANCE_MM = 1.5
SIZE_TOLERANCE_FRACTION = 0.2
#: Calcification patterns the Lung-RADS rule treats as benign.
BENIGN_CALCIFICATIONS: tuple[str, ...] = ("central", "diffuse", "popcorn", "laminated")

_CATEGORY_RE = re.compile(r"Lung-RADS\s+(?:category\s+)?(?P<cat>[0-4][ABX]?)\b", re.IGNORECASE)


@dataclass(frozen=True)
class QAPair:
    """One question about a nodule and its reference answer.

    Attributes:
        kind: one of :data:`QUESTION_KINDS`.
        question: the question text.
        answer: the reference answer text.
    """

    kind: str
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        """The decoder prompt (``Q: ... A:``)."""
        return qa_prompt(self.question)


def qa_prompt(question: str) -> str:
    """The decoder prompt for ``question``."""
    question = " ".join(str(question).split())
    if not question:
        raise ValueError("the question is empty")
    return PROMPT_TEMPLATE.format(question=question)


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is a question kind, else raise a ValueError naming the options."""
    if kind not in QUESTION_KINDS:
        raise ValueError(f"question kind {kind!r} is not one of {QUESTION_KINDS}")
    return kind


def _get(labels: Mapping[str, Any] | Any, name: str):
    return labels[name] if isinstance(labels, Mapping) else getattr(labels, name)


def _size(value_mm: float) -> str:
    return format_size_mm(round(float(value_mm), 1), "mm")


def reference_answer(kind: str, labels: Mapping[str, Any] | Any) -> str:
    """The answer to a question of ``kind`` about the nodule described by ``labels``.

    Args:
        kind: one of :data:`QUESTION_KINDS`.
        labels: a nodule's labels (``NoduleLabels`` or its ``to_dict()``): side, lobe,
            mean_diameter_mm, attenuation, solid_component_mm, margin, calcification,
            pleural_relation, contains_fat, lungrads_category.

    Returns:
        One or two sentences in the renderer's canonical wording.
    """
    check_kind(kind)
    attenuation = _get(labels, "attenuation")
    if kind == "margin":
        return f"The margin is {MARGIN_ADJECTIVES[_get(labels, 'margin')][0]}."
    if kind == "attenuation":
        text = f"It is a {ATTENUATION_ADJECTIVES[attenuation][0]} nodule"
        solid = _get(labels, "solid_component_mm")
        if attenuation == "part_solid" and solid is not None:
            text += f" with a {_size(solid)} solid component"
        return text + "."
    if kind == "size":
        return f"It measures {_size(_get(labels, 'mean_diameter_mm'))} in mean diameter."
    if kind == "calcification":
        calcification = _get(labels, "calcification")
        if calcification == "none":
            return "No calcification."
        return f"It has {CALCIFICATION_PHRASES[calcification][1]}."
    if kind == "location":
        lobe = LOBE_PHRASES[(_get(labels, "side"), _get(labels, "lobe"))][0]
        relation = _get(labels, "pleural_relation")
        tail = "" if relation == "none" else f", {PLEURAL_PHRASES[relation][0]}"
        return f"It is in the {lobe}{tail}."
    category = _get(labels, "lungrads_category")
    if kind == "risk":
        return f"Lung-RADS category {category}."
    return f"Lung-RADS category {category}: {_why(labels)}."


def _why(labels) -> str:
    """The findings the Lung-RADS rule reads, in words."""
    attenuation = _get(labels, "attenuation")
    parts = [
        f"{ATTENUATION_ADJECTIVES[attenuation][0]} nodule of "
        f"{_size(_get(labels, 'mean_diameter_mm'))} mean diameter"
    ]
    solid = _get(labels, "solid_component_mm")
    if attenuation == "part_solid" and solid is not None:
        parts.append(f"solid component {_size(solid)}")
    calcification = _get(labels, "calcification")
    if calcification in BENIGN_CALCIFICATIONS:
        parts.append(f"{calcification} calcification, a benign pattern")
    if bool(_get(labels, "contains_fat")):
        parts.append("contains fat")
    if _get(labels, "margin") == "spiculated":
        parts.append("spiculated margin, a suspicious feature")
    return ", ".join(parts)


def sample_qa(labels: Mapping[str, Any] | Any, rng: np.random.Generator) -> QAPair:
    """Draw one question kind and wording uniformly and return the pair for ``labels``."""
    kind = QUESTION_KINDS[int(rng.integers(len(QUESTION_KINDS)))]
    wordings = QUESTIONS[kind]
    question = wordings[int(rng.integers(len(wordings)))]
    return QAPair(kind, question, reference_answer(kind, labels))


def answered_category(answer: str) -> str | None:
    """The Lung-RADS category an answer states ("Lung-RADS category 4A" -> "4A"), or None."""
    match = _CATEGORY_RE.search(answer)
    return match.group("cat").upper() if match else None


def _stated(kind: str, text: str):
    """The value an answer states for a question of ``kind`` (None when it states none)."""
    if kind in ("risk", "why"):
        return answered_category(text)
    parsed = parse_nodule_text(text)
    if kind == "calcification":
        if parsed.calcification is None and re.search(r"\bno calcification\b", text, re.I):
            return "none"
        return parsed.calcification
    if kind == "location":
        return None if parsed.side is None else (parsed.side, parsed.lobe)
    if kind == "size":
        return parsed.mean_diameter_mm
    return getattr(parsed, kind)


def answers_agree(kind: str, answer: str, reference: str) -> bool:
    """Whether ``answer`` states the same value as the ``reference`` answer.

    Both are read with the report parser; sizes agree within :data:`SIZE_TOLERANCE_MM` or
    :data:`SIZE_TOLERANCE_FRACTION` of the reference, whichever is larger; risk and why
    must state the same Lung-RADS category. An answer that states nothing is wrong.

    Raises:
        ValueError: if ``kind`` is unknown or the reference states nothing for it.
    """
    check_kind(kind)
    expected = _stated(kind, reference)
    if expected is None:
        raise ValueError(f"the reference answer {reference!r} states no {kind}")
    got = _stated(kind, answer)
    if got is None:
        return False
    if kind == "size":
        tolerance = max(SIZE_TOLERANCE_MM, SIZE_TOLERANCE_FRACTION * float(expected))
        return abs(float(got) - float(expected)) <= tolerance
    return got == expected


def answer_correct(kind: str, answer: str, labels: Mapping[str, Any] | Any) -> bool:
    """Whether ``answer`` states the labelled value (see :func:`answers_agree`)."""
    return answers_agree(kind, answer, reference_answer(kind, labels))
