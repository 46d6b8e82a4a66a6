"""Seconds per whole phantom chest of scan-level inference, split into steps, full vs cascade.

Steps: ``prepare`` (resample to the model spacing and normalise), ``lung_mask`` (classical lung
mask on the original grid, plus its resampling and dilation), ``sliding_window`` (MONAI
sliding windows with per-window context crops), ``components`` (connected components and
measurements) and, for the cascade, ``triage`` (the low-resolution pass). The model is
randomly initialised (``base`` or ``tiny`` encoder + segmentation head): its probabilities are
meaningless, so the cascade's window fraction here says nothing about a trained model's (a
random model scatters triage candidates through the lungs, so the full pass still runs on
nearly every lung window and the cascade only adds the triage pass's cost).

Usage: ``python -m benchmarks.bench_inference --encoder base [--target-spacing 1.0]``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from data_modules.phantom import PhantomConfig, generate_case
from lungvlm.imaging.lung_mask import lung_mask
from lungvlm.inference.cascade import segment_scan_cascade
from lungvlm.inference.scan import prepare_scan, segment_scan
from lungvlm.lightning.module import LungVLMModule
from lungvlm.models.encoder import BASE_ENCODER_CONFIG, TINY_ENCODER_CONFIG, MultiScaleEncoder3D
from lungvlm.models.heads.segmentation import SegmentationHead

CONFIGS = {"tiny": TINY_ENCODER_CONFIG, "base": BASE_ENCODER_CONFIG}


def build_model(encoder: str, device: str) -> LungVLMModule:
    """A randomly initialised segmentation module (seeded) in eval mode on ``device``."""
    torch.manual_seed(0)
    enc = MultiScaleEncoder3D(**CONFIGS[encoder])
    model = LungVLMModule(encoder=enc, seg_head=SegmentationHead(enc.feature_info))
    return model.eval().to(device)


def run(
    encoder: str = "base",
    shape_zyx: tuple[int, int, int] | None = None,
    target_spacing_mm: float = 1.0,
    seed: int = 2_000_000,
    roi_size_vox: int = 32,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    device: str = "auto",
    cascade: bool = True,
) -> dict:
    """Time one whole phantom chest through full and (optionally) cascade inference.

    Args:
        encoder: "base" (about 10 M parameters) or "tiny".
        shape_zyx: phantom grid; None keeps :class:`PhantomConfig`'s default (160 x 256 x 256).
        target_spacing_mm: model spacing (mm); the 300 mm tall chest has about
            ``(300 / t) x (400 / t)²`` voxels at spacing ``t``.
        seed: phantom seed (default: the first test-split seed).
        roi_size_vox, overlap, sw_batch_size: sliding-window settings.
        device: "auto", "cpu" or "cuda".
        cascade: also time the cascade.

    Returns:
        Seconds per step (``*_s``), window counts and fractions, grid shapes and the device.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(encoder, device)
    overrides = {"with_report": False}
    if shape_zyx is not None:
        overrides["shape_zyx"] = tuple(shape_zyx)
    case = generate_case(seed, PhantomConfig(**overrides))
    out: dict = {"device": device, "encoder": encoder, "scan_shape": list(case.image_hu.shape)}
    start = time.perf_counter()
    prepared = prepare_scan(
        case.image_hu, case.spacing_mm, target_spacing_mm, model.normalization, case.origin_lps_mm
    )
    out["prepare_s"] = time.perf_counter() - start
    out["prepared_shape"] = list(prepared.image.shape)
    start = time.perf_counter()
    lung = lung_mask(case.image_hu, case.spacing_mm)
    lung_s = time.perf_counter() - start
    settings = {"roi_size_vox": roi_size_vox, "overlap": overlap, "sw_batch_size": sw_batch_size}
    methods = {"full": segment_scan, "cascade": segment_scan_cascade}
    for name, segment in methods.items():
        if name == "cascade" and not cascade:
            continue
        start = time.perf_counter()
        seg = segment(model, prepared, lung_mask=lung, **settings)
        total = time.perf_counter() - start
        for step, seconds in seg.timings_s.items():
            out[f"{name}_{step}_s"] = seconds + (lung_s if step == "lung_mask" else 0.0)
        out[f"{name}_total_s"] = total + lung_s + out["prepare_s"]
        out[f"{name}_windows_total"] = seg.windows_total
        out[f"{name}_windows_processed"] = seg.windows_processed
        out[f"{name}_instances"] = len(seg.instances)
        for key, value in seg.details.items():
            out[f"{name}_{key}"] = value
    return out


def main() -> None:
    """Print the benchmark as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", choices=tuple(CONFIGS), default="base")
    parser.add_argument("--target-spacing", type=float, default=1.0)
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-cascade", action="store_true")
    args = parser.parse_args()
    result = run(
        args.encoder,
        args.shape,
        args.target_spacing,
        device=args.device,
        cascade=not args.no_cascade,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
