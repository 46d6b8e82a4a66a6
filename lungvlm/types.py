"""The typed batch that every LungVLM DataModule yields.

One dataclass, built by :func:`collate_samples`; training steps read attributes, never string
keys. Shapes and dtypes are checked once, in ``__post_init__``.

Layout conventions (see DESIGN.md): tensors are (B, C, D, H, W) with D = z; spacing is (z, y, x)
in mm; a label a data set lacks is *present-but-masked*: its value is a placeholder (0) and its
``*_present`` flag is False, and every loss and metric skips it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from lungvlm.labels import CONCEPT_NAMES, GROWTH_BINS_MONTHS


@dataclass(frozen=True)
class ReportSpan:
    """A character span of a report tied to one nodule and one finding field.

    The one span type: the renderer writes them, the data modules carry them in batches, the
    tokenizer turns them into token labels for mention grounding.

    Attributes:
        start: first character (inclusive).
        end: last character (exclusive).
        nodule_index: index of the nodule in the findings' nodule list, or -1 for exam-level text.
        field: the finding the span states, one of :data:`lungvlm.text.vocabulary.SPAN_FIELDS`
            ("size", "margin", "attenuation", ...).
    """

    start: int
    end: int
    nodule_index: int
    field: str

    def __post_init__(self) -> None:
        from lungvlm.text.vocabulary import SPAN_FIELDS

        if not 0 <= self.start <= self.end:
            raise ValueError(f"start={self.start}, end={self.end}: expected 0 <= start <= end")
        if self.nodule_index < -1:
            raise ValueError(f"nodule_index={self.nodule_index} must be >= -1")
        if self.field not in SPAN_FIELDS:
            raise ValueError(f"field={self.field!r} is not one of {SPAN_FIELDS}")


@dataclass
class NoduleSample:
    """One un-batched sample as produced by a Dataset (numpy-free, torch tensors).

    Attributes:
        image: fine crop (1, D, H, W) float32, normalised intensities.
        context: wider, coarser context crop (1, D, H, W) float32 (same grid size as ``image``).
        seg_mask: nodule mask on the fine crop (1, D, H, W) float32 in {0, 1}.
        seg_present: whether ``seg_mask`` is a real label.
        malignancy: 1.0 malignant / 0.0 benign; ``malignancy_present`` masks it.
        lungrads: index into ``LUNGRADS_CATEGORIES``; ``lungrads_present`` masks it.
        growth_time_months: time of growth event or censoring (months).
        growth_event: 1.0 if the nodule grew at ``growth_time_months``, 0.0 if censored there.
        growth_present: whether the growth labels are real.
        concepts: (K,) concept ratings in [0, 1], K = len(CONCEPT_NAMES).
        concepts_present: (K,) bool.
        report_text: findings text (the training target of the decoder), "" if none.
        report_spans: spans of ``report_text`` tied to nodules and fields.
        impression_text: impression text (kept out of the risk head's text input).
        spacing_mm: (3,) voxel spacing of the fine crop, (z, y, x) in mm.
        patient_id: patient identifier (splits are made per patient).
        meta: free metadata (scanner profile, ids, world centre in mm, ...).
        qa_kind / qa_question / qa_answer: one question about the crop's nodule and its
            reference answer (:mod:`lungvlm.text.qa`); "" when the sample has none.
    """

    image: Tensor
    context: Tensor
    seg_mask: Tensor
    seg_present: bool
    malignancy: float
    malignancy_present: bool
    lungrads: int
    lungrads_present: bool
    growth_time_months: float
    growth_event: float
    growth_present: bool
    concepts: Tensor
    concepts_present: Tensor
    report_text: str
    report_spans: list[ReportSpan]
    impression_text: str
    spacing_mm: Tensor
    patient_id: str
    meta: dict[str, Any] = field(default_factory=dict)
    qa_kind: str = ""
    qa_question: str = ""
    qa_answer: str = ""


@dataclass
class LungBatch:
    """A collated batch of :class:`NoduleSample`.

    Attributes:
        image: (B, 1, D, H, W) float32 fine crops.
        context: (B, 1, D, H, W) float32 context crops.
        seg_mask: (B, 1, D, H, W) float32 masks in {0, 1}.
        seg_present: (B,) bool.
        malignancy: (B,) float32; malignancy_present: (B,) bool.
        lungrads: (B,) int64; lungrads_present: (B,) bool.
        growth_time_months: (B,) float32; growth_event: (B,) float32; growth_present: (B,) bool.
        concepts: (B, K) float32; concepts_present: (B, K) bool.
        report_text / impression_text: B strings.
        report_spans: B lists of :class:`ReportSpan`.
        report_tokens: (B, T) int64 token ids, or None until a tokenizer is connected.
        report_attention: (B, T) int64 attention mask (1 = token), or None.
        token_nodule: (B, T) int64: for each token the nodule index its span names, -1 if none.
        spacing_mm: (B, 3) float32, (z, y, x) mm.
        patient_id: B strings.
        meta: B dicts.
        qa_kind / qa_question / qa_answer: B strings ("" where a sample has no question).
        qa_tokens: (B, T) int64 ``[BOS] Q: question A: answer [EOS]`` ids, or None until tokenised.
        qa_attention: (B, T) int64 attention mask of ``qa_tokens``.
        qa_answer_mask: (B, T) bool, True on the answer tokens and [EOS] (the QA loss targets).
    """

    image: Tensor
    context: Tensor
    seg_mask: Tensor
    seg_present: Tensor
    malignancy: Tensor
    malignancy_present: Tensor
    lungrads: Tensor
    lungrads_present: Tensor
    growth_time_months: Tensor
    growth_event: Tensor
    growth_present: Tensor
    concepts: Tensor
    concepts_present: Tensor
    report_text: list[str]
    report_spans: list[list[ReportSpan]]
    impression_text: list[str]
    spacing_mm: Tensor
    patient_id: list[str]
    meta: list[dict[str, Any]]
    report_tokens: Tensor | None = None
    report_attention: Tensor | None = None
    token_nodule: Tensor | None = None
    qa_kind: list[str] | None = None
    qa_question: list[str] | None = None
    qa_answer: list[str] | None = None
    qa_tokens: Tensor | None = None
    qa_attention: Tensor | None = None
    qa_answer_mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 5 or self.image.shape[1] != 1:
            raise ValueError(f"image must be (B, 1, D, H, W); got {tuple(self.image.shape)}")
        if self.image.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"image must be a float tensor; got {self.image.dtype}")
        b = self.image.shape[0]
        if self.context.shape[0] != b or self.context.ndim != 5:
            raise ValueError(
                f"context must be (B={b}, 1, D, H, W); got {tuple(self.context.shape)}"
            )
        if self.seg_mask.shape != self.image.shape:
            raise ValueError(
                f"seg_mask shape {tuple(self.seg_mask.shape)} does not match image "
                f"{tuple(self.image.shape)}"
            )
        k = len(CONCEPT_NAMES)
        if self.concepts.shape != (b, k) or self.concepts_present.shape != (b, k):
            raise ValueError(
                f"concepts and concepts_present must be (B={b}, K={k}); got "
                f"{tuple(self.concepts.shape)} and {tuple(self.concepts_present.shape)}"
            )
        for name in (
            "seg_present",
            "malignancy",
            "malignancy_present",
            "lungrads",
            "lungrads_present",
            "growth_time_months",
            "growth_event",
            "growth_present",
        ):
            value = getattr(self, name)
            if value.shape != (b,):
                raise ValueError(f"{name} must have shape (B={b},); got {tuple(value.shape)}")
        if self.spacing_mm.shape != (b, 3):
            raise ValueError(f"spacing_mm must be (B={b}, 3); got {tuple(self.spacing_mm.shape)}")
        if self.lungrads.dtype != torch.int64:
            raise TypeError(f"lungrads must be int64; got {self.lungrads.dtype}")
        for name in ("report_text", "report_spans", "impression_text", "patient_id", "meta"):
            if len(getattr(self, name)) != b:
                raise ValueError(f"{name} must have B={b} entries; got {len(getattr(self, name))}")
        if self.report_tokens is not None and (
            self.report_attention is None or self.report_attention.shape != self.report_tokens.shape
        ):
            raise ValueError("report_attention must be given with report_tokens, same shape")
        for name in ("qa_kind", "qa_question", "qa_answer"):
            if getattr(self, name) is None:
                setattr(self, name, [""] * b)
            elif len(getattr(self, name)) != b:
                raise ValueError(f"{name} must have B={b} entries; got {len(getattr(self, name))}")

    @property
    def batch_size(self) -> int:
        """Number of samples B."""
        return int(self.image.shape[0])

    def to(self, device: torch.device | str) -> LungBatch:
        """Return a copy with every tensor moved to ``device`` (strings and dicts untouched)."""
        kwargs = {}
        for f in fields(self):
            value = getattr(self, f.name)
            kwargs[f.name] = value.to(device) if isinstance(value, Tensor) else value
        return LungBatch(**kwargs)


def collate_samples(samples: list[NoduleSample]) -> LungBatch:
    """Stack a list of :class:`NoduleSample` into a :class:`LungBatch`.

    Report tokens are not built here: the DataModule's ``connect_tokenizer`` hook adds them
    (the tokenizer is known only once the model is).

    Raises:
        ValueError: on an empty list or crops of different shapes.
    """
    if not samples:
        raise ValueError("collate_samples got an empty list of samples")
    shapes = {tuple(s.image.shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"all crops in a batch must share one shape; got {sorted(shapes)}")

    def stack_float(name: str) -> Tensor:
        return torch.tensor([float(getattr(s, name)) for s in samples], dtype=torch.float32)

    def stack_bool(name: str) -> Tensor:
        return torch.tensor([bool(getattr(s, name)) for s in samples], dtype=torch.bool)

    return LungBatch(
        image=torch.stack([s.image for s in samples]).float(),
        context=torch.stack([s.context for s in samples]).float(),
        seg_mask=torch.stack([s.seg_mask for s in samples]).float(),
        seg_present=stack_bool("seg_present"),
        malignancy=stack_float("malignancy"),
        malignancy_present=stack_bool("malignancy_present"),
        lungrads=torch.tensor([int(s.lungrads) for s in samples], dtype=torch.int64),
        lungrads_present=stack_bool("lungrads_present"),
        growth_time_months=stack_float("growth_time_months"),
        growth_event=stack_float("growth_event"),
        growth_present=stack_bool("growth_present"),
        concepts=torch.stack([s.concepts for s in samples]).float(),
        concepts_present=torch.stack([s.concepts_present for s in samples]).bool(),
        report_text=[s.report_text for s in samples],
        report_spans=[list(s.report_spans) for s in samples],
        impression_text=[s.impression_text for s in samples],
        spacing_mm=torch.stack([s.spacing_mm for s in samples]).float(),
        patient_id=[s.patient_id for s in samples],
        meta=[dict(s.meta) for s in samples],
        qa_kind=[s.qa_kind for s in samples],
        qa_question=[s.qa_question for s in samples],
        qa_answer=[s.qa_answer for s in samples],
    )


@dataclass
class TextBatch:
    """A batch of texts without images (the language stage's report-decoder pretraining).

    Attributes:
        texts: B report or findings texts.
    """

    texts: list[str]

    def __post_init__(self) -> None:
        if not isinstance(self.texts, list):
            raise TypeError(f"texts must be a list of str; got {type(self.texts).__name__}")
        wrong = [type(t).__name__ for t in self.texts if not isinstance(t, str)]
        if wrong:
            raise TypeError(f"texts must be a list of str; got an item of type {wrong[0]}")

    @property
    def batch_size(self) -> int:
        """Number of texts B."""
        return len(self.texts)


@dataclass(frozen=True, eq=False)
class WholeChest:
    """One whole chest CT with its reference nodules: what whole-scan validation segments.

    A DataModule hands these out through ``validation_chests(n, size)``; the record is plain
    data so that ``lungvlm`` code (the whole-scan validation callback) never imports
    ``data_modules``.

    Attributes:
        case_id: unique name of the scan (e.g. ``phantom-1000000``).
        image_hu: CT (z, y, x) float32 in HU, on its own grid.
        spacing_mm: its voxel spacing (z, y, x) in mm.
        origin_lps_mm: world LPS (x, y, z) in mm of voxel (0, 0, 0); identity direction.
        nodule_labels: int (z, y, x) map, nodule ``i`` has value ``i`` (1..N), 0 elsewhere.
        nodule_diameters_mm: mean diameter (mm) of reference nodules 1..N, in label order.
        lung_mask: boolean (z, y, x) lung mask on the same grid, or None (segment everywhere).
    """

    case_id: str
    image_hu: NDArray[np.float32]
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    nodule_labels: NDArray[np.integer]
    nodule_diameters_mm: tuple[float, ...]
    lung_mask: NDArray[np.bool_] | None = None

    def __post_init__(self) -> None:
        if self.image_hu.ndim != 3 or self.image_hu.dtype != np.float32:
            raise ValueError(
                f"image_hu must be a (z, y, x) float32 array; got {self.image_hu.shape} "
                f"{self.image_hu.dtype}"
            )
        shape = self.image_hu.shape
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm={self.spacing_mm!r} must be three positive sizes (mm)")
        if len(self.origin_lps_mm) != 3:
            raise ValueError(f"origin_lps_mm={self.origin_lps_mm!r} must be (x, y, z) in mm")
        if self.nodule_labels.shape != shape or not np.issubdtype(
            self.nodule_labels.dtype, np.integer
        ):
            raise ValueError(
                f"nodule_labels must be an integer array of the image's shape {shape}; got "
                f"{self.nodule_labels.shape} {self.nodule_labels.dtype}"
            )
        if int(self.nodule_labels.max(initial=0)) != len(self.nodule_diameters_mm):
            raise ValueError(
                f"nodule_labels go up to {int(self.nodule_labels.max(initial=0))} but "
                f"{len(self.nodule_diameters_mm)} diameters were given; expected one per label"
            )
        if self.lung_mask is not None and (
            self.lung_mask.shape != shape or self.lung_mask.dtype != np.bool_
        ):
            raise ValueError(
                f"lung_mask must be a boolean array of the image's shape {shape}; got "
                f"{self.lung_mask.shape} {self.lung_mask.dtype}"
            )


__all__ = [
    "GROWTH_BINS_MONTHS",
    "LungBatch",
    "NoduleSample",
    "ReportSpan",
    "TextBatch",
    "WholeChest",
    "collate_samples",
]


#: Kinds of mined crops: a model's false positive, or a window the sliding window meets.
MINED_KINDS: tuple[str, ...] = ("false_positive", "window")


@dataclass(frozen=True)
class MinedCrop:
    """One nodule-free training crop cut from a whole chest (:mod:`lungvlm.inference.mining`).

    Plain data, so that the DataModule that stores it never imports ``lungvlm.inference``.

    Attributes:
        image: fine crop (D, H, W) float32, normalised as training normalises (in [0, 1]).
        context: context crop (D, H, W) covering ``context_scale`` times the field of view, or
            None when the context scale is 0.
        mask: reference nodule mask (D, H, W) uint8 on the fine crop (mostly all zeros).
        kind: "false_positive" (a candidate of the model that hit no nodule) or "window".
        centre_vox: crop centre (z, y, x) on the prepared grid (voxels).
        centre_world_mm: the same point in LPS world (x, y, z) mm.
        score: the candidate's ranking score (candidate probability, else peak probability);
            None for windows.
        case_id: the chest it comes from.
    """

    image: NDArray[np.float32]
    context: NDArray[np.float32] | None
    mask: NDArray[np.uint8]
    kind: str
    centre_vox: tuple[float, float, float]
    centre_world_mm: tuple[float, float, float]
    score: float | None
    case_id: str
