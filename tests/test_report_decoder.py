"""Tests for the GPT-2 report decoder and the language-guided visual attention."""

from __future__ import annotations

import math

import pytest
import torch

from lungvlm.models.report_decoder import LanguageGuidedVisualAttention, ReportDecoder

VOCAB = 40


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return ReportDecoder(
        VOCAB, d_model=32, n_layers=2, n_heads=4, max_length=16, dropout=0.0
    ).eval()


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(5, VOCAB, (2, 7))
    ids[:, 0] = 1
    ids[0, 6] = 2
    ids[1, 4] = 2
    ids[1, 5:] = 0  # padding
    attention = (ids != 0).long()
    return ids, attention, torch.randn(2, 9, 32)


def test_forward_shapes_and_attention(decoder):
    ids, attention, visual = _batch()
    out = decoder(ids, attention, visual)
    assert out.logits.shape == (2, 7, VOCAB)
    assert out.hidden_states.shape == (2, 7, 32) and out.language_context.shape == (2, 32)
    assert len(out.cross_attentions) == 2
    for layer in out.cross_attentions:
        assert layer.shape == (2, 4, 7, 9)
        assert torch.allclose(layer.sum(-1), torch.ones(2, 4, 7), atol=1e-5)
    assert out.visual_weights.shape == (2, 9) and out.attended_visual.shape == (2, 32)
    assert decoder(ids, attention, visual, output_attentions=False).cross_attentions is None


def test_loss_is_teacher_forced_cross_entropy_without_padding(decoder):
    ids, attention, visual = _batch()
    out = decoder(ids, attention, visual)
    log_probs = out.logits.log_softmax(-1)
    terms = [
        -log_probs[b, t, ids[b, t + 1]].item()
        for b in range(2)
        for t in range(6)
        if attention[b, t + 1] == 1
    ]
    assert len(terms) == 6 + 4  # row 1 has 5 real tokens
    assert out.loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # Changing what sits in padded positions changes nothing at real positions.
    other = ids.clone()
    other[1, 5:] = 7
    out2 = decoder(other, attention, visual)
    assert out2.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)
    assert torch.allclose(out2.logits[1, :5], out.logits[1, :5], atol=1e-5)


def test_visual_mask_hides_tokens(decoder):
    ids, attention, visual = _batch()
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[:, 6:] = 0
    out = decoder(ids, attention, visual, mask)
    assert out.cross_attentions[0][..., 6:].abs().max().item() == 0.0
    assert out.visual_weights[:, 6:].abs().max().item() == 0.0
    moved = visual.clone()
    moved[:, 6:] += 50.0
    assert torch.allclose(decoder(ids, attention, moved, mask).logits, out.logits, atol=1e-5)


def test_loss_gradient_reaches_visual_tokens():
    torch.manual_seed(0)
    dec = ReportDecoder(VOCAB, d_model=32, n_layers=1, n_heads=2, max_length=16, dropout=0.0)
    ids, attention, visual = _batch()
    visual.requires_grad_(True)
    dec(ids, attention, visual, output_attentions=False).loss.backward()
    assert visual.grad.abs().sum().item() > 0


def test_report_embedding_is_text_only(decoder):
    ids, attention, _ = _batch()
    emb = decoder.report_embedding(ids, attention)
    assert emb.shape == (2, 32)
    hidden = decoder.gpt2.transformer(input_ids=ids, attention_mask=attention).last_hidden_state
    assert torch.allclose(emb[1], hidden[1, :5].mean(0), atol=1e-5)
    other = ids.clone()
    other[1, 5:] = 9
    assert torch.allclose(decoder.report_embedding(other, attention), emb, atol=1e-6)
    assert (emb[0] - emb[1]).abs().max().item() > 1e-3


def test_language_guided_attention_hand_values():
    module = LanguageGuidedVisualAttention(d_model=2, hidden=2)
    visual = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]])
    language = torch.tensor([[0.3, -0.2]])
    with torch.no_grad():
        module.visual_proj.weight.copy_(torch.eye(2))
        module.visual_proj.bias.zero_()
        module.language_proj.weight.zero_()
        module.score.weight.copy_(torch.tensor([[1.0, 0.0]]))  # score_n = tanh(v_n[0])
        module.channel_gate.weight.zero_()
        module.channel_gate.bias.zero_()  # gate = sigmoid(0) = 0.5
    attended, weights = module(visual, language)
    scores = [math.tanh(1.0), math.tanh(2.0), math.tanh(0.0)]
    total = sum(math.exp(s) for s in scores)
    expected = [math.exp(s) / total for s in scores]
    assert weights[0].tolist() == pytest.approx(expected, rel=1e-5)
    x = 0.5 * (expected[0] * 1.0 + expected[1] * 2.0)
    y = 0.5 * (expected[1] * 1.0 + expected[2] * 3.0)
    assert attended[0].tolist() == pytest.approx([x, y], rel=1e-5)
    _, masked = module(visual, language, torch.tensor([[1, 0, 1]]))
    e0, e2 = math.exp(scores[0]), math.exp(scores[2])
    assert masked[0].tolist() == pytest.approx([e0 / (e0 + e2), 0.0, e2 / (e0 + e2)], rel=1e-5)


def test_errors(decoder):
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        ReportDecoder(VOCAB, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match=r"eos_token_id must be in \[0, 40\)"):
        ReportDecoder(VOCAB, eos_token_id=40)
    ids, attention, visual = _batch()
    with pytest.raises(ValueError, match=r"visual_tokens must be \(B=2, N, d_model=32\)"):
        decoder(ids, attention, visual[..., :16])
    with pytest.raises(ValueError, match="max_length is 16"):
        decoder(torch.ones(1, 17, dtype=torch.long), torch.ones(1, 17), visual[:1])
