"""Logistic-hazard growth model: label discretization and loss checked against pycox."""

import math

import numpy as np
import pytest
import torch
from pycox.models.loss import nll_logistic_hazard
from pycox.preprocessing.label_transforms import LabTransDiscreteTime

from lungvlm.labels import GROWTH_BINS_MONTHS
from lungvlm.losses.survival import (
    discretize_time,
    growth_survival_loss,
    logistic_hazard_loss,
    probability_event_by,
    survival_curve,
)

LN2 = math.log(2.0)

# (time months, event, expected interval index, expected event) for bins 0,3,6,9,12,18,24.
DISCRETIZE_CASES = [
    (3.0, 1.0, 0, 1.0),  # event on the right edge of (0, 3]
    (3.5, 1.0, 1, 1.0),
    (24.0, 1.0, 5, 1.0),
    (30.0, 1.0, 5, 0.0),  # beyond the last edge: censored at 24 months
    (2.0, 0.0, -1, 0.0),  # censored before completing any interval
    (0.0, 0.0, -1, 0.0),
    (3.0, 0.0, 0, 0.0),  # censored exactly at an edge: interval 0 completed
    (5.9, 0.0, 0, 0.0),
    (6.0, 0.0, 1, 0.0),
    (24.0, 0.0, 5, 0.0),
    (100.0, 0.0, 5, 0.0),
]


@pytest.mark.parametrize(("time", "event", "idx", "out_event"), DISCRETIZE_CASES)
def test_discretize_time_table(time, event, idx, out_event):
    got_idx, got_event = discretize_time(torch.tensor([time]), torch.tensor([event]))
    assert got_idx.tolist() == [idx]
    assert got_event.tolist() == [out_event]


def test_discretize_time_matches_pycox_label_transform():
    times = np.array([c[0] for c in DISCRETIZE_CASES] + [0.5, 11.9, 12.0, 17.0], dtype="float64")
    events = np.array([c[1] for c in DISCRETIZE_CASES] + [1.0, 1.0, 0.0, 0.0], dtype="float64")
    pycox_idx, pycox_events = LabTransDiscreteTime(np.array(GROWTH_BINS_MONTHS)).transform(
        times, events
    )
    idx, ev = discretize_time(torch.from_numpy(times), torch.from_numpy(events))
    # pycox gives the cut point 0 its own output, so its indices are ours + 1.
    assert idx.tolist() == (pycox_idx - 1).tolist()
    assert ev.tolist() == pycox_events.tolist()


def test_discretize_time_matches_pycox_on_random_labels():
    # Times on a 0.5-month grid hit every edge of the bins, and go beyond the last one.
    rng = np.random.default_rng(0)
    times = rng.integers(1, 61, size=400).astype("float64") / 2.0  # 0.5 .. 30 months
    events = (rng.random(400) < 0.5).astype("float64")
    pycox_idx, pycox_events = LabTransDiscreteTime(np.array(GROWTH_BINS_MONTHS)).transform(
        times, events
    )
    idx, ev = discretize_time(torch.from_numpy(times), torch.from_numpy(events))
    assert idx.tolist() == (pycox_idx - 1).tolist()
    assert ev.tolist() == pycox_events.tolist()
    # The sample covers every index, informative or not, and both event values.
    assert sorted(set(idx.tolist())) == [-1, 0, 1, 2, 3, 4, 5]
    assert set(ev.tolist()) == {0.0, 1.0}


def test_discretize_time_errors():
    with pytest.raises(ValueError, match="an event needs time_months > bins"):
        discretize_time(torch.tensor([0.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="time_months must be >= bins"):
        discretize_time(torch.tensor([-1.0]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        discretize_time(torch.tensor([1.0]), torch.tensor([0.0]), bins=(0.0, 3.0, 3.0))


def test_logistic_hazard_loss_hand_value():
    phi = torch.zeros(2, 2)
    # Event in interval 1: BCE(0,0) + BCE(0,1) = 2 ln 2; censored after interval 0: ln 2.
    loss = logistic_hazard_loss(phi, torch.tensor([1, 0]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(1.5 * LN2)


def test_logistic_hazard_loss_equals_pycox_and_ignores_absent():
    torch.manual_seed(0)
    phi = torch.randn(6, 6, dtype=torch.float64)
    idx = torch.tensor([0, 5, 2, 3, 1, 4])
    events = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    ours = logistic_hazard_loss(phi, idx, events)
    torch.testing.assert_close(ours, nll_logistic_hazard(phi, idx, events))
    # Absent rows with garbage (out-of-range index, NaN event) and an uninformative idx -1 row.
    phi_extra = torch.cat([phi, torch.randn(2, 6, dtype=torch.float64)]).requires_grad_()
    idx_extra = torch.cat([idx, torch.tensor([99, -1])])
    events_extra = torch.cat([events, torch.tensor([float("nan"), 0.0], dtype=torch.float64)])
    present = torch.tensor([True] * 6 + [False, True])
    masked = logistic_hazard_loss(phi_extra, idx_extra, events_extra, present)
    torch.testing.assert_close(masked, nll_logistic_hazard(phi, idx, events))
    masked.backward()
    assert phi_extra.grad[6:].abs().sum().item() == 0.0


def test_growth_survival_loss_matches_discretized_and_zero_when_absent():
    torch.manual_seed(0)
    phi = torch.randn(4, 6, requires_grad=True)
    time = torch.tensor([4.0, 12.0, 30.0, -7.0])
    event = torch.tensor([1.0, 0.0, 1.0, 1.0])
    present = torch.tensor([True, True, True, False])
    loss = growth_survival_loss(phi, time, event, present)
    # 4.0 event -> idx 1 event; 12.0 censored -> idx 3; 30.0 -> censored at 24, idx 5.
    expected = nll_logistic_hazard(
        phi[:3].detach(), torch.tensor([1, 3, 5]), torch.tensor([1.0, 0.0, 0.0])
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    none = growth_survival_loss(phi, time, event, torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match=r"hazard_logits must be \(B, 6\)"):
        growth_survival_loss(torch.zeros(4, 5), time, event, present)


def test_survival_curve_and_probability_by_horizon():
    phi = torch.zeros(1, 6)
    torch.testing.assert_close(
        survival_curve(phi), torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625]])
    )
    # 12 months is the end of interval 3: 1 - 0.5^4.
    assert probability_event_by(phi, 12.0).item() == pytest.approx(0.9375)
    # 4.5 months: S linear between S(3) = 0.5 and S(6) = 0.25 -> 0.375.
    assert probability_event_by(phi, 4.5).item() == pytest.approx(0.625)
    assert probability_event_by(phi, 0.0).item() == pytest.approx(0.0)
    assert probability_event_by(phi, 24.0).item() == pytest.approx(1 - 0.015625)
    hazard = torch.tensor([[-math.log(3.0), 0.0, 0.0, 0.0, 0.0, 0.0]])  # h_0 = 0.25
    assert probability_event_by(hazard, 3.0).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="months=30.0 must lie within"):
        probability_event_by(phi, 30.0)
