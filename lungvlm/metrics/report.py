"""Report metrics: clinical field F1 of parsed reports, BLEU-4 / ROUGE-L, retrieval recall@k.

Clinical correctness is judged on structured fields read back from the text: both the generated
and the reference report go through the same parser, and each field the reference states is
checked against the generated one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.text import bleu_score, rouge_score
from torchmetrics.text import BLEUScore, ROUGEScore
from torchmetrics.wrappers.abstract import WrapperMetric

#: Per-nodule fields compared by default (keys of ``NoduleFinding.field_values``).
DEFAULT_NODULE_FIELDS: tuple[str, ...] = (
    "side",
    "lobe",
    "mean_diameter_mm",
    "attenuation",
    "solid_component_mm",
    "margin",
    "calcification",
    "shape",
    "pleural_relation",
)
#: Exam-level fields compared by default.
DEFAULT_EXAM_FIELDS: tuple[str, ...] = ("emphysema", "category")

ParseFn = Callable[[str], Mapping[str, object]]


def report_field_names(num_nodules: int = 1) -> tuple[str, ...]:
    """Flat field names ``nodule{i}.<field>`` for the first ``num_nodules`` plus exam fields."""
    nodule = tuple(f"nodule{i}.{f}" for i in range(num_nodules) for f in DEFAULT_NODULE_FIELDS)
    return nodule + DEFAULT_EXAM_FIELDS


def _nodule_values(nodule: object) -> Mapping[str, object]:
    if hasattr(nodule, "field_values"):
        return nodule.field_values()
    if isinstance(nodule, Mapping):
        return nodule
    if dataclasses.is_dataclass(nodule):
        return {f.name: getattr(nodule, f.name) for f in dataclasses.fields(nodule)}
    return vars(nodule)


def _is_scalar(value: object) -> bool:
    return isinstance(value, (str, int, float, bool))


def flatten_report(parsed: object) -> dict[str, object]:
    """Flatten a parsed report into ``{"nodule0.margin": ..., "emphysema": ..., "category": ...}``.

    Every nodule ``i`` of ``parsed.nodules`` contributes its scalar fields as
    ``nodule{i}.<field>``; ``emphysema``, ``laa950_percent`` and the Lung-RADS ``category``
    (``parsed.category`` or ``parsed.impression.category``) are exam fields. ``None`` values
    mean "not stated" and are left out.

    Args:
        parsed: an object with ``.nodules`` (items with ``field_values()``, mappings or
            dataclasses) and optional exam attributes.

    Returns:
        Flat field -> value dict.
    """
    flat: dict[str, object] = {}
    for i, nodule in enumerate(getattr(parsed, "nodules", None) or []):
        for name, value in _nodule_values(nodule).items():
            if value is not None and _is_scalar(value):
                flat[f"nodule{i}.{name}"] = value
    impression = getattr(parsed, "impression", None)
    exam = {
        "emphysema": getattr(parsed, "emphysema", None),
        "laa950_percent": getattr(parsed, "laa950_percent", None),
        "category": getattr(parsed, "category", None) or getattr(impression, "category", None),
    }
    flat.update({k: v for k, v in exam.items() if v is not None and _is_scalar(v)})
    return flat


def default_report_fields(text: str) -> dict[str, object]:
    """Parse ``text`` with ``lungvlm.text.parser.parse_report`` and flatten it.

    The parser is imported on first use so this module does not depend on it at import time.
    """
    from lungvlm.text.parser import parse_report

    return flatten_report(parse_report(text))


def _round_half_up_mm(value: float) -> int:
    return math.floor(value + 0.5)


def values_match(
    field: str, generated: object, reference: object, size_tolerance_mm: int = 1
) -> bool:
    """Whether a generated field value agrees with the reference value.

    Sizes (fields ending in ``_mm``) are rounded to whole mm (halves up) and agree when the
    rounded values differ by at most ``size_tolerance_mm``: reports state sizes to 0.1 mm
    (Lung-RADS v2022) but a 1 mm disagreement is within reader variability. This is a chosen
    convention, not a guideline rule. Strings compare case-insensitively after stripping;
    other values must be equal.
    """
    numeric = (int, float)
    if (
        field.endswith("_mm")
        and isinstance(generated, numeric)
        and isinstance(reference, numeric)
        and not isinstance(generated, bool)
        and not isinstance(reference, bool)
    ):
        diff = _round_half_up_mm(float(generated)) - _round_half_up_mm(float(reference))
        return abs(diff) <= size_tolerance_mm
    if isinstance(generated, str) and isinstance(reference, str):
        return generated.strip().casefold() == reference.strip().casefold()
    return generated == reference


def _f1(tp: Tensor, fp: Tensor, fn: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Precision, recall, F1 with 0 where a denominator is 0 (scikit-learn's zero_division=0)."""
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), torch.zeros_like(tp))
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    return precision, recall, f1


class ClinicalConceptF1(Metric):
    """Per-field and micro-averaged precision / recall / F1 of parsed report fields.

    For each field f, comparing the generated report g with its reference r:

    * r states f, g states the same value (:func:`values_match`): 1 TP;
    * r states f, g states a different value: 1 FP and 1 FN;
    * r states f, g does not: 1 FN;
    * r does not state f, g does: 1 FP.

    A generated text that ``parse_fn`` rejects with ValueError states nothing (all its
    reference fields become FN). Fields outside ``fields`` are ignored, so the state has a
    fixed size and synchronises under DDP. Scores with a zero denominator are 0.

    Args:
        parse_fn: text -> flat field dict; defaults to :func:`default_report_fields`.
        fields: field names to score; defaults to :func:`report_field_names` ``(1)``.
        size_tolerance_mm: see :func:`values_match`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        parse_fn: ParseFn | None = None,
        fields: Sequence[str] | None = None,
        size_tolerance_mm: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.parse_fn = parse_fn or default_report_fields
        self.fields = tuple(fields) if fields is not None else report_field_names(1)
        if not self.fields or len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields={self.fields!r} must be non-empty and distinct")
        if size_tolerance_mm < 0:
            raise ValueError(f"size_tolerance_mm={size_tolerance_mm!r} must be >= 0")
        self.size_tolerance_mm = size_tolerance_mm
        n = len(self.fields)
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def _parse_generated(self, text: str) -> Mapping[str, object]:
        try:
            return self.parse_fn(text)
        except ValueError:
            return {}

    def update(self, generated: Sequence[str], references: Sequence[str]) -> None:  # type: ignore[override]
        """Add pairs of generated and reference report texts.

        Raises:
            ValueError: if the two sequences differ in length.
        """
        if len(generated) != len(references):
            raise ValueError(
                f"got {len(generated)} generated reports and {len(references)} references"
            )
        tp, fp, fn = (torch.zeros(len(self.fields), dtype=torch.float64) for _ in range(3))
        for gen_text, ref_text in zip(generated, references, strict=True):
            gen, ref = self._parse_generated(gen_text), self.parse_fn(ref_text)
            for i, field in enumerate(self.fields):
                g, r = gen.get(field), ref.get(field)
                if r is not None and g is not None:
                    if values_match(field, g, r, self.size_tolerance_mm):
                        tp[i] += 1
                    else:
                        fp[i] += 1
                        fn[i] += 1
                elif r is not None:
                    fn[i] += 1
                elif g is not None:
                    fp[i] += 1
        self.tp += tp.to(self.tp.device)
        self.fp += fp.to(self.fp.device)
        self.fn += fn.to(self.fn.device)

    def compute(self) -> dict[str, Tensor]:
        """Return ``micro_{precision,recall,f1}`` and ``<field>/{precision,recall,f1}``."""
        out: dict[str, Tensor] = {}
        p, r, f = _f1(self.tp.sum(), self.fp.sum(), self.fn.sum())
        out.update(micro_precision=p, micro_recall=r, micro_f1=f)
        p, r, f = _f1(self.tp, self.fp, self.fn)
        for i, field in enumerate(self.fields):
            out[f"{field}/precision"], out[f"{field}/recall"], out[f"{field}/f1"] = p[i], r[i], f[i]
        return out


class ReportTextMetrics(WrapperMetric):
    """Corpus BLEU-4 and ROUGE-L F-measure of generated vs reference reports.

    Wraps torchmetrics ``BLEUScore(n_gram=4)`` (one reference per report) and
    ``ROUGEScore(rouge_keys=("rougeL",))`` (no stemmer, so no nltk is needed; its default
    normaliser lower-cases and splits on non-alphanumeric characters). Both keep and sync
    their own states.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bleu = BLEUScore(n_gram=4)
        self.rouge = ROUGEScore(rouge_keys=("rougeL",))

    @staticmethod
    def _check(generated: Sequence[str], references: Sequence[str]) -> None:
        if len(generated) != len(references):
            raise ValueError(
                f"got {len(generated)} generated reports and {len(references)} references"
            )

    def update(self, generated: Sequence[str], references: Sequence[str]) -> None:  # type: ignore[override]
        """Add pairs of generated and reference texts."""
        self._check(generated, references)
        self.bleu.update(list(generated), [[r] for r in references])
        self.rouge.update(list(generated), list(references))

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"bleu4": ..., "rougeL_f": ...}`` over everything added."""
        return {"bleu4": self.bleu.compute(), "rougeL_f": self.rouge.compute()["rougeL_fmeasure"]}

    def forward(self, generated: Sequence[str], references: Sequence[str]) -> dict[str, Tensor]:  # type: ignore[override]
        """Update the states and return the scores of this batch alone."""
        self.update(generated, references)
        return {
            "bleu4": bleu_score(list(generated), [[r] for r in references], n_gram=4),
            "rougeL_f": rouge_score(list(generated), list(references), rouge_keys="rougeL")[
                "rougeL_fmeasure"
            ],
        }

    def reset(self) -> None:
        """Reset both wrapped metrics."""
        self.bleu.reset()
        self.rouge.reset()
        super().reset()


def retrieval_recall_at_k(similarity: Tensor, k: int, targets: Tensor | None = None) -> Tensor:
    """Fraction of queries whose matching gallery item ranks in the top ``k``.

    The rank of the true item is the number of *other* gallery items scoring at least as high,
    so ties count against the query (a pessimistic, order-independent convention).

    Args:
        similarity: (Q, G) scores, e.g. image-to-report cosine similarities.
        k: cut-off, >= 1.
        targets: (Q,) int64 index of each query's true gallery item; None means the diagonal
            (query i matches item i, requires Q <= G).

    Returns:
        Scalar recall@k in [0, 1].

    Raises:
        ValueError: on a bad shape, ``k < 1`` or targets outside [0, G).
    """
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (Q, G); got {tuple(similarity.shape)}")
    if k < 1:
        raise ValueError(f"k={k!r} must be >= 1")
    q, g = similarity.shape
    if targets is None:
        if q > g:
            raise ValueError(f"diagonal targets need Q <= G; got Q={q}, G={g}")
        targets = torch.arange(q, device=similarity.device)
    if targets.shape != (q,) or bool(((targets < 0) | (targets >= g)).any()):
        raise ValueError(f"targets must be (Q={q},) indices in [0, {g}); got {targets.tolist()}")
    true_score = similarity.gather(1, targets[:, None].to(torch.int64))  # (Q, 1)
    rank = (similarity >= true_score).sum(dim=1) - 1  # others scoring >= the true item
    return (rank < k).to(torch.float32).mean()


class QuestionAnswerAccuracy(Metric):
    """Accuracy of generated answers per question kind (:mod:`lungvlm.text.qa`).

    ``update(kinds, answers, references)`` scores each generated answer against its reference
    answer with :func:`lungvlm.text.qa.answers_agree`; ``compute()`` returns ``{kind: accuracy}``
    for the kinds seen plus ``"overall"`` (NaN when nothing was scored). Counts are summed
    across processes.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from lungvlm.text.qa import QUESTION_KINDS

        self.kinds = QUESTION_KINDS
        k = len(QUESTION_KINDS)
        self.add_state("correct", default=torch.zeros(k), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(k), dist_reduce_fx="sum")

    def update(self, kinds: Sequence[str], answers: Sequence[str], references: Sequence[str]):
        """Score ``answers`` against ``references`` for questions of ``kinds``."""
        from lungvlm.text.qa import answers_agree

        for kind, answer, reference in zip(kinds, answers, references, strict=True):
            i = self.kinds.index(kind)
            self.total[i] += 1
            self.correct[i] += float(answers_agree(kind, answer, reference))

    def compute(self) -> dict[str, Tensor]:
        """``{kind: accuracy}`` for kinds with at least one question, plus ``overall``."""
        out = {
            kind: self.correct[i] / self.total[i]
            for i, kind in enumerate(self.kinds)
            if self.total[i] > 0
        }
        total = self.total.sum()
        out["overall"] = self.correct.sum() / total if total > 0 else torch.tensor(math.nan)
        return out
