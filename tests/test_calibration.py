"""Sentence-confidence threshold, risk-coverage, temperature scaling and the calibrate command."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lungvlm.inference.calibration import (
    binary_nll,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    risk_coverage,
    select_sentence_threshold,
    sentence_correct,
)
from lungvlm.inference.report_analysis import load_report_model
from lungvlm.lightning.checkpoint import (
    CALIBRATION_KEY,
    CHECKPOINT_KEY,
    write_calibrated_checkpoint,
)
from tests.report_fixtures import write_stage3_checkpoint
from tests.test_report_pipeline import run_cli

# Ten sentences by increasing confidence; the two least confident and the fourth are wrong.
CONFIDENCES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
CORRECT = [False, False, True, False, True, True, True, True, True, True]


@pytest.mark.parametrize(
    ("target", "threshold"),
    # Precision of conf >= t: t=0.1 7/10, 0.2 7/9, 0.3 7/8, 0.4 6/7, 0.5 6/6.
    [(0.7, 0.1), (0.75, 0.2), (0.86, 0.3), (0.9, 0.5), (1.0, 0.5)],
)
def test_smallest_threshold_reaching_the_target_precision(target, threshold):
    assert select_sentence_threshold(CONFIDENCES, CORRECT, target) == threshold


def test_no_threshold_reaches_the_target():
    assert select_sentence_threshold([0.3, 0.9], [False, False], 0.5) == math.inf
    with pytest.raises(ValueError, match="target_precision=1.5 must be in"):
        select_sentence_threshold(CONFIDENCES, CORRECT, 1.5)


def test_risk_coverage_keeps_the_most_confident_sentences():
    table = risk_coverage(CONFIDENCES, CORRECT)
    assert table == {1.0: pytest.approx(0.7), 0.9: pytest.approx(7 / 9), 0.8: pytest.approx(7 / 8)}


def overconfident_set():
    """Logit +6 for ten crops of which 7 are malignant, -6 for ten of which 3 are."""
    logits = [6.0] * 10 + [-6.0] * 10
    labels = [1] * 7 + [0] * 3 + [1] * 3 + [0] * 7
    return logits, labels


def test_temperature_scaling_lowers_the_nll_to_the_hand_computed_optimum():
    logits, labels = overconfident_set()
    temperature = fit_temperature(logits, labels)
    # Optimum: sigmoid(6 / T) = 0.7, i.e. T = 6 / ln(7 / 3).
    assert temperature == pytest.approx(6.0 / math.log(7.0 / 3.0), rel=1e-3)
    nll_after = binary_nll(logits, labels, temperature)
    assert nll_after == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.3)), rel=1e-4)
    assert nll_after < binary_nll(logits, labels, 1.0)


def test_calibrate_reports_ece_before_and_after():
    logits, labels = overconfident_set()
    result = calibrate(CONFIDENCES, CORRECT, logits, labels, target_precision=0.9)
    # Before: confidence sigmoid(6) in a bin whose accuracy is 0.7 (and its mirror image).
    assert result.ece_before == pytest.approx(1 / (1 + math.exp(-6)) - 0.7, abs=1e-5)
    assert result.ece_after == pytest.approx(0.0, abs=1e-3)
    assert result.sentence_threshold == 0.5 and result.n_malignancy == 20
    assert "90%" in result.table() and "sentence_threshold = 0.5000" in result.table()
    assert expected_calibration_error([0.9, 0.9], [1, 0]) == pytest.approx(0.4)


REFERENCE = (
    "In the right upper lobe, there is a 7.3 mm solid nodule with a smooth margin. No emphysema."
)


@pytest.mark.parametrize(
    ("sentence", "correct"),
    [
        ("In the right upper lobe, there is a 7.3 mm solid nodule with a smooth margin.", True),
        ("A 7.9 mm solid nodule in the right upper lobe.", True),  # within 1.5 mm
        ("A 9.0 mm solid nodule in the right upper lobe.", False),  # 1.7 mm off
        ("There is a ground-glass nodule in the right upper lobe.", False),
        ("A solid nodule in the left upper lobe.", False),
        ("It has a spiculated margin.", False),
        ("There is no emphysema.", True),
        ("Moderate emphysema.", False),
        ("qwerty zzz", False),  # states nothing readable
    ],
)
def test_sentence_is_correct_when_every_stated_field_matches(sentence, correct):
    assert sentence_correct(sentence, REFERENCE) is correct


def test_calibrated_checkpoint_is_a_new_file(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}, CHECKPOINT_KEY: {"stage": "vision_language"}}, path)
    result = calibrate(CONFIDENCES, CORRECT, *overconfident_set())
    out = write_calibrated_checkpoint(path, result)
    assert out == tmp_path / "model_calibrated.ckpt"
    stored = torch.load(out, weights_only=True)[CHECKPOINT_KEY][CALIBRATION_KEY]
    assert stored["sentence_threshold"] == 0.5
    assert stored["malignancy_temperature"] == pytest.approx(result.malignancy_temperature)
    assert CALIBRATION_KEY not in torch.load(path, weights_only=True)[CHECKPOINT_KEY]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_calibrate_command_on_phantom_validation_crops(tmp_path, capsys):
    ckpt = write_stage3_checkpoint(tmp_path / "last.ckpt", seg_logit=None)
    args = ["calibrate", "--ckpt", str(ckpt), "--n-val", "2", "--batch-size", "2"]
    assert run_cli(args) == 0
    printed = capsys.readouterr().out
    assert "coverage" in printed and "last_calibrated.ckpt" in printed
    rm = load_report_model(tmp_path / "last_calibrated.ckpt")
    assert rm.settings.calibrated
    stored = torch.load(tmp_path / "last_calibrated.ckpt", weights_only=True)[CHECKPOINT_KEY]
    calibration = stored[CALIBRATION_KEY]
    assert rm.settings.sentence_threshold == calibration["sentence_threshold"]
    assert calibration["target_precision"] == 0.9
    assert calibration["n_sentences"] >= 2
    assert set(calibration["risk_coverage"]) == {1.0, 0.9, 0.8}
    assert np.isfinite(calibration["malignancy_temperature"])


def calibrated_with(path, calibration):
    return torch.load(write_calibrated_checkpoint(path, calibration), weights_only=True)[
        CHECKPOINT_KEY
    ][CALIBRATION_KEY]


DETECTION = {"candidate_threshold": 0.7, "max_fps_per_scan": 1.0, "val_sensitivity": 0.8,
             "val_fps_per_scan": 0.75, "n_chests": 4}  # fmt: skip


def test_detection_and_sentence_calibrations_merge_in_either_order(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, CHECKPOINT_KEY: {}}, path)
    sentences = calibrate(CONFIDENCES, CORRECT, *overconfident_set())
    calibrated_with(path, sentences)
    both = calibrated_with(path, {"detection": DETECTION})
    assert both["detection"] == DETECTION and both["sentence_threshold"] == 0.5
    again = calibrated_with(path, sentences)  # a second sentence calibration keeps detection
    assert again["detection"] == DETECTION and again["sentence_threshold"] == 0.5
    # Calibrating a calibrated file keeps what it holds.
    nested = calibrated_with(
        tmp_path / "model_calibrated.ckpt", {"detection": {**DETECTION, "n_chests": 8}}
    )
    assert nested["detection"]["n_chests"] == 8 and nested["sentence_threshold"] == 0.5


def test_calibration_of_other_weights_is_not_merged(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, CHECKPOINT_KEY: {}}, path)
    calibrated_with(path, {"detection": DETECTION})
    torch.save({"state_dict": {"w": torch.zeros(2)}, CHECKPOINT_KEY: {}}, path)  # retrained
    stored = calibrated_with(path, calibrate(CONFIDENCES, CORRECT, *overconfident_set()))
    assert "detection" not in stored and stored["sentence_threshold"] == 0.5


def test_calibrate_detection_command_on_phantom_validation_chests(tmp_path, capsys):
    from tests.test_candidate_score import write_candidate_checkpoint

    ckpt = write_candidate_checkpoint(tmp_path / "last.ckpt")
    args = ["calibrate", "--detection", "--ckpt", str(ckpt), "--n-chests", "2",
            "--phantom-size", "tiny", "--max-fps-per-scan", "0.5"]  # fmt: skip
    assert run_cli(args) == 0
    printed = capsys.readouterr().out
    assert "candidate_threshold = " in printed and "last_calibrated.ckpt" in printed
    stored = torch.load(tmp_path / "last_calibrated.ckpt", weights_only=True)[CHECKPOINT_KEY]
    detection = stored[CALIBRATION_KEY]["detection"]
    assert set(detection) == {"candidate_threshold", "max_fps_per_scan", "val_sensitivity",
                              "val_fps_per_scan", "n_chests"}  # fmt: skip
    assert detection["n_chests"] == 2 and detection["max_fps_per_scan"] == 0.5
    assert detection["val_fps_per_scan"] <= 0.5
    rm = load_report_model(tmp_path / "last_calibrated.ckpt")
    assert rm.settings.candidate_threshold == detection["candidate_threshold"]
    assert not rm.settings.calibrated  # no sentence calibration in this file


def test_calibrate_detection_needs_a_candidate_head(tmp_path, capsys):
    ckpt = write_stage3_checkpoint(tmp_path / "last.ckpt")
    assert run_cli(["calibrate", "--detection", "--ckpt", str(ckpt), "--n-chests", "1"]) == 2
    assert "has no candidate head" in capsys.readouterr().err
