"""Training-step time of every stage of ``LungVLMModule`` and the share of a step spent loading.

Each stage is the real module built from ``experiments/base.yaml`` + its ``stageN.yaml``
overrides (encoder widths, heads, loss, loss weights, optimizer), fed a fixed synthetic batch of
nodule crops (a bright sphere in noisy lung, collated by ``collate_samples``). One step is
forward + backward + gradient clipping (``trainer.gradient_clip_val``) + optimizer step; the
median over ``steps`` timed steps after ``warmup`` untimed ones is reported in ms.

Uncached data loading (not how training runs): the median time for
``PhantomDataModule(num_workers=0)`` without a cache, rendering every phantom, to produce one
training batch (after a first, untimed batch that warms the phantom template cache), and for
each stage the share of a serial load + step spent loading, ``load / (load + step)``. The
share as training runs (warm cache, worker processes, mined pool) is measured by
:mod:`benchmarks.bench_input_pipeline`.

On CUDA, stage 3 is also timed in fp32 and under bf16 autocast: samples/s, peak memory
(``torch.cuda.max_memory_allocated``) and achieved TFLOP/s from the FLOPs of one step
(``torch.utils.flop_counter.FlopCounterMode``) against ``--peak-tflops`` (989: H100 dense bf16).

Usage: ``python -m benchmarks.bench_training --steps 5 --batch-size 4``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from lungvlm.labels import CONCEPT_NAMES
from lungvlm.lightning.module import LungVLMModule
from lungvlm.lightning.vision_language import VisionLanguageConfig
from lungvlm.types import LungBatch, NoduleSample, ReportSpan, collate_samples

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
STAGE_FILES: dict[str, str] = {
    "pretrain": "stage1.yaml",
    "segment": "stage2.yaml",
    "vision_language": "stage3.yaml",
}
#: The image stages timed here (the text-only ``language`` stage has no image step).
STAGES: tuple[str, ...] = tuple(STAGE_FILES)
H100_BF16_DENSE_TFLOPS = 989.0
#: Reports in the benchmark tokenizer's corpus; reports are padded to ``max_length`` tokens, so
#: the vocabulary learnt does not change the cost of a step.
TOKENIZER_CORPUS_SIZE = 200
REPORT_TEXT = "A 8 mm solid nodule with smooth margins in the right upper lobe."


def _merge(base: dict, override: dict) -> dict:
    """Recursive dict merge (override wins), as LightningCLI layers ``--config`` files."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def stage_config(stage: str, experiments_dir: Path = EXPERIMENTS_DIR) -> dict:
    """The merged ``base.yaml`` + ``stageN.yaml`` config of ``stage`` (top-level keys)."""
    if stage not in STAGE_FILES:
        raise ValueError(f"stage={stage!r} is not a stage; expected one of {tuple(STAGE_FILES)}")
    base = yaml.safe_load((experiments_dir / "base.yaml").read_text())
    override = yaml.safe_load((experiments_dir / STAGE_FILES[stage]).read_text())
    return _merge(base, override)


def class_factory(spec: dict) -> Callable:
    """``{"class_path": ..., "init_args": {...}}`` -> a callable that builds it."""
    module_name, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    init_args = dict(spec.get("init_args") or {})
    return lambda *args: cls(*args, **init_args)


def build_module(stage: str, experiments_dir: Path = EXPERIMENTS_DIR) -> LungVLMModule:
    """Build the stage's module at its YAML sizes, from scratch (``init_from`` is ignored)."""
    model = stage_config(stage, experiments_dir)["model"]
    encoder = class_factory(model["encoder"])()
    heads = {
        name: class_factory(model[name])
        for name in ("seg_head", "candidate_head", "recon_head", "vl_heads")
        if name in model
    }
    optimizer = class_factory(model["optimizer"])
    vl = dict(model.get("vl") or {}, tokenizer_corpus_size=TOKENIZER_CORPUS_SIZE)
    module = LungVLMModule(
        encoder=encoder,
        stage=model["stage"],
        seg_loss=class_factory(model["seg_loss"])(),
        vl=VisionLanguageConfig(**vl),
        loss_weights=model.get("loss_weights"),
        mask_block_size_vox=tuple(model.get("mask_block_size_vox", (4, 4, 4))),
        mask_ratio=model.get("mask_ratio", 0.6),
        optimizer=optimizer,
        **heads,
    )
    if module.vl is not None:
        module.vl.fit_tokenizer()
    return module


def synthetic_sample(seed: int, crop: int) -> NoduleSample:
    """A labelled nodule crop: a bright sphere (radius crop/5 voxels) in noisy dark lung."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:crop, :crop, :crop].astype(np.float32)
    centre = crop / 2 - 0.5 + rng.uniform(-1.5, 1.5, 3)
    dist = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    mask = (dist <= crop / 5).astype(np.float32)
    noise = 0.1 + 0.05 * rng.standard_normal((crop,) * 3).astype(np.float32)
    image = torch.from_numpy(np.where(mask > 0, 0.75, noise).astype(np.float32))[None]
    k = len(CONCEPT_NAMES)
    return NoduleSample(
        image=image,
        context=image.clone(),
        seg_mask=torch.from_numpy(mask)[None],
        seg_present=True,
        malignancy=float(seed % 2),
        malignancy_present=True,
        lungrads=seed % 5,
        lungrads_present=True,
        growth_time_months=12.0,
        growth_event=float(seed % 2),
        growth_present=True,
        concepts=torch.from_numpy(rng.uniform(0, 1, k).astype(np.float32)),
        concepts_present=torch.ones(k, dtype=torch.bool),
        report_text=REPORT_TEXT,
        report_spans=[ReportSpan(2, 6, 0, "size")],
        impression_text="Lung-RADS 4A.",
        spacing_mm=torch.ones(3),
        patient_id=f"synthetic-{seed}",
        meta={"seed": seed},
    )


def synthetic_batch(batch_size: int, crop: int) -> LungBatch:
    """Collate ``batch_size`` :func:`synthetic_sample` crops of ``crop`` voxels a side."""
    return collate_samples([synthetic_sample(i, crop) for i in range(batch_size)])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def optimizer_step(
    module: LungVLMModule,
    optimizer: torch.optim.Optimizer,
    batch: LungBatch,
    clip: float | None,
    bf16: bool = False,
) -> None:
    """One training step: forward + backward + gradient clipping (``clip``) + optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(batch.image.device.type, dtype=torch.bfloat16, enabled=bf16):
        total = module.shared_step(batch)[0]["total"]
    total.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    optimizer.step()


def _make_step(module: LungVLMModule, batch: LungBatch, clip: float | None, bf16: bool):
    optimizer = module.configure_optimizers()
    return lambda: optimizer_step(module, optimizer, batch, clip, bf16)


def median_ms(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Median wall time (ms) of ``step`` over ``steps`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def _prepared(stage: str, batch_size: int, crop: int, device: torch.device):
    torch.manual_seed(0)
    module = build_module(stage).to(device).train()
    batch = synthetic_batch(batch_size, crop)
    module.on_before_batch_transfer(batch, 0)  # stage 3: tokenise the reports on the CPU
    clip = stage_config(stage)["trainer"].get("gradient_clip_val")
    return module, batch.to(device), clip


def loading_ms(batch_size: int, crop: int, batches: int) -> float:
    """Median ms for an uncached ``PhantomDataModule(num_workers=0)`` to yield one batch."""
    from data_modules.phantom_datamodule import PhantomDataModule

    dm = PhantomDataModule(
        crop_size_vox=crop, batch_size=batch_size, num_workers=0, n_train=batch_size * (batches + 1)
    )
    dm.setup("fit")
    iterator = iter(dm.train_dataloader())
    next(iterator)  # warms the per-process phantom template cache, as a worker's first batch
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        next(iterator)
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def accelerator_stage3(
    batch_size: int, crop: int, steps: int, warmup: int, peak_tflops: float
) -> dict:
    """Stage-3 samples/s, peak memory and achieved TFLOP/s in fp32 and bf16 on CUDA."""
    device = torch.device("cuda")
    module, batch, clip = _prepared("vision_language", batch_size, crop, device)
    counter = FlopCounterMode(display=False)
    with counter:
        _make_step(module, batch, clip, bf16=False)()
    flops = counter.get_total_flops()
    out: dict = {"device": torch.cuda.get_device_name(device), "gflop_per_step": flops / 1e9}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        torch.cuda.reset_peak_memory_stats(device)
        ms = median_ms(_make_step(module, batch, clip, bf16), steps, warmup, device)
        tflops = flops / (ms / 1000.0) / 1e12
        out[name] = {
            "step_ms": ms,
            "samples_per_s": batch_size / (ms / 1000.0),
            "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "tflops": tflops,
            "fraction_of_peak": tflops / peak_tflops,
        }
    return out


def run(
    stages: Sequence[str] = STAGES,
    steps: int = 5,
    batch_size: int = 4,
    crop: int = 32,
    warmup: int = 2,
    load_batches: int = 3,
    peak_tflops: float = H100_BF16_DENSE_TFLOPS,
) -> dict:
    """Time one optimizer step per stage on the CPU, data loading, and stage 3 on CUDA.

    Args:
        stages: stages to time, from ``("pretrain", "segment", "vision_language")``.
        steps: timed optimizer steps per stage (median reported).
        batch_size: crops per step (and per loaded batch).
        crop: cubic crop side, voxels.
        warmup: untimed steps before timing.
        load_batches: timed DataModule batches (0 skips the loading measurement).
        peak_tflops: accelerator peak TFLOP/s for the fraction-of-peak figure (CUDA only).

    Returns:
        ``{"batch_size", "crop_vox", "threads", "stages": {stage: {"params", "step_ms",
        "samples_per_s"[, "load_share"]}}[, "load_ms"][, "cuda_stage3"]}``.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"stages={tuple(stages)!r} has unknown stages; expected from {STAGES}")
    if steps < 1 or batch_size < 1 or crop < 16 or warmup < 0 or load_batches < 0:
        raise ValueError(
            "steps and batch_size must be >= 1, crop >= 16 voxels, warmup and load_batches "
            f">= 0; got steps={steps}, batch_size={batch_size}, crop={crop}, warmup={warmup}, "
            f"load_batches={load_batches}"
        )
    cpu = torch.device("cpu")
    result: dict = {
        "batch_size": batch_size,
        "crop_vox": crop,
        "threads": torch.get_num_threads(),
        "stages": {},
    }
    for stage in stages:
        module, batch, clip = _prepared(stage, batch_size, crop, cpu)
        ms = median_ms(_make_step(module, batch, clip, bf16=False), steps, warmup, cpu)
        result["stages"][stage] = {
            "params": sum(p.numel() for p in module.parameters()),
            "step_ms": ms,
            "samples_per_s": batch_size / (ms / 1000.0),
        }
    if load_batches:
        load = loading_ms(batch_size, crop, load_batches)
        result["load_ms"] = load
        for figures in result["stages"].values():
            figures["load_share"] = load / (load + figures["step_ms"])
    if torch.cuda.is_available():
        result["cuda_stage3"] = accelerator_stage3(batch_size, crop, steps, warmup, peak_tflops)
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; prints the result as JSON and returns it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per stage")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=32, help="cubic crop side (voxels)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--load-batches", type=int, default=3, help="timed DataModule batches")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    args = parser.parse_args(argv)
    result = run(
        stages=args.stages,
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        warmup=args.warmup,
        load_batches=args.load_batches,
        peak_tflops=args.peak_tflops,
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
