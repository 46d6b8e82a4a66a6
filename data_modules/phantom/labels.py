"""Per-nodule labels of a phantom, all measured on the rendered image.

Size, volume and solid component come from :mod:`lungvlm.clinical.measure` on the rendered
binary mask and image; the Lung-RADS category from :func:`lungvlm.clinical.lungrads.categorize`
on those measured values; LIDC-style characteristics (1-5 scales; calcification 1-6 with 6 =
absent) from the generative parameters (procedural) or the reader's ratings (real shapes).

Project conventions (documented choices, not guideline rules):

- Attenuation: the generative kind; a part-solid nodule whose solid component (> -300 HU) does
  not survive rendering is labelled ground glass. Calcified nodules are solid.
- Shape: "irregular" if spiculated or lobulated, else "oval" if measured short/long < 0.8,
  else "round".
- ``juxtapleural_benign``: juxtapleural or perifissural, solid, smooth, round or oval, no
  calcification (Lung-RADS v2022 juxtapleural rule; ``categorize`` applies the < 10 mm bound).
  ``suspicious_features``: spiculation (an example given for 4X in ``reference/lung-rads.md``).
- Growth (survival) label: the time at which the mean diameter would exceed the measured one by
  1.5 mm (the Lung-RADS growth amount) under exponential volume growth with the nodule's
  doubling time, ``t = 3 VDT log2((D + 1.5) / D)``, censored at 24 months.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from data_modules.phantom.nodules import NoduleSpec
from lungvlm.clinical.lungrads import categorize
from lungvlm.clinical.measure import measure_nodule, solid_component_diameter_mm
from lungvlm.labels import CONCEPT_NAMES

DAYS_PER_MONTH: float = 30.4375
GROWTH_HORIZON_MONTHS: float = 24.0
GROWTH_AMOUNT_MM: float = 1.5
BENIGN_CALCIFICATIONS: tuple[str, ...] = ("central", "diffuse", "popcorn", "laminated")
_CALC_RATING = {"popcorn": 1, "laminated": 2, "diffuse": 3, "central": 5, "none": 6}
_LIDC_CALC = {1: "popcorn", 2: "laminated", 3: "diffuse", 5: "central", 6: "none"}
_LIDC_KEYS = {"internal_structure": "internalStructure"}


@dataclass
class NoduleLabels:
    """Everything known about one rendered nodule (sizes in mm, volume in mm³).

    ``malignant`` is None when the label is absent; ``characteristics`` maps
    :data:`lungvlm.labels.CONCEPT_NAMES` to LIDC ratings.
    """

    index: int
    kind: str
    centroid_voxel: tuple[float, float, float]
    centroid_lps_mm: tuple[float, float, float]
    side: str
    lobe: str
    long_axis_mm: float
    short_axis_mm: float
    mean_diameter_mm: float
    volume_mm3: float
    axial_slice: int
    attenuation: str
    solid_component_mm: float | None
    margin: str
    shape: str
    calcification: str
    pleural_relation: str
    contains_fat: bool
    mean_hu: float
    characteristics: dict[str, int]
    malignant: bool | None
    malignancy_score: float | None
    lungrads_category: str
    lungrads_management: str
    lungrads_status: str
    vdt_days: float
    growth_event: bool
    growth_time_months: float
    shape_source: str
    lidc_annotation_id: int | None = None
    change: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (infinite VDT becomes None)."""
        d = asdict(self)
        d["vdt_days"] = None if math.isinf(self.vdt_days) else self.vdt_days
        return d


def growth_label(mean_diameter_mm: float, vdt_days: float) -> tuple[bool, float]:
    """(event, time in months) of Lung-RADS growth under exponential growth, censored at 24."""
    if not math.isfinite(vdt_days) or vdt_days <= 0:
        return False, GROWTH_HORIZON_MONTHS
    days = 3.0 * vdt_days * math.log2((mean_diameter_mm + GROWTH_AMOUNT_MM) / mean_diameter_mm)
    months = days / DAYS_PER_MONTH
    return (True, months) if months <= GROWTH_HORIZON_MONTHS else (False, GROWTH_HORIZON_MONTHS)


def _procedural_characteristics(
    spec: NoduleSpec, attenuation: str, mean_hu: float, diameter: float, ratio: float, shape: str
) -> dict[str, int]:
    contrast = float(np.clip((mean_hu + 850.0) / 900.0, 0.0, 1.0))
    size = float(np.clip((diameter - 3.0) / 17.0, 0.0, 1.0))
    sphericity = 1 + int(round(4 * np.clip((ratio - 0.4) / 0.55, 0.0, 1.0)))
    margin = {
        "smooth": 5,
        "lobulated": 4,
        "spiculated": 3 if len(spec.spicules) < 10 else 2,
        "ill_defined": 1,
    }[spec.margin]
    return {
        "subtlety": 1 + int(round(4 * (0.6 * contrast + 0.4 * size))),
        "internal_structure": 1,
        "calcification": _CALC_RATING[spec.calcification],
        "sphericity": max(1, sphericity - (1 if shape == "irregular" else 0)),
        "margin": margin,
        "lobulation": 1 if not len(spec.lobes) else int(min(5, 2 + len(spec.lobes) - 3)),
        "spiculation": 1
        if not len(spec.spicules)
        else int(np.clip(2 + round(3 * (len(spec.spicules) - 5) / 9), 2, 5)),
        "texture": {"ground_glass": 1, "part_solid": 3, "solid": 5}[attenuation],
    }


def measure_labels(
    spec: NoduleSpec,
    index: int,
    mask: NDArray[np.bool_],
    image_hu: NDArray[np.float32],
    spacing_mm: tuple[float, float, float],
    *,
    offset_zyx: tuple[int, int, int],
    centroid_lps_mm: tuple[float, float, float],
    side: str,
    lobe: str,
    status: str = "baseline",
    change: dict[str, Any] | None = None,
) -> NoduleLabels:
    """Labels of one rendered nodule from its mask and the image around it.

    Args:
        spec: the nodule's generative parameters.
        index: nodule index in its case.
        mask: binary mask (z, y, x) of the nodule (a crop of the case).
        image_hu: rendered image (z, y, x) in HU, same crop.
        spacing_mm: spacing (z, y, x).
        offset_zyx: index of the crop's first voxel in the case volume.
        centroid_lps_mm: world centroid of the mask.
        side: "right" or "left"; lobe: "upper", "middle" or "lower".
        status: Lung-RADS status ("baseline", "new", "growing", "stable").
        change: comparison with the prior scan for the report, or None.
    """
    m = measure_nodule(mask, spacing_mm)
    attenuation = "solid" if spec.kind == "calcified" else spec.kind
    solid_mm = None
    if attenuation == "part_solid":
        solid_mm = min(solid_component_diameter_mm(mask, image_hu, spacing_mm), m.mean_diameter_mm)
        if solid_mm <= 0.05:
            attenuation, solid_mm = "ground_glass", None
    ratio = m.short_axis_mm / max(m.long_axis_mm, 1e-6)
    irregular = spec.margin in ("spiculated", "lobulated")
    shape = "irregular" if irregular else ("oval" if ratio < 0.8 else "round")
    mean_hu = float(image_hu[mask].mean())
    lidc = spec.lidc
    if lidc is not None:
        ratings = {name: int(lidc.ratings[_LIDC_KEYS.get(name, name)]) for name in CONCEPT_NAMES}
        malignant, score, source = lidc.malignant, None, "lidc"
    else:
        ratings = _procedural_characteristics(
            spec, attenuation, mean_hu, m.mean_diameter_mm, ratio, shape
        )
        malignant, score, source = spec.malignant, spec.malignancy_score, "procedural"
    contains_fat = ratings["internal_structure"] == 3
    benign_calc = spec.calcification in BENIGN_CALCIFICATIONS
    juxta = (
        spec.pleural_relation != "none" and attenuation == "solid" and spec.margin == "smooth"
        and shape in ("round", "oval") and spec.calcification == "none"
    )  # fmt: skip
    result = categorize(
        attenuation=attenuation,
        mean_diameter_mm=m.mean_diameter_mm,
        solid_component_mm=solid_mm,
        status=status,
        benign_calcification=benign_calc,
        contains_fat=contains_fat,
        juxtapleural_benign=juxta,
        suspicious_features=spec.margin == "spiculated",
    )
    event, months = growth_label(m.mean_diameter_mm, spec.vdt_days)
    cz, cy, cx = m.centroid_voxel
    return NoduleLabels(
        index=index,
        kind=spec.kind,
        centroid_voxel=(cz + offset_zyx[0], cy + offset_zyx[1], cx + offset_zyx[2]),
        centroid_lps_mm=tuple(float(v) for v in centroid_lps_mm),
        side=side,
        lobe=lobe,
        long_axis_mm=m.long_axis_mm,
        short_axis_mm=m.short_axis_mm,
        mean_diameter_mm=m.mean_diameter_mm,
        volume_mm3=m.volume_mm3,
        axial_slice=m.axial_slice + offset_zyx[0],
        attenuation=attenuation,
        solid_component_mm=solid_mm,
        margin=spec.margin,
        shape=shape,
        calcification=spec.calcification,
        pleural_relation=spec.pleural_relation,
        contains_fat=contains_fat,
        mean_hu=mean_hu,
        characteristics=ratings,
        malignant=malignant,
        malignancy_score=score,
        lungrads_category=result.category,
        lungrads_management=result.management,
        lungrads_status=status,
        vdt_days=spec.vdt_days,
        growth_event=event,
        growth_time_months=months,
        shape_source=source,
        lidc_annotation_id=None if lidc is None else int(lidc.annotation_id),
        change=change,
    )


def lidc_calcification(rating: int) -> str:
    """Calcification pattern of a LIDC calcification rating (4, non-central, is not in the bank)."""
    return _LIDC_CALC[int(rating)]
