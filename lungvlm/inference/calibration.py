"""Confidence calibration of generated sentences and temperature scaling of malignancy.

Stored under ``checkpoint["lungvlm"]["calibration"]`` of a new ``<stem>_calibrated.ckpt``:

- ``sentence_threshold``: the smallest sentence confidence (``exp(-mean token entropy)``,
  :func:`lungvlm.models.generation.sentence_confidence`) such that the sentences at or above it
  reach ``target_precision`` on the validation crops (:func:`select_sentence_threshold`);
  ``math.inf`` when no threshold reaches it (then every sentence is flagged uncertain).
- ``malignancy_temperature``: T minimising the binary NLL of ``sigmoid(logit / T)`` on the
  validation crops with a malignancy label (:func:`fit_temperature`), searched in
  [:data:`TEMPERATURE_MIN`, :data:`TEMPERATURE_MAX`]; ``ece_before``/``ece_after`` are the
  expected calibration errors (torchmetrics ``BinaryCalibrationError``, L1, 10 bins) at T = 1
  and at the fitted T.
- ``risk_coverage``: precision of the kept sentences when only the most confident
  100 / 90 / 80 % are kept.

Sentence labels (:func:`sentence_correct`, project conventions): a generated sentence equal to
a reference sentence (white space and case ignored) is correct. Otherwise it is parsed with
:mod:`lungvlm.text.parser`; an emphysema sentence is correct when its grade and %LAA-950 (those
it states) match the reference's; a nodule sentence is correct when every field it states
matches the reference's first nodule (omission defaults filled), with sizes within
:data:`SIZE_TOLERANCE_MM`, volumes within :data:`VOLUME_RELATIVE_TOLERANCE` and intervals within
:data:`INTERVAL_TOLERANCE_MONTHS`; a sentence that states no readable field is incorrect (a
findings sentence should state a finding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torchmetrics.classification import BinaryCalibrationError

from lungvlm.models.generation import generated_token_offsets, greedy_generate, sentence_confidence
from lungvlm.progress import update as progress_update
from lungvlm.text.parser import parse_nodule_text, parse_report
from lungvlm.text.tokenizer import encode_reports

DEFAULT_TARGET_PRECISION = 0.9
COVERAGES: tuple[float, ...] = (1.0, 0.9, 0.8)
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.05, 20.0
ECE_BINS = 10
#: Size tolerance (mm): the Lung-RADS growth step, below which a change is "stable".
SIZE_TOLERANCE_MM = 1.5
VOLUME_RELATIVE_TOLERANCE = 0.25
INTERVAL_TOLERANCE_MONTHS = 0.5
_SIZE_FIELDS = ("mean_diameter_mm", "solid_component_mm", "prior_mean_diameter_mm")


#: Kinds of :class:`MalignancyCalibrator`.
CALIBRATOR_KINDS: tuple[str, ...] = ("temperature", "isotonic")


@dataclass(frozen=True)
class MalignancyCalibrator:
    """Map from a raw malignancy logit to a calibrated probability.

    ``temperature``: ``sigmoid(logit / temperature)``. ``isotonic``: a non-decreasing step
    function fitted by isotonic regression (``lungvlm audit``), stored by its knots
    ``(knots_logit, knots_probability)``; linear between knots, constant outside them.
    Stored in a calibrated checkpoint under ``calibration["malignancy_calibrator"]``.
    """

    kind: str = "temperature"
    temperature: float = 1.0
    knots_logit: tuple[float, ...] = ()
    knots_probability: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in CALIBRATOR_KINDS:
            raise ValueError(f"kind={self.kind!r} is not one of {CALIBRATOR_KINDS}")
        if self.kind == "temperature" and not (
            math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise ValueError(f"temperature={self.temperature!r} must be positive and finite")
        if self.kind == "isotonic":
            x = np.asarray(self.knots_logit, np.float64)
            y = np.asarray(self.knots_probability, np.float64)
            if x.size == 0 or x.shape != y.shape:
                raise ValueError("an isotonic calibrator needs as many logit as probability knots")
            if not (np.isfinite(x).all() and np.isfinite(y).all()):
                raise ValueError("isotonic knots must be finite numbers")
            if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0) or y.min() < 0 or y.max() > 1:
                raise ValueError("isotonic knots must be non-decreasing, probabilities in [0, 1]")

    def probability(self, logits):
        """Calibrated probability of a logit (float) or of an array of logits (ndarray)."""
        z = np.asarray(logits, dtype=np.float64)
        if self.kind == "temperature":
            p = 1.0 / (1.0 + np.exp(-z / self.temperature))
        else:
            p = np.interp(z, self.knots_logit, self.knots_probability)
        return float(p) if p.ndim == 0 else p

    def to_dict(self) -> dict:
        """JSON-able dict (lists for the knots)."""
        out = asdict(self)
        out["knots_logit"] = list(self.knots_logit)
        out["knots_probability"] = list(self.knots_probability)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> MalignancyCalibrator:
        """Inverse of :meth:`to_dict`; raises ValueError on a malformed entry."""
        try:
            return cls(
                kind=str(data.get("kind", "temperature")),
                temperature=float(data.get("temperature", 1.0)),
                knots_logit=tuple(float(v) for v in data.get("knots_logit", ())),
                knots_probability=tuple(float(v) for v in data.get("knots_probability", ())),
            )
        except (TypeError, AttributeError) as err:
            raise ValueError(f"malformed malignancy calibrator {data!r}: {err}") from err


@dataclass
class CalibrationResult:
    """What :func:`calibrate` fitted (see the module docstring)."""

    sentence_threshold: float
    malignancy_temperature: float
    target_precision: float
    ece_before: float | None
    ece_after: float | None
    risk_coverage: dict[float, float | None] = field(default_factory=dict)
    n_sentences: int = 0
    n_malignancy: int = 0

    def to_dict(self) -> dict:
        """Plain dict stored in the checkpoint."""
        return asdict(self)

    def table(self) -> str:
        """The risk-coverage table and the fitted values as text."""
        lines = ["coverage  precision of kept sentences"]
        for coverage, precision in self.risk_coverage.items():
            shown = "n/a" if precision is None else f"{precision:.3f}"
            lines.append(f"{100 * coverage:7.0f}%  {shown}")
        ece = "n/a" if self.ece_before is None else f"{self.ece_before:.4f} -> {self.ece_after:.4f}"
        lines += [
            f"sentence_threshold = {self.sentence_threshold:.4f} "
            f"(target precision {self.target_precision:.2f}, {self.n_sentences} sentences)",
            f"malignancy_temperature = {self.malignancy_temperature:.4f} "
            f"(ECE {ece}, {self.n_malignancy} labelled crops)",
        ]
        return "\n".join(lines)


def _check_pairs(confidences: Sequence[float], correct: Sequence[bool]):
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    if conf.shape != ok.shape:
        raise ValueError(f"confidences ({conf.size}) and correct ({ok.size}) differ in length")
    return conf, ok


def select_sentence_threshold(
    confidences: Sequence[float], correct: Sequence[bool], target_precision: float
) -> float:
    """Smallest threshold t (a confidence seen) with precision(conf >= t) >= target.

    Returns:
        The threshold; ``math.inf`` when no threshold reaches ``target_precision`` or there
        are no sentences (nothing can be kept).

    Raises:
        ValueError: ``target_precision`` outside (0, 1] or mismatched lengths.
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision={target_precision!r} must be in (0, 1]")
    conf, ok = _check_pairs(confidences, correct)
    for threshold in np.unique(conf):  # ascending
        kept = conf >= threshold
        if ok[kept].mean() >= target_precision - 1e-12:
            return float(threshold)
    return math.inf


def risk_coverage(
    confidences: Sequence[float], correct: Sequence[bool], coverages: Sequence[float] = COVERAGES
) -> dict[float, float | None]:
    """Precision of the ``ceil(coverage * n)`` most confident sentences, per coverage."""
    conf, ok = _check_pairs(confidences, correct)
    order = np.argsort(-conf, kind="stable")
    out: dict[float, float | None] = {}
    for coverage in coverages:
        k = math.ceil(coverage * conf.size - 1e-9)
        out[float(coverage)] = float(ok[order[:k]].mean()) if k > 0 else None
    return out


def binary_nll(logits: Sequence[float], labels: Sequence[int], temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logit / temperature)`` (nats)."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / temperature
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    return float(torch.nn.functional.binary_cross_entropy_with_logits(z, y))


def logit_label_arrays(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) as flat float64 arrays for fitting a calibrator.

    Raises:
        ValueError: no logits, or mismatched lengths.
    """
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if z.size == 0 or z.shape != y.shape:
        raise ValueError(f"need as many logits ({z.size}) as labels ({y.size}), at least one")
    return z, y


def fit_temperature(logits: Sequence[float], labels: Sequence[int]) -> float:
    """Temperature minimising :func:`binary_nll` (bounded search over log T).

    Raises:
        ValueError: no logits, or mismatched lengths.
    """
    z, y = logit_label_arrays(logits, labels)
    result = minimize_scalar(
        lambda log_t: binary_nll(z, y, math.exp(log_t)),
        bounds=(math.log(TEMPERATURE_MIN), math.log(TEMPERATURE_MAX)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(math.exp(result.x))


def expected_calibration_error(probabilities: Sequence[float], labels: Sequence[int]) -> float:
    """ECE (L1, :data:`ECE_BINS` uniform bins) with torchmetrics ``BinaryCalibrationError``."""
    metric = BinaryCalibrationError(n_bins=ECE_BINS, norm="l1")
    p = torch.as_tensor(np.asarray(probabilities, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    return float(metric(p, y))


def _normal(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").split())


def _value_matches(name: str, value, reference) -> bool:
    if reference is None:
        return False
    if name in _SIZE_FIELDS:
        return abs(float(value) - float(reference)) <= SIZE_TOLERANCE_MM
    if name == "volume_mm3":
        return abs(float(value) - float(reference)) <= VOLUME_RELATIVE_TOLERANCE * float(reference)
    if name == "interval_months":
        return abs(float(value) - float(reference)) <= INTERVAL_TOLERANCE_MONTHS
    return value == reference


def sentence_correct(sentence: str, reference_text: str) -> bool:
    """Whether a generated sentence agrees with the reference report (module docstring)."""
    reference = parse_report(reference_text)
    if any(_normal(sentence) == _normal(s) for s in reference_text.replace("\n", ". ").split(". ")):
        return True
    exam = parse_report(sentence)
    if not exam.nodules and (exam.emphysema is not None or exam.laa950_percent is not None):
        ref = reference.with_defaults()
        checks = []
        if exam.emphysema is not None:
            checks.append(exam.emphysema == ref.emphysema)
        if exam.laa950_percent is not None:
            checks.append(
                ref.laa950_percent is not None
                and abs(exam.laa950_percent - ref.laa950_percent) <= 0.5
            )
        return all(checks)
    stated = parse_nodule_text(sentence).stated_fields()
    if not stated or not reference.nodules:
        return False
    ref_fields = reference.nodules[0].with_defaults().field_values()
    return all(_value_matches(k, v, ref_fields.get(k)) for k, v in stated.items())


@torch.no_grad()
def collect_calibration_data(
    model, batches: Iterable, max_new_tokens: int | None = None, max_samples: int | None = None
) -> tuple[list[float], list[bool], list[float], list[int]]:
    """Generate reports for validation crops and label sentences and malignancy logits.

    Args:
        model: stage-3 LungVLMModule (eval mode).
        batches: LungBatch-like objects (``image``, ``context``, ``report_text``,
            ``malignancy``, ``malignancy_present``).
        max_new_tokens: longest generated report (default: the model's validation setting).
        max_samples: stop after this many crops.

    Returns:
        (sentence confidences, sentence correct flags, malignancy logits, malignancy labels).
    """
    heads, tokenizer = model.vl_heads, model.vl.tokenizer
    limit = heads.decoder.max_length - 1
    max_new = min(limit, max_new_tokens or model.vl_config.generation_max_new_tokens)
    device = next(model.parameters()).device
    confidences, correct, logits, labels = [], [], [], []
    seen = 0
    total = len(getattr(batches, "dataset", ())) or None
    if max_samples is not None and total is not None:
        total = min(total, max_samples)
    for batch in batches:
        context = batch.context.to(device) if model.encoder.use_context else None
        features = model.encoder(batch.image.to(device), context)
        tokens, _, pooled = heads.encode(features, model.seg_head(features)[0])
        gen = greedy_generate(heads.decoder, tokens, max_new, tokenizer=tokenizer)
        texts = []
        for i in range(tokens.shape[0]):
            length = int(gen.token_mask[i].sum())
            text, offsets = generated_token_offsets(tokenizer, gen.token_ids[i, :length].tolist())
            texts.append(text)
            for sentence, conf in sentence_confidence(
                text, offsets, gen.token_entropies[i, :length]
            ):
                confidences.append(float(conf))
                correct.append(sentence_correct(sentence, batch.report_text[i]))
        ids, mask = encode_reports(tokenizer, texts, heads.max_length)
        emb = heads.decoder.report_embedding(ids.to(device), mask.to(device))
        risk = heads.risk_head(pooled, emb)
        present = batch.malignancy_present.bool().cpu()
        logits += risk.malignancy_logit.float().cpu()[present].tolist()
        labels += [int(v) for v in batch.malignancy.cpu()[present].tolist()]
        seen += tokens.shape[0]
        progress_update("validation crops", seen, total)
        if max_samples is not None and seen >= max_samples:
            break
    return confidences, correct, logits, labels


def calibrate(
    confidences: Sequence[float],
    correct: Sequence[bool],
    logits: Sequence[float],
    labels: Sequence[int],
    target_precision: float = DEFAULT_TARGET_PRECISION,
) -> CalibrationResult:
    """Fit the sentence threshold and the malignancy temperature (module docstring)."""
    threshold = select_sentence_threshold(confidences, correct, target_precision)
    temperature, ece_before, ece_after = 1.0, None, None
    if len(logits):
        temperature = fit_temperature(logits, labels)
        z = np.asarray(logits, dtype=np.float64)
        ece_before = expected_calibration_error(1 / (1 + np.exp(-z)), labels)
        ece_after = expected_calibration_error(1 / (1 + np.exp(-z / temperature)), labels)
    return CalibrationResult(
        sentence_threshold=threshold,
        malignancy_temperature=temperature,
        target_precision=float(target_precision),
        ece_before=ece_before,
        ece_after=ece_after,
        risk_coverage=risk_coverage(confidences, correct),
        n_sentences=len(confidences),
        n_malignancy=len(logits),
    )
