"""Training, saving and loading the report tokenizer, and aligning report spans with tokens.

The tokenizer is a byte-level BPE trained with the `tokenizers` library and wrapped as a
`transformers` fast tokenizer, so it is saved and loaded with ``save_pretrained`` /
``from_pretrained`` from a local folder (no hub access).

Conventions chosen here (not clinical rules):

- Byte-level: every byte is in the base alphabet, so no text ever maps to ``[UNK]`` and
  ``decode(encode(text)) == text`` exactly (case, spaces and new lines included; no lower-casing).
- Digits are split one per token before BPE, so "7.3 mm" is "7", ".", "3", " mm": the decoder
  writes sizes digit by digit, which keeps size accuracy learnable with a small vocabulary.
- Every encoded report is ``[BOS] text [EOS]``, right-padded with ``[PAD]``. A report longer than
  ``max_length`` is truncated and still ends with ``[EOS]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import Tensor
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "[PAD]"
BOS_TOKEN = "[BOS]"
EOS_TOKEN = "[EOS]"
UNK_TOKEN = "[UNK]"
SEP_TOKEN = "[SEP]"
#: Special tokens in id order: [PAD] = 0, [BOS] = 1, [EOS] = 2, [UNK] = 3, [SEP] = 4.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, SEP_TOKEN)
#: Size of the byte-level base alphabet; the vocabulary must hold it plus the special tokens.
BYTE_ALPHABET_SIZE = 256


class CharSpan(Protocol):
    """Anything with character bounds and a nodule index (e.g. ``lungvlm.types.ReportSpan``)."""

    start: int
    end: int
    nodule_index: int


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers`` object as a transformers fast tokenizer with our special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        sep_token=SEP_TOKEN,
        padding_side="right",
        # Keep spaces exactly as written: " ." must not be collapsed to "." on decode.
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 1000, min_frequency: int = 1
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on report texts.

    Args:
        texts: training corpus (report findings and impressions).
        vocab_size: largest vocabulary size, special tokens and the 256 byte symbols included;
            training stops earlier when no pair is frequent enough to merge.
        min_frequency: a pair is merged only if it occurs at least this many times.

    Returns:
        A fast tokenizer with ``[PAD] [BOS] [EOS] [UNK] [SEP]`` set as pad/bos/eos/unk/sep tokens.

    Raises:
        ValueError: if ``vocab_size`` cannot hold the byte alphabet and special tokens, if
            ``min_frequency`` < 1, or if the corpus is empty.
    """
    smallest = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size must be >= {smallest} (bytes + special tokens); got {vocab_size}"
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1; got {min_frequency}")
    corpus = [str(t) for t in texts]
    if not corpus:
        raise ValueError("texts is empty; expected at least one report text to train on")

    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        special_tokens=[
            (BOS_TOKEN, tokenizer.token_to_id(BOS_TOKEN)),
            (EOS_TOKEN, tokenizer.token_to_id(EOS_TOKEN)),
        ],
    )
    return _wrap(tokenizer)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> Path:
    """Save ``tokenizer`` in the transformers fast-tokenizer format; returns the folder."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path))
    return path


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`save_tokenizer` from a local folder (no network).

    Raises:
        FileNotFoundError: if ``directory`` holds no ``tokenizer.json``.
    """
    path = Path(directory)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer.json in {path}; train one with train_tokenizer() and save_tokenizer()"
        )
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def _check_max_length(max_length: int) -> None:
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 to hold [BOS] and [EOS]; got {max_length}")


def encode_reports(
    tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], max_length: int
) -> tuple[Tensor, Tensor]:
    """Encode reports as ``[BOS] text [EOS]`` padded/truncated to ``max_length`` tokens.

    Returns:
        ids: (B, T) int64 token ids, T = ``max_length``, right-padded with ``[PAD]``.
        attention: (B, T) int64, 1 for real tokens (BOS and EOS included), 0 for padding.

    Raises:
        ValueError: if ``max_length`` < 2 or ``texts`` is a single string.
    """
    _check_max_length(max_length)
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not one string")
    encoded = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return encoded["input_ids"].long(), encoded["attention_mask"].long()


def encode_prompt(tokenizer: PreTrainedTokenizerFast, prompt: str) -> Tensor:
    """``[BOS] prompt`` as (1, P) int64 ids: the prefix a question answer is generated from."""
    bos = tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return torch.tensor([[bos, *ids]], dtype=torch.int64)


def encode_qa(
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    answers: Sequence[str],
    max_length: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Encode question/answer pairs as ``[BOS] prompt answer [EOS]`` for the decoder.

    The prompt and the answer (after one space) are encoded separately and joined, so the
    prompt's tokens are exactly what :func:`encode_prompt` gives at inference. Rows whose
    prompt is "" hold only ``[BOS]`` and have no answer tokens. Answers are cut so the row
    fits ``max_length`` (the prompt is kept whole).

    Returns:
        ids: (B, T) int64, right-padded with ``[PAD]``, T = ``max_length``.
        attention: (B, T) int64, 1 for real tokens.
        answer_mask: (B, T) bool, True on the answer tokens and their ``[EOS]``.

    Raises:
        ValueError: if the lists differ in length or a prompt alone does not fit.
    """
    _check_max_length(max_length)
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    pad, bos, eos = (tokenizer.convert_tokens_to_ids(t) for t in (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN))
    ids = torch.full((len(prompts), max_length), pad, dtype=torch.int64)
    attention = torch.zeros_like(ids)
    answer_mask = torch.zeros(ids.shape, dtype=torch.bool)
    for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        ids[row, 0], attention[row, 0] = bos, 1
        if not prompt:
            continue
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if 1 + len(head) + 2 > max_length:
            raise ValueError(
                f"prompt {prompt!r} ({len(head)} tokens) does not fit max_length={max_length}"
            )
        tail = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
        tail = [*tail[: max_length - 2 - len(head)], eos]
        row_ids = [bos, *head, *tail]
        ids[row, : len(row_ids)] = torch.tensor(row_ids)
        attention[row, : len(row_ids)] = 1
        answer_mask[row, 1 + len(head) : len(row_ids)] = True
    return ids, attention, answer_mask


def char_spans_to_token_labels(
    tokenizer: PreTrainedTokenizerFast,
    text: str,
    spans: Sequence[CharSpan],
    max_length: int,
) -> Tensor:
    """Label each token of ``text`` (encoded as by :func:`encode_reports`) with its nodule index.

    A token belongs to a span when its characters, leading white space excluded (byte-level
    tokens carry the preceding space, e.g. " nodule"), overlap the span ``[start, end)``. When a
    token overlaps several spans the one with the largest overlap wins (first on ties). Special
    tokens, padding, pure white-space tokens and tokens outside every span get -1, as do spans
    whose ``nodule_index`` is -1 (exam-level text).

    Returns:
        (T,) int64, T = ``max_length``.

    Raises:
        ValueError: if ``max_length`` < 2 or a span's bounds are not ``0 <= start < end <= len(text)``.
    """
    _check_max_length(max_length)
    for span in spans:
        if not 0 <= span.start < span.end <= len(text):
            raise ValueError(
                f"span ({span.start}, {span.end}) is outside the text of {len(text)} characters; "
                "expected 0 <= start < end <= len(text)"
            )
    encoded = tokenizer(
        text,
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    labels = torch.full((max_length,), -1, dtype=torch.int64)
    offsets = encoded["offset_mapping"]
    special = encoded["special_tokens_mask"]
    for position, ((start, end), is_special) in enumerate(zip(offsets, special, strict=True)):
        if is_special or end <= start:
            continue
        piece = text[start:end]
        start += len(piece) - len(piece.lstrip())
        if start >= end:
            continue
        best_overlap = 0
        for span in spans:
            overlap = min(end, span.end) - max(start, span.start)
            if overlap > best_overlap:
                best_overlap = overlap
                labels[position] = int(span.nodule_index)
    return labels


__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SEP_TOKEN",
    "SPECIAL_TOKENS",
    "UNK_TOKEN",
    "char_spans_to_token_labels",
    "encode_prompt",
    "encode_qa",
    "encode_reports",
    "load_tokenizer",
    "save_tokenizer",
    "train_tokenizer",
    "tokenizer_from_json",
    "tokenizer_to_json",
]


def tokenizer_to_json(tokenizer: PreTrainedTokenizerFast) -> str:
    """Serialise a tokenizer made by :func:`train_tokenizer` to one JSON string (for checkpoints)."""
    return tokenizer.backend_tokenizer.to_str()


def tokenizer_from_json(text: str) -> PreTrainedTokenizerFast:
    """Rebuild a tokenizer serialised by :func:`tokenizer_to_json` (no files, no network)."""
    return _wrap(Tokenizer.from_str(text))
