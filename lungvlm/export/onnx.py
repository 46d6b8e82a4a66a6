"""ONNX export of the segmentation path: encoder + segmentation head -> finest logits.

The graph is what ``LungVLMModule.forward`` computes at full resolution,
``seg_head(encoder(image, context))[0]``: image (B, 1, D, H, W) float32 in, logits
(B, 1, D, H, W) out (apply a sigmoid for probabilities). An encoder built with
``use_context=True`` also takes the context crop (B, 1, D, H, W), the wider view resampled onto
the same grid size (as :mod:`lungvlm.inference.windows` feeds it). The batch axis is dynamic;
D, H, W are fixed to ``roi_size_vox``, the sliding-window size.

Precision: at sides that are multiples of the encoder's coarsest stride (16 voxels for 5 levels,
e.g. the 32³ training crop) onnxruntime matches PyTorch to ~5e-6 in logits. Other sides are
zero-padded inside the graph, and onnxruntime's CPU InstanceNormalization is less exact over
mostly-constant maps (3e-5 on one half-zero map against 5e-7 for PyTorch, both versus float64),
which adds up to ~1e-4 in logits at 24³; the ONNX reference evaluator stays at ~2e-6 there, so
the graph itself is exact.

Export uses ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript), the
exporter PyTorch maintains; the TorchScript exporter is deprecated. It needs opset >= 18 and the
``onnx`` and ``onnxscript`` packages; :func:`onnx_parity` needs ``onnxruntime``. All three are
imported inside the functions, so importing this module does not load them.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from torch import nn

DEFAULT_OPSET = 18
"""ONNX opset of the export: the dynamo exporter's native opset (onnxruntime >= 1.14 runs it)."""

MIN_OPSET = 18
"""Lowest opset the dynamo exporter writes without a version conversion."""

OUTPUT_NAME = "logits"


class SegmentationGraph(nn.Module):
    """The exported graph: encoder + segmentation head, returning the finest logits.

    Args:
        encoder: multi-scale encoder (:class:`lungvlm.models.encoder.MultiScaleEncoder3D`);
            its ``use_context`` decides whether the graph takes a context input.
        seg_head: segmentation head whose first output is the full-resolution logits.
    """

    def __init__(self, encoder: nn.Module, seg_head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.seg_head = seg_head
        self.use_context = bool(getattr(encoder, "use_context", False))

    @property
    def input_names(self) -> tuple[str, ...]:
        """ONNX input names, in :meth:`forward` order."""
        return ("image", "context") if self.use_context else ("image",)

    def forward(self, image: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Image (B, 1, D, H, W) [and context (B, 1, D, H, W)] -> logits (B, 1, D, H, W)."""
        if self.use_context and context is None:
            raise ValueError("this encoder was built with use_context=True: pass the context")
        return self.seg_head(self.encoder(image, context if self.use_context else None))[0]


def _roi_triplet(roi_size_vox: int | Sequence[int]) -> tuple[int, int, int]:
    values = (roi_size_vox,) * 3 if isinstance(roi_size_vox, int) else tuple(roi_size_vox)
    if len(values) != 3 or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(f"roi_size_vox must be a positive int or 3 of them; got {roi_size_vox!r}")
    return values  # type: ignore[return-value]


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return torch.device("cpu") if param is None else param.device


class _EvalMode:
    """Put modules in eval mode for a block and restore each submodule's flag after it."""

    def __init__(self, *modules: nn.Module) -> None:
        self.flags = [(m, m.training) for module in modules for m in module.modules()]

    def __enter__(self) -> None:
        for m, _ in self.flags:
            m.train(False)

    def __exit__(self, *exc) -> None:
        for m, training in self.flags:
            m.training = training


def _random_inputs(graph: SegmentationGraph, batch: int, roi, seed: int, device) -> tuple:
    # Uniform [0, 1]: the range of the normalised HU the model is trained on.
    rng = np.random.default_rng(seed)
    shape = (batch, 1, *roi)
    return tuple(
        torch.from_numpy(rng.random(shape, dtype=np.float32)).to(device) for _ in graph.input_names
    )


def export_segmentation_onnx(
    encoder: nn.Module,
    seg_head: nn.Module,
    path: str | PathLike[str],
    roi_size_vox: int | Sequence[int] = (32, 32, 32),
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export encoder + segmentation head to one ONNX file with a dynamic batch axis.

    The modules are traced in eval mode on their own device (their training flags are restored
    afterwards). The file is written under a temporary name in the same folder and moved into
    place with :func:`os.replace`, so a reader never sees a partial model; weights are stored
    inside the file (no external-data sidecar), which caps the model at 2 GB.

    Args:
        encoder: the encoder; with ``use_context`` the graph has inputs ``image`` and
            ``context``, else ``image`` only.
        seg_head: the segmentation head.
        path: destination ``.onnx`` file; its parent folder is created.
        roi_size_vox: (D, H, W) of every input, or one int for a cube; use the sliding-window
            size the model runs at (the training crop).
        opset: ONNX opset, >= :data:`MIN_OPSET`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``roi_size_vox`` or ``opset`` is invalid, or the encoder cannot run at
            ``roi_size_vox`` (e.g. instance norm over a single voxel at the coarsest level).
    """
    import onnx

    roi = _roi_triplet(roi_size_vox)
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an int >= {MIN_OPSET} (dynamo exporter); got {opset!r}")
    path = Path(path)
    graph = SegmentationGraph(encoder, seg_head)
    # Batch 2, not 1: torch.export specialises size-1 dimensions to constants.
    example = _random_inputs(graph, 2, roi, 0, _device(graph))
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = {name: {0: batch} for name in graph.input_names}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    with _EvalMode(graph), torch.no_grad():
        try:
            graph(*example)
        except ValueError as err:
            Path(tmp_name).unlink(missing_ok=True)
            raise ValueError(f"the model cannot run at roi_size_vox={roi}: {err}") from err
        try:
            with warnings.catch_warnings():
                # Both inputs share the one `batch` Dim on purpose; the exporter warns that it
                # keeps a single name for them, which is what we want.
                warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")
                torch.onnx.export(
                    graph,
                    example,
                    tmp_name,
                    dynamo=True,
                    opset_version=opset,
                    input_names=list(graph.input_names),
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=dynamic_shapes,
                    external_data=False,
                    verbose=False,
                )
            onnx.checker.check_model(tmp_name, full_check=True)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return path


def onnx_parity(
    encoder: nn.Module,
    seg_head: nn.Module,
    path: str | PathLike[str],
    n: int = 2,
    seed: int = 0,
) -> float:
    """Max abs difference between PyTorch and onnxruntime (CPU) logits on random inputs.

    Args:
        encoder: the exported encoder (same weights as the file).
        seg_head: the exported segmentation head.
        path: the ``.onnx`` file from :func:`export_segmentation_onnx`.
        n: random inputs, run as one batch of ``n`` (so the dynamic batch axis is exercised).
        seed: seed of the uniform [0, 1] inputs.

    Returns:
        ``max |torch - onnxruntime|`` over every logit, in logit units.

    Raises:
        ValueError: if ``n`` < 1 or the file's inputs do not match the encoder's.
    """
    import onnxruntime as ort

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = SegmentationGraph(encoder, seg_head)
    names = tuple(i.name for i in session.get_inputs())
    if names != graph.input_names:
        raise ValueError(
            f"{path} has inputs {list(names)} but the encoder takes {list(graph.input_names)} "
            "(use_context differs?)"
        )
    roi = tuple(session.get_inputs()[0].shape[2:])
    inputs = _random_inputs(graph, n, roi, seed, _device(graph))
    with _EvalMode(graph), torch.no_grad():
        expected = graph(*inputs).float().cpu().numpy()
    feeds = {name: t.cpu().numpy() for name, t in zip(names, inputs, strict=True)}
    (actual,) = session.run([OUTPUT_NAME], feeds)
    if actual.shape != expected.shape:
        raise ValueError(f"onnxruntime returned shape {actual.shape}; expected {expected.shape}")
    return float(np.max(np.abs(actual - expected)))
