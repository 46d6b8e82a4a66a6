"""Time the preprocessed cache: one training crop from ``image.npy`` vs decoding the DICOM series,
and preprocessing throughput (cases/min) with several worker processes.

Run: ``PYTHONPATH=. python -m benchmarks.bench_cache [--cases 4] [--workers 2] [--spacing 1.5]``.
Phantom chests are written as an LIDC-IDRI tree (DICOM + XML) in a temporary folder and
preprocessed; the crop is read with ``np.load(mmap_mode="r")`` and :func:`crop_around` (what
the cached Dataset does per sample), the series with :func:`read_dicom_series` (what a
training step would pay without a cache). Times are best-of-``repeats`` wall-clock seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from data_modules.cache import CacheSpec, list_cached_cases, load_case_json
from data_modules.io import read_dicom_series, read_first_header
from data_modules.phantom.generator import PhantomConfig, generate_case
from data_modules.phantom.writers import write_lidc_tree
from data_modules.preprocess import preprocess
from data_modules.sampling import crop_around


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(
    cases: int = 4,
    workers: int = 2,
    spacing_mm: float = 1.5,
    shape_zyx: tuple[int, int, int] = (96, 192, 192),
    crop_vox: int = 32,
    repeats: int = 5,
) -> dict[str, float]:
    """Run both measurements; returns times (s), the speed-up ratio and cases/min."""
    config = PhantomConfig(shape_zyx=shape_zyx, with_report=False)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "lidc"
        folders = [write_lidc_tree(generate_case(seed, config), src) for seed in range(cases)]
        start = time.perf_counter()
        result = preprocess(
            "lidc", src, Path(tmp) / "cache", CacheSpec(spacing_mm=spacing_mm), workers=workers,
            progress=False,
        )  # fmt: skip
        preprocess_s = time.perf_counter() - start
        if result.failed:
            raise RuntimeError(f"preprocessing failed: {result.failed}")
        case_dir = list_cached_cases(Path(tmp) / "cache")[0]
        info = load_case_json(case_dir)
        centre = (
            info["nodules"][0]["centroid_voxel_zyx"]
            if info["nodules"]
            else [s / 2 for s in info["shape_zyx"]]
        )

        def load_crop() -> np.ndarray:
            image = np.load(case_dir / "image.npy", mmap_mode="r")
            return crop_around(image, centre, crop_vox).astype(np.float32)

        series = next(
            f for f in folders if str(read_first_header(f).SeriesInstanceUID) == info["series_uid"]
        )
        crop_s = _best(load_crop, repeats)
        dicom_s = _best(lambda: read_dicom_series(series), max(1, repeats // 2))
    return {
        "crop_from_cache_s": crop_s,
        "dicom_series_decode_s": dicom_s,
        "speedup": dicom_s / crop_s,
        "preprocess_s": preprocess_s,
        "cases": float(cases),
        "workers": float(workers),
        "cases_per_min": 60.0 * cases / preprocess_s,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse arguments, run the benchmark, print and return its numbers."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=4, help="phantom cases to preprocess")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing processes")
    parser.add_argument("--spacing", type=float, default=1.5, help="cache spacing (mm)")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=(96, 192, 192), metavar=("Z", "Y", "X")
    )
    parser.add_argument("--crop", type=int, default=32, help="crop edge (voxels)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    out = run(args.cases, args.workers, args.spacing, tuple(args.shape), args.crop, args.repeats)
    print(
        f"one {args.crop}^3 crop from the cache: {out['crop_from_cache_s'] * 1e3:.2f} ms; "
        f"decoding the DICOM series: {out['dicom_series_decode_s'] * 1e3:.1f} ms "
        f"(x{out['speedup']:.0f})"
    )
    print(
        f"preprocess {args.cases} cases ({args.shape[0]}x{args.shape[1]}x{args.shape[2]}, "
        f"{args.spacing} mm) with {args.workers} workers: {out['preprocess_s']:.1f} s = "
        f"{out['cases_per_min']:.1f} cases/min"
    )
    return out


if __name__ == "__main__":
    main()
