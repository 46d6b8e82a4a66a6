"""Risk and concept heads, their masked losses and multi-task weighting (hand-worked values)."""

import math

import pytest
import torch

from lungvlm.labels import CONCEPT_NAMES, LUNGRADS_CATEGORIES
from lungvlm.losses.risk import (
    concept_loss,
    lungrads_cumulative_targets,
    lungrads_ordinal_loss,
    malignancy_loss,
    masked_mean,
)
from lungvlm.losses.weighting import MultiTaskWeights
from lungvlm.models.heads.concepts import ConceptHead
from lungvlm.models.heads.risk import RiskHead, RiskOutput

LN2, LN3 = math.log(2.0), math.log(3.0)


def test_risk_head_shapes_and_ordered_thresholds():
    torch.manual_seed(0)
    head = RiskHead(visual_dim=6, text_dim=4, hidden_dim=8)
    out = head(torch.randn(3, 6), torch.randn(3, 4))
    c = len(LUNGRADS_CATEGORIES)
    assert out.malignancy_logit.shape == (3,)
    assert out.lungrads_cumulative_logits.shape == (3, c - 1)
    assert out.lungrads_logits.shape == (3, c)
    assert out.growth_hazard_logits.shape == (3, 6)
    # Initial thresholds: 2.5, then steps of softplus(0.5413) = 1.0.
    torch.testing.assert_close(
        head.lungrads_biases().detach(),
        torch.tensor([2.5, 1.5, 0.5, -0.5, -1.5, -2.5]),
        atol=1e-3,
        rtol=0,
    )
    with torch.no_grad():
        head.lungrads_bias_steps.copy_(torch.tensor([-5.0, 3.0, -1.0, 0.0, 2.0]))
    biases = head.lungrads_biases()
    assert bool((biases[1:] < biases[:-1]).all())
    probs = head(torch.randn(5, 6) * 10, None).lungrads_probabilities()
    assert bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))


def test_risk_output_probabilities_hand_values():
    # C = 3: P(y>0) = 0.75, P(y>1) = 0.25 -> class probabilities 0.25, 0.5, 0.25.
    out = RiskOutput(
        malignancy_logit=torch.tensor([0.0]),
        lungrads_cumulative_logits=torch.tensor([[LN3, -LN3]]),
        growth_hazard_logits=torch.zeros(1, 2),
    )
    torch.testing.assert_close(out.lungrads_probabilities(), torch.tensor([[0.25, 0.5, 0.25]]))
    torch.testing.assert_close(
        out.lungrads_logits.softmax(dim=1), torch.tensor([[0.25, 0.5, 0.25]])
    )
    assert out.lungrads_prediction().tolist() == [1]
    assert out.malignancy_probability().item() == pytest.approx(0.5)


def test_risk_head_no_text_vector():
    torch.manual_seed(1)
    head = RiskHead(visual_dim=5, text_dim=3, hidden_dim=8, dropout=0.0).eval()
    with torch.no_grad():
        head.no_text.copy_(torch.tensor([0.3, -1.0, 2.0]))
    visual = torch.randn(2, 5)
    explicit = head(visual, head.no_text.detach().expand(2, 3))
    implicit = head(visual, None)
    torch.testing.assert_close(implicit.malignancy_logit, explicit.malignancy_logit)
    other = head(visual, torch.randn(2, 3))
    assert not torch.allclose(other.malignancy_logit, implicit.malignancy_logit)
    image_only = RiskHead(visual_dim=5, text_dim=3, hidden_dim=8, dropout=0.0, use_text=False)
    image_only.load_state_dict(head.state_dict())
    ignored = image_only.eval()(visual, torch.randn(2, 3))
    torch.testing.assert_close(ignored.growth_hazard_logits, implicit.growth_hazard_logits)


def test_risk_head_errors():
    with pytest.raises(ValueError, match="num_lungrads=1"):
        RiskHead(4, 4, num_lungrads=1)
    head = RiskHead(4, 3)
    with pytest.raises(ValueError, match=r"text must be \(B=2, 3\)"):
        head(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"visual must be \(B, 4\)"):
        head(torch.zeros(2, 7))


def test_concept_head_hand_projection():
    head = ConceptHead(2, concept_names=("a", "b"), bottleneck=True, num_free_dims=1)
    with torch.no_grad():
        head.projection.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        head.projection.bias.zero_()
    out = head(torch.tensor([[1.0, 2.0]]))
    assert out.concept_logits.tolist() == [[1.0, 2.0]]
    assert out.latent.tolist() == [[1.0, 2.0, 3.0]]
    assert head.latent_dim == 3
    side = ConceptHead(2, concept_names=("a", "b"), bottleneck=False)
    side_out = side(torch.tensor([[1.0, 2.0]]))
    assert side_out.latent.shape == (1, 4)
    torch.testing.assert_close(side_out.latent[:, :2], side_out.concept_logits)
    assert side_out.latent[:, 2:].tolist() == [[1.0, 2.0]]
    assert ConceptHead(8).num_concepts == len(CONCEPT_NAMES)
    with pytest.raises(ValueError, match="distinct"):
        ConceptHead(2, concept_names=("a", "a"))


def test_malignancy_loss_hand_values_and_mask():
    logit, target = torch.tensor([0.0, LN3]), torch.tensor([1.0, 0.0])
    present = torch.tensor([True, True])
    # BCE(0, 1) = ln 2; BCE(ln 3, 0) = -ln(1 - 0.75) = ln 4.
    assert malignancy_loss(logit, target, present).item() == pytest.approx((LN2 + 2 * LN2) / 2)
    assert malignancy_loss(logit, target, present, pos_weight=2.0).item() == pytest.approx(2 * LN2)
    garbage_logit = torch.cat([logit, torch.tensor([7.0])]).requires_grad_()
    garbage_target = torch.cat([target, torch.tensor([float("nan")])])
    loss = malignancy_loss(garbage_logit, garbage_target, torch.tensor([True, True, False]))
    assert loss.item() == pytest.approx(1.5 * LN2)
    loss.backward()
    assert garbage_logit.grad[2].item() == 0.0 and bool(garbage_logit.grad.isfinite().all())


def test_losses_are_zero_with_graph_when_nothing_present():
    logit = torch.randn(3, requires_grad=True)
    loss = malignancy_loss(logit, torch.ones(3), torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logit.grad.abs().sum().item() == 0.0
    cum = torch.randn(2, 6, requires_grad=True)
    assert (
        lungrads_ordinal_loss(cum, torch.tensor([1, 2]), torch.zeros(2, dtype=torch.bool)).item()
        == 0.0
    )
    concepts = torch.randn(2, 3, requires_grad=True)
    zero = concept_loss(concepts, torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad
    assert masked_mean(torch.tensor([1.0, 3.0]), torch.tensor([False, True])).item() == 3.0


def test_coral_targets_and_loss_hand_values():
    assert lungrads_cumulative_targets(torch.tensor([2, 0, 3]), 4).tolist() == [
        [1.0, 1.0, 0.0],
        [0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0],
    ]
    cum = torch.tensor([[0.0, 0.0], [LN3, -LN3]])
    labels, present = torch.tensor([1, 2]), torch.tensor([True, True])
    # Row 0: targets [1, 0] -> 2 ln 2. Row 1: targets [1, 1] -> -ln 0.75 - ln 0.25.
    expected = (2 * LN2 + (-math.log(0.75) - math.log(0.25))) / 2
    assert lungrads_ordinal_loss(cum, labels, present).item() == pytest.approx(expected)
    with_absent = lungrads_ordinal_loss(
        torch.cat([cum, torch.tensor([[50.0, -50.0]])]),
        torch.tensor([1, 2, 99]),
        torch.tensor([True, True, False]),
    )
    assert with_absent.item() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"present labels must be in \[0, 3\)"):
        lungrads_ordinal_loss(cum, torch.tensor([1, 5]), present)


def test_concept_loss_hand_values_and_mask():
    logits = torch.tensor([[0.0, LN3]])
    targets = torch.tensor([[0.5, 0.75]])
    # BCE(0, 0.5) = ln 2; BCE(ln 3, 0.75) = -(0.75 ln 0.75 + 0.25 ln 0.25).
    second = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    full = concept_loss(logits, targets, torch.ones(1, 2, dtype=torch.bool))
    assert full.item() == pytest.approx((LN2 + second) / 2)
    masked = concept_loss(
        logits, torch.tensor([[0.5, float("nan")]]), torch.tensor([[True, False]])
    )
    assert masked.item() == pytest.approx(LN2)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        concept_loss(logits, torch.tensor([[0.5, 1.5]]), torch.ones(1, 2, dtype=torch.bool))


def test_multitask_weights_fixed_and_uncertainty():
    fixed = MultiTaskWeights({"a": 1.0, "b": 0.5})
    total, weighted = fixed.combine({"a": torch.tensor(2.0), "b": torch.tensor(4.0)})
    assert total.item() == 4.0 and weighted["b"].item() == 2.0
    learned = MultiTaskWeights({"a": 1.0, "b": 2.0}, uncertainty=True)
    with torch.no_grad():
        learned.log_variances["a"].fill_(LN2)
    total, weighted = learned.combine({"a": torch.tensor(2.0), "b": torch.tensor(3.0)})
    # a: 0.5 * exp(-ln 2) * 2 + 0.5 ln 2; b: 2 * (0.5 * 1 * 3 + 0).
    assert weighted["a"].item() == pytest.approx(0.5 + 0.5 * LN2)
    assert weighted["b"].item() == pytest.approx(3.0)
    assert total.item() == pytest.approx(3.5 + 0.5 * LN2)
    total.backward()
    # d/ds [0.5 e^-s L + 0.5 s] = -0.5 e^-s L + 0.5: a -> -0.5; b (weight 2, s=0) -> 2 * (-1.5 + 0.5).
    assert learned.log_variances["a"].grad.item() == pytest.approx(-0.5 * 0.5 * 2 + 0.5)
    assert learned.log_variances["b"].grad.item() == pytest.approx(-2.0)
    learned.zero_grad()
    total, weighted = learned.combine(
        {"a": torch.tensor(2.0), "b": torch.tensor(0.0)}, active={"b": False}
    )
    assert weighted["b"].item() == 0.0
    total.backward()
    assert learned.log_variances["b"].grad.item() == 0.0
    assert learned.sigmas()["a"] == pytest.approx(math.sqrt(2.0))
    with pytest.raises(ValueError, match="loss 'c' has no weight"):
        fixed.combine({"c": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="contain no '.'"):
        MultiTaskWeights({"risk.malignancy": 1.0})
