"""Label definitions shared by data, models and checkpoints.

These are saved with every checkpoint, so inference decodes head outputs exactly as training
encoded the targets.
"""

from __future__ import annotations

#: Lung-RADS v2022 categories in increasing order of suspicion (an ordinal scale).
LUNGRADS_CATEGORIES: tuple[str, ...] = ("0", "1", "2", "3", "4A", "4B", "4X")

#: Radiological attributes predicted by the concept head, LIDC-IDRI 1-5 style ratings
#: (calcification and internal structure use the LIDC scales 1-6 and 1-4, rescaled to [0, 1]).
CONCEPT_NAMES: tuple[str, ...] = (
    "subtlety",
    "internal_structure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
)

#: Highest value of each concept's LIDC scale (the lowest is always 1).
CONCEPT_SCALE_MAX: dict[str, int] = {
    "subtlety": 5,
    "internal_structure": 4,
    "calcification": 6,
    "sphericity": 5,
    "margin": 5,
    "lobulation": 5,
    "spiculation": 5,
    "texture": 5,
}

#: Attenuation classes of a nodule (Lung-RADS / BTS wording).
ATTENUATIONS: tuple[str, ...] = ("solid", "part_solid", "ground_glass")

#: Month boundaries of the discrete-time growth (survival) model: interval j is
#: (GROWTH_BINS_MONTHS[j], GROWTH_BINS_MONTHS[j + 1]].
GROWTH_BINS_MONTHS: tuple[float, ...] = (0.0, 3.0, 6.0, 9.0, 12.0, 18.0, 24.0)


def lungrads_index(category: str) -> int:
    """Return the ordinal index of a Lung-RADS category string ("0" ... "4X").

    Raises:
        ValueError: if ``category`` is not one of :data:`LUNGRADS_CATEGORIES`.
    """
    if category not in LUNGRADS_CATEGORIES:
        raise ValueError(
            f"category={category!r} is not a Lung-RADS category; expected one of "
            f"{LUNGRADS_CATEGORIES}"
        )
    return LUNGRADS_CATEGORIES.index(category)


def concept_to_unit(name: str, rating: float) -> float:
    """Map a LIDC-style rating (1 .. scale max) of concept ``name`` to [0, 1]."""
    if name not in CONCEPT_SCALE_MAX:
        raise ValueError(f"name={name!r} is not a concept; expected one of {CONCEPT_NAMES}")
    top = CONCEPT_SCALE_MAX[name]
    if not 1 <= rating <= top:
        raise ValueError(f"rating={rating!r} for {name!r} is outside its scale 1..{top}")
    return (rating - 1.0) / (top - 1.0)


#: Sizes of generated phantom chests: "default" (a realistic chest) and "tiny" (tests, quick
#: looks). The commands, the data module and the whole-scan validation callback share them.
PHANTOM_SIZES: tuple[str, ...] = ("default", "tiny")
