"""Time forward+backward of MultiScaleEncoder3D + SegmentationHead against a MONAI baseline.

The LungVLM model is the encoder (with its context branch fed a context crop of the same size,
as in training) plus the deep-supervision segmentation head. The baseline is MONAI's SegResNet
or BasicUNet at the width whose parameter count is closest to the LungVLM model's. Each step is
forward, a mean-of-outputs loss, backward; the median over ``runs`` timed steps is reported.
On CUDA the step is also timed under bf16 autocast, with peak memory, and the FLOPs of one
step (``torch.utils.flop_counter.FlopCounterMode``) give achieved TFLOP/s and the fraction of
``--peak-tflops`` (default 989: H100 SXM dense bf16).

Usage: ``python benchmarks/bench_encoder.py --size 64 --runs 5``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from monai.networks.nets import BasicUNet, SegResNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lungvlm.models.encoder import BASE_ENCODER_CONFIG, TINY_ENCODER_CONFIG, MultiScaleEncoder3D
from lungvlm.models.heads.segmentation import SegmentationHead

CONFIGS = {"tiny": TINY_ENCODER_CONFIG, "base": BASE_ENCODER_CONFIG}
H100_BF16_DENSE_TFLOPS = 989.0


class EncoderWithHead(nn.Module):
    """Encoder + segmentation head; takes the fine crop and uses it as the context crop too."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.encoder = MultiScaleEncoder3D(**config)
        self.head = SegmentationHead(self.encoder.feature_info)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.head(self.encoder(image, context=image))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _baseline_candidates(name: str) -> list[tuple[str, Callable[[], nn.Module]]]:
    if name == "segresnet":
        return [
            (f"SegResNet(init_filters={f})", lambda f=f: SegResNet(3, f, 1, 1))
            for f in (8, 16, 24, 32)
        ]
    if name == "basicunet":
        features = [
            (16, 16, 32, 64, 128, 16),
            (32, 32, 64, 128, 256, 32),
            (48, 48, 96, 192, 384, 48),
        ]
        return [
            (f"BasicUNet(features={f})", lambda f=f: BasicUNet(3, 1, 1, features=f))
            for f in features
        ]
    raise ValueError(f"baseline={name!r} is not valid; expected 'segresnet' or 'basicunet'")


def closest_baseline(name: str, n_params: int) -> tuple[str, nn.Module]:
    """The baseline width whose parameter count is closest to ``n_params``."""
    built = [(label, make()) for label, make in _baseline_candidates(name)]
    return min(built, key=lambda item: abs(count_parameters(item[1]) - n_params))


def _step(model: nn.Module, image: torch.Tensor, bf16: bool) -> None:
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(image)
    outs = out if isinstance(out, (list, tuple)) else [out]
    loss = sum(o.float().mean() for o in outs)
    loss.backward()
    model.zero_grad(set_to_none=True)


def _median_ms(model: nn.Module, image: torch.Tensor, runs: int, warmup: int, bf16: bool) -> float:
    cuda = image.device.type == "cuda"
    for _ in range(warmup):
        _step(model, image, bf16)
    times = []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        _step(model, image, bf16)
        if cuda:
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _flops_per_step(model: nn.Module, image: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        _step(model, image, bf16=False)
    return counter.get_total_flops()


def benchmark_model(
    model: nn.Module, image: torch.Tensor, runs: int, warmup: int, peak_tflops: float
) -> dict:
    """Time one model; returns parameters, fp32 step time, FLOPs and (CUDA) bf16 numbers."""
    model = model.to(image.device).train()
    flops = _flops_per_step(model, image)
    fp32_ms = _median_ms(model, image, runs, warmup, bf16=False)
    result = {
        "params": count_parameters(model),
        "fp32_ms": fp32_ms,
        "gflop_per_step": flops / 1e9,
        "fp32_tflops": flops / (fp32_ms / 1000) / 1e12,
    }
    if image.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(image.device)
        bf16_ms = _median_ms(model, image, runs, warmup, bf16=True)
        tflops = flops / (bf16_ms / 1000) / 1e12
        result.update(
            bf16_ms=bf16_ms,
            bf16_crops_per_s=image.shape[0] / (bf16_ms / 1000),
            bf16_tflops=tflops,
            bf16_fraction_of_peak=tflops / peak_tflops,
            max_memory_mib=torch.cuda.max_memory_allocated(image.device) / 2**20,
        )
    return result


def run(
    size: int = 64,
    config: str = "base",
    baseline: str = "segresnet",
    runs: int = 5,
    warmup: int = 1,
    batch_size: int = 1,
    device: str = "auto",
    peak_tflops: float = H100_BF16_DENSE_TFLOPS,
    threads: int | None = None,
    seed: int = 0,
) -> dict:
    """Benchmark LungVLM's encoder + head against the closest-sized MONAI baseline.

    Args:
        size: cubic crop side in voxels.
        config: ``"tiny"`` or ``"base"`` encoder configuration.
        baseline: ``"segresnet"`` or ``"basicunet"``.
        runs: timed steps per model (median reported).
        warmup: untimed steps before timing.
        batch_size: crops per step.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        peak_tflops: accelerator peak for the fraction-of-peak column (CUDA only).
        threads: CPU threads for torch (``None``: torch default).
        seed: weight-initialisation seed.

    Returns:
        ``{"device", "input_shape", "lungvlm": {...}, "baseline": {...}, "baseline_name",
        "time_ratio"}`` where ``time_ratio`` is LungVLM fp32 time / baseline fp32 time.
    """
    if config not in CONFIGS:
        raise ValueError(f"config={config!r} is not valid; expected one of {sorted(CONFIGS)}")
    if size < 1 or runs < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(
            f"size, runs, batch_size must be >= 1 and warmup >= 0; got size={size}, runs={runs}, "
            f"warmup={warmup}, batch_size={batch_size}"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    image = torch.randn(batch_size, 1, size, size, size, device=device)
    ours = EncoderWithHead(CONFIGS[config])
    baseline_name, other = closest_baseline(baseline, count_parameters(ours))
    lungvlm = benchmark_model(ours, image, runs, warmup, peak_tflops)
    base = benchmark_model(other, image, runs, warmup, peak_tflops)
    return {
        "device": torch.cuda.get_device_name(device) if device == "cuda" else "cpu",
        "input_shape": list(image.shape),
        "lungvlm": lungvlm,
        "baseline": base,
        "baseline_name": baseline_name,
        "time_ratio": lungvlm["fp32_ms"] / base["fp32_ms"],
    }


def format_table(result: dict) -> str:
    """Render :func:`run`'s result as a plain-text table."""
    keys = [k for k in result["lungvlm"] if k != "params"]
    rows = [("model", "params", *keys)]
    for label, key in (
        ("MultiScaleEncoder3D+SegHead", "lungvlm"),
        (result["baseline_name"], "baseline"),
    ):
        r = result[key]
        rows.append((label, f"{r['params'] / 1e6:.2f}M", *(f"{r[k]:.3g}" for k in keys)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(0, f"device={result['device']} input={result['input_shape']}")
    lines.append(f"time ratio (LungVLM / baseline, fp32): {result['time_ratio']:.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; prints the table (or JSON) and returns the result dict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="cubic crop side (voxels)")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="base")
    parser.add_argument("--baseline", choices=["segresnet", "basicunet"], default="segresnet")
    parser.add_argument("--runs", type=int, default=5, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_BF16_DENSE_TFLOPS,
        help="accelerator peak TFLOP/s for the fraction-of-peak column",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    result = run(
        size=args.size,
        config=args.config,
        baseline=args.baseline,
        runs=args.runs,
        warmup=args.warmup,
        batch_size=args.batch_size,
        device=args.device,
        peak_tflops=args.peak_tflops,
        threads=args.threads,
    )
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return result


if __name__ == "__main__":
    main()
