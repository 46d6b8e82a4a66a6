"""Greedy report generation speed with and without the KV cache, and what the visual cache saves.

The decoder is the stage-3 ``VisionLanguageHeads`` at its ``experiments/stage3.yaml`` sizes with
random weights, in eval mode; its visual tokens come from the base.yaml encoder run on a random
crop (so N, the number of visual tokens, is the real one for that crop size).

Random weights may emit ``[EOS]`` at any step. To always generate ``max_new_tokens`` tokens (a
benchmark convention chosen here), the decoder's ``eos_token_id`` is set to -1, an id that can
never be generated, while timing, and restored afterwards. Tokens/s counts the tokens actually
generated (``token_mask.sum()``) over the wall time of one ``greedy_generate`` call; each figure
is the median of ``runs`` calls after one warm-up call.

What caching the visual keys/values saves: their size in the cache (measured on the
transformers ``EncoderDecoderCache`` built by the first step), and the time of projecting the
visual tokens to keys/values in every cross-attention layer, which an uncached step repeats
(measured alone, median of ``runs``) times the number of steps after the first.

Usage: ``python -m benchmarks.bench_generation --batch-size 4 --runs 3``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from benchmarks.bench_training import class_factory, stage_config
from lungvlm.models.generation import greedy_generate
from lungvlm.models.report_decoder import ReportDecoder
from lungvlm.models.vision_language import VisionLanguageHeads


def build_decoder(crop: int, batch_size: int, seed: int = 0) -> tuple[ReportDecoder, Tensor]:
    """The stage-3 decoder (eval mode) and (B, N, d_model) visual tokens of a random crop."""
    model = stage_config("vision_language")["model"]
    torch.manual_seed(seed)
    encoder = class_factory(model["encoder"])().eval()
    heads: VisionLanguageHeads = class_factory(model["vl_heads"])(encoder.feature_info).eval()
    image = torch.rand(batch_size, 1, crop, crop, crop)
    with torch.no_grad():
        tokens, _ = heads.visual_tokens(encoder(image, image))
    return heads.decoder, tokens


@contextmanager
def never_stop(decoder: ReportDecoder) -> Iterator[None]:
    """Make ``[EOS]`` ungeneratable (id -1) so generation runs to ``max_new_tokens``."""
    eos = decoder.eos_token_id
    decoder.eos_token_id = -1
    try:
        yield
    finally:
        decoder.eos_token_id = eos


def _median_s(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cache_bytes(decoder: ReportDecoder, visual_tokens: Tensor) -> dict[str, int]:
    """Bytes of the cross-attention (visual) and self-attention parts after the first step."""
    bos = torch.full((visual_tokens.shape[0], 1), decoder.bos_token_id, dtype=torch.long)
    with torch.no_grad():
        cache = decoder.decode_step(bos, visual_tokens, use_cache=True).past_key_values

    def nbytes(part) -> int:
        return sum(
            t.numel() * t.element_size()
            for layer in part.layers
            for t in (layer.keys, layer.values)
            if t is not None
        )

    return {
        "visual": nbytes(cache.cross_attention_cache),
        "self_per_position": nbytes(cache.self_attention_cache),
    }


def visual_projection_s(decoder: ReportDecoder, visual_tokens: Tensor, runs: int) -> float:
    """Median seconds to project the visual tokens to keys/values in every layer (one step)."""
    layers = [block.crossattention for block in decoder.gpt2.transformer.h]

    @torch.no_grad()
    def project() -> None:
        for attention in layers:
            attention.c_attn(visual_tokens)

    return _median_s(project, runs)


def run(
    batch_size: int = 4,
    crop: int = 32,
    max_new_tokens: int | None = None,
    runs: int = 3,
    seed: int = 0,
) -> dict:
    """Generation tokens/s with and without the KV cache, and the visual-cache savings.

    Args:
        batch_size: reports generated together.
        crop: cubic crop side of the encoder input, voxels (sets the number of visual tokens).
        max_new_tokens: tokens per report (None: stage3.yaml ``generation_max_new_tokens``).
        runs: timed calls per figure (median reported).
        seed: weight and input seed.

    Returns:
        Figures keyed by name: ``cached_tokens_per_s``, ``uncached_tokens_per_s``,
        ``cache_speedup`` (ratio), ``visual_kv_cache_kib``, ``self_kv_cache_kib`` (at the end of
        generation), ``visual_projection_ms_per_step``, ``visual_kv_time_saved_ms`` (per
        generation) and ``visual_kv_time_saved_fraction`` (of the uncached generation time).
    """
    if batch_size < 1 or crop < 16 or runs < 1:
        raise ValueError(
            f"batch_size and runs must be >= 1 and crop >= 16 voxels; got batch_size="
            f"{batch_size}, crop={crop}, runs={runs}"
        )
    if max_new_tokens is None:
        max_new_tokens = int(
            stage_config("vision_language")["model"]["vl"]["generation_max_new_tokens"]
        )
    decoder, visual = build_decoder(crop, batch_size, seed)
    generated: dict[bool, int] = {}
    seconds: dict[bool, float] = {}
    with never_stop(decoder):
        for use_cache in (True, False):

            def generate(use_cache: bool = use_cache) -> None:
                out = greedy_generate(decoder, visual, max_new_tokens, use_cache=use_cache)
                generated[use_cache] = int(out.token_mask.sum())

            seconds[use_cache] = _median_s(generate, runs)
    sizes = cache_bytes(decoder, visual)
    projection_s = visual_projection_s(decoder, visual, runs)
    saved_s = projection_s * (max_new_tokens - 1)
    return {
        "batch_size": batch_size,
        "visual_tokens": int(visual.shape[1]),
        "d_model": int(visual.shape[2]),
        "new_tokens_per_report": generated[True] // batch_size,
        "cached_s": seconds[True],
        "uncached_s": seconds[False],
        "cached_tokens_per_s": generated[True] / seconds[True],
        "uncached_tokens_per_s": generated[False] / seconds[False],
        "cache_speedup": seconds[False] / seconds[True],
        "visual_kv_cache_kib": sizes["visual"] / 1024,
        "self_kv_cache_kib": sizes["self_per_position"] * max_new_tokens / 1024,
        "visual_projection_ms_per_step": 1000.0 * projection_s,
        "visual_kv_time_saved_ms": 1000.0 * saved_s,
        "visual_kv_time_saved_fraction": saved_s / seconds[False],
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; prints the result as JSON and returns it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=32, help="encoder crop side (voxels)")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--runs", type=int, default=3, help="timed calls per figure")
    args = parser.parse_args(argv)
    result = run(args.batch_size, args.crop, args.max_new_tokens, args.runs)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
