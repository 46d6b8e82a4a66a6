"""ONNX export of encoder + segmentation head: onnxruntime matches PyTorch, batch is dynamic,
the context input is wired, and ``lungvlm export-onnx`` exports a `lungvlm fit` checkpoint."""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path

import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import lightning  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.cli import instantiate_module  # noqa: E402
from torch import nn  # noqa: E402

from lungvlm.commands import export_onnx as command  # noqa: E402
from lungvlm.export.onnx import (  # noqa: E402
    SegmentationGraph,
    export_segmentation_onnx,
    onnx_parity,
)
from lungvlm.lightning.checkpoint import load_model  # noqa: E402
from lungvlm.lightning.module import LungVLMModule  # noqa: E402
from lungvlm.models.encoder import MultiScaleEncoder3D  # noqa: E402
from lungvlm.models.heads.segmentation import SegmentationHead  # noqa: E402
from tests.conftest import TINY_ENCODER  # noqa: E402

ROI_VOX = 16
# TINY_ENCODER has 5 levels (stride 16): at 16³ its coarsest map is one voxel, which instance
# norm cannot normalise, so the 16³ export uses its first 4 levels (coarsest map 2³).
TINY_4_LEVELS = {**TINY_ENCODER, "widths": TINY_ENCODER["widths"][:4], "depths": (1, 1, 1, 1)}
PARITY_ATOL = 1e-4


def tiny_model(use_context: bool) -> tuple[MultiScaleEncoder3D, SegmentationHead]:
    encoder = MultiScaleEncoder3D(**TINY_4_LEVELS, use_context=use_context)
    if use_context:  # zero-initialised: give the context a real effect on the logits
        nn.init.normal_(encoder.context_proj.weight, std=0.5)
    return encoder, SegmentationHead(encoder.feature_info)


def test_context_model_matches_onnxruntime_for_batch_1_and_3(tmp_path):
    encoder, head = tiny_model(use_context=True)
    encoder.train()  # export restores each module's own mode
    head.eval()
    path = export_segmentation_onnx(encoder, head, tmp_path / "seg.onnx", roi_size_vox=ROI_VOX)
    assert encoder.training and encoder.stem.training and not head.training
    assert [p.name for p in tmp_path.iterdir()] == ["seg.onnx"]  # temporary file renamed

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "context"]
    assert session.get_inputs()[0].shape[1:] == [1, ROI_VOX, ROI_VOX, ROI_VOX]
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # symbolic batch axis
    rng = np.random.default_rng(1)
    graph = SegmentationGraph(encoder, head).eval()
    for batch in (1, 3):
        image, context = rng.random((2, batch, 1, ROI_VOX, ROI_VOX, ROI_VOX), dtype=np.float32)
        (logits,) = session.run(None, {"image": image, "context": context})
        assert logits.shape == (batch, 1, ROI_VOX, ROI_VOX, ROI_VOX)
        with torch.no_grad():
            expected = graph(torch.from_numpy(image), torch.from_numpy(context)).numpy()
        np.testing.assert_allclose(logits, expected, atol=PARITY_ATOL, rtol=0)
        # The context input reaches the logits (it is not a dangling graph input).
        (other,) = session.run(None, {"image": image, "context": 1.0 - context})
        assert np.abs(other - logits).max() > 1e-3

    for n in (1, 3):
        assert onnx_parity(encoder, head, path, n=n, seed=0) < PARITY_ATOL


def test_too_small_roi_and_bad_arguments_are_rejected(tmp_path):
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)  # 5 levels: one voxel at stride 16 for 16³
    head = SegmentationHead(encoder.feature_info)
    with pytest.raises(ValueError, match=r"cannot run at roi_size_vox=\(16, 16, 16\): Expected"):
        export_segmentation_onnx(encoder, head, tmp_path / "a.onnx", roi_size_vox=16)
    with pytest.raises(ValueError, match=r"roi_size_vox must be a positive int .*got \(16, 16\)"):
        export_segmentation_onnx(encoder, head, tmp_path / "a.onnx", roi_size_vox=(16, 16))
    with pytest.raises(ValueError, match=r"opset must be an int >= 18 .*got 17"):
        export_segmentation_onnx(encoder, head, tmp_path / "a.onnx", opset=17)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="use_context=True: pass the context"):
        SegmentationGraph(encoder, head)(torch.zeros(1, 1, 32, 32, 32))


def write_fit_checkpoint(path: Path, use_context: bool) -> Path:
    """A stage-2 checkpoint laid out as `lungvlm fit` writes it (class-path hyper-parameters)."""
    config = {
        "stage": "segment",
        "encoder": {
            "class_path": "lungvlm.models.encoder.MultiScaleEncoder3D",
            "init_args": {**TINY_ENCODER, "use_context": use_context},
        },
        "seg_head": {"class_path": "lungvlm.models.heads.segmentation.SegmentationHead"},
    }
    module = instantiate_module(LungVLMModule, copy.deepcopy(config))
    checkpoint = {
        "state_dict": module.state_dict(),
        "pytorch-lightning_version": lightning.__version__,
        "hyper_parameters": {**config, "_instantiator": "lightning.pytorch.cli.instantiate_module"},
        "datamodule_hyper_parameters": {"crop_size_vox": 32},
    }
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_export_onnx_command_on_a_fit_checkpoint(tmp_path, capsys):
    ckpt = write_fit_checkpoint(tmp_path / "segment.ckpt", use_context=False)
    parser = argparse.ArgumentParser(prog="lungvlm")
    command.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "out" / "seg.onnx"
    # The input side follows the checkpoint's training crop (32³; TINY_ENCODER's coarsest map
    # is 2³ there).
    args = parser.parse_args(["export-onnx", "--ckpt", str(ckpt), "--out", str(out)])
    assert (args.roi_size, args.device) == (None, "cpu")
    assert args.func(args) == 0
    assert "input (32, 32, 32) voxels" in capsys.readouterr().out
    assert args.func(args) == 0

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]  # no context branch
    image = np.random.default_rng(2).random((3, 1, 32, 32, 32), dtype=np.float32)
    (logits,) = session.run(None, {"image": image})
    model = load_model(ckpt)
    with torch.no_grad():
        expected = model(torch.from_numpy(image))[0].numpy()  # LungVLMModule.forward, finest
    np.testing.assert_allclose(logits, expected, atol=PARITY_ATOL, rtol=0)
    printed = capsys.readouterr().out
    diff = float(printed.split("onnxruntime(CPU)| = ")[1].split()[0])
    assert 0 <= diff < PARITY_ATOL, printed

    bad = parser.parse_args(["export-onnx", "--ckpt", str(ckpt), "--out", "seg.pt"])
    with pytest.raises(ValueError, match=r"--out seg.pt must end with .onnx"):
        bad.func(bad)


def test_command_module_imports_no_torch():
    # `lungvlm --help` imports every command module; torch alone takes seconds to import.
    code = "import sys, lungvlm.commands.export_onnx; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
