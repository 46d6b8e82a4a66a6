"""Tests for report generation: cache equivalence, entropies, beam search, overfitting, confidence."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lungvlm.models.generation import (
    beam_search_generate,
    generated_token_offsets,
    greedy_generate,
    sentence_confidence,
)
from lungvlm.models.grounding import token_heatmaps
from lungvlm.models.report_decoder import ReportDecoder
from lungvlm.models.visual_tokens import TokenGeometry
from lungvlm.text.tokenizer import encode_reports, train_tokenizer


def _random_decoder(vocab: int = 40, layers: int = 2) -> ReportDecoder:
    torch.manual_seed(0)
    return ReportDecoder(
        vocab, d_model=32, n_layers=layers, n_heads=4, max_length=32, dropout=0.0
    ).eval()


def test_cached_greedy_equals_full_recomputation():
    decoder = _random_decoder()
    visual = torch.randn(3, 8, 32)
    cached = greedy_generate(decoder, visual, max_new_tokens=12, use_cache=True)
    full = greedy_generate(decoder, visual, max_new_tokens=12, use_cache=False)
    assert torch.equal(cached.token_ids, full.token_ids)
    assert torch.allclose(cached.token_entropies, full.token_entropies, atol=1e-5)
    for a, b in zip(cached.cross_attentions, full.cross_attentions, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_entropies_are_bounded_and_attention_matches_teacher_forcing():
    vocab = 40
    decoder = _random_decoder(vocab)
    visual = torch.randn(2, 8, 32)
    out = greedy_generate(decoder, visual, max_new_tokens=10)
    assert out.token_ids.shape == out.token_entropies.shape
    assert (out.token_entropies >= 0).all()
    assert (out.token_entropies <= math.log(vocab) + 1e-5).all()
    assert out.token_entropies.max().item() > 0.5 * math.log(vocab)  # an untrained model is unsure
    # The attention stored for token l is the teacher-forced attention of query l (which fed the
    # previous token and produced token l).
    length = out.token_ids.shape[1]
    ids = torch.cat([torch.full((2, 1), decoder.bos_token_id), out.token_ids], dim=1)[:, :length]
    forced = decoder(ids, torch.ones_like(ids), visual).cross_attentions
    for gen_layer, forced_layer in zip(out.cross_attentions, forced, strict=True):
        assert gen_layer.shape == (2, 4, length, 8)
        assert torch.allclose(gen_layer, forced_layer, atol=1e-5)
    geometry = TokenGeometry(((2, 2, 2),), ((4, 4, 4),), (0,))
    heat = token_heatmaps(out.cross_attentions, geometry, (8, 8, 8))
    assert torch.allclose(heat.sum((2, 3, 4)), torch.ones(2, length), atol=1e-5)


def test_beam_of_one_is_greedy():
    decoder = _random_decoder()
    visual = torch.randn(2, 8, 32)
    greedy = greedy_generate(decoder, visual, max_new_tokens=8)
    beam = beam_search_generate(decoder, visual, max_new_tokens=8, num_beams=1, length_penalty=0.0)
    assert torch.equal(beam.token_ids, greedy.token_ids)
    assert torch.allclose(beam.scores, greedy.scores, atol=1e-5)
    assert torch.allclose(beam.token_entropies, greedy.token_entropies, atol=1e-5)


def test_exhaustive_beam_search_finds_the_best_sequence():
    # Vocabulary of 5 ([PAD], [BOS], [EOS], a, b) and 3 steps: 25 beams keep every prefix alive,
    # so beam search must return the highest-probability sequence found by brute force.
    decoder = _random_decoder(vocab=5, layers=1)
    with torch.no_grad():
        decoder.gpt2.lm_head.weight.mul_(20.0)  # sharpen the random model's preferences
    visual = torch.randn(1, 4, 32)
    beam = beam_search_generate(decoder, visual, max_new_tokens=3, num_beams=25, length_penalty=0.0)
    best_score, best_seq = -math.inf, None
    for seq in itertools.product(range(5), repeat=3):
        if 2 in seq:  # stop at the first [EOS]; later tokens are padding
            seq = seq[: seq.index(2) + 1]
        if 1 in seq or 0 in seq:
            continue
        ids = torch.tensor([[1, *seq]])
        with torch.no_grad():
            logits = decoder(ids, torch.ones_like(ids), visual).logits
        logits[..., :2] = -math.inf  # [PAD] and [BOS] are never generated
        log_probs = logits.log_softmax(-1)
        score = sum(log_probs[0, t, ids[0, t + 1]].item() for t in range(len(seq)))
        if score > best_score + 1e-9:
            best_score, best_seq = score, list(seq)
    found = [t for t in beam.token_ids[0].tolist() if t != 0]
    assert found == best_seq
    assert beam.scores[0].item() == pytest.approx(best_score, abs=1e-4)


def test_overfitting_one_batch_reproduces_the_targets():
    texts = [
        "A 7.3 mm solid nodule in the right upper lobe.",
        "A 12 mm spiculated nodule. Lung-RADS 4A.",
    ]
    tokenizer = train_tokenizer([*texts, "No nodules."], vocab_size=300)
    ids, attention = encode_reports(tokenizer, texts, 32)
    torch.manual_seed(0)
    decoder = ReportDecoder(
        len(tokenizer), d_model=32, n_layers=2, n_heads=4, max_length=32, dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    visual = torch.randn(2, 8, 32)  # the two crops differ only through their visual tokens
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster and steadier on a busy CPU
    try:
        for _ in range(200):
            loss = decoder(ids, attention, visual, output_attentions=False).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    decoder.eval()
    with torch.no_grad():
        final_ce = decoder(ids, attention, visual, output_attentions=False).loss.item()
    assert final_ce < 0.05  # measured about 0.015 nats/token
    out = greedy_generate(decoder, visual, max_new_tokens=30, tokenizer=tokenizer)
    assert out.sequences == texts
    assert out.token_mask.sum(1).tolist() == (attention.sum(1) - 1).tolist()  # [BOS] not generated
    beam = beam_search_generate(
        decoder, visual, max_new_tokens=30, num_beams=3, tokenizer=tokenizer
    )
    assert beam.sequences == texts
    text, offsets = generated_token_offsets(tokenizer, out.token_ids[0])
    assert text == texts[0]
    confidences = sentence_confidence(text, offsets, out.token_entropies[0])
    assert [s for s, _ in confidences] == [texts[0]]
    assert confidences[0][1] > 0.8


def test_sentence_confidence_hand_values():
    text = "A 7 mm nodule. No calcification.\nStable."
    assert len(text) == 40
    offsets = [(0, 1), (1, 2), (2, 3), (3, 6), (6, 13), (13, 14), (14, 17), (17, 31), (31, 32),
               (32, 33), (33, 39), (39, 40), (40, 40)]  # fmt: skip
    entropies = [0.1, 0.0, 0.2, 0.3, 0.4, 0.0, 1.0, 2.0, 0.0, 0.5, 0.7, 0.0, 3.0]
    result = sentence_confidence(text, offsets, entropies)
    # Sentence 1: tokens 0-5 except the pure-space token 1 -> mean of 0.1, 0.2, 0.3, 0.4, 0.0.
    # Sentence 2: " No", " calcification", "." -> 1.0, 2.0, 0.0 (the space token 1 is skipped).
    # Sentence 3: "Stable", "." -> 0.7, 0.0; the "\n" token and the empty [EOS] span are skipped.
    assert [s for s, _ in result] == ["A 7 mm nodule.", "No calcification.", "Stable."]
    assert [c for _, c in result] == pytest.approx(
        [math.exp(-0.2), math.exp(-1.0), math.exp(-0.35)], rel=1e-9
    )
    with pytest.raises(ValueError, match="one entry per token"):
        sentence_confidence(text, offsets, entropies[:3])


def test_errors():
    decoder = _random_decoder()
    with pytest.raises(ValueError, match=r"max_new_tokens must be in \[1, 31\]"):
        greedy_generate(decoder, torch.randn(1, 4, 32), max_new_tokens=32)
    with pytest.raises(ValueError, match=r"visual_tokens must be \(B, N, d_model=32\)"):
        beam_search_generate(decoder, torch.randn(1, 4, 16), max_new_tokens=4)
    with pytest.raises(ValueError, match="num_beams must be >= 1"):
        beam_search_generate(decoder, torch.randn(1, 4, 32), max_new_tokens=4, num_beams=0)
