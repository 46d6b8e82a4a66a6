"""Structured findings of a screening CT: what a report states, as validated dataclasses.

Measurements are normalised on construction to the Lung-RADS v2022 reporting resolution
(``shared/reference/lung-rads.md``): diameters to 0.1 mm, volumes to the nearest whole mm³
(both rounded half up), LAA-950 to 0.1 %, intervals to 0.1 month. The renderer writes these
values exactly, so a report carries every number without loss.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from lungvlm.labels import LUNGRADS_CATEGORIES
from lungvlm.text.vocabulary import (
    CALCIFICATIONS,
    CHANGE_STATUSES,
    EMPHYSEMA_GRADES,
    LOBES,
    MARGINS,
    NODULE_ATTENUATIONS,
    NODULE_VALUE_FIELDS,
    PLEURAL_RELATIONS,
    SHAPES,
    SIDES,
)


def round_half_up(value: float, digits: int) -> float:
    """Round ``value`` to ``digits`` decimals, halves away from zero (7.25 -> 7.3)."""
    quantum = Decimal(1).scaleb(-digits)
    return float(Decimal(repr(float(value))).quantize(quantum, rounding=ROUND_HALF_UP))


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; expected one of {allowed}")


def _positive(name: str, value: object, digits: int) -> float:
    """Check that ``value`` is a finite real > 0 and round it to ``digits`` decimals."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}={value!r} must be a real number")
    if not math.isfinite(value) or round_half_up(value, digits) <= 0:
        raise ValueError(f"{name}={value!r} must be > 0 after rounding to {digits} decimals")
    return round_half_up(value, digits)


def _clean_sentence(name: str, value: object) -> str:
    """Strip whitespace and one final full stop; reject empty or multi-line text."""
    if not isinstance(value, str):
        raise TypeError(f"{name}={value!r} must be a string")
    text = value.strip()
    text = text[:-1].rstrip() if text.endswith(".") else text
    if not text or "\n" in text:
        raise ValueError(f"{name}={value!r} must be non-empty single-line text")
    return text


@dataclass(frozen=True)
class NoduleChange:
    """Comparison of a nodule with a prior exam.

    Attributes:
        status: "new", "stable", "growing" or "smaller" (as stated by the reader; the Lung-RADS
            growth definition, >1.5 mm within 12 months, is applied by ``lungvlm.clinical``).
        prior_mean_diameter_mm: mean diameter on the prior exam; None for a new nodule and
            required otherwise.
        interval_months: time since the prior exam, or None when not stated.
    """

    status: str
    prior_mean_diameter_mm: float | None = None
    interval_months: float | None = None

    def __post_init__(self) -> None:
        _choice("status", self.status, CHANGE_STATUSES)
        prior = self.prior_mean_diameter_mm
        if self.status == "new" and prior is not None:
            raise ValueError(f"prior_mean_diameter_mm={prior!r} must be None for a new nodule")
        if self.status != "new":
            if prior is None:
                raise ValueError(
                    f"prior_mean_diameter_mm=None: a {self.status!r} nodule needs its prior size"
                )
            object.__setattr__(
                self, "prior_mean_diameter_mm", _positive("prior_mean_diameter_mm", prior, 1)
            )
        if self.interval_months is not None:
            interval = _positive("interval_months", self.interval_months, 1)
            object.__setattr__(self, "interval_months", interval)


@dataclass(frozen=True, kw_only=True)
class NoduleFinding:
    """Everything a report states about one nodule.

    Attributes:
        side: "right" or "left".
        lobe: "upper", "middle" (right only) or "lower"; the lingula is left upper.
        mean_diameter_mm: mean of long and short axis, 0.1 mm resolution.
        attenuation: "solid", "part_solid" or "ground_glass".
        solid_component_mm: mean diameter of the solid component; required iff part-solid,
            and at most ``mean_diameter_mm``.
        margin: "smooth", "lobulated", "spiculated" or "ill_defined".
        calcification: one of :data:`CALCIFICATIONS` ("none" when unstated in a report).
        shape: "round", "oval" or "irregular".
        pleural_relation: "none", "juxtapleural" or "perifissural".
        contains_fat: macroscopic fat in the nodule.
        change: comparison with a prior exam, None when no comparison is made. A "growing"
            nodule must be larger than its prior size and a "smaller" one smaller.
        volume_mm3: volume, whole mm³, or None.
        slice_index: axial image (slice) number, or None.
    """

    side: str
    lobe: str
    mean_diameter_mm: float
    attenuation: str
    solid_component_mm: float | None = None
    margin: str
    calcification: str = "none"
    shape: str
    pleural_relation: str = "none"
    contains_fat: bool = False
    change: NoduleChange | None = None
    volume_mm3: float | None = None
    slice_index: int | None = None

    def __post_init__(self) -> None:
        _choice("side", self.side, SIDES)
        _choice("lobe", self.lobe, LOBES)
        if self.lobe == "middle" and self.side != "right":
            raise ValueError(f"lobe='middle' with side={self.side!r}: only the right lung has one")
        size = _positive("mean_diameter_mm", self.mean_diameter_mm, 1)
        object.__setattr__(self, "mean_diameter_mm", size)
        _choice("attenuation", self.attenuation, NODULE_ATTENUATIONS)
        solid = self.solid_component_mm
        if (self.attenuation == "part_solid") != (solid is not None):
            raise ValueError(
                f"solid_component_mm={solid!r} with attenuation={self.attenuation!r}: "
                "a solid component size is required for, and only for, part_solid nodules"
            )
        if solid is not None:
            solid = _positive("solid_component_mm", solid, 1)
            if solid > size:
                raise ValueError(
                    f"solid_component_mm={solid} exceeds mean_diameter_mm={size}; expected <="
                )
            object.__setattr__(self, "solid_component_mm", solid)
        _choice("margin", self.margin, MARGINS)
        _choice("calcification", self.calcification, CALCIFICATIONS)
        _choice("shape", self.shape, SHAPES)
        _choice("pleural_relation", self.pleural_relation, PLEURAL_RELATIONS)
        if not isinstance(self.contains_fat, bool):
            raise TypeError(f"contains_fat={self.contains_fat!r} must be a bool")
        self._check_change(size)
        if self.volume_mm3 is not None:
            object.__setattr__(self, "volume_mm3", _positive("volume_mm3", self.volume_mm3, 0))
        index = self.slice_index
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            raise TypeError(f"slice_index={index!r} must be an int or None")
        if index is not None and index < 0:
            raise ValueError(f"slice_index={index} must be >= 0")

    def _check_change(self, size: float) -> None:
        change = self.change
        if change is None:
            return
        if not isinstance(change, NoduleChange):
            raise TypeError(f"change={change!r} must be a NoduleChange or None")
        prior = change.prior_mean_diameter_mm
        if change.status == "growing" and not size > prior:
            raise ValueError(f"change: growing from {prior} mm to mean_diameter_mm={size}")
        if change.status == "smaller" and not size < prior:
            raise ValueError(f"change: smaller from {prior} mm to mean_diameter_mm={size}")

    def field_values(self) -> dict[str, Any]:
        """Flat values keyed by :data:`~lungvlm.text.vocabulary.NODULE_VALUE_FIELDS`."""
        change = self.change
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "change"}
        values["change_status"] = change.status if change else None
        values["prior_mean_diameter_mm"] = change.prior_mean_diameter_mm if change else None
        values["interval_months"] = change.interval_months if change else None
        return {name: values[name] for name in NODULE_VALUE_FIELDS}


@dataclass(frozen=True)
class Impression:
    """The exam's Lung-RADS category and its management wording.

    Attributes:
        category: one of :data:`lungvlm.labels.LUNGRADS_CATEGORIES`.
        management: free text, one line, stored without its final full stop (the renderer
            adds it).
    """

    category: str
    management: str

    def __post_init__(self) -> None:
        _choice("category", self.category, LUNGRADS_CATEGORIES)
        object.__setattr__(self, "management", _clean_sentence("management", self.management))


@dataclass(frozen=True, kw_only=True)
class ExamFindings:
    """The findings of one screening exam.

    Attributes:
        nodules: reported nodules, in report order.
        emphysema: visual grade, "none" .. "severe".
        laa950_percent: % of lung voxels below -950 HU, 0.1 % resolution, or None.
        other_findings: other findings, one sentence each (stored without final full stop).
        impression: Lung-RADS category and management.
    """

    nodules: list[NoduleFinding] = field(default_factory=list)
    emphysema: str = "none"
    laa950_percent: float | None = None
    other_findings: list[str] = field(default_factory=list)
    impression: Impression

    def __post_init__(self) -> None:
        nodules = list(self.nodules)
        for i, nodule in enumerate(nodules):
            if not isinstance(nodule, NoduleFinding):
                raise TypeError(f"nodules[{i}]={nodule!r} must be a NoduleFinding")
        object.__setattr__(self, "nodules", nodules)
        _choice("emphysema", self.emphysema, EMPHYSEMA_GRADES)
        laa = self.laa950_percent
        if laa is not None:
            if isinstance(laa, bool) or not isinstance(laa, (int, float)) or not 0 <= laa <= 100:
                raise ValueError(f"laa950_percent={laa!r} must be a number in [0, 100] or None")
            object.__setattr__(self, "laa950_percent", round_half_up(laa, 1))
        others = [
            _clean_sentence(f"other_findings[{i}]", s) for i, s in enumerate(self.other_findings)
        ]
        object.__setattr__(self, "other_findings", others)
        if not isinstance(self.impression, Impression):
            raise TypeError(f"impression={self.impression!r} must be an Impression")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (nested dicts and lists only)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExamFindings:
        """Rebuild (and re-validate) findings written by :meth:`to_dict`.

        Raises:
            ValueError: on unknown or missing keys, or any invalid value.
        """
        _check_keys("findings", data, cls)
        nodules = []
        for i, raw in enumerate(data.get("nodules", [])):
            _check_keys(f"nodules[{i}]", raw, NoduleFinding)
            raw = dict(raw)
            if raw.get("change") is not None:
                _check_keys(f"nodules[{i}].change", raw["change"], NoduleChange)
                raw["change"] = NoduleChange(**raw["change"])
            nodules.append(NoduleFinding(**raw))
        _check_keys("impression", data.get("impression"), Impression)
        return cls(
            nodules=nodules,
            emphysema=data.get("emphysema", "none"),
            laa950_percent=data.get("laa950_percent"),
            other_findings=list(data.get("other_findings", [])),
            impression=Impression(**data["impression"]),
        )


def _check_keys(name: str, data: object, cls: type) -> None:
    """Raise if ``data`` is not a dict whose keys fit the fields of dataclass ``cls``."""
    if not isinstance(data, dict):
        raise TypeError(f"{name}={data!r} must be a dict")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is f.default_factory is MISSING}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}; expected a subset of {sorted(names)}")
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"{name} is missing required keys {missing}")
