"""Risk metrics: Harrell's C-index (vs hand values and pycox), Lung-RADS and malignancy metrics."""

import math

import numpy as np
import pytest
import torch
from pycox.evaluation.concordance import concordance_td
from torchmetrics.classification import BinaryAUROC

from lungvlm.metrics.risk import (
    ConcordanceIndex,
    PresentMasked,
    harrell_concordance,
    lungrads_metrics,
    majority_baseline_accuracy,
    malignancy_metrics,
    masked_target,
    prevalence_baseline_brier,
)

TIMES = [1.0, 2.0, 2.0, 3.0, 4.0]
EVENTS = [1.0, 1.0, 0.0, 1.0, 0.0]
RISK_WITH_TIE = [0.9, 0.5, 0.5, 0.7, 0.1]


def test_harrell_hand_value_with_ties():
    # Comparable pairs (i had the event): 0 vs 1,2,3,4 (all concordant: 4);
    # 1 vs 2 (same time, 2 censored; tied risk: 0.5), 1 vs 3 (0), 1 vs 4 (1); 3 vs 4 (1).
    # 6.5 concordant of 8 comparable.
    c = harrell_concordance(
        torch.tensor(RISK_WITH_TIE), torch.tensor(TIMES), torch.tensor(EVENTS).bool()
    )
    assert c.item() == pytest.approx(6.5 / 8)


def test_concordance_metric_batches_mask_and_constant_baseline():
    metric = ConcordanceIndex()
    metric.update(
        torch.tensor(RISK_WITH_TIE[:2]), torch.tensor(TIMES[:2]), torch.tensor(EVENTS[:2])
    )
    metric.update(
        torch.tensor(RISK_WITH_TIE[2:] + [123.0]),
        torch.tensor(TIMES[2:] + [0.5]),
        torch.tensor(EVENTS[2:] + [1.0]),
        present=torch.tensor([True, True, True, False]),
    )
    assert metric.compute().item() == pytest.approx(0.8125)
    constant = ConcordanceIndex()
    constant.update(torch.zeros(5), torch.tensor(TIMES), torch.tensor(EVENTS))
    assert constant.compute().item() == pytest.approx(0.5)
    with pytest.warns(UserWarning, match="before the ``update`` method"):
        assert math.isnan(ConcordanceIndex().compute().item())


def test_concordance_equals_pycox_antolini_without_risk_ties():
    risk = np.array([0.9, 0.5, 0.4, 0.7, 0.1, 0.65, 0.3])
    times = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 2.0, 5.0])
    events = np.array([1, 1, 0, 1, 0, 1, 1])
    # Time-constant survival curves ordered by risk: one row, S_i = 1 - risk_i.
    surv = (1.0 - risk)[None, :].copy()
    expected = concordance_td(times, events, surv, np.zeros(len(risk), dtype="int64"), "antolini")
    ours = harrell_concordance(torch.tensor(risk), torch.tensor(times), torch.tensor(events).bool())
    assert ours.item() == pytest.approx(expected)
    # By hand: 16 comparable pairs (0: 6, 1: 4, 5: 4, 3: 2), 14 concordant.
    assert ours.item() == pytest.approx(14 / 16)


def test_lungrads_metrics_accuracy_and_linear_kappa():
    metric = lungrads_metrics(num_classes=4)
    # One absent sample (target 6, outside the scale) must be ignored.
    metric.update(
        torch.tensor([0, 1, 2, 3, 0]),
        torch.tensor([0, 1, 3, 3, 6]),
        torch.tensor([True, True, True, True, False]),
    )
    result = metric.compute()
    assert result["accuracy"].item() == pytest.approx(0.75)
    # Linear weights |i-j|/3: observed disagreement 1/12, expected 0.458333 -> 1 - 0.181818.
    assert result["kappa_linear"].item() == pytest.approx(1 - (1 / 12) / (11 / 24), abs=1e-5)
    metric.reset()
    metric.update(torch.tensor([1, 1]), torch.tensor([0, 1]), torch.tensor([True, True]))
    assert metric.compute()["accuracy"].item() == pytest.approx(0.5)


def test_malignancy_metrics_auroc_and_ece():
    metric = malignancy_metrics(n_bins=2)
    metric.update(
        torch.tensor([0.1, 0.4, 0.35, 0.8, 0.99]),
        torch.tensor([0, 0, 1, 1, 0]),
        torch.tensor([True, True, True, True, False]),
    )
    result = metric.compute()
    assert result["auroc"].item() == pytest.approx(0.75)
    # Bin [0, 0.5]: mean confidence 0.28333, accuracy 1/3, weight 3/4; bin (0.5, 1]: |1 - 0.8| * 1/4.
    assert result["ece"].item() == pytest.approx(0.05 * 0.75 + 0.2 * 0.25, abs=1e-6)


def test_present_masked_rejects_metric_without_ignore_index():
    with pytest.raises(ValueError, match="ignore_index=None; expected -1"):
        PresentMasked(BinaryAUROC())
    assert masked_target(torch.tensor([1, 0]), torch.tensor([False, True])).tolist() == [-1, 0]


def test_baselines():
    labels = torch.tensor([0, 1, 1, 2, 1, 2])
    present = torch.tensor([True, True, True, True, True, False])
    assert majority_baseline_accuracy(labels, present) == pytest.approx(0.6)
    assert prevalence_baseline_brier(torch.tensor([1, 0, 0, 0])) == pytest.approx(0.1875)
    with pytest.raises(ValueError, match="at least one present label"):
        majority_baseline_accuracy(labels, torch.zeros(6, dtype=torch.bool))
