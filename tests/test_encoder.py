"""MultiScaleEncoder3D, SegmentationHead and ReconstructionHead: shapes, alignment, errors."""

import pytest
import torch
import torch.nn.functional as F

from lungvlm.models.encoder import TINY_ENCODER_CONFIG, MultiScaleEncoder3D
from lungvlm.models.heads.reconstruction import ReconstructionHead
from lungvlm.models.heads.segmentation import SegmentationHead

ODD_SIZE = (20, 23, 17)


def tiny_encoder(**overrides) -> MultiScaleEncoder3D:
    torch.manual_seed(0)
    return MultiScaleEncoder3D(**{**TINY_ENCODER_CONFIG, **overrides})


@pytest.mark.parametrize("norm", ["instance", "batch", "group"])
def test_odd_size_outputs_are_ceil_of_size_over_stride(norm):
    encoder = tiny_encoder(norm=norm)
    image = torch.randn(2, 1, *ODD_SIZE)
    features = encoder(image, context=torch.randn(2, 1, *ODD_SIZE))
    expected = [
        (2, 8, 20, 23, 17),
        (2, 8, 10, 12, 9),
        (2, 8, 5, 6, 5),
        (2, 8, 3, 3, 3),
        (2, 8, 2, 2, 2),
    ]
    assert [tuple(f.shape) for f in features] == expected


def test_feature_info_matches_outputs():
    encoder = tiny_encoder()
    assert encoder.strides == (1, 2, 4, 8, 16)
    assert encoder.out_channels == (8, 8, 8, 8, 8)
    assert encoder.feature_info[3] == {"channels": 8, "stride": 8, "level": 3}
    features = encoder(torch.randn(1, 1, 16, 32, 16))
    for info, feature in zip(encoder.feature_info, features, strict=True):
        assert feature.shape[1] == info["channels"]
        assert feature.shape[3] == 32 // info["stride"]


def test_padding_is_at_the_far_end_and_outputs_are_cropped():
    # A 17-voxel axis is padded to 32 internally; padding it ourselves must give the same values
    # in the cropped region, so output voxel i covers input voxels [i*s, (i+1)*s).
    encoder = tiny_encoder().eval()
    image = torch.randn(1, 1, 17, 16, 32)
    padded = F.pad(image, (0, 0, 0, 0, 0, 15))
    with torch.no_grad():
        odd, full = encoder(image), encoder(padded)
    for feature, reference in zip(odd, full, strict=True):
        depth = feature.shape[2]
        assert torch.allclose(feature, reference[:, :, :depth], atol=1e-5)
    assert [f.shape[2] for f in odd] == [17, 9, 5, 3, 2]


def test_context_branch_starts_as_no_op_and_receives_gradient():
    encoder = tiny_encoder().eval()
    image, context = torch.randn(1, 1, 16, 32, 16), torch.randn(1, 1, 16, 32, 16)
    with_ctx = encoder(image, context)
    without = encoder(image)
    assert torch.equal(with_ctx[0], without[0])
    sum(f.sum() for f in with_ctx).backward()
    assert encoder.context_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        encoder.context_proj.bias.fill_(1.0)
    assert not torch.allclose(encoder(image, context)[0], without[0])


def test_encoder_without_context_ignores_it():
    encoder = tiny_encoder(use_context=False).eval()
    image = torch.randn(1, 1, 16, 32, 16)
    assert torch.equal(encoder(image, torch.randn(1, 1, 16, 32, 16))[1], encoder(image)[1])


def test_heads_read_feature_info():
    encoder = tiny_encoder()
    image = torch.randn(1, 1, *ODD_SIZE)
    features = encoder(image)
    logits = SegmentationHead(encoder.feature_info, num_classes=2)(features)
    assert [tuple(x.shape) for x in logits] == [
        (1, 2, 20, 23, 17),
        (1, 2, 10, 12, 9),
        (1, 2, 5, 6, 5),
    ]
    recon = ReconstructionHead(encoder.feature_info)(features)
    assert recon.shape == image.shape
    loss = recon.square().mean() + sum(x.mean() for x in logits)
    loss.backward()
    assert encoder.stem[0].weight.grad.abs().sum() > 0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="norm='batchnorm' is not valid.*Did you mean 'batch'"):
        MultiScaleEncoder3D(norm="batchnorm")
    with pytest.raises(ValueError, match="same length"):
        MultiScaleEncoder3D(widths=(4, 8), depths=(1, 1, 1))
    with pytest.raises(ValueError, match=r"fpn_channels must be a positive int; got 0"):
        MultiScaleEncoder3D(fpn_channels=0)
    encoder = tiny_encoder()
    with pytest.raises(
        ValueError, match=r"image must be a \(B, 1, D, H, W\) tensor; got \(1, 32, 32, 32\)"
    ):
        encoder(torch.zeros(1, 32, 32, 32))
    with pytest.raises(ValueError, match="single value per channel at stride 16"):
        encoder(torch.zeros(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="context batch size 2 != image batch size 1"):
        encoder(torch.zeros(1, 1, 32, 32, 32), torch.zeros(2, 1, 32, 32, 32))
    with pytest.raises(ValueError, match=r"deep_supervision_levels \[7\] are not in feature_info"):
        SegmentationHead(encoder.feature_info, deep_supervision_levels=(0, 7))
    with pytest.raises(ValueError, match="strictly increasing and start at 0"):
        SegmentationHead(encoder.feature_info, deep_supervision_levels=(1, 2))
    with pytest.raises(ValueError, match="use_level1=True but feature_info has no level 1"):
        ReconstructionHead(encoder.feature_info[:1])
