"""Scan-level evaluation: per-nodule Dice, sensitivity, FPs/scan and LUNA16 FROC/CPM by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lungvlm.evaluation.detection import EvaluationScan, evaluate_scans
from tests.test_inference_scan import GAIN, BrightnessModel


def hu_for_probability(p: float) -> float:
    """HU whose normalised value gives probability ``p`` under BrightnessModel (-1000..400)."""
    normalised = 0.5 + math.log(p / (1 - p)) / GAIN
    return -1000.0 + 1400.0 * normalised


def ball(volume, centre, radius, value):
    z, y, x = np.ogrid[: volume.shape[0], : volume.shape[1], : volume.shape[2]]
    inside = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
    volume[inside] = value
    return inside


def three_scans() -> list[EvaluationScan]:
    """Scan a: nodule found (p 0.9) + a false positive (p 0.8); scan b: nodule found (p 0.7) +
    nodule missed (p 0.3 < threshold); scan c: nothing. Spacing 1 mm, so no resampling."""
    scans = []
    image = np.full((32, 32, 32), -900.0, np.float32)
    labels = np.zeros(image.shape, np.int16)
    labels[ball(image, (8, 8, 8), 4, hu_for_probability(0.9))] = 1
    ball(image, (24, 24, 24), 3, hu_for_probability(0.8))
    scans.append(EvaluationScan("a", image, (1.0, 1.0, 1.0), (-50.0, 10.0, 100.0), labels, [8.0]))
    image = np.full((32, 32, 32), -900.0, np.float32)
    labels = np.zeros(image.shape, np.int16)
    labels[ball(image, (20, 10, 10), 4, hu_for_probability(0.7))] = 1
    labels[ball(image, (8, 24, 24), 4, hu_for_probability(0.3))] = 2
    scans.append(EvaluationScan("b", image, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), labels, [8.0, 8.0]))
    image = np.full((32, 32, 32), -900.0, np.float32)
    scans.append(EvaluationScan("c", image, (1, 1, 1), (0, 0, 0), np.zeros((32, 32, 32)), []))
    return scans


def test_evaluate_scans_matches_hand_computed_froc_and_dice():
    result = evaluate_scans(BrightnessModel(), three_scans(), roi_size_vox=16, sw_batch_size=8)
    a, b, c = result.scans
    assert [round(x[3], 4) for x in a.candidates] == [0.9, 0.8]
    assert [round(x[3], 4) for x in b.candidates] == [0.7]
    assert c.candidates == []
    # Reference centre of scan a: origin (x, y, z) + index (8, 8, 8) mm.
    np.testing.assert_allclose(a.references, [(-42.0, 18.0, 108.0, 8.0)])
    np.testing.assert_allclose(a.candidates[0][:3], [-42.0, 18.0, 108.0], atol=1e-6)
    assert (a.detected, b.detected, a.n_false_positives) == ([True], [True, False], 1)
    # The model reproduces the bright spheres exactly: Dice 1, 1 and 0 (missed).
    assert a.dice == [1.0] and b.dice == [1.0, 0.0]
    assert result.mean_dice == pytest.approx(2 / 3)
    assert result.sensitivity == pytest.approx(2 / 3)
    assert result.fps_per_scan == pytest.approx(1 / 3)
    # FROC (3 scans, 3 nodules): p 0.9 -> (0 FP/scan, 1/3), 0.8 -> (1/3, 1/3), 0.7 -> (1/3, 2/3).
    # Sensitivity at 1/8 and 1/4 FPs/scan: 1/3; at 1/2 ... 8: 2/3. CPM = (2/3 + 10/3) / 7.
    froc = result.froc
    assert froc.sensitivities_at_points[0.125] == pytest.approx(1 / 3)
    assert froc.sensitivities_at_points[0.5] == pytest.approx(2 / 3)
    assert froc.cpm == pytest.approx(4 / 7)
    summary = json.loads(json.dumps(result.to_dict()))["summary"]
    assert summary["cpm"] == pytest.approx(4 / 7)
    assert summary["n_nodules"] == 3 and summary["n_scans"] == 3


def test_labels_must_match_diameters():
    scan = three_scans()[1]._replace(gt_nodule_diameters_mm=[8.0])
    with pytest.raises(ValueError, match=r"holds labels \[1, 2\] but 1 diameters were given"):
        evaluate_scans(BrightnessModel(), [scan], roi_size_vox=16)


def test_duplicate_scan_ids_are_rejected():
    scan = three_scans()[2]
    with pytest.raises(ValueError, match=r"scan ids must be unique; got \['c', 'c'\]"):
        evaluate_scans(BrightnessModel(), [scan, scan], roi_size_vox=16)
