"""Run every LungVLM benchmark and write the figures, with units, to a markdown file.

Run: ``python -m benchmarks.run_all --out benchmarks/RESULTS.md [--quick] [--threads N]``
(``make bench``). Sections: encoder step vs MONAI, training step per stage and uncached
data-loading share, the input pipeline's share of a step as training runs, report generation
with/without the KV cache, DICOM series reading vs SimpleITK, phantom generation, the
preprocessed cache, whole-chest detection (FROC/CPM of ``lungvlm evaluate``) and
the end-to-end report per chest. Each figure is the median of several runs (the
statistic is stated per section); comparisons are ratios of numbers measured in the same run.
Optional benchmark modules that are missing are skipped with a printed ``skipped:`` line; a
benchmark that raises is reported as failed, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import torch

VERSIONED_PACKAGES: tuple[str, ...] = ("torch", "lightning", "monai", "transformers", "numpy")
#: Unit of a figure from the end of its key, for benchmark modules that return plain dicts.
SUFFIX_UNITS: tuple[tuple[str, str], ...] = (
    ("_per_min", "cases/min"),
    ("_ms", "ms"),
    ("_s", "s"),
    ("speedup", "×"),
    ("ratio", "×"),
)


def figure(name: str, value: float | str, unit: str = "") -> dict:
    """One row of a section: a named value with its unit ("" for counts and text)."""
    return {"name": name, "value": value, "unit": unit}


def format_value(value: float | str, unit: str) -> str:
    """``12.3 ms``, ``1,234 ms``, ``4.20×``, ``0.0123 s``; counts as integers, text unchanged."""
    if isinstance(value, str):
        return value
    if not unit and float(value).is_integer():
        return f"{int(value):,}"  # a count
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    if not unit:
        return text
    return f"{text}{unit}" if unit == "×" else f"{text} {unit}"


def median_of(calls: Sequence[dict]) -> dict:
    """Key-wise median of the numeric values of several result dicts (text from the first)."""
    out = {}
    for key, value in calls[0].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out[key] = value
        else:
            out[key] = statistics.median(float(call[key]) for call in calls)
    return out


def call_accepted(fn: Callable, **kwargs) -> dict:
    """Call ``fn`` with the keyword arguments its signature accepts (the others are dropped)."""
    params = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def suffix_figures(result: dict) -> list[dict]:
    """Figures of a flat result dict, units read from the key suffixes (``SUFFIX_UNITS``)."""
    rows = []
    for key, value in result.items():
        unit = next((u for suffix, u in SUFFIX_UNITS if key.endswith(suffix)), "")
        rows.append(figure(key, value, unit))
    return rows


# --------------------------------------------------------------------------- benchmarks
def bench_encoder(quick: bool) -> tuple[str, list[dict]]:
    from benchmarks import bench_encoder as mod

    runs, warmup = (1, 0) if quick else (3, 1)
    r = mod.run(size=32, config="base", runs=runs, warmup=warmup)
    ours, base = r["lungvlm"], r["baseline"]
    rows = [
        figure("LungVLM encoder+seg head params", ours["params"] / 1e6, "M"),
        figure(f"{r['baseline_name']} params", base["params"] / 1e6, "M"),
        figure("LungVLM fp32 step", ours["fp32_ms"], "ms"),
        figure("baseline fp32 step", base["fp32_ms"], "ms"),
        figure("LungVLM / baseline step time", r["time_ratio"], "×"),
        figure("LungVLM FLOPs per step", ours["gflop_per_step"], "GFLOP"),
    ]
    if "bf16_ms" in ours:
        rows += [
            figure("LungVLM bf16 step", ours["bf16_ms"], "ms"),
            figure("LungVLM bf16 throughput", ours["bf16_crops_per_s"], "crops/s"),
            figure("LungVLM bf16 achieved", ours["bf16_tflops"], "TFLOP/s"),
            figure("LungVLM bf16 peak memory", ours["max_memory_mib"], "MiB"),
        ]
    note = (
        f"device {r['device']}, input {r['input_shape']}, encoder config `base` "
        f"(BASE_ENCODER_CONFIG, the GPU size); forward + backward, median of {runs} steps after "
        f"{warmup} warm-up."
    )
    return note, rows


def bench_training(quick: bool) -> tuple[str, list[dict]]:
    from benchmarks import bench_training as mod

    steps, warmup, load = (2, 1, 1) if quick else (5, 2, 3)
    r = mod.run(steps=steps, warmup=warmup, load_batches=load)
    rows = []
    for stage, s in r["stages"].items():
        rows += [
            figure(f"{stage} params", s["params"] / 1e6, "M"),
            figure(f"{stage} optimizer step", s["step_ms"], "ms"),
            figure(f"{stage} throughput", s["samples_per_s"], "samples/s"),
        ]
        if "load_share" in s:
            rows.append(
                figure(
                    f"{stage} uncached loading share (not as trained)", 100 * s["load_share"], "%"
                )
            )
    if "load_ms" in r:
        rows.append(figure("uncached PhantomDataModule batch (num_workers=0)", r["load_ms"], "ms"))
    cuda = r.get("cuda_stage3")
    if cuda:
        rows.append(figure("stage 3 FLOPs per step", cuda["gflop_per_step"], "GFLOP"))
        for precision in ("fp32", "bf16"):
            c = cuda[precision]
            rows += [
                figure(f"stage 3 {precision} throughput", c["samples_per_s"], "samples/s"),
                figure(f"stage 3 {precision} peak memory", c["peak_memory_mib"], "MiB"),
                figure(f"stage 3 {precision} achieved", c["tflops"], "TFLOP/s"),
                figure(f"stage 3 {precision} of peak", 100 * c["fraction_of_peak"], "%"),
            ]
    note = (
        f"batch {r['batch_size']} x {r['crop_vox']}³ crops, {r['threads']} CPU threads; "
        f"forward + backward + clip + AdamW, median of {steps} steps after {warmup} warm-up; "
        f"uncached loading (phantoms rendered on the fly, num_workers=0; not how training runs, "
        f"see the next section): median of {load} batches, share = load / (load + step)."
    )
    return note, rows


def bench_input_pipeline(quick: bool) -> tuple[str, list[dict]]:
    from benchmarks import bench_input_pipeline as mod

    steps, warmup = (4, 1) if quick else (10, 2)
    r = mod.run(steps=steps, warmup=warmup)
    rows, settings = [], []
    for stage, s in r["stages"].items():
        rows += [
            figure(f"{stage} wait on next(iterator)", s["wait_ms"], "ms"),
            figure(f"{stage} step", s["step_ms"], "ms"),
            figure(f"{stage} input-pipeline share", 100 * s["share"], "%"),
            figure(f"{stage} share, worker start-up once per epoch", 100 * s["epoch_share"], "%"),
            figure(f"{stage} first batch of an epoch (workers start)", s["first_wait_ms"], "ms"),
            figure(f"{stage} step slowdown while workers run", s["contention"], "×"),
        ]
        settings.append(
            f"{stage}: batch {s['batch_size']}, {s['num_workers']} workers, mined fraction "
            f"{s['mined_fraction']:g} (pool of {s['mined_pool']})"
        )
    note = (
        "As `make train-stage1/2/3` load data: each stage's DataModule settings "
        f"({'; '.join(settings)}), warm .npz cache (filled first, untimed), torchio "
        f"augmentation, {r['threads']} torch threads. Means over {steps} steps after the first batch and {warmup} warm-up; share = "
        "wait / (wait + step), the step being tokenisation + forward + backward + clip + AdamW. "
        "The slowdown is the median step with the workers running over the same step without them "
        "(the cores they share)."
    )
    return note, rows


def bench_generation(quick: bool) -> tuple[str, list[dict]]:
    from benchmarks import bench_generation as mod

    runs, tokens = (1, 32) if quick else (3, None)
    r = mod.run(runs=runs, max_new_tokens=tokens)
    rows = [
        figure("with KV cache", r["cached_tokens_per_s"], "tokens/s"),
        figure("without KV cache", r["uncached_tokens_per_s"], "tokens/s"),
        figure("KV cache speed-up", r["cache_speedup"], "×"),
        figure("cached visual keys/values", r["visual_kv_cache_kib"], "KiB"),
        figure("self-attention cache at the end", r["self_kv_cache_kib"], "KiB"),
        figure("visual K/V projection per uncached step", r["visual_projection_ms_per_step"], "ms"),
        figure("time the visual cache saves per report batch", r["visual_kv_time_saved_ms"], "ms"),
        figure("  as share of uncached time", 100 * r["visual_kv_time_saved_fraction"], "%"),
    ]
    note = (
        f"greedy, batch {r['batch_size']}, {r['new_tokens_per_report']} new tokens per report "
        f"(EOS disabled), {r['visual_tokens']} visual tokens of width {r['d_model']}; median of "
        f"{runs} calls after 1 warm-up."
    )
    return note, rows


def bench_io(quick: bool) -> tuple[str, list[dict]]:
    from benchmarks import bench_io as mod

    calls, slices = (1, 50) if quick else (3, 100)
    results = []
    for _ in range(calls):
        r = mod.main(["--slices", str(slices), "--size", "512", "--repeats", "1"])
        results.append({**r, "ratio": r["read_dicom_series_s"] / r["simpleitk_s"]})
    r = median_of(results)
    rows = [
        figure("read_dicom_series", r["read_dicom_series_s"], "s"),
        figure("SimpleITK ImageSeriesReader", r["simpleitk_s"], "s"),
        figure("read_dicom_series / SimpleITK", r["ratio"], "×"),
    ]
    note = f"{slices} x 512 x 512 int16 slices; median of {calls} runs (series rewritten each)."
    return note, rows


def bench_phantom(quick: bool) -> tuple[str, list[dict]]:
    mod = importlib.import_module("benchmarks.bench_phantom")
    r = call_accepted(mod.run, n_crops=5, n_chests=1) if quick else mod.run()
    return "bench_phantom.run(): median wall time per crop / per whole chest.", suffix_figures(r)


def bench_cache(quick: bool) -> tuple[str, list[dict]]:
    mod = importlib.import_module("benchmarks.bench_cache")
    r = call_accepted(mod.run, cases=2, repeats=2) if quick else mod.run()
    note = (
        "bench_cache.run(): crop and series times are best of its repeats; preprocessing is one "
        "timed run over all cases."
    )
    return note, suffix_figures(r)


class BenchmarkSkipped(Exception):
    """Raised by a benchmark that cannot run here (the reason is written into the results)."""


#: Checkpoint of the end-to-end report benchmark (``LUNGVLM_BENCH_CKPT`` overrides it).
REPORT_BENCH_CKPT = "runs/stage3/checkpoints/last.ckpt"
#: Checkpoint of the whole-chest detection benchmark: ``LUNGVLM_BENCH_DETECTION_CKPT``, else
#: ``LUNGVLM_BENCH_CKPT``, else this (stage 2 or 3; calibrated for the candidate threshold).
DETECTION_BENCH_CKPT = "runs/stage2/checkpoints/last_calibrated.ckpt"
#: Phantom test chests of the whole-chest benchmarks (``LUNGVLM_BENCH_CHESTS`` overrides it);
#: a default chest takes about a minute of CPU per pass, so bench stays a few minutes.
BENCH_CHESTS = 2
#: First phantom test-split seed (``lungvlm evaluate``'s default chests start here).
TEST_SEED = 2_000_000


def bench_chests(quick: bool) -> int:
    """Chests of the whole-chest benchmarks: 1 with --quick, else ``LUNGVLM_BENCH_CHESTS``."""
    n = 1 if quick else int(os.environ.get("LUNGVLM_BENCH_CHESTS", BENCH_CHESTS))
    if n < 1:
        raise ValueError(f"LUNGVLM_BENCH_CHESTS must be >= 1; got {n}")
    return n


def detection_bench_ckpt() -> Path:
    """The checkpoint of :func:`bench_whole_chest` (see :data:`DETECTION_BENCH_CKPT`)."""
    env = os.environ.get("LUNGVLM_BENCH_DETECTION_CKPT") or os.environ.get("LUNGVLM_BENCH_CKPT")
    return Path(env or DETECTION_BENCH_CKPT)


def _value(value: float | None) -> float | str:
    return "-" if value is None else value


def bench_whole_chest(quick: bool) -> tuple[str, list[dict]]:
    """Detection FROC/CPM and seconds per chest of ``lungvlm evaluate`` on phantom test chests."""
    import json

    from lungvlm.cli import main as lungvlm_main

    ckpt = detection_bench_ckpt()
    if not ckpt.is_file():
        raise BenchmarkSkipped(
            f"no checkpoint at {ckpt} (set LUNGVLM_BENCH_DETECTION_CKPT to a stage-2 or stage-3 "
            "checkpoint, calibrated with `lungvlm calibrate --detection`)"
        )
    n = bench_chests(quick)
    with tempfile.TemporaryDirectory() as out:
        args = ["evaluate", "--ckpt", str(ckpt), "--out", out, "--no-progress",
                "--phantom-seeds", f"{TEST_SEED}:{TEST_SEED + n}"]  # fmt: skip
        if lungvlm_main(args) != 0:
            raise RuntimeError("lungvlm evaluate failed")
        summary = json.loads((Path(out) / "evaluation.json").read_text())["summary"]
    point = summary["operating_point"]
    at = summary["sensitivity_at_fps"] or {}
    rows = [
        figure("chests", float(summary["n_scans"])),
        figure("reference nodules", float(summary["n_nodules"])),
        figure("CPM", _value(summary["cpm"])),
        *(figure(f"sensitivity at {k} FPs/scan", _value(at.get(k))) for k in
          ("0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0")),
        figure("sensitivity at the operating point", _value(summary["sensitivity"])),
        figure("sensitivity >= 6 mm at the operating point", _value(summary["sensitivity_ge_6mm"])),
        figure("FPs/scan at the operating point", summary["fps_per_scan"]),
        figure("seconds per chest (segmentation)", sum(summary["seconds_per_scan"].values()), "s"),
    ]  # fmt: skip
    threshold = (
        f"candidate threshold {point['candidate_threshold']:.4g}"
        if point["kind"] == "candidate_threshold"
        else f"probability threshold {point['probability_threshold']:g} (no calibration)"
    )
    note = (
        f"`lungvlm evaluate` on phantom test chests {TEST_SEED}..{TEST_SEED + n - 1} (default "
        f"size), checkpoint `{ckpt}`; operating point at the {threshold}. {n} chest(s) give a "
        "noisy CPM: the figure of record is `lungvlm evaluate` on its 20 default chests."
    )
    return note, rows


def bench_report(quick: bool) -> tuple[str, list[dict]]:
    """Seconds per step of ``lungvlm report`` on one phantom test chest (DICOM), trained model."""
    import json

    from lungvlm.cli import main as lungvlm_main

    ckpt = Path(os.environ.get("LUNGVLM_BENCH_CKPT", REPORT_BENCH_CKPT))
    if not ckpt.is_file():
        raise BenchmarkSkipped(f"no stage-3 checkpoint at {ckpt} (run `make train-stage3`)")
    n = bench_chests(quick)
    with tempfile.TemporaryDirectory() as out:
        args = ["evaluate-reports", "--ckpt", str(ckpt), "--out", out, "--cascade", "off",
                "--no-follow-up", "--no-progress",
                "--phantom-seeds", f"{TEST_SEED}:{TEST_SEED + n}"]  # fmt: skip
        if lungvlm_main(args) != 0:
            raise RuntimeError("lungvlm evaluate-reports failed")
        summary = json.loads((Path(out) / "report_eval.json").read_text())["summary"]
    rows = [figure(f"{step}", t["mean_s"], "s") for step, t in summary["timings_s"].items()]
    rows.append(figure("reported nodules", float(summary["n_reported_nodules"])))
    note = (
        f"`lungvlm evaluate-reports --no-follow-up` on phantom test chests {TEST_SEED}.."
        f"{TEST_SEED + n - 1} written as DICOM, checkpoint `{ckpt}`, full sliding window (no "
        "cascade); mean seconds per chest of each step of the report path and their total "
        "(heads, generation and export grow with the number of reported nodules)."
    )
    return note, rows


BENCHMARKS: tuple[tuple[str, Callable[[bool], tuple[str, list[dict]]]], ...] = (
    ("Encoder + segmentation head vs MONAI", bench_encoder),
    ("Training step per stage and data loading", bench_training),
    ("Input pipeline as training runs (warm cache, workers, mined pool)", bench_input_pipeline),
    ("Report generation", bench_generation),
    ("DICOM series reading", bench_io),
    ("Phantom generation", bench_phantom),
    ("Preprocessed cache", bench_cache),
    ("Whole-chest detection (FROC/CPM)", bench_whole_chest),
    ("End-to-end report per phantom chest", bench_report),
)


# --------------------------------------------------------------------------- environment
def machine_info() -> dict:
    """CPU model, logical cores, RAM (GiB), torch threads and GPU name (or "none")."""
    cpu, ram_gib = platform.processor() or "unknown", float("nan")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = int(line.split()[1]) / 2**20  # kB -> GiB
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
    }


def versions() -> dict:
    """Python and key package versions."""
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# --------------------------------------------------------------------------- output
def render_markdown(results: dict) -> str:
    """Markdown of a results dict (``machine``, ``versions``, ``date``, ``wall_s``, ``sections``)."""
    m = results["machine"]
    lines = [
        "# LungVLM benchmark results",
        "",
        f"Written by `python -m benchmarks.run_all` on {results['date']}"
        f"{' (--quick)' if results.get('quick') else ''}; total wall time "
        f"{format_value(results['wall_s'], 's')}.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} logical cores, torch threads {m['torch_threads']}",
        f"- RAM: {format_value(m['ram_gib'], 'GiB')}",
        f"- GPU: {m['gpu']}",
    ]
    if results.get("remark"):
        lines.append(f"- Note: {results['remark']}")
    lines += ["", "## Versions", ""]
    lines += [f"- {name}: {version}" for name, version in results["versions"].items()]
    for section in results["sections"]:
        lines += ["", f"## {section['title']}", ""]
        if section.get("status", "ok") != "ok":
            lines.append(f"{section['status']}: {section['reason']}")
            continue
        lines += [section["note"], "", "| figure | value |", "|---|---|"]
        lines += [
            f"| {row['name']} | {format_value(row['value'], row['unit'])} |"
            for row in section["figures"]
        ]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run_section(title: str, bench: Callable, quick: bool) -> dict:
    start = time.perf_counter()
    try:
        note, rows = bench(quick)
    except (ModuleNotFoundError, BenchmarkSkipped) as error:
        reason = (
            str(error)
            if isinstance(error, BenchmarkSkipped)
            else f"{error.name} is not importable ({error})"
        )
        print(f"skipped: {title}: {reason}", flush=True)
        return {"title": title, "status": "skipped", "reason": reason}
    except Exception as error:  # one failing benchmark must not lose the others' figures
        traceback.print_exc()
        print(f"failed: {title}: {error!r}", flush=True)
        return {"title": title, "status": "failed", "reason": repr(error)}
    elapsed = time.perf_counter() - start
    print(f"done: {title} in {elapsed:.0f} s", flush=True)
    for row in rows:
        print(f"  {row['name']:<48} {format_value(row['value'], row['unit'])}", flush=True)
    return {"title": title, "status": "ok", "note": note, "figures": rows}


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmarks, print their figures and write the markdown; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--remark", default="", help="a line added under Machine")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    sections = []
    for i, (title, bench) in enumerate(BENCHMARKS, 1):
        print(f"[{i}/{len(BENCHMARKS)}] {title} ({time.perf_counter() - start:.0f} s)", flush=True)
        sections.append(_run_section(title, bench, args.quick))
    results = {
        "machine": machine_info(),
        "versions": versions(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - start,
        "quick": args.quick,
        "remark": args.remark,
        "sections": sections,
    }
    write_atomic(args.out, render_markdown(results))
    print(f"wrote {args.out} ({results['wall_s']:.0f} s)", flush=True)
    if any(s["status"] == "failed" for s in sections):
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
