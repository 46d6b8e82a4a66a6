"""The versioned ``report.json`` schema of ``lungvlm report``: validated dataclasses.

Every record validates itself on construction and raises ``ValueError`` (bad value) or
``TypeError`` (wrong type) naming the field; :meth:`ExamReport.from_dict` prefixes the JSON
path (``nodules[1].volume_mm3=...``). Field meanings and units: ``docs/report_json_schema.md``.
Versioning is semantic: a reader accepts any ``1.x.y`` document and refuses another major.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar

from lungvlm.labels import ATTENUATIONS, CONCEPT_NAMES, LUNGRADS_CATEGORIES
from lungvlm.text.vocabulary import (
    CALCIFICATIONS,
    CHANGE_STATUSES,
    EMPHYSEMA_GRADES,
    LOBES,
    MARGINS,
    SIDES,
)

REPORT_SCHEMA_VERSION = "1.1.0"
SOURCE_FORMATS: tuple[str, ...] = ("dicom", "nifti", "metaimage", "volume")
#: ``source.identifiers``: the input's path and name were withheld (the default) or kept
#: (``--keep-identifiers``); :mod:`lungvlm.export.identifiers`.
IDENTIFIER_MODES: tuple[str, ...] = ("withheld", "kept")
#: Largest allowed amount by which a probability table may miss a sum of 1.
PROBABILITY_SUM_TOLERANCE = 1e-3


def _choice(name: str, value: object, allowed: tuple[str, ...], optional: bool = False) -> None:
    if optional and value is None:
        return
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; expected one of {allowed}")


def _real(name: str, value: object, low: float | None = None, high: float | None = None,
          open_low: bool = False) -> float:  # fmt: skip
    """A finite real within [low, high] (``(low, high]`` if ``open_low``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}={value!r} must be a real number")
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be finite")
    too_low = low is not None and (value <= low if open_low else value < low)
    if too_low or (high is not None and value > high):
        bracket = "(" if open_low else "["
        raise ValueError(f"{name}={value!r} must lie in {bracket}{low}, {high}]")
    return float(value)


def _optional_real(name: str, value: object, **bounds: Any) -> float | None:
    return None if value is None else _real(name, value, **bounds)


def _text(name: str, value: object, optional: bool = False) -> str | None:
    if optional and value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{name}={value!r} must be a non-empty string")
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be true or false")
    return value


def _triplet(name: str, value: object) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise TypeError(f"{name}={value!r} must be 3 numbers")
    return tuple(_real(f"{name}[{i}]", v) for i, v in enumerate(value))  # type: ignore[return-value]


def _probabilities(name: str, value: object, keys: tuple[str, ...], sums_to_one: bool) -> dict:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}={value!r} must be a mapping of name to probability")
    out = {}
    for key, prob in value.items():
        _choice(f"{name} key", key, keys)
        out[key] = _real(f"{name}[{key!r}]", prob, 0.0, 1.0)
    if sums_to_one and out and abs(sum(out.values()) - 1.0) > PROBABILITY_SUM_TOLERANCE:
        raise ValueError(f"{name} sums to {sum(out.values()):.6g}; expected 1")
    return out


class _Record:
    """Dict/JSON conversion shared by the schema dataclasses."""

    _NESTED: ClassVar[dict[str, type]] = {}
    _LISTS: ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self), allow_nan=False))

    @classmethod
    def from_dict(cls, data: object, path: str = ""):
        """Build and validate from a JSON dict; errors name the field's JSON path."""
        where = path.rstrip(".") or cls.__name__
        if not isinstance(data, Mapping):
            raise TypeError(f"{where} must be a JSON object, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {unknown}; expected {known}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ValueError(f"{path}{f.name} is missing")
                continue
            value = data[f.name]
            if f.name in cls._NESTED and value is not None:
                value = cls._NESTED[f.name].from_dict(value, f"{path}{f.name}.")
            elif f.name in cls._LISTS:
                if not isinstance(value, list):
                    raise TypeError(f"{path}{f.name}={value!r} must be a list")
                sub = cls._LISTS[f.name]
                value = [sub.from_dict(v, f"{path}{f.name}[{i}].") for i, v in enumerate(value)]
            kwargs[f.name] = value
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{path}{err}") from None


@dataclass
class Source(_Record):
    """Where the CT came from: ``path``, ``format`` (dicom|nifti|metaimage, or volume: an in-memory CTVolume given to the Python API), ``series_uid``,
    and whether identifiers were kept.

    ``identifiers`` is "withheld" (``path`` is None: input paths often name the patient) or
    "kept" (``--keep-identifiers``; also what a 1.0 report, which had no such field, did).
    """

    path: str | None
    format: str
    series_uid: str | None = None
    identifiers: str = "kept"

    def __post_init__(self) -> None:
        _choice("identifiers", self.identifiers, IDENTIFIER_MODES)
        if self.identifiers == "withheld" and self.path is not None:
            raise ValueError(f"path={self.path!r} must be null when identifiers are withheld")
        _text("path", self.path, optional=self.identifiers == "withheld")
        _choice("format", self.format, SOURCE_FORMATS)
        _text("series_uid", self.series_uid, optional=True)


@dataclass
class ModelInfo(_Record):
    """The model that wrote the report: checkpoint file, training stage, package version."""

    checkpoint_path: str | None
    stage: str
    lungvlm_version: str

    def __post_init__(self) -> None:
        _text("checkpoint_path", self.checkpoint_path, optional=True)
        _text("stage", self.stage)
        _text("lungvlm_version", self.lungvlm_version)


@dataclass
class Emphysema(_Record):
    """%LAA-950 of the lung mask (0-100 %) and its display word (project convention)."""

    laa950_percent: float
    severity: str

    def __post_init__(self) -> None:
        self.laa950_percent = _real("laa950_percent", self.laa950_percent, 0.0, 100.0)
        _choice("severity", self.severity, EMPHYSEMA_GRADES)


@dataclass
class ExamSummary(_Record):
    """Exam-level assessment: Lung-RADS category, management, review flag, emphysema."""

    _NESTED: ClassVar[dict[str, type]] = {"emphysema": Emphysema}

    lungrads_category: str
    management: str
    needs_review: bool
    review_reasons: list[str] = field(default_factory=list)
    emphysema: Emphysema | None = None

    def __post_init__(self) -> None:
        _choice("lungrads_category", self.lungrads_category, LUNGRADS_CATEGORIES)
        _text("management", self.management)
        _flag("needs_review", self.needs_review)
        if not isinstance(self.review_reasons, list):
            raise TypeError(f"review_reasons={self.review_reasons!r} must be a list of strings")
        for i, reason in enumerate(self.review_reasons):
            _text(f"review_reasons[{i}]", reason)
        if self.needs_review and not self.review_reasons:
            raise ValueError("review_reasons=[] must name at least one reason when needs_review")
        if self.emphysema is not None and not isinstance(self.emphysema, Emphysema):
            raise TypeError(f"emphysema={self.emphysema!r} must be an Emphysema or None")


@dataclass
class Comparison(_Record):
    """Change since a prior scan; ``vdt_days`` is None when infinite (no change) or unknown."""

    status: str
    prior_mean_diameter_mm: float | None
    interval_days: float | None
    vdt_days: float | None
    lungrads_growth: bool

    def __post_init__(self) -> None:
        _choice("status", self.status, CHANGE_STATUSES)
        self.prior_mean_diameter_mm = _optional_real(
            "prior_mean_diameter_mm", self.prior_mean_diameter_mm, low=0.0, open_low=True
        )
        self.interval_days = _optional_real(
            "interval_days", self.interval_days, low=0.0, open_low=True
        )
        self.vdt_days = _optional_real("vdt_days", self.vdt_days)
        if self.vdt_days == 0.0:
            raise ValueError("vdt_days=0.0 must be non-zero (null for no change)")
        _flag("lungrads_growth", self.lungrads_growth)


@dataclass
class Sentence(_Record):
    """One generated sentence, its confidence in [0, 1] and its heatmap file (relative)."""

    text: str
    confidence: float
    uncertain: bool
    heatmap_file: str | None = None

    def __post_init__(self) -> None:
        _text("text", self.text)
        self.confidence = _real("confidence", self.confidence, 0.0, 1.0)
        _flag("uncertain", self.uncertain)
        _text("heatmap_file", self.heatmap_file, optional=True)


@dataclass
class NoduleAttributes(_Record):
    """Categorical margin/calcification and concept-head ratings in [0, 1] by concept name."""

    margin: str | None = None
    calcification: str | None = None
    concepts: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice("margin", self.margin, MARGINS, optional=True)
        _choice("calcification", self.calcification, CALCIFICATIONS, optional=True)
        self.concepts = _probabilities("concepts", self.concepts, CONCEPT_NAMES, False)


@dataclass
class NoduleReport(_Record):
    """Everything the report states about one nodule (see docs/report_json_schema.md)."""

    _NESTED: ClassVar[dict[str, type]] = {
        "attributes": NoduleAttributes,
        "comparison": Comparison,
    }
    _LISTS: ClassVar[dict[str, type]] = {"sentences": Sentence}

    index: int
    centroid_world_lps_mm: tuple[float, float, float]
    centroid_voxel_zyx: tuple[float, float, float]
    long_axis_mm: float
    short_axis_mm: float
    mean_diameter_mm: float
    volume_mm3: float
    attenuation: str
    malignancy_probability: float
    lungrads_category: str
    solid_component_mm: float | None = None
    side: str | None = None
    lobe: str | None = None
    attributes: NoduleAttributes = field(default_factory=NoduleAttributes)
    lungrads_probabilities: dict[str, float] = field(default_factory=dict)
    growth_probability_12m: float | None = None
    comparison: Comparison | None = None
    sentences: list[Sentence] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 1:
            raise ValueError(f"index={self.index!r} must be an integer >= 1")
        self.centroid_world_lps_mm = _triplet("centroid_world_lps_mm", self.centroid_world_lps_mm)
        self.centroid_voxel_zyx = _triplet("centroid_voxel_zyx", self.centroid_voxel_zyx)
        for name in ("long_axis_mm", "short_axis_mm", "mean_diameter_mm", "volume_mm3"):
            setattr(self, name, _real(name, getattr(self, name), low=0.0, open_low=True))
        if self.short_axis_mm > self.long_axis_mm:
            raise ValueError(
                f"short_axis_mm={self.short_axis_mm!r} must not exceed "
                f"long_axis_mm={self.long_axis_mm!r}"
            )
        _choice("attenuation", self.attenuation, ATTENUATIONS)
        self.solid_component_mm = _optional_real(
            "solid_component_mm", self.solid_component_mm, low=0.0
        )
        _choice("side", self.side, SIDES, optional=True)
        _choice("lobe", self.lobe, LOBES, optional=True)
        if self.lobe == "middle" and self.side == "left":
            raise ValueError("lobe='middle' exists only with side='right'")
        self.malignancy_probability = _real(
            "malignancy_probability", self.malignancy_probability, 0.0, 1.0
        )
        _choice("lungrads_category", self.lungrads_category, LUNGRADS_CATEGORIES)
        self.lungrads_probabilities = _probabilities(
            "lungrads_probabilities", self.lungrads_probabilities, LUNGRADS_CATEGORIES, True
        )
        self.growth_probability_12m = _optional_real(
            "growth_probability_12m", self.growth_probability_12m, low=0.0, high=1.0
        )
        for name, kind in (("attributes", NoduleAttributes), ("comparison", Comparison)):
            value = getattr(self, name)
            if not isinstance(value, kind) and not (name == "comparison" and value is None):
                raise TypeError(f"{name}={value!r} must be a {kind.__name__}")
        if not all(isinstance(s, Sentence) for s in self.sentences):
            raise TypeError(f"sentences={self.sentences!r} must be a list of Sentence")


@dataclass
class ExamReport(_Record):
    """The whole ``report.json`` document of one case."""

    _NESTED: ClassVar[dict[str, type]] = {
        "source": Source,
        "model": ModelInfo,
        "exam": ExamSummary,
    }
    _LISTS: ClassVar[dict[str, type]] = {"nodules": NoduleReport}

    case_id: str
    source: Source
    model: ModelInfo
    exam: ExamSummary
    nodules: list[NoduleReport] = field(default_factory=list)
    narrative: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)
    schema_version: str = REPORT_SCHEMA_VERSION

    def __post_init__(self) -> None:
        match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", str(self.schema_version))
        expected_major = REPORT_SCHEMA_VERSION.split(".")[0]
        if match is None or match.group(1) != expected_major:
            raise ValueError(
                f"schema_version={self.schema_version!r} is not readable; expected "
                f"{expected_major}.x.y (this code writes {REPORT_SCHEMA_VERSION})"
            )
        _text("case_id", self.case_id)
        for name, kind in (("source", Source), ("model", ModelInfo), ("exam", ExamSummary)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name}={getattr(self, name)!r} must be a {kind.__name__}")
        if not isinstance(self.nodules, list) or not all(
            isinstance(n, NoduleReport) for n in self.nodules
        ):
            raise TypeError(f"nodules={self.nodules!r} must be a list of NoduleReport")
        indices = [n.index for n in self.nodules]
        if len(set(indices)) != len(indices):
            raise ValueError(f"nodules have duplicate index values {indices}; expected unique")
        if not isinstance(self.narrative, str):
            raise TypeError(f"narrative={self.narrative!r} must be a string")
        if not isinstance(self.timings_s, Mapping):
            raise TypeError(f"timings_s={self.timings_s!r} must map step name to seconds")
        self.timings_s = {
            str(k): _real(f"timings_s[{k!r}]", v, low=0.0) for k, v in self.timings_s.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict with ``schema_version`` as its first key."""
        data = super().to_dict()
        return {"schema_version": data.pop("schema_version"), **data}

    def to_json(self, indent: int = 2) -> str:
        """The document as JSON text (UTF-8 safe, no NaN/Infinity)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ExamReport:
        """Parse and validate JSON text written by :meth:`to_json`.

        Raises:
            ValueError: on invalid JSON or any invalid field (the message names its path).
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"report JSON is not valid JSON: {err}") from None
        return cls.from_dict(data)
