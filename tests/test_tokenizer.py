"""Tests for the report tokenizer: exact round trip, digit splitting, span -> token labels."""

from __future__ import annotations

import pytest
import torch

from lungvlm.text.tokenizer import (
    char_spans_to_token_labels,
    encode_reports,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from lungvlm.types import ReportSpan

CORPUS = [
    "A 7.3 mm solid nodule in the right upper lobe.",
    "A 0.7 cm part-solid nodule in the left lower lobe, previously 5 mm.",
    "Spiculated margins. No calcification.",
    "Lung-RADS 4A: suspicious. Follow-up CT in 3 months.",
    "Two nodules: a 12.5 mm solid nodule (RUL) and a 4 mm ground-glass nodule (LLL).",
    "Mild centrilobular emphysema.\nNo pleural effusion.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


def test_special_token_ids(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert (tokenizer.unk_token_id, tokenizer.sep_token_id) == (3, 4)
    assert len(tokenizer) == 300


@pytest.mark.parametrize(
    "text",
    [
        *CORPUS,
        # Unseen text: new words, double spaces, a tab, non-ASCII symbols, upper case.
        "Nodule ≤3 cm,  8.0 × 6.4 mm\tLUNG-RADS 2 (benign).",
    ],
)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_digits_are_single_tokens(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("size 17.35 mm")["input_ids"])
    assert tokens[tokens.index("1") : tokens.index("1") + 5] == ["1", "7", ".", "3", "5"]


def test_encode_reports_pads_and_truncates(tokenizer):
    short = "No calcification."
    n_short = len(tokenizer(short)["input_ids"])
    t = n_short + 3
    ids, attention = encode_reports(tokenizer, [short, CORPUS[4]], max_length=t)
    assert ids.shape == (2, t) and ids.dtype == torch.int64 and attention.dtype == torch.int64
    assert attention[0].tolist() == [1] * n_short + [0, 0, 0]
    assert ids[0, n_short - 1].item() == tokenizer.eos_token_id
    assert ids[0, n_short:].tolist() == [tokenizer.pad_token_id] * 3
    # The long report is truncated but still framed by [BOS] ... [EOS].
    assert attention[1].sum().item() == t
    assert (
        ids[1, 0].item() == tokenizer.bos_token_id and ids[1, -1].item() == tokenizer.eos_token_id
    )


def test_span_labels_on_hand_built_example(tokenizer):
    text = "A 12.5 mm solid nodule (RUL) and a 4 mm nodule (LLL)."
    spans = [ReportSpan(2, 22, 0, "size"), ReportSpan(35, 46, 1, "size")]
    assert text[2:22] == "12.5 mm solid nodule" and text[35:46] == "4 mm nodule"
    labels = char_spans_to_token_labels(tokenizer, text, spans, max_length=24)
    ids, _ = encode_reports(tokenizer, [text], max_length=24)
    expected = [
        ("[BOS]", -1), ("A", -1), ("Ġ", -1),
        ("1", 0), ("2", 0), (".", 0), ("5", 0), ("Ġmm", 0), ("Ġsolid", 0), ("Ġnodule", 0),
        ("Ġ(", -1), ("R", -1), ("U", -1), ("L", -1), (")", -1), ("Ġa", -1), ("nd", -1),
        ("Ġa", -1), ("Ġ", -1),
        ("4", 1), ("Ġmm", 1), ("Ġnodule", 1),
        ("Ġ(", -1), ("[EOS]", -1),
    ]  # fmt: skip
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    assert list(zip(tokens, labels.tolist(), strict=True)) == expected


def test_exam_level_spans_and_padding_are_unlabelled(tokenizer):
    text = "Mild centrilobular emphysema."
    labels = char_spans_to_token_labels(tokenizer, text, [ReportSpan(0, 29, -1, "size")], 16)
    assert labels.tolist() == [-1] * 16


def test_save_and_load_give_identical_encoding(tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    ids_a, att_a = encode_reports(tokenizer, CORPUS, 96)
    ids_b, att_b = encode_reports(loaded, CORPUS, 96)
    assert torch.equal(ids_a, ids_b) and torch.equal(att_a, att_b)
    assert att_a.sum(1).max().item() < 96  # nothing truncated
    assert loaded.batch_decode(ids_b, skip_special_tokens=True) == CORPUS


def test_errors(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be >= 261"):
        train_tokenizer(CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="texts is empty"):
        train_tokenizer([], vocab_size=300)
    with pytest.raises(ValueError, match=r"span \(3, 99\) is outside the text"):
        char_spans_to_token_labels(tokenizer, "short", [ReportSpan(3, 99, 0, "size")], 8)
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        encode_reports(tokenizer, ["a"], 1)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
