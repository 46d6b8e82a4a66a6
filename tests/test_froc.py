"""LUNA16 FROC/CPM on hand-built detections, and the connected-component helpers."""

import numpy as np
import pytest
import torch

from lungvlm.metrics.froc import Candidate, ReferenceNodule, froc, froc_curve
from lungvlm.metrics.segmentation import connected_components, label_components, per_nodule_dice

REFERENCES = [
    ReferenceNodule("A", 0.0, 0.0, 0.0, 10.0),  # hit radius 5 mm
    ReferenceNodule("A", 50.0, 0.0, 0.0, 6.0),  # hit radius 3 mm
    ReferenceNodule("B", 0.0, 0.0, 0.0, 8.0),  # hit radius 4 mm
]
EXCLUDED = [ReferenceNodule("B", 30.0, 30.0, 30.0, -1.0)]  # negative diameter -> 10 mm
CANDIDATES = [
    Candidate("A", 1.0, 0.0, 0.0, 0.9),  # TP for A1
    Candidate("A", 0.0, 2.0, 0.0, 0.4),  # second hit on A1: dropped
    Candidate("A", 50.0, 0.0, 2.9, 0.3),  # 2.9^2 = 8.41 < 9: TP for A2
    Candidate("A", 20.0, 0.0, 0.0, 0.8),  # FP
    Candidate("A", 100.0, 0.0, 0.0, 0.2),  # FP
    Candidate("B", 0.0, 0.0, 4.0, 0.7),  # distance^2 16 is not < 16: FP
    Candidate("B", 30.0, 30.0, 34.0, 0.95),  # on the excluded finding: ignored
    Candidate("B", 0.0, 0.0, 1.0, 0.1),  # TP for B1
    Candidate("B", -40.0, 0.0, 0.0, 0.6),  # FP
]


def test_cpm_matches_hand_computation():
    result = froc(CANDIDATES, REFERENCES, EXCLUDED)
    # Scores by decreasing probability: .9 T, .8 F, .7 F, .6 F, .3 T, .2 F, .1 T; 2 scans, 3 nodules.
    np.testing.assert_allclose(result.fps_per_scan, [0, 0, 0.5, 1, 1.5, 1.5, 2, 2])
    np.testing.assert_allclose(result.sensitivity, np.array([0, 1, 1, 1, 1, 2, 2, 3]) / 3)
    assert result.sensitivities_at_points == pytest.approx(
        {0.125: 1 / 3, 0.25: 1 / 3, 0.5: 1 / 3, 1.0: 1 / 3, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    )
    assert result.cpm == pytest.approx(13 / 21)
    assert (result.n_scans, result.n_nodules, result.n_detected) == (2, 3, 3)
    assert (result.n_false_positives, result.n_ignored) == (4, 2)


def test_excluded_findings_and_listed_scans_change_the_counts():
    # Without the exclusion list the .95 mark is the top false positive: points (fps, sens)
    # (0, 0) (.5, 0) (.5, 1/3) (1, 1/3) (1.5, 1/3) (2, 1/3) (2, 2/3) (2.5, 2/3) (2.5, 1).
    result = froc(CANDIDATES, REFERENCES)
    assert result.n_false_positives == 5
    assert list(result.sensitivities_at_points.values()) == pytest.approx(
        [0, 0, 1 / 3, 1 / 3, 2 / 3, 1, 1]
    )
    assert result.cpm == pytest.approx(10 / 21)
    # A third listed scan with no candidates doubles nothing but the per-scan denominator.
    result = froc(CANDIDATES, REFERENCES, EXCLUDED, scan_ids=["A", "B", "C"])
    np.testing.assert_allclose(result.fps_per_scan[-1], 4 / 3)


def test_tied_scores_form_one_point_joined_to_the_origin():
    # One TP and one FP at the same probability: the curve goes straight from (0, 0) to (1, 1).
    result = froc(
        [Candidate("A", 0, 0, 0, 0.9), Candidate("A", 90, 0, 0, 0.9)],
        [ReferenceNodule("A", 0, 0, 0, 5.0)],
    )
    np.testing.assert_allclose(result.fps_per_scan, [0, 1])
    assert result.sensitivities_at_points[0.25] == pytest.approx(0.25)
    assert result.cpm == pytest.approx((0.125 + 0.25 + 0.5 + 4 * 1.0) / 7)


def test_max_marks_per_scan_keeps_the_most_probable_candidates():
    # Scan A probabilities .9 .8 .4 .3 .2: the cut is the third largest (.4), so .9 and .8 stay
    # and A2 (.3) is missed.
    result = froc(CANDIDATES, REFERENCES, EXCLUDED, max_marks_per_scan=2)
    assert result.n_detected == 1 + 0 + 0  # A1 in scan A; scan B keeps .95 (ignored) and .7 (FP)
    assert result.n_false_positives == 2
    assert result.sensitivity[-1] == pytest.approx(1 / 3)


def test_curve_matches_the_luna16_script_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.random(60) < 0.3
    scores = np.round(rng.random(60), 1)  # rounding creates ties
    n_scans, n_nodules = 7, int(labels.sum()) + 4  # four missed nodules
    fps, sens, _ = froc_curve(labels, scores, n_scans, n_nodules)
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    script_fps = fpr * (len(labels) - labels.sum()) / n_scans
    script_sens = tpr * labels.sum() / n_nodules
    grid = np.linspace(0.125, 8, 10001)
    np.testing.assert_allclose(np.interp(grid, fps, sens), np.interp(grid, script_fps, script_sens))


def test_froc_bad_arguments_raise():
    with pytest.raises(ValueError, match="reference diameters must be > 0 mm"):
        froc([], [ReferenceNodule("A", 0, 0, 0, 0.0)])
    with pytest.raises(ValueError, match="no reference nodules in the 1 evaluated scans"):
        froc([Candidate("A", 0, 0, 0, 0.5)], [])
    with pytest.raises(
        ValueError, match=r"each candidate must be \(scan_id, x_mm, y_mm, z_mm, value\)"
    ):
        froc([("A", 0, 0, 0.5)], REFERENCES)
    with pytest.raises(
        ValueError, match="max_marks_per_scan must be a positive int or None; got 0"
    ):
        froc(CANDIDATES, REFERENCES, max_marks_per_scan=0)


def two_blobs() -> np.ndarray:
    prob = np.zeros((8, 8, 8))
    prob[1:3, 1:3, 1:3] = 0.6  # 8 voxels, centroid (1.5, 1.5, 1.5)
    prob[2, 2, 2] = 0.7
    prob[5:7, 5:8, 6] = 0.9  # 6 voxels, centroid (5.5, 6, 6)
    prob[7, 0, 7] = 0.8  # single voxel
    return prob


def test_connected_components_centroids_scores_and_min_voxels():
    instances = connected_components(torch.from_numpy(two_blobs()), threshold=0.5, min_voxels=2)
    assert [i.num_voxels for i in instances] == [6, 8]  # by decreasing score: .9 then .7
    assert instances[0].centroid_vox == pytest.approx((5.5, 6.0, 6.0))
    assert instances[1].centroid_vox == pytest.approx((1.5, 1.5, 1.5))
    assert [i.score for i in instances] == pytest.approx([0.9, 0.7])
    mean = connected_components(two_blobs(), score="mean", min_voxels=2)
    assert mean[1].score == pytest.approx((7 * 0.6 + 0.7) / 8)
    labels, _ = label_components(two_blobs(), min_voxels=2)
    assert labels[7, 0, 7] == 0 and labels[6, 7, 6] == 1 and labels[1, 1, 1] == 2


def test_per_nodule_dice_per_reference_component():
    gt = np.zeros((8, 8, 8), bool)
    gt[1:3, 1:3, 1:3] = True  # 8 voxels
    gt[5:7, 5:7, 5:7] = True  # 8 voxels, missed
    pred = np.zeros_like(gt)
    pred[1:3, 1:3, 1:4] = True  # 12 voxels, 8 overlap
    pred[0, 7, 7] = True  # unrelated false positive
    assert per_nodule_dice(pred, gt) == pytest.approx([2 * 8 / (12 + 8), 0.0])
    with pytest.raises(
        ValueError, match=r"pred_mask shape \(8, 8, 8\) != gt_mask shape \(8, 8, 7\)"
    ):
        per_nodule_dice(pred, gt[..., :7])
    with pytest.raises(ValueError, match="score='median' is not valid"):
        connected_components(two_blobs(), score="median")
