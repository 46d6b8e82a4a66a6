"""Phantom labels: growth, Lung-RADS on measured values, follow-up, report, LIDC binarisation."""

import math

import numpy as np
import pytest

from data_modules.phantom.generator import PhantomConfig, generate_case, generate_follow_up
from data_modules.phantom.labels import growth_label
from data_modules.phantom.lidc_shapes import LidcShape
from data_modules.phantom.patch import make_nodule_sample
from lungvlm.clinical.growth import volume_after_days
from lungvlm.clinical.lungrads import categorize
from lungvlm.labels import CONCEPT_NAMES, CONCEPT_SCALE_MAX


def test_growth_label_hand_worked():
    # t = 3 * 250 * log2(7.5 / 6) = 241.45 days = 7.93 months
    event, months = growth_label(6.0, 250.0)
    assert event and months == pytest.approx(241.446 / 30.4375, rel=1e-4)
    # VDT 1500 days: 1448.7 days = 47.6 months > 24 -> censored at 24
    assert growth_label(6.0, 1500.0) == (False, 24.0)
    assert growth_label(6.0, math.inf) == (False, 24.0)


@pytest.fixture(scope="module")
def case():
    return generate_case(7, PhantomConfig(shape_zyx=(48, 96, 96), n_nodules=(3, 3)))


def _recategorize(n, status="baseline"):
    return categorize(
        attenuation=n.attenuation,
        mean_diameter_mm=n.mean_diameter_mm,
        solid_component_mm=n.solid_component_mm,
        status=status,
        benign_calcification=n.calcification != "none",
        contains_fat=n.contains_fat,
        juxtapleural_benign=n.pleural_relation != "none"
        and n.attenuation == "solid"
        and n.margin == "smooth"
        and n.shape != "irregular"
        and n.calcification == "none",
        suspicious_features=n.margin == "spiculated",
    ).category


def test_lungrads_equals_categorize_on_measured_values(case):
    samples = [
        make_nodule_sample(s, PhantomConfig(patch_shape_vox=(32, 32, 32), context_scale=0))
        for s in range(6)
    ]
    labels = [s["labels"] for s in samples if s["labels"] is not None] + case.nodules
    assert len(labels) >= 6
    for n in labels:
        assert n.lungrads_category == _recategorize(n)


def test_characteristics_on_lidc_scales(case):
    for n in case.nodules:
        assert set(n.characteristics) == set(CONCEPT_NAMES)
        for name, value in n.characteristics.items():
            assert 1 <= value <= CONCEPT_SCALE_MAX[name]
        assert n.side in ("right", "left") and n.lobe in ("upper", "middle", "lower")


def test_report_mentions_every_nodule(case):
    assert case.report_text.startswith("FINDINGS:")
    indices = {s.nodule_index for s in case.spans if s.field == "size"}
    assert indices == set(range(len(case.nodules)))
    for s in case.spans:
        assert s.end <= len(case.findings_text)


def test_follow_up_growth_matches_doubling_time(case):
    months = 12.0
    fu = generate_follow_up(case, months, seed=99)
    checked = 0
    for spec, before, after in zip(case.specs, case.soft_masks, fu.soft_masks, strict=True):
        if spec.pleural_relation != "none":
            continue  # clipped at the chest wall
        expected = volume_after_days(1.0, spec.vdt_days, months * 30.4375)
        ratio = after[1].sum() / before[1].sum()
        assert ratio == pytest.approx(expected, rel=0.1)
        checked += 1
    assert checked >= 1
    for prior, now in zip(case.nodules, fu.nodules, strict=True):
        assert now.change["prior_mean_diameter_mm"] == prior.mean_diameter_mm
        assert now.change["interval_months"] == months
        assert now.lungrads_category == _recategorize(now, now.lungrads_status)


def test_follow_up_rejects_bad_interval(case):
    with pytest.raises(ValueError, match="months=-3"):
        generate_follow_up(case, -3, seed=1)


@pytest.mark.parametrize(
    ("mean", "expected"), [(3.25, True), (3.0, None), (2.5, False), (4.0, True), (1.0, False)]
)
def test_lidc_malignancy_binarisation(mean, expected):
    shape = LidcShape(
        1, 1, np.zeros((2, 2, 2), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 1.0, 1, {}, mean, 4
    )
    assert shape.malignant is expected


def test_negative_sample_has_no_labels():
    s = make_nodule_sample(
        3, PhantomConfig(patch_shape_vox=(32, 32, 32), context_scale=0), positive=False
    )
    assert s["labels"] is None and not s["mask"].any()
    assert "nodule" in s["findings_text"].lower()
    assert np.isfinite(s["image_hu"]).all()
