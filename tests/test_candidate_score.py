"""Candidate score: head, loss, training on spheres vs empty crops, operating threshold."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lungvlm.evaluation.detection import candidate_hits, operating_threshold
from lungvlm.inference.candidate_score import candidate_probabilities
from lungvlm.lightning.checkpoint import load_model
from lungvlm.losses.candidate import candidate_loss, candidate_targets, central_cube
from lungvlm.metrics.candidate import CandidateAUROC
from lungvlm.models.encoder import MultiScaleEncoder3D
from lungvlm.models.heads.candidate import CandidateHead, centre_slices
from lungvlm.types import collate_samples
from tests.conftest import TINY_ENCODER, sphere_sample
from tests.report_fixtures import MODEL_CONFIG, write_stage3_checkpoint


# ------------------------------------------------------------------ loss
def masks_with_voxel_at(points, size: int = 16) -> torch.Tensor:
    """(B, 1, size³) masks, each with one voxel at the given (z, y, x) (None: empty)."""
    masks = torch.zeros(len(points), 1, size, size, size)
    for b, point in enumerate(points):
        if point is not None:
            masks[(b, 0, *point)] = 1.0
    return masks


@pytest.mark.parametrize(
    ("point", "target"),
    # 16-voxel crop: central cube of side 4 covers indices 6..9 on every axis.
    [((8, 8, 8), 1.0), ((6, 6, 6), 1.0), ((9, 9, 9), 1.0), ((5, 8, 8), 0.0),
     ((8, 10, 8), 0.0), ((0, 0, 0), 0.0), (None, 0.0)],
)  # fmt: skip
def test_target_is_one_when_the_mask_touches_the_central_cube(point, target):
    assert central_cube((16, 16, 16)) == (slice(6, 10),) * 3
    assert candidate_targets(masks_with_voxel_at([point])).tolist() == [target]


def test_candidate_loss_is_the_bce_of_the_present_crops():
    masks = masks_with_voxel_at([(8, 8, 8), (0, 0, 0), (8, 8, 8)])  # targets 1, 0, (1)
    logits = torch.tensor([2.0, -1.0, 5.0], requires_grad=True)
    present = torch.tensor([True, True, False])
    loss = candidate_loss(logits, masks, present)
    # BCE(2, 1) = log(1 + e^-2); BCE(-1, 0) = log(1 + e^-1); the third crop is masked.
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[2] == 0.0 and logits.grad[0] < 0.0 < logits.grad[1]


def test_candidate_loss_with_every_crop_masked_is_zero_on_the_graph():
    logits = torch.tensor([3.0, -3.0], requires_grad=True)
    loss = candidate_loss(
        logits, masks_with_voxel_at([(8, 8, 8), None]), torch.zeros(2, dtype=bool)
    )
    assert loss.item() == 0.0 and loss.requires_grad


# ------------------------------------------------------------------ head
def test_candidate_head_gives_one_logit_per_crop():
    encoder = MultiScaleEncoder3D(**TINY_ENCODER).eval()
    head = CandidateHead(encoder.feature_info, hidden_dim=8)
    assert head.levels == (3, 4)  # the two deepest by default
    features = encoder(torch.rand(3, 1, 32, 32, 32))
    # 32-voxel crop: level 3 is 4³ (centre 2³), level 4 is 2³ (all); 3 pools of 8 channels each.
    assert head.pooled(features).shape == (3, 2 * 3 * 8)
    assert head(features).shape == (3,)
    with pytest.raises(ValueError, match=r"levels=\[7\] must be distinct encoder levels"):
        CandidateHead(encoder.feature_info, levels=[7])


@pytest.mark.parametrize(
    ("size", "expected"),
    [((4, 4, 4), (slice(1, 3),) * 3), ((2, 3, 8), (slice(0, 2), slice(0, 3), slice(2, 6)))],
)
def test_centre_region_is_symmetric(size, expected):
    assert centre_slices(size, 0.5) == expected


# ------------------------------------------------------------------ training
def crop_auroc(encoder, head, batch) -> float:
    with torch.no_grad():
        logits = head(encoder.eval()(batch.image))
    encoder.train()
    auroc = CandidateAUROC()
    auroc.update(logits, batch.seg_mask, batch.seg_present)
    return float(auroc.compute())


def test_a_few_steps_separate_sphere_crops_from_empty_crops():
    """Three nodule-centred sphere crops (target 1) against three empty crops (target 0)."""
    spheres = [sphere_sample(i, size=24, radius_vox=4.0) for i in range(3)]
    empty = [sphere_sample(10 + i, size=24, radius_vox=0.0) for i in range(3)]
    batch = collate_samples(spheres + empty)
    assert candidate_targets(batch.seg_mask).tolist() == [1.0] * 3 + [0.0] * 3
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    head = CandidateHead(encoder.feature_info, hidden_dim=16, dropout=0.0)
    before = crop_auroc(encoder, head, batch)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=5e-3)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = candidate_loss(head(encoder(batch.image)), batch.seg_mask, batch.seg_present)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
    assert before < 1.0 and crop_auroc(encoder, head, batch) == 1.0


def vessel_crossing(seed: int, size: int = 24, radius_vox: float = 2.0) -> np.ndarray:
    """Two perpendicular bright tubes crossing at the crop centre: a nodule-like blob where they
    meet, the classic false positive of a crop-trained detector (normalised intensities)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:size, :size, :size].astype(np.float32) - (size / 2 - 0.5)
    tubes = (y**2 + z**2 <= radius_vox**2) | (x**2 + z**2 <= radius_vox**2)
    image = 0.1 + 0.05 * rng.standard_normal((size, size, size)).astype(np.float32)
    return np.where(tubes, 0.75, image).astype(np.float32)


def test_a_few_steps_rank_a_planted_nodule_above_a_vessel_crossing():
    """A fixed batch: sphere nodules (target 1) against vessel crossings (target 0). After a few
    steps a held-out nodule scores above a held-out crossing (both bright at the centre)."""
    from dataclasses import replace as with_fields

    nodules = [sphere_sample(i, size=24, radius_vox=3.0) for i in range(4)]
    crossings = [
        with_fields(sphere_sample(20 + i, size=24, radius_vox=0.0),
                    image=torch.from_numpy(vessel_crossing(20 + i))[None])
        for i in range(4)
    ]  # fmt: skip
    batch = collate_samples(nodules + crossings)
    assert candidate_targets(batch.seg_mask).tolist() == [1.0] * 4 + [0.0] * 4
    torch.manual_seed(0)
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    head = CandidateHead(encoder.feature_info, hidden_dim=16, dropout=0.0)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=5e-3)
    for _ in range(12):
        optimizer.zero_grad()
        candidate_loss(head(encoder(batch.image)), batch.seg_mask, batch.seg_present).backward()
        optimizer.step()
    encoder.eval()
    held = torch.stack(
        [
            sphere_sample(99, size=24, radius_vox=3.0).image,
            torch.from_numpy(vessel_crossing(98))[None],
        ]
    )
    with torch.no_grad():
        nodule, crossing = torch.sigmoid(head(encoder(held))).tolist()
    assert nodule > 0.5 > crossing, (nodule, crossing)


def test_auroc_is_nan_with_one_class_only():
    auroc = CandidateAUROC()
    auroc.update(
        torch.tensor([1.0, -1.0]), masks_with_voxel_at([(8, 8, 8)] * 2), torch.ones(2, dtype=bool)
    )
    assert math.isnan(float(auroc.compute()))


# ------------------------------------------------------------------ operating threshold
# Three scans. Scan A: references A1, A2; candidates 0.9 (hits A1), 0.7 (false positive), 0.7
# (hits A1 again: a duplicate, neither true nor false), 0.4 (hits A2), 0.3 (FP). Scan B:
# reference B1; candidates 0.8 (FP), 0.7 (hits B1), 0.2 (FP). Scan C: reference C1, no candidate.
SCORES = [[0.9, 0.7, 0.7, 0.4, 0.3], [0.8, 0.7, 0.2], []]
HITS = [
    np.array([[1, 0], [0, 0], [1, 0], [0, 1], [0, 0]], bool),
    np.array([[0], [1], [0]], bool),
    np.zeros((0, 1), bool),
]
# Threshold -> FPs kept (of 3 scans) and references detected (of 4):
#   0.2: 4 FP (1.33/scan), 3/4;  0.3: 3 FP (1.00), 3/4;  0.4: 2 FP (0.67), 3/4;
#   0.7: 2 FP (0.67), 2/4 (the tie keeps the FP 0.7 with the hit 0.7);  0.8: 1 FP, 1/4;  0.9: 0, 1/4.


@pytest.mark.parametrize(
    ("max_fps", "threshold", "sensitivity", "fps"),
    [
        (2.0, 0.2, 0.75, 4 / 3),
        (1.0, 0.3, 0.75, 1.0),  # exactly at the budget is allowed
        (0.9, 0.4, 0.75, 2 / 3),
        (0.5, 0.8, 0.25, 1 / 3),  # 0.7 would keep its tied false positive: 0.67 > 0.5
        (0.0, 0.9, 0.25, 0.0),
    ],
)
def test_operating_threshold_table(max_fps, threshold, sensitivity, fps):
    result = operating_threshold(SCORES, HITS, 3, max_fps)
    assert result == pytest.approx((threshold, sensitivity, fps))


def test_operating_threshold_edges():
    # The only candidate is a false positive and no false positive is allowed: keep nothing.
    threshold, sensitivity, fps = operating_threshold([[0.6]], [np.zeros((1, 1), bool)], 1, 0.0)
    assert threshold > 0.6 and threshold == np.nextafter(0.6, 1.0)
    assert (sensitivity, fps) == (0.0, 0.0)
    # No candidates at all: nothing to reject; no references: sensitivity undefined.
    assert operating_threshold([[]], [np.zeros((0, 2), bool)], 1, 1.0) == (0.0, 0.0, 0.0)
    threshold, sensitivity, fps = operating_threshold([[0.5]], [np.zeros((1, 0), bool)], 2, 1.0)
    assert (threshold, fps) == (0.5, 0.5) and math.isnan(sensitivity)
    with pytest.raises(ValueError, match=r"hits_per_scan\[0\] has shape \(2, 1\)"):
        operating_threshold([[0.5]], [np.zeros((2, 1), bool)], 1, 1.0)
    with pytest.raises(ValueError, match="n_scans=1 must be >= max"):
        operating_threshold([[0.5], [0.4]], [np.zeros((1, 0), bool)] * 2, 1, 1.0)


def test_candidate_hits_uses_half_the_reference_diameter():
    references = [(0.0, 0.0, 0.0, 10.0)]  # radius 5 mm
    hits = candidate_hits([(4.9, 0.0, 0.0, 0.9), (0.0, 5.0, 0.0, 0.8)], references)
    assert hits.tolist() == [[True], [False]]


# ------------------------------------------------------------------ checkpoints with the head
CANDIDATE_HEAD = {
    "class_path": "lungvlm.models.heads.candidate.CandidateHead",
    "init_args": {"hidden_dim": 8},
}


def write_candidate_checkpoint(path: Path, seg_logit: float | None = 4.0, seed: int = 0) -> Path:
    """The tiny stage-3 checkpoint of ``tests.report_fixtures`` with an (untrained) candidate
    head added to its configuration and weights."""
    write_stage3_checkpoint(path, seg_logit=seg_logit, seed=seed)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["candidate_head"] = CANDIDATE_HEAD
    encoder = MultiScaleEncoder3D(**MODEL_CONFIG["encoder"]["init_args"])
    torch.manual_seed(seed + 1)
    head = CandidateHead(encoder.feature_info, **CANDIDATE_HEAD["init_args"])
    checkpoint["state_dict"].update(
        {f"candidate_head.{k}": v for k, v in head.state_dict().items()}
    )
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_with_a_candidate_head_rebuilds_and_scores(tmp_path):
    model = load_model(write_candidate_checkpoint(tmp_path / "last.ckpt"))
    assert isinstance(model.candidate_head, CandidateHead)
    image = np.random.default_rng(0).uniform(0, 1, (30, 30, 30)).astype(np.float32)
    probabilities = candidate_probabilities(model, image, [(15, 15, 15), (5, 5, 20)], 24, 2.0, 1)
    assert len(probabilities) == 2 and all(0.0 < p < 1.0 for p in probabilities)
    # Batching does not change the values.
    batched = candidate_probabilities(model, image, [(15, 15, 15), (5, 5, 20)], 24, 2.0, 2)
    np.testing.assert_allclose(batched, probabilities, rtol=1e-5)


# ------------------------------------------------------------------ flip test-time augmentation
class _Identity(torch.nn.Module):
    use_context = False

    def forward(self, fine, context=None):
        return [fine]


class _RampHead(torch.nn.Module):
    """Logit = mean of the crop weighted by a ramp along z: mirroring z changes it."""

    def forward(self, features):
        crop = features[0][:, 0]
        ramp = torch.linspace(-4.0, 4.0, crop.shape[1]).view(1, -1, 1, 1)
        return (crop * ramp).mean(dim=(1, 2, 3))


class _RampModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.candidate_head = _Identity(), _RampHead()


def _ramp_image() -> np.ndarray:
    z = np.arange(24, dtype=np.float32)[:, None, None]
    return np.broadcast_to(z / 23.0, (24, 24, 24)).copy()


def test_flip_tta_is_the_mean_over_the_crop_and_its_three_mirrorings():
    image, centre = _ramp_image(), [(12.0, 12.0, 12.0)]
    single = candidate_probabilities(_RampModel(), image, centre, 8, 0.0, 1)[0]
    tta = candidate_probabilities(_RampModel(), image, centre, 8, 0.0, 1, flips=True)[0]
    # The crop rises along z (8 voxels from 8/23 to 15/23): the ramp-weighted mean is
    # positive; mirrored along z it is the same value negated; y and x mirrorings change nothing.
    crop = np.arange(8, 16, dtype=np.float64) / 23.0
    ramp = np.linspace(-4.0, 4.0, 8)
    logit = float((crop * ramp).mean())
    assert logit > 0.1
    sigmoid = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    assert single == pytest.approx(sigmoid(logit), rel=1e-5)
    assert tta == pytest.approx((3 * sigmoid(logit) + sigmoid(-logit)) / 4, rel=1e-5)
    assert tta < single


def test_only_the_top_k_candidates_are_rescored_with_flips():
    from lungvlm.inference.scan import prepare_scan, score_candidates

    image = _ramp_image() ** 2  # convex along z: the higher the centre, the larger the logit
    prepared = prepare_scan(image * 1000.0 - 1000.0, (1.0, 1.0, 1.0))
    from lungvlm.inference.scan import DetectedNodule

    centres = [(16.0, 12.0, 12.0), (8.0, 12.0, 12.0), (12.0, 12.0, 12.0)]
    instances = [
        DetectedNodule(i + 1, 0.9, 10, c, c, c, 10.0, 3.0, 3.0, 3.0) for i, c in enumerate(centres)
    ]
    labels = np.zeros(image.shape, np.int32)
    model = _RampModel()
    single = candidate_probabilities(model, prepared.image, centres, 8, 0.0, 1)
    flipped = candidate_probabilities(model, prepared.image, centres, 8, 0.0, 1, flips=True)
    _, ranked = score_candidates(model, prepared, labels, instances, 8, 0.0, 1, tta_top_k=2)
    got = {n.centroid_vox: n.candidate_probability for n in ranked}
    order = np.argsort(single)[::-1]
    assert order.tolist() == [0, 2, 1] and len(set(np.round(single, 6))) == 3
    for position, i in enumerate(order):
        expected = flipped[i] if position < 2 else single[i]
        assert got[centres[i]] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="tta_top_k"):
        score_candidates(model, prepared, labels, instances, 8, 0.0, 1, tta_top_k=-1)
