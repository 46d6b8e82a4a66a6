"""Allowed values of the findings schema and the phrases the report renderer chooses from.

Every categorical field of :mod:`lungvlm.text.schema` takes its values from a tuple here, and
:mod:`lungvlm.text.renderer` draws its wording from the synonym tables here. The regular
expressions that read the same wording back (plus common radiologist phrasing the renderer never
writes) live in :mod:`lungvlm.text.patterns`.

Wording follows ``shared/reference/report-language.md`` (attenuation, margin, calcification,
location, pleural relation, change since prior) and Lung-RADS v2022 (``lung-rads.md``).
"""

from __future__ import annotations

from lungvlm.labels import ATTENUATIONS

SIDES: tuple[str, ...] = ("right", "left")
#: Lobes; "middle" exists only on the right. The lingula is part of the left upper lobe.
LOBES: tuple[str, ...] = ("upper", "middle", "lower")
NODULE_ATTENUATIONS: tuple[str, ...] = ATTENUATIONS
MARGINS: tuple[str, ...] = ("smooth", "lobulated", "spiculated", "ill_defined")
#: "central", "diffuse" (complete), "popcorn" and "laminated" (concentric rings) are the
#: Lung-RADS benign calcification patterns.
CALCIFICATIONS: tuple[str, ...] = ("none", "central", "diffuse", "popcorn", "laminated")
SHAPES: tuple[str, ...] = ("round", "oval", "irregular")
PLEURAL_RELATIONS: tuple[str, ...] = ("none", "juxtapleural", "perifissural")
CHANGE_STATUSES: tuple[str, ...] = ("new", "stable", "growing", "smaller")
EMPHYSEMA_GRADES: tuple[str, ...] = ("none", "mild", "moderate", "severe")

#: Value of a field that a report leaves unstated. A report that does not mention
#: calcification, pleural contact, fat or emphysema means "none"/False (the usual reading
#: convention, chosen here). Every other nodule field is always stated by the renderer;
#: an unstated change since prior means "no comparison was made" (``change=None``).
OMISSION_DEFAULTS: dict[str, object] = {
    "calcification": "none",
    "pleural_relation": "none",
    "contains_fat": False,
    "emphysema": "none",
}

#: Flat per-nodule fields: the schema's attribute names, with ``change`` spread into three.
#: Parser output and :meth:`NoduleFinding.field_values` use exactly these keys.
NODULE_VALUE_FIELDS: tuple[str, ...] = (
    "side",
    "lobe",
    "mean_diameter_mm",
    "attenuation",
    "solid_component_mm",
    "margin",
    "calcification",
    "shape",
    "pleural_relation",
    "contains_fat",
    "change_status",
    "prior_mean_diameter_mm",
    "interval_months",
    "volume_mm3",
    "slice_index",
)

#: Span fields naming one statement about one nodule, mapped to the value fields it states.
NODULE_SPAN_FIELDS: dict[str, tuple[str, ...]] = {
    "location": ("side", "lobe"),
    "size": ("mean_diameter_mm",),
    "attenuation": ("attenuation",),
    "solid_component": ("solid_component_mm",),
    "margin": ("margin",),
    "calcification": ("calcification",),
    "shape": ("shape",),
    "pleural_relation": ("pleural_relation",),
    "fat": ("contains_fat",),
    "change": ("change_status", "prior_mean_diameter_mm", "interval_months"),
    "volume": ("volume_mm3",),
    "slice": ("slice_index",),
}

#: Span fields of exam-level statements (their spans carry ``nodule_index=-1``).
EXAM_SPAN_FIELDS: dict[str, tuple[str, ...]] = {
    "emphysema": ("emphysema", "laa950_percent"),
    "other": ("other_findings",),
    "category": ("category",),
    "management": ("management",),
}

SPAN_FIELDS: tuple[str, ...] = tuple(NODULE_SPAN_FIELDS) + tuple(EXAM_SPAN_FIELDS)

# ---------------------------------------------------------------------------------------------
# Renderer wording. The first entry of every tuple is the canonical phrase (used when the
# renderer runs without a seed).
# ---------------------------------------------------------------------------------------------

LOBE_PHRASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("right", "upper"): ("right upper lobe", "RUL", "upper lobe of the right lung"),
    ("right", "middle"): ("right middle lobe", "RML", "middle lobe of the right lung"),
    ("right", "lower"): ("right lower lobe", "RLL", "lower lobe of the right lung"),
    ("left", "upper"): ("left upper lobe", "LUL", "upper lobe of the left lung"),
    ("left", "lower"): ("left lower lobe", "LLL", "lower lobe of the left lung"),
}

NODULE_NOUNS: tuple[str, ...] = ("nodule", "pulmonary nodule", "nodular opacity")

ATTENUATION_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "solid": ("solid",),
    "part_solid": ("part-solid", "part solid", "partly solid"),
    "ground_glass": ("ground-glass", "non-solid", "pure ground-glass", "nonsolid"),
}

MARGIN_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "smooth": ("smooth", "smoothly marginated", "well-circumscribed"),
    "lobulated": ("lobulated",),
    "spiculated": ("spiculated",),
    "ill_defined": ("ill-defined", "poorly defined"),
}
MARGIN_PHRASES: dict[str, tuple[str, ...]] = {
    "smooth": ("with smooth margins", "with a smooth margin", "smooth margin"),
    "lobulated": ("with lobulated margins", "with a lobulated margin", "lobulated margin"),
    "spiculated": ("with spiculated margins", "with a spiculated margin", "spiculated margin"),
    "ill_defined": ("with ill-defined margins", "with indistinct margins", "indistinct margin"),
}

SHAPE_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "round": ("round", "rounded"),
    "oval": ("oval", "ovoid"),
    "irregular": ("irregular", "irregularly shaped"),
}
SHAPE_PHRASES: dict[str, tuple[str, ...]] = {
    "round": ("round in shape", "round shape"),
    "oval": ("oval in shape", "oval shape"),
    "irregular": ("irregular in shape", "irregular shape"),
}

#: Pre-noun forms exist only for some calcification patterns.
CALCIFICATION_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "none": ("noncalcified", "non-calcified"),
    "central": ("centrally calcified",),
    "diffuse": ("diffusely calcified", "completely calcified"),
    "popcorn": (),
    "laminated": (),
}
CALCIFICATION_PHRASES: dict[str, tuple[str, ...]] = {
    "none": ("without calcification", "with no calcification", "no calcification"),
    "central": ("with central calcification", "central calcification"),
    "diffuse": ("with diffuse calcification", "diffuse calcification"),
    "popcorn": ("with popcorn calcification", "popcorn calcification"),
    "laminated": ("with laminated calcification", "with concentric laminated calcification"),
}
CALCIFICATION_NONE_SENTENCES: tuple[str, ...] = ("No calcification", "No internal calcification")

PLEURAL_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "none": ("intraparenchymal",),
    "juxtapleural": ("juxtapleural", "pleural-based"),
    "perifissural": ("perifissural",),
}
PLEURAL_PHRASES: dict[str, tuple[str, ...]] = {
    "none": ("without pleural contact", "not abutting the pleura"),
    "juxtapleural": ("abutting the pleura", "attached to the pleura"),
    "perifissural": ("along a fissure", "abutting the fissure"),
}

FAT_ADJECTIVES: dict[bool, tuple[str, ...]] = {True: ("fat-containing",), False: ()}
FAT_PHRASES: dict[bool, tuple[str, ...]] = {
    True: ("containing macroscopic fat", "with internal fat"),
    False: ("without macroscopic fat", "without internal fat"),
}
FAT_NONE_SENTENCES: tuple[str, ...] = ("No internal fat", "No macroscopic fat")

#: Change-since-prior sentences. ``{prior}`` is a formatted size, ``{interval}`` a clause such
#: as " 12 months ago" (empty when the interval is unknown).
CHANGE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "new": (
        "New since the prior exam{ago}",
        "This nodule is new compared with the prior study{ago}",
        "Not seen on the prior exam{ago}; new",
    ),
    "stable": (
        "Stable compared with prior {prior}{ago}",
        "Unchanged from {prior} on the prior exam{ago}",
        "Stable (previously {prior}{ago_comma})",
    ),
    "growing": (
        "Increased from {prior}{over}",
        "Growing; previously {prior}{ago}",
        "Enlarged from {prior} on the prior exam{ago}",
    ),
    "smaller": (
        "Decreased from {prior}{over}",
        "Smaller than on the prior exam, previously {prior}{ago_comma}",
        "Decreased in size from {prior}{over}",
    ),
}

NO_NODULE_SENTENCES: tuple[str, ...] = (
    "No pulmonary nodules are identified",
    "No pulmonary nodules",
    "No suspicious pulmonary nodules are seen",
)

EMPHYSEMA_ADJECTIVES: dict[str, str] = {
    "none": "No",
    "mild": "Mild",
    "moderate": "Moderate",
    "severe": "Severe",
}
