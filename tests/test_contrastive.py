"""Tests for contrastive alignment: hand-computed InfoNCE, temperature clamp, retrieval, zero-shot."""

from __future__ import annotations

import math

import pytest
import torch

from lungvlm.losses.contrastive import info_nce
from lungvlm.metrics.report import retrieval_recall_at_k
from lungvlm.models.contrastive import ContrastiveAlignment, zero_shot_scores


def _ce(row: list[float], target: int) -> float:
    return -row[target] + math.log(sum(math.exp(x) for x in row))


def test_info_nce_2x2_hand_value():
    # Unit vectors at 0 and 90 degrees (visual) vs 0 and 60 degrees (text).
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    scale = 10.0
    cos = [[1.0, 0.5], [0.0, math.sqrt(3) / 2]]  # cos[i][j] = v_i . t_j
    logits = [[scale * c for c in row] for row in cos]
    v2t = (_ce(logits[0], 0) + _ce(logits[1], 1)) / 2
    cols = [[logits[0][0], logits[1][0]], [logits[0][1], logits[1][1]]]
    t2v = (_ce(cols[0], 0) + _ce(cols[1], 1)) / 2
    expected = (v2t + t2v) / 2
    assert info_nce(v, t, scale).item() == pytest.approx(expected, rel=1e-5)
    # Scaling an embedding does not change the loss (L2 normalisation inside).
    assert info_nce(3.0 * v, t, scale).item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_3x3_hand_value():
    v = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # pairs 1 and 2 swapped
    # logits = 2 * permutation matrix: row 0 -> [2, 0, 0]; rows 1, 2 put 2 on the wrong column.
    good = -2.0 + math.log(math.exp(2) + 2)
    bad = 0.0 + math.log(math.exp(2) + 2)
    expected = (good + 2 * bad) / 3  # identical in both directions (symmetric matrix)
    assert info_nce(v, t, torch.tensor(2.0)).item() == pytest.approx(expected, rel=1e-6)


def test_alignment_temperature_and_loss():
    torch.manual_seed(0)
    align = ContrastiveAlignment(visual_dim=6, text_dim=5, embed_dim=4, init_temperature=0.07)
    assert align.logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        align.log_logit_scale.fill_(10.0)
    assert align.logit_scale().item() == pytest.approx(100.0, rel=1e-5)
    visual, text = torch.randn(4, 6), torch.randn(4, 5)
    expected = info_nce(align.embed_visual(visual), align.embed_text(text), 100.0)
    assert align(visual, text).item() == pytest.approx(expected.item(), rel=1e-5)
    assert align.embed_text(text).norm(dim=-1).tolist() == pytest.approx([1.0] * 4, abs=1e-6)


def test_alignment_learns_pairs():
    torch.manual_seed(0)
    align = ContrastiveAlignment(visual_dim=8, text_dim=8, embed_dim=8)
    visual = torch.randn(6, 8)
    text = visual @ torch.randn(8, 8)  # text is a fixed linear function of the image
    optimizer = torch.optim.AdamW(align.parameters(), lr=0.05)
    first = align(visual, text).item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = align(visual, text)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first
    assert retrieval_recall_at_k(align.similarity(visual, text), 1).item() == 1.0


def test_retrieval_recall_at_k_on_alignment_similarities():
    """The one recall@k (``lungvlm.metrics.report``) on a contrastive similarity matrix."""
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.1, 0.2, 0.3]])
    assert retrieval_recall_at_k(sim, 1).item() == pytest.approx(2 / 3)  # row 1 ranks its pair 2nd
    assert retrieval_recall_at_k(sim, 2).item() == 1.0


def test_zero_shot_scores_hand_value():
    visual = torch.tensor([[1.0, 0.0]])
    prompts = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # cosines 1 and 0
    probs = zero_shot_scores(visual, prompts, logit_scale=2.0)
    p0 = math.exp(2) / (math.exp(2) + 1)
    assert probs[0].tolist() == pytest.approx([p0, 1 - p0], rel=1e-6)
    with pytest.raises(ValueError, match="must share E"):
        zero_shot_scores(visual, torch.ones(2, 3))


def test_errors():
    with pytest.raises(ValueError, match="same shape"):
        info_nce(torch.ones(2, 3), torch.ones(3, 3), 1.0)
    with pytest.raises(ValueError, match="init_temperature must be > 0"):
        ContrastiveAlignment(2, 2, 2, init_temperature=0.0)
