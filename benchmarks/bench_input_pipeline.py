"""Share of a training step spent waiting on the input pipeline, as training runs.

For each stage, the stage's ``PhantomDataModule`` settings come from ``experiments/base.yaml`` +
its ``stageN.yaml`` (batch size, ``num_workers``, crop, positive / hard-negative / mined
fractions, torchio augmentation). Only three things differ from a training run:

- ``cache_dir`` is a temporary folder, filled first (untimed) so the cache is warm, as it is
  after the first epoch of stage 1 (``runs/phantom_cache`` is shared by all stages);
- ``n_train`` is the ``warmup + steps`` batches the loop draws (one epoch, every seed cached);
- where the stage sets ``mined_fraction``, the mined pool is a small synthetic one written by
  the project's pool writer (:meth:`PhantomDataModule.store_mined`): nodule-free noise crops of
  both kinds, false positives and whole-lung windows.

The loop is the training loop's: ``next(iterator)`` (the wait) then the step
(``on_before_batch_transfer``, where stage 3 tokenises the reports, + forward + backward +
gradient clipping + AdamW on the stage's real module). The first ``next`` of an epoch starts the
workers and is timed on its own; ``warmup`` batches follow untimed, then ``steps`` timed ones.

- share = sum(wait) / (sum(wait) + sum(step)) over the timed steps (steady state);
- epoch share: the same with the first batch's wait added once per epoch of the configured
  ``n_train / batch_size`` steps (workers restart every epoch: ``persistent_workers`` is off,
  as ``HardNegativeMining`` requires);
- contention: median step with the workers running / median of ``max(3, steps // 2)`` steps on
  the last batch once they have stopped. On a CPU the workers share the cores with the step, which slows the step
  without showing up as wait.

Usage: ``python -m benchmarks.bench_input_pipeline --steps 10 --warmup 2``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_training import STAGES, build_module, optimizer_step, stage_config
from data_modules.phantom_datamodule import PhantomDataModule
from lungvlm.types import MINED_KINDS, MinedCrop

#: Crops per kind in the synthetic mined pool (a real round mines up to 48 false positives and
#: 32 windows per chest; the pool's size does not change the cost of reading one crop).
MINED_CROPS_PER_KIND = 4


def time_loop(
    iterator: Iterator,
    step: Callable[[Any], None],
    steps: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Time a training loop: the wait on ``next(iterator)`` and ``step(batch)``, in ms.

    Args:
        iterator: batches (a fresh DataLoader iterator: its first ``next`` starts the workers).
        step: the training step on one batch.
        steps: timed steps.
        warmup: untimed steps after the first batch.
        clock: seconds (``time.perf_counter``; tests pass a fake clock).

    Returns:
        ``{"first_wait_ms", "wait_ms": [...], "step_ms": [...], "last_batch"}``; the first batch
        (``first_wait_ms``) and the warm-up steps are in no list.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0; got steps={steps}, warmup={warmup}")
    start = clock()
    batch = next(iterator)
    first_wait_ms = 1000.0 * (clock() - start)
    step(batch)
    for _ in range(warmup):
        step(next(iterator))
    wait_ms, step_ms = [], []
    for _ in range(steps):
        start = clock()
        batch = next(iterator)
        fetched = clock()
        step(batch)
        done = clock()
        wait_ms.append(1000.0 * (fetched - start))
        step_ms.append(1000.0 * (done - fetched))
    return {
        "first_wait_ms": first_wait_ms,
        "wait_ms": wait_ms,
        "step_ms": step_ms,
        "last_batch": batch,
    }


def wait_share(wait_ms: Sequence[float], step_ms: Sequence[float]) -> float:
    """Share of the loop's time spent waiting: ``sum(wait) / (sum(wait) + sum(step))``."""
    wait, step = float(sum(wait_ms)), float(sum(step_ms))
    if wait + step <= 0:
        raise ValueError(f"no time measured: sum(wait_ms)={wait}, sum(step_ms)={step}")
    return wait / (wait + step)


def epoch_share(
    first_wait_ms: float, wait_ms: Sequence[float], step_ms: Sequence[float], steps_per_epoch: int
) -> float:
    """Wait share over one epoch of ``steps_per_epoch`` steps: the first batch waits
    ``first_wait_ms`` (worker start-up), the others the mean of ``wait_ms``; every step takes
    the mean of ``step_ms``."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch!r} must be >= 1")
    wait = first_wait_ms + (steps_per_epoch - 1) * statistics.fmean(wait_ms)
    return wait / (wait + steps_per_epoch * statistics.fmean(step_ms))


def synthetic_mined_crops(n_per_kind: int, crop: int, seed: int = 0) -> list[MinedCrop]:
    """Nodule-free crops (lung-like noise in [0, 1], empty masks) of every mined kind."""
    rng = np.random.default_rng(seed)
    crops = []
    for kind in MINED_KINDS:
        for i in range(n_per_kind):
            image = np.clip(0.1 + 0.05 * rng.standard_normal((crop,) * 3), 0, 1).astype(np.float32)
            context = np.clip(0.2 + 0.1 * rng.standard_normal((crop,) * 3), 0, 1).astype(np.float32)
            crops.append(
                MinedCrop(
                    image=image,
                    context=context,
                    mask=np.zeros((crop,) * 3, np.uint8),
                    kind=kind,
                    centre_vox=(float(i), 0.0, 0.0),
                    centre_world_mm=(0.0, 0.0, float(i)),
                    score=0.9 if kind == "false_positive" else None,
                    case_id="bench-chest",
                )
            )
    return crops


def training_data(stage: str, root: Path, n_batches: int) -> PhantomDataModule:
    """The stage's DataModule with a warm cache (and a mined pool) under ``root``."""
    init = dict(stage_config(stage)["data"]["init_args"])
    init.update(cache_dir=str(root / "cache"), n_train=n_batches * init["batch_size"])
    init.update(n_val=0, n_test=0, mined_dir=None)
    dm = PhantomDataModule(**init)
    dm.setup("fit")
    train = dm.datasets["train"]
    for i in range(len(train)):  # renders and writes every sample the epoch draws (untimed)
        train[i]
    if dm.hparams.mined_fraction > 0:
        pool = root / "mined"
        crops = synthetic_mined_crops(MINED_CROPS_PER_KIND, dm.hparams.crop_size_vox)
        dm.store_mined(pool, "bench-chest", crops, stats={})
        dm.load_mined(pool)
    return dm


def stage_pipeline(stage: str, root: Path, steps: int, warmup: int) -> dict[str, Any]:
    """Time one stage's training loop on its input pipeline (see the module docstring)."""
    torch.manual_seed(0)
    dm = training_data(stage, root, 1 + warmup + steps)
    module = build_module(stage).train()
    optimizer = module.configure_optimizers()
    clip = stage_config(stage)["trainer"].get("gradient_clip_val")

    def step(batch) -> None:
        optimizer_step(module, optimizer, module.on_before_batch_transfer(batch, 0), clip)

    iterator = iter(dm.train_dataloader())
    loop = time_loop(iterator, step, steps, warmup)
    del iterator  # stops the workers
    batch = loop.pop("last_batch")
    alone_ms = []
    for _ in range(max(3, steps // 2)):
        start = time.perf_counter()
        step(batch)
        alone_ms.append(1000.0 * (time.perf_counter() - start))
    hp = dm.hparams
    trained_n = stage_config(stage)["data"]["init_args"]["n_train"]
    return {
        "batch_size": hp.batch_size,
        "num_workers": hp.num_workers,
        "mined_fraction": hp.mined_fraction,
        "mined_pool": dm.mined_count,
        "first_wait_ms": loop["first_wait_ms"],
        "wait_ms": statistics.fmean(loop["wait_ms"]),
        "max_wait_ms": max(loop["wait_ms"]),
        "step_ms": statistics.fmean(loop["step_ms"]),
        "share": wait_share(loop["wait_ms"], loop["step_ms"]),
        "epoch_share": epoch_share(
            loop["first_wait_ms"],
            loop["wait_ms"],
            loop["step_ms"],
            max(1, trained_n // hp.batch_size),
        ),
        "step_alone_ms": statistics.median(alone_ms),
        "contention": statistics.median(loop["step_ms"]) / statistics.median(alone_ms),
    }


def run(stages: Sequence[str] = STAGES, steps: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Input-pipeline share of each stage's training step (see the module docstring).

    Args:
        stages: stages to time, from ``("pretrain", "segment", "vision_language")``.
        steps: timed steps per stage.
        warmup: untimed steps after the first batch.

    Returns:
        ``{"threads", "steps", "warmup", "stages": {stage: {"batch_size", "num_workers",
        "mined_fraction", "mined_pool", "first_wait_ms", "wait_ms", "max_wait_ms", "step_ms",
        "share", "epoch_share", "step_alone_ms", "contention"}}}``; ``wait_ms`` and ``step_ms``
        are means over the timed steps.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"stages={tuple(stages)!r} has unknown stages; expected from {STAGES}")
    result: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "steps": steps,
        "warmup": warmup,
        "stages": {},
    }
    with tempfile.TemporaryDirectory(prefix="lungvlm-bench-input-") as tmp:
        for stage in stages:  # one cache for all stages, as runs/phantom_cache is
            result["stages"][stage] = stage_pipeline(stage, Path(tmp), steps, warmup)
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; prints the result as JSON and returns it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per stage")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    args = parser.parse_args(argv)
    result = run(stages=args.stages, steps=args.steps, warmup=args.warmup)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
