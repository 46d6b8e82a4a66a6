"""Seeded random :class:`~lungvlm.text.schema.ExamFindings` for tests and phantoms.

Fields are drawn independently within the schema's constraints; the Lung-RADS category is drawn
at random with its v2022 management wording (``shared/reference/lung-rads.md``) and is **not**
derived from the nodules. Callers that need a clinically consistent category must recompute it
with the rules in ``lungvlm.clinical``.
"""

from __future__ import annotations

import math

import numpy as np

from lungvlm.labels import LUNGRADS_CATEGORIES
from lungvlm.text.schema import ExamFindings, Impression, NoduleChange, NoduleFinding
from lungvlm.text.vocabulary import (
    CALCIFICATIONS,
    CHANGE_STATUSES,
    EMPHYSEMA_GRADES,
    MARGINS,
    NODULE_ATTENUATIONS,
    PLEURAL_RELATIONS,
    SHAPES,
)

_WORKUP = (
    "Diagnostic chest CT with or without contrast; PET/CT may be considered if there is a solid "
    "nodule or solid component ≥8 mm; tissue sampling; and/or referral for further clinical "
    "evaluation. Management depends on clinical evaluation, patient preference and probability "
    "of malignancy"
)
#: Lung-RADS v2022 management wording per category (lung-rads.md, "Categories" table).
MANAGEMENT_BY_CATEGORY: dict[str, str] = {
    "0": "Comparison to prior and/or extra screening images; 1–3-month LDCT for suspected "
    "infection or inflammation",
    "1": "12-month screening LDCT",
    "2": "12-month screening LDCT",
    "3": "6-month LDCT",
    "4A": "3-month LDCT; PET/CT may be considered if there is a solid nodule or solid component "
    "≥8 mm",
    "4B": _WORKUP,
    "4X": _WORKUP,
}

#: Non-nodule findings used by the sampler (wording that states no nodule descriptor).
OTHER_FINDINGS: tuple[str, ...] = (
    "Mild coronary artery calcification",
    "Small hiatal hernia",
    "Mild bronchial wall thickening",
    "No pleural effusion",
    "Thoracic aortic atherosclerosis",
    "Degenerative changes of the thoracic spine",
    "Subsegmental atelectasis at the lung bases",
    "Normal heart size",
)

_LOBES: tuple[tuple[str, str], ...] = (
    ("right", "upper"),
    ("right", "middle"),
    ("right", "lower"),
    ("left", "upper"),
    ("left", "lower"),
)


def _tenth(rng: np.random.Generator, low: float, high: float) -> float:
    """A value in [low, high] on the 0.1 grid."""
    return round(float(rng.integers(round(low * 10), round(high * 10) + 1)) / 10.0, 1)


def random_nodule(rng: np.random.Generator) -> NoduleFinding:
    """One random valid nodule (diameters 2-40 mm)."""
    side, lobe = _LOBES[int(rng.integers(len(_LOBES)))]
    size_mm = _tenth(rng, 2.0, 40.0)
    attenuation = str(rng.choice(NODULE_ATTENUATIONS))
    solid_mm = _tenth(rng, 0.5, size_mm) if attenuation == "part_solid" else None
    change = None
    if rng.random() < 0.5:
        status = str(rng.choice(CHANGE_STATUSES))
        interval = None if rng.random() < 0.2 else float(rng.choice((3, 6, 12, 24, 6.5, 13)))
        prior = None
        if status == "stable":
            prior = _tenth(rng, max(0.1, size_mm - 1.0), size_mm + 1.0)
        elif status == "growing":  # size_mm >= 2.0, so a smaller prior exists
            prior = _tenth(rng, 0.1, size_mm - 0.1)
        elif status == "smaller":
            prior = _tenth(rng, size_mm + 0.1, size_mm + 10.0)
        else:
            status = "new"
        change = NoduleChange(status, prior, interval)
    volume = None
    if rng.random() < 0.3:
        volume = float(round(math.pi / 6.0 * size_mm**3)) or 1.0
    return NoduleFinding(
        side=side,
        lobe=lobe,
        mean_diameter_mm=size_mm,
        attenuation=attenuation,
        solid_component_mm=solid_mm,
        margin=str(rng.choice(MARGINS)),
        calcification=str(rng.choice(CALCIFICATIONS)) if rng.random() < 0.4 else "none",
        shape=str(rng.choice(SHAPES)),
        pleural_relation=str(rng.choice(PLEURAL_RELATIONS)),
        contains_fat=bool(rng.random() < 0.1),
        change=change,
        volume_mm3=volume,
        slice_index=int(rng.integers(0, 400)) if rng.random() < 0.4 else None,
    )


def random_exam_findings(rng: np.random.Generator, max_nodules: int = 4) -> ExamFindings:
    """Random valid findings with 0..``max_nodules`` nodules.

    Args:
        rng: source of randomness (``numpy.random.default_rng(seed)``).
        max_nodules: most nodules per exam.
    """
    if max_nodules < 0:
        raise ValueError(f"max_nodules={max_nodules} must be >= 0")
    nodules = [random_nodule(rng) for _ in range(int(rng.integers(0, max_nodules + 1)))]
    laa = _tenth(rng, 0.0, 40.0) if rng.random() < 0.5 else None
    count = int(rng.integers(0, 3))
    others = [str(s) for s in rng.choice(OTHER_FINDINGS, size=count, replace=False)]
    category = str(rng.choice(LUNGRADS_CATEGORIES))
    return ExamFindings(
        nodules=nodules,
        emphysema=str(rng.choice(EMPHYSEMA_GRADES)),
        laa950_percent=laa,
        other_findings=others,
        impression=Impression(category, MANAGEMENT_BY_CATEGORY[category]),
    )
