"""Regular expressions that read report wording back into findings fields.

They cover every phrase in :mod:`lungvlm.text.vocabulary` plus common radiologist phrasing the
renderer never writes ("8 x 6 mm", "subsolid", "semi-solid", "RLL", "lingula", "noncalcified",
"LR 4B", sizes in cm). Each field has one alternation of named groups; the group name is the
value, or ``skip_*`` for wording that mentions the field without stating a value (for example
"no spiculation", "irregular margins", "partially calcified"). Alternatives that start at the
same character are listed longest first; :mod:`lungvlm.text.parser` takes the first match in text
order, so a negation that precedes its noun wins ("not calcified" before "calcified").

Conventions chosen here (not from a guideline): plain "calcified" means completely (diffusely)
calcified; "trace"/"minimal" emphysema is graded mild and "marked"/"advanced"/"confluent" severe;
"subsolid" is part-solid when a solid component size is given and unknown otherwise.
"""

from __future__ import annotations

import re

_FLAGS = re.IGNORECASE

#: A decimal number ("7", "7.3", ".7").
NUMBER = r"(?:\d+(?:\.\d+)?|\.\d+)"
_UNIT = r"(?:mm|millimet(?:er|re)s?|cm|centimet(?:er|re)s?)(?![\w³²^])"


def size_pattern(tag: str) -> str:
    """A size of one to three dimensions ("7 mm", "0.73 cm", "8 x 6 mm", "8 mm x 6 mm").

    Groups ``{tag}a``/``{tag}b``/``{tag}c`` hold the numbers and ``{tag}ua``/``{tag}ub``/
    ``{tag}uc`` their units; at least the last dimension carries a unit.
    """
    sep = r"\s*(?:[x×*]|by)\s*"
    return (
        rf"(?<![\w.])(?P<{tag}a>{NUMBER})(?:\s*-?\s*(?P<{tag}ua>{_UNIT}))?"
        rf"(?:{sep}(?P<{tag}b>{NUMBER})(?:\s*(?P<{tag}ub>{_UNIT}))?"
        rf"(?:{sep}(?P<{tag}c>{NUMBER})(?:\s*(?P<{tag}uc>{_UNIT}))?)?)?"
    )


SIZE_RE = re.compile(size_pattern("s"), _FLAGS)

_COMPONENT = r"solid\s+(?:component|portion|part|core|element)s?\b"
#: "5 mm solid component" first, then "solid component (measuring) 5 mm"; a comma ends the
#: phrase, so "with a 5 mm solid component, measuring 12 mm" keeps 12 mm as the total size.
SOLID_COMPONENT_RES = (
    re.compile(size_pattern("s") + rf"\)?\s+{_COMPONENT}", _FLAGS),
    re.compile(
        rf"\b{_COMPONENT}(?:\s*(?:which\s+|that\s+)?(?:measuring|measures|measured|of|is|"
        rf"approximately|about|with\s+a\s+mean\s+diameter\s+of|mean\s+diameter))*\s*[:=(]?\s*"
        + size_pattern("s"),
        _FLAGS,
    ),
)

PRIOR_SIZE_RES = (
    re.compile(
        r"\b(?:from|previously(?:\s+measur(?:ing|ed))?|prior(?:\s+(?:exam|study|CT|scan|size|"
        r"measurement))?|was|formerly)\s*(?:of\s+|:\s*|=\s*|\(\s*)?(?:approximately\s+|about\s+)?"
        + size_pattern("s"),
        _FLAGS,
    ),
    re.compile(
        size_pattern("s") + r"\s+(?:on|at|in)\s+(?:the\s+)?(?:prior|previous|earlier)\b", _FLAGS
    ),
)

VOLUME_RE = re.compile(
    rf"(?<![\w.])(?P<v>{NUMBER})\s*(?:(?P<mm3>mm3|mm³|mm\^3|cu\.?\s*mm|cubic\s+(?:mm|millimet(?:er|re)s?))"
    r"|(?P<cm3>cm3|cm³|cc|ml|cubic\s+centimet(?:er|re)s?))(?!\w)",
    _FLAGS,
)

SLICE_RE = re.compile(
    r"\b(?:series\s*\d+\s*[,/;]?\s*)?(?:image|img|im|slice)\s*(?:#|no\.?|number)?\s*:?\s*"
    r"(?P<i>\d+)\b",
    _FLAGS,
)

#: Spelled-out interval counts ("one year", "a month", "six months").
WORD_NUMBERS: dict[str, int] = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "six": 6,
    "nine": 9,
    "twelve": 12,
    "eighteen": 18,
}
INTERVAL_RE = re.compile(
    rf"(?:(?<![\w.])(?P<n>{NUMBER})|\b(?P<w>{'|'.join(WORD_NUMBERS)}))\s*-?\s*"
    r"(?P<u>months?|mos?\b\.?|years?|yrs?\b\.?)(?!\w)",
    _FLAGS,
)


def _alternation(table: dict[str, str]) -> re.Pattern[str]:
    """One regex of named alternatives, each wrapped in word boundaries."""
    return re.compile("|".join(rf"\b(?P<{name}>{rx})\b" for name, rx in table.items()), _FLAGS)


LOCATION_RE = re.compile(
    r"\b(?P<side>right|left)\s+(?P<lobe>upper|middle|lower)[- ]lobes?\b"
    r"|\b(?P<lobe_of>upper|middle|lower)\s+lobe\s+of\s+the\s+(?P<side_of>right|left)\s+lung\b"
    r"|\b(?P<abbr>(?-i:R[UML]L|L[UL]L))\b"
    r"|\b(?P<lingula>lingula|lingular)\b"
    r"|\b(?P<middle>middle\s+lobe)\b",
    _FLAGS,
)
ABBREVIATED_LOBES: dict[str, tuple[str, str]] = {
    "RUL": ("right", "upper"),
    "RML": ("right", "middle"),
    "RLL": ("right", "lower"),
    "LUL": ("left", "upper"),
    "LLL": ("left", "lower"),
}

ATTENUATION_RE = _alternation(
    {
        "skip_component": r"solid\s+(?:component|portion|part|core|element)s?",
        "part_solid": r"part(?:ly|ially)?[- ]?solid|semi[- ]?solid|mixed[- ](?:attenuation|density)"
        r"|mixed\s+solid\s+and\s+ground[- ]?glass",
        "subsolid": r"sub[- ]?solid",
        "ground_glass": r"(?:pure\s+)?ground[- ]?glass|non[- ]?solid|GGNs?|GGOs?",
        "solid": r"solid",
    }
)

MARGIN_RE = _alternation(
    {
        "skip_negated": r"(?:no|without)\s+(?:evidence\s+of\s+)?(?:spiculation|lobulation)s?",
        "skip_irregular": r"irregular(?:ly)?\s+margin(?:s|ed|ated)?",
        "ill_defined": r"ill[- ]defined|poorly[- ](?:defined|marginated|circumscribed)"
        r"|indistinct|fuzzy|blurred",
        "smooth": r"smooth(?:ly)?(?:[- ]marginated)?|well[- ](?:defined|circumscribed|marginated)"
        r"|sharply\s+(?:defined|marginated|circumscribed)|circumscribed",
        "lobulated": r"(?:micro)?lobulated|lobular|lobulations?",
        "spiculated": r"spiculated|spiculations?|spiculae|spicular",
    }
)

SHAPE_RE = _alternation(
    {
        "skip_margin": r"irregular(?:ly)?\s+margin(?:s|ed|ated)?",
        "round": r"round(?:ed)?|spherical",
        "oval": r"oval|ovoid|elliptical|ellipsoid",
        "irregular": r"irregular(?:ly)?(?:[- ]shaped)?",
    }
)

_INNER = r"(?:internal\s+|intralesional\s+|macroscopic\s+|any\s+)?"
CALCIFICATION_RE = _alternation(
    {
        "none": rf"(?:no|without)\s+(?:evidence\s+of\s+)?{_INNER}calcifi(?:cations?|ed)"
        rf"|(?:no|without)\s+{_INNER}fat\s+or\s+calcifications?"
        r"|not\s+calcified|non[- ]?calcified|un[- ]?calcified",
        "skip_partial": r"(?:partial(?:ly)?|eccentric(?:ally)?|punctate|stippled)\s+calcifi\w*",
        "central": r"central(?:ly)?\s+calcifi\w*",
        "diffuse": r"(?:diffuse(?:ly)?|complete(?:ly)?|dense(?:ly)?)\s+calcifi\w*"
        r"|calcified\s+granuloma",
        "popcorn": r"popcorn(?:[- ]like|[- ]type)?\s+calcifi\w*",
        "laminated": r"(?:concentric\s+)?(?:laminated|lamellated)\s+calcifi\w*"
        r"|concentric(?:[- ]ring)?\s+calcifi\w*",
        "calcified": r"calcified",
    }
)

PLEURAL_RE = _alternation(
    {
        "none": r"intra[- ]?parenchymal|(?:without|no)\s+pleural\s+(?:contact|attachment)"
        r"|not\s+(?:pleural[- ]based|juxta[- ]?pleural|(?:abutting|attached\s+to|touching)\s+"
        r"the\s+pleura)|(?:separate|away)\s+from\s+the\s+pleura",
        "juxtapleural": r"juxta[- ]?pleural|pleural[- ](?:based|attached)"
        r"|(?:abutting|attached\s+to|contacting|touching)\s+the\s+(?:costal\s+|mediastinal\s+"
        r"|diaphragmatic\s+|visceral\s+)?pleura",
        "perifissural": r"peri[- ]?fissural|fissural"
        r"|(?:along|abutting|on|attached\s+to|contacting|touching)\s+(?:the\s+|a\s+)?"
        r"(?:(?:minor|major|horizontal|oblique|right|left)\s+)*fissure",
    }
)

FAT_RE = _alternation(
    {
        "absent": rf"(?:no|without)\s+{_INNER}(?:fat|calcification\s+or\s+{_INNER}fat)"
        r"|not\s+contain\s+(?:any\s+)?(?:macroscopic\s+)?fat",
        "present": rf"contain(?:s|ing)?\s+{_INNER}fat|fat[- ]containing|with\s+{_INNER}fat"
        r"|fat\s+attenuation|fatty",
    }
)

CHANGE_RE = _alternation(
    {
        "stable": r"no\s+(?:significant\s+|interval\s+|appreciable\s+)*(?:change|growth|enlargement)"
        r"|unchanged|stable|not\s+(?:significantly\s+)?changed",
        "new": r"new(?:ly\s+(?:seen|identified|developed|appeared|apparent))?"
        r"|not\s+(?:seen|present|visible)\s+(?:on|in)\s+(?:the\s+)?(?:prior|previous)"
        r"|not\s+previously\s+(?:seen|present|visible|identified)",
        "growing": r"increased|increasing|grown|growing|grew|enlarged|enlarging|larger"
        r"|interval\s+growth|growth",
        "smaller": r"decreased|decreasing|smaller|reduced|shrunk|shrinking|shrank|regressed"
        r"|regressing|diminished",
    }
)

#: Wording that states a nodule field other than a size (sizes are checked by the parser).
DESCRIPTOR_RES: tuple[re.Pattern[str], ...] = (
    LOCATION_RE,
    ATTENUATION_RE,
    MARGIN_RE,
    SHAPE_RE,
    CALCIFICATION_RE,
    PLEURAL_RE,
    FAT_RE,
    CHANGE_RE,
    INTERVAL_RE,
)

NODULE_NOUN_RE = re.compile(
    r"\b(?:nodules?|nodular|opacit(?:y|ies)|GGNs?|GGOs?|lesions?|mass(?:es)?|granulomas?)\b",
    _FLAGS,
)
NO_NODULE_RE = re.compile(
    r"^\s*(?:there\s+(?:is|are)\s+)?no\s+(?:(?:new|other|additional|further|suspicious|"
    r"discrete|pulmonary|lung|significant|noncalcified|solid|definite)\s+)*"
    r"(?:nodules?|lesions?|masses)\b",
    _FLAGS,
)
#: Words that place a sentence outside the lung parenchyma (never a nodule statement).
EXTRAPULMONARY_RE = re.compile(
    r"\b(?:thyroid|liver|hepatic|kidneys?|renal|adrenals?|spleen|splenic|pancrea\w*|breasts?|"
    r"coronary|aort\w*|pericardi\w*|esophag\w*|hiatal|vertebra\w*|(?<!intrapulmonary )lymph\w*)\b",
    _FLAGS,
)
EMPHYSEMA_SENTENCE_RE = re.compile(
    r"\bemphysema(?:tous)?\b|\bLAA\b|[-−–]\s*950\s*(?:HU)?\b", _FLAGS
)
EMPHYSEMA_GRADE_RE = _alternation(
    {
        "none": r"(?:no|without)\s+(?:evidence\s+of\s+|significant\s+|definite\s+)?emphysema"
        r"|emphysema\s+(?:is\s+)?(?:not\s+(?:seen|present|identified)|absent)",
        "mild": r"trace|minimal|mild|slight",
        "moderate": r"moderate",
        "severe": r"severe|marked|advanced|extensive|confluent|substantial",
    }
)
PERCENT_RE = re.compile(rf"(?<![\w.])(?P<p>{NUMBER})\s*%")

CATEGORY_RE = re.compile(
    r"\b(?:lung[- ]?rads|LR)(?:\s*(?:v(?:ersion)?\s*)?(?:\d{4}|1\.1))?\s*"
    r"(?:assessment\s+)?(?:category|cat\.?)?\s*[:#]?\s*"
    r"(?P<c>0|1|2|3|4\s*A|4\s*B|4\s*X)(?P<s>\s*S)?(?!\w)",
    _FLAGS,
)
MANAGEMENT_PREFIX_RE = re.compile(
    r"^[\s:;,.\-–—]*(?:(?:recommend(?:ation|ed)?s?|management|follow[- ]?up)\s*(?:is\s+)?"
    r"[:\-–]?\s*)?",
    _FLAGS,
)

SECTION_RE = re.compile(
    r"^[ \t]*(?P<name>findings|impression|conclusions?|assessment|summary|technique|comparison|"
    r"indications?|(?:clinical\s+)?history)[ \t]*:",
    _FLAGS | re.MULTILINE,
)
IMPRESSION_SECTIONS: tuple[str, ...] = (
    "impression",
    "conclusion",
    "conclusions",
    "assessment",
    "summary",
)
IGNORED_SECTIONS: tuple[str, ...] = (
    "technique",
    "comparison",
    "indication",
    "indications",
    "history",
    "clinical history",
)
LIST_MARKER_RE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)")
ABBREVIATION_RE = re.compile(
    r"\b(?:approx|e\.g|i\.e|vs|im|img|no|nos|dr|ca|fig|ser|cf|max|min)$", _FLAGS
)
