"""Whole-scan inference: checkpoint loading, resampling, sliding windows, instances, cascade."""

from __future__ import annotations

import lightning
import numpy as np
import pytest
import torch
from torch import nn

from data_modules.sampling import context_crop
from lungvlm.inference.cascade import segment_scan_cascade
from lungvlm.inference.scan import grid_affine, prepare_scan, segment_scan
from lungvlm.inference.windows import _context_window, sliding_window_probability
from lungvlm.lightning.checkpoint import CHECKPOINT_KEY, inference_metadata, load_model
from lungvlm.lightning.module import LungVLMModule
from lungvlm.models.encoder import MultiScaleEncoder3D
from lungvlm.models.heads.reconstruction import ReconstructionHead
from lungvlm.models.heads.segmentation import SegmentationHead
from tests.conftest import TINY_ENCODER

GAIN = 20.0


class BrightnessModel(nn.Module):
    """Fake segmenter: logits = GAIN * (normalised intensity - 0.5), voxel by voxel."""

    def __init__(self, use_context: bool = False) -> None:
        super().__init__()
        self.normalization = {"hu_min": -1000.0, "hu_max": 400.0}
        self.encoder = nn.Module()
        self.encoder.use_context = use_context
        self.windows = 0
        self.contexts: list[tuple[int, ...]] = []

    def forward(self, image: torch.Tensor, context: torch.Tensor | None = None) -> list:
        self.windows += image.shape[0]
        if context is not None:
            self.contexts.append(tuple(context.shape))
        return [GAIN * (image - 0.5)]


def sphere_scan(shape, spacing_mm, centre_mm, radius_mm, hu=100.0, background_hu=-900.0):
    axes = [np.arange(n) * s for n, s in zip(shape, spacing_mm, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    dist2 = (z - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (x - centre_mm[2]) ** 2
    image = np.full(shape, background_hu, np.float32)
    image[dist2 <= radius_mm**2] = hu
    return image


def test_prepare_scan_resamples_linearly_and_normalises():
    image = np.full((4, 3, 3), -1000.0, np.float32)
    image[1] = 400.0
    image[2] = -300.0
    prepared = prepare_scan(image, (2.0, 1.0, 1.0), 1.0, {"hu_min": -1000.0, "hu_max": 400.0})
    assert prepared.image.shape == (8, 3, 3)
    assert prepared.zoom == (2.0, 1.0, 1.0)
    # Prepared z index o samples original z = o / 2; HU -1000 -> 0, 400 -> 1, -300 -> 0.5.
    expected = [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    np.testing.assert_allclose(prepared.image[:, 1, 1], expected, atol=1e-6)
    np.testing.assert_allclose(prepared.to_original_index([3.0, 2.0, 1.0]), [1.5, 2.0, 1.0])


def test_grid_affine_maps_zyx_index_to_lps_xyz():
    affine = grid_affine((2.0, 3.0, 4.0), (10.0, 20.0, 30.0))
    np.testing.assert_allclose(affine @ [1, 1, 1, 1], [14.0, 23.0, 32.0, 1.0])


def test_sliding_window_covers_the_scan_with_the_model_output():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (20, 27, 13)).astype(np.float32)  # 13 < window: padded
    prob, total, run = sliding_window_probability(BrightnessModel(), image, 16, 0.25, 3)
    assert prob.shape == image.shape
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-GAIN * (image - 0.5))), atol=1e-5)
    assert total == run == 2 * 2 * 1


def test_context_window_equals_training_context_crop():
    image = np.random.default_rng(1).uniform(0, 1, (24, 24, 24)).astype(np.float32)
    window = (slice(4, 20), slice(0, 16), slice(8, 24))
    centre = [s.start + 8 for s in window]
    expected = context_crop(image, centre, 16, 2.0, pad_value=0.0)
    np.testing.assert_allclose(_context_window(image, window, 2.0), expected, atol=1e-6)


def test_context_crops_reach_a_context_encoder():
    model = BrightnessModel(use_context=True)
    sliding_window_probability(model, np.zeros((16, 16, 16), np.float32), 16, 0.25, 1, 2.0)
    assert model.contexts == [(1, 1, 16, 16, 16)]


def test_bright_sphere_is_one_instance_with_its_centre_and_size():
    spacing = (2.0, 0.8, 0.8)
    centre_mm = (23.0, 20.0, 17.0)
    image = sphere_scan((24, 48, 48), spacing, centre_mm, 5.0)
    prepared = prepare_scan(image, spacing, 1.0, origin_lps_mm=(5.0, 6.0, 7.0))
    seg = segment_scan(BrightnessModel(), prepared, roi_size_vox=16, sw_batch_size=8)
    assert seg.probability.shape == prepared.image.shape == (48, 38, 38)
    assert len(seg.instances) == 1
    nodule = seg.instances[0]
    true_index = np.asarray(centre_mm) / np.asarray(spacing)  # (11.5, 25, 21.25)
    assert np.all(np.abs(np.asarray(nodule.centroid_original_vox) - true_index) <= 1.0)
    # World (x, y, z) = origin + (x, y, z) mm.
    np.testing.assert_allclose(nodule.centroid_world_mm, [22.0, 26.0, 30.0], atol=1.0)
    assert abs(nodule.mean_diameter_mm - 10.0) <= 1.0  # one prepared voxel (1 mm)
    assert nodule.score > 0.99
    assert seg.labels.max() == 1 and (seg.labels == 1).sum() == nodule.num_voxels


def test_lung_mask_skips_windows_and_zeroes_probability_outside():
    image = sphere_scan((32, 32, 48), (1.0, 1.0, 1.0), (16, 16, 40), 4.0)
    lung = np.zeros(image.shape, bool)
    lung[:, :, :16] = True  # the sphere lies outside the lung
    prepared = prepare_scan(image, (1.0, 1.0, 1.0))
    model = BrightnessModel()
    seg = segment_scan(model, prepared, 16, 0.0, 4, lung_mask=lung, lung_margin_mm=2.0)
    assert seg.instances == []
    assert seg.probability[:, :, 18:].max() == 0.0
    # Windows start at x = 0, 16, 32; only x = 0 and 16 touch the lung dilated to x < 18.
    assert (seg.windows_total, seg.windows_processed, model.windows) == (12, 8, 8)


def test_cascade_keeps_the_sphere_and_processes_fewer_windows():
    image = sphere_scan((48, 48, 48), (1.0, 1.0, 1.0), (12.0, 12.0, 12.0), 5.0)
    prepared = prepare_scan(image, (1.0, 1.0, 1.0))
    full = segment_scan(BrightnessModel(), prepared, 16, 0.25, 8)
    model = BrightnessModel()
    cascade = segment_scan_cascade(model, prepared, 16, 0.25, 8, triage_margin_mm=2.0)
    assert full.windows_processed == full.windows_total == 64
    assert len(cascade.instances) == 1
    np.testing.assert_allclose(
        cascade.instances[0].centroid_vox, full.instances[0].centroid_vox, atol=1e-6
    )
    assert cascade.instances[0].num_voxels == full.instances[0].num_voxels
    # Triage: 24³ at 2 mm = 8 windows; full pass: the sphere (x, y, z in 7..17, grown by
    # 2 mm at 2 mm voxels to 4..21) touches windows starting at 0 and 12 on each axis.
    assert cascade.details["triage_windows_processed"] == 8
    assert cascade.windows_processed == 8
    assert model.windows == 16


def _cli_style_checkpoint(tmp_path, stage: str) -> tuple:
    """A checkpoint laid out as `lungvlm fit` writes it (class-path hyper-parameters)."""
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    if stage == "pretrain":
        module = LungVLMModule(
            encoder=encoder, stage=stage, recon_head=ReconstructionHead(encoder.feature_info)
        )
        head = {
            "recon_head": {"class_path": "lungvlm.models.heads.reconstruction.ReconstructionHead"}
        }
    else:
        module = LungVLMModule(encoder=encoder, seg_head=SegmentationHead(encoder.feature_info))
        head = {"seg_head": {"class_path": "lungvlm.models.heads.segmentation.SegmentationHead"}}
    hparams = {
        "encoder": {
            "class_path": "lungvlm.models.encoder.MultiScaleEncoder3D",
            "init_args": {
                k: list(v) if isinstance(v, tuple) else v for k, v in TINY_ENCODER.items()
            },
        },
        "stage": stage,
        **head,
        "init_from": "does/not/exist.ckpt",
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
    }
    normalization = {"hu_min": -1100.0, "hu_max": 300.0}
    path = tmp_path / f"{stage}.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": hparams,
            "hparams_name": "kwargs",
            "pytorch-lightning_version": lightning.__version__,
            CHECKPOINT_KEY: inference_metadata(stage, normalization, []),
        },
        path,
    )
    return path, module


def test_load_model_rebuilds_a_fit_checkpoint(tmp_path):
    path, module = _cli_style_checkpoint(tmp_path, "segment")
    model = load_model(path)
    assert model.normalization == {"hu_min": -1100.0, "hu_max": 300.0}
    assert not model.training
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], module.eval()(x)[0])


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint .*missing\.ckpt does not exist"):
        load_model(tmp_path / "missing.ckpt")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"corrupt\.ckpt is not readable"):
        load_model(corrupt)
    path, _ = _cli_style_checkpoint(tmp_path, "pretrain")
    with pytest.raises(ValueError, match=r"pretrain\.ckpt is a stage 'pretrain' checkpoint"):
        load_model(path)


def test_prepare_scan_rejects_bad_input():
    with pytest.raises(ValueError, match=r"image_hu must be a non-empty 3-D"):
        prepare_scan(np.zeros((4, 4)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"spacing_mm=\(1.0, 0.0, 1.0\) must be three positive"):
        prepare_scan(np.zeros((4, 4, 4)), (1.0, 0.0, 1.0))


class CentreHead(nn.Module):
    """Fake candidate head: logit = 10 * (0.85 - the crop's centre value), so dimmer spheres
    rank higher; records the batch size of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        crops = features[0]  # the fake encoder passes the crops through
        self.calls.append(crops.shape[0])
        half = crops.shape[-1] // 2
        return 10.0 * (0.85 - crops[:, 0, half, half, half])


class ScoredBrightnessModel(BrightnessModel):
    """BrightnessModel with an identity encoder and :class:`CentreHead` as candidate head."""

    def __init__(self, use_context: bool = False) -> None:
        super().__init__(use_context)
        self.encoder = PassThroughEncoder(use_context)
        self.candidate_head = CentreHead()


class PassThroughEncoder(nn.Module):
    def __init__(self, use_context: bool) -> None:
        super().__init__()
        self.use_context = use_context
        self.contexts: list[tuple[int, ...]] = []

    def forward(self, image: torch.Tensor, context: torch.Tensor | None = None) -> list:
        if context is not None:
            self.contexts.append(tuple(context.shape))
        return [image]


def two_spheres() -> np.ndarray:
    """A bright sphere (300 HU, normalised 0.93) and a dimmer one (-100 HU, 0.64)."""
    bright = sphere_scan((32, 32, 64), (1.0, 1.0, 1.0), (16, 16, 14), 4.0, hu=300.0)
    dim = sphere_scan((32, 32, 64), (1.0, 1.0, 1.0), (16, 16, 48), 4.0, hu=-100.0)
    return np.maximum(bright, dim)


@pytest.mark.parametrize(("sw_batch_size", "calls"), [(1, [1, 1]), (4, [2])])
def test_candidate_head_scores_and_ranks_the_instances(sw_batch_size, calls):
    prepared = prepare_scan(two_spheres(), (1.0, 1.0, 1.0))
    plain = segment_scan(BrightnessModel(), prepared, 16, 0.25, sw_batch_size)
    model = ScoredBrightnessModel()
    seg = segment_scan(model, prepared, 16, 0.25, sw_batch_size, tta_top_k=0)
    # Without a head: ranked by peak probability, the bright sphere first, no candidate score.
    assert [round(n.centroid_vox[2]) for n in plain.instances] == [14, 48]
    assert plain.instances[0].candidate_probability is None
    assert plain.instances[0].to_dict()["candidate_probability"] is None
    # With the head: the dim sphere (x = 48) ranks first; probabilities are the head's on crops
    # centred on each instance: sigmoid(10 * (0.85 - normalised HU)).
    assert [round(n.centroid_vox[2]) for n in seg.instances] == [48, 14]
    assert [n.label for n in seg.instances] == [1, 2]
    expected = [1 / (1 + np.exp(-10 * (0.85 - (hu + 1000) / 1400))) for hu in (-100.0, 300.0)]
    np.testing.assert_allclose(
        [n.candidate_probability for n in seg.instances], expected, rtol=1e-5
    )
    assert seg.instances[0].score < seg.instances[1].score  # score alone would rank otherwise
    assert (
        seg.instances[0].to_dict()["candidate_probability"]
        == seg.instances[0].candidate_probability
    )
    # The label map is renumbered with the ranking.
    assert seg.labels[16, 16, 48] == 1 and seg.labels[16, 16, 14] == 2
    assert (seg.labels == 1).sum() == seg.instances[0].num_voxels
    assert model.candidate_head.calls == calls
    assert "candidate_score" in seg.timings_s


def test_candidate_crops_carry_the_context_crop_when_the_encoder_uses_it():
    prepared = prepare_scan(two_spheres(), (1.0, 1.0, 1.0))
    model = ScoredBrightnessModel(use_context=True)
    seg = segment_scan(model, prepared, 16, 0.25, 4, context_scale=2.0, tta_top_k=0)
    assert len(seg.instances) == 2
    # Sliding windows come through model(...), candidate crops through the encoder: one batch.
    assert model.encoder.contexts == [(2, 1, 16, 16, 16)]
    # Flip test-time augmentation of the two: one more batch per mirrored view (the crop as
    # sampled is scored already), each with its mirrored context crop.
    model = ScoredBrightnessModel(use_context=True)
    segment_scan(model, prepared, 16, 0.25, 4, context_scale=2.0, tta_top_k=2)
    assert model.encoder.contexts == [(2, 1, 16, 16, 16)] * 4


def test_cascade_instances_get_the_candidate_score_too():
    prepared = prepare_scan(two_spheres(), (1.0, 1.0, 1.0))
    seg = segment_scan_cascade(ScoredBrightnessModel(), prepared, 16, 0.25, 4)
    assert [round(n.centroid_vox[2]) for n in seg.instances] == [48, 14]
    assert all(n.candidate_probability is not None for n in seg.instances)


# ------------------------------------------------------------------ weak candidates
def _blob(shape, centre, radius, peak):
    """A probability blob: ``peak`` at ``centre``, falling linearly to 0 at ``radius`` voxels."""
    grid = np.indices(shape).astype(np.float64)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    return (peak * np.clip(1.0 - dist / radius, 0.0, None)).astype(np.float32)


def test_weak_candidates_are_added_without_changing_the_confident_ones():
    from lungvlm.inference.scan import extract_instances

    shape = (24, 24, 24)
    confident = _blob(shape, (6, 6, 6), 5.0, 0.9)  # >= 0.5 within 2.2 voxels of its centre
    weak = _blob(shape, (17, 17, 17), 5.0, 0.4)  # peak 0.4 < 0.5: a weak candidate
    faint = _blob(shape, (6, 18, 18), 5.0, 0.12)  # below the floor: never a candidate
    probability = np.maximum(np.maximum(confident, weak), faint)
    prepared = prepare_scan(np.zeros(shape, np.float32), (1.0, 1.0, 1.0))

    plain_labels, plain = extract_instances(probability, prepared, 0.5, 1.0)
    labels, found = extract_instances(probability, prepared, 0.5, 1.0, candidate_floor=0.15)
    assert len(plain) == 1 and len(found) == 2
    # The confident instance is unchanged: same voxels, same label, same measurements.
    assert found[0] == plain[0]
    np.testing.assert_array_equal(labels == 1, plain_labels == 1)
    # The weak one: voxels at or above max(floor, peak / 2) = 0.2 of its blob, i.e. within
    # 2.5 voxels of (17, 17, 17); label 2; peak score 0.4; centred on the blob.
    expected = weak >= 0.2
    np.testing.assert_array_equal(labels == 2, expected)
    assert found[1].label == 2 and found[1].score == pytest.approx(0.4, abs=1e-6)
    assert found[1].num_voxels == int(expected.sum())
    np.testing.assert_allclose(found[1].centroid_vox, (17.0, 17.0, 17.0), atol=1e-6)
    assert not (labels[faint > 0] > 0).any()
    with pytest.raises(ValueError, match="candidate_floor"):
        from lungvlm.inference.scan import add_weak_candidates

        add_weak_candidates(probability, labels.copy(), 0.5, 0.6, 1)
