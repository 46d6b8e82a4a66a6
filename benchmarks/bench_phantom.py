"""Phantom generation speed: one nodule-centred crop and one whole chest (median of runs).

Run ``python -m benchmarks.bench_phantom``. Template geometries and vessel trees are cached per
process, so the crop benchmark warms them first (as a DataLoader worker would after its first
samples).
"""

from __future__ import annotations

import json
import statistics
import time

from data_modules.phantom.generator import PhantomConfig, generate_case
from data_modules.phantom.patch import make_nodule_sample, template_geometry
from data_modules.phantom.render import airway_tree, vessel_tree


def _median_seconds(fn, seeds) -> float:
    times = []
    for seed in seeds:
        start = time.perf_counter()
        fn(seed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(n_crops: int = 20, n_chests: int = 3) -> dict[str, float]:
    """Time crops (32³ and 48³, with and without a context crop) and whole chests.

    Returns:
        Median wall times in milliseconds (crops) and seconds (whole chest).
    """
    out: dict[str, float] = {}
    for size in (32, 48):
        for scale in (0.0, 2.0):
            config = PhantomConfig(patch_shape_vox=(size,) * 3, context_scale=scale)
            for t in range(config.n_templates):  # warm the template cache
                geom = template_geometry(t, config.z_extent_mm)
                vessel_tree(geom)
                airway_tree(geom)
            seconds = _median_seconds(lambda s, c=config: make_nodule_sample(s, c), range(n_crops))
            out[f"crop{size}_context{scale:g}_ms"] = 1000.0 * seconds
    config = PhantomConfig()
    out["whole_chest_s"] = _median_seconds(lambda s: generate_case(s, config), range(n_chests))
    out["whole_chest_shape"] = "x".join(str(v) for v in config.shape_zyx)
    return out


def main() -> None:
    """Print the benchmark as JSON."""
    print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()
