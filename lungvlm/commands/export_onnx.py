"""``lungvlm export-onnx``: the segmentation path of a checkpoint as one ONNX file.

    lungvlm export-onnx --ckpt runs/stage2/checkpoints/best.ckpt --out model.onnx --roi-size 32

The graph maps image (B, 1, D, H, W) [and, for a context encoder, context (B, 1, D, H, W)] to
the full-resolution logits (B, 1, D, H, W) with a dynamic batch axis
(:mod:`lungvlm.export.onnx`). After the export, onnxruntime (CPU) runs the file on random
inputs and the max abs difference to PyTorch is printed.

Only argparse, pathlib and :mod:`lungvlm.commands.options` are imported at module level:
``lungvlm --help`` imports every command module, so torch and the model code load in :func:`run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lungvlm.commands.options import add_ckpt, resolve_device


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``export-onnx`` subcommand to a ``lungvlm`` sub-parser set."""
    parser = subparsers.add_parser(
        "export-onnx",
        help="export encoder + segmentation head to ONNX and check parity with onnxruntime",
        description=(
            "Export the encoder + segmentation head of a checkpoint to one ONNX file: image "
            "(B, 1, D, H, W) [and, for a context encoder, context (B, 1, D, H, W)] -> "
            "full-resolution logits (B, 1, D, H, W), batch axis dynamic. onnxruntime (CPU) then "
            "runs the file on random inputs and the max abs difference to PyTorch is printed."
        ),
    )
    add_ckpt(parser, "segment or vision_language checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument(
        "--roi-size",
        type=int,
        default=None,
        help="input side in voxels (default: the checkpoint's training crop_size_vox, which "
        "is also the sliding-window size of `lungvlm report`)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the model is traced and checked: cpu (default), auto, cuda or cuda:N (on a "
        "GPU, TF32 convolutions widen the PyTorch-onnxruntime gap)",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset, >= 18 (default 18)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``lungvlm export-onnx``; returns the exit code.

    Raises:
        ValueError: bad ``--roi-size``/``--out``, or an unusable checkpoint (from ``load_model``).
    """
    if args.roi_size is not None and args.roi_size < 1:
        raise ValueError(f"--roi-size must be a positive number of voxels; got {args.roi_size}")
    if args.out.suffix != ".onnx":
        raise ValueError(f"--out {args.out} must end with .onnx")

    from lungvlm.export.onnx import DEFAULT_OPSET, export_segmentation_onnx, onnx_parity
    from lungvlm.inference.report_analysis import settings_from_checkpoint
    from lungvlm.lightning.checkpoint import load_model, read_checkpoint

    device = resolve_device(args.device)
    checkpoint = read_checkpoint(args.ckpt)
    model = load_model(args.ckpt, map_location=device, checkpoint=checkpoint)
    if getattr(model, "seg_head", None) is None:
        raise ValueError(f"checkpoint {args.ckpt} has no segmentation head")
    side = args.roi_size or settings_from_checkpoint(checkpoint).crop_size_vox
    roi = (side,) * 3
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    path = export_segmentation_onnx(
        model.encoder, model.seg_head, args.out, roi_size_vox=roi, opset=opset
    )
    diff = onnx_parity(model.encoder, model.seg_head, path, n=2, seed=0)
    print(f"wrote {path} (input {roi} voxels, dynamic batch, opset {opset})")
    print(f"parity: max |torch({device}) - onnxruntime(CPU)| = {diff:.3g} (logits)")
    return 0
