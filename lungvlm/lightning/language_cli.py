"""``lungvlm pretrain-language``: pretrain the report decoder on text and write a language checkpoint.

Reads the decoder sizes (``model.vl_heads.init_args``) and the language settings (``model.vl``)
from the same layered YAML files as stage 3 (later files override earlier ones), trains the
tokenizer exactly as stage 3 does (:func:`~lungvlm.lightning.vl_task.fit_report_tokenizer`),
runs :func:`~lungvlm.lightning.language.pretrain_language` (causal LM + report coherence) and
writes the checkpoint that stage 3 loads through ``model.vl.language_init``::

    lungvlm pretrain-language --config experiments/base.yaml --config experiments/stage3.yaml \\
        --out runs/language/language.pt

Register it with ``register(subparsers)`` from ``lungvlm/cli.py``.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import yaml

from lungvlm.lightning.language import pretrain_language
from lungvlm.lightning.language_checkpoint import save_language_checkpoint
from lungvlm.lightning.vl_task import (
    VisionLanguageConfig,
    fit_report_tokenizer,
    language_pretrain_corpus,
)
from lungvlm.models.report_decoder import ReportDecoder
from lungvlm.models.vlm import VisionLanguageHeads
from lungvlm.text.tokenizer import SPECIAL_TOKENS

#: Arguments of ``VisionLanguageHeads`` that size the decoder.
DECODER_ARGS: tuple[str, ...] = (
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "max_length",
    "dropout",
)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``pretrain-language`` subcommand to a ``lungvlm`` sub-parser set."""
    parser = subparsers.add_parser(
        "pretrain-language",
        help="pretrain the report decoder on text (causal LM + report coherence)",
        description=(
            "Train the stage-3 tokenizer and a fresh report decoder of the config's sizes as a "
            "causal LM plus a sentence-order (report coherence) classifier on rendered findings "
            "texts, and write a language checkpoint for model.vl.language_init."
        ),
    )
    parser.add_argument(
        "--config", action="append", required=True, type=Path,
        help="YAML config; repeat to layer them (later files override earlier ones)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="language checkpoint to write")
    parser.add_argument(
        "--steps", type=int, help="optimizer steps (default: language_pretrain_steps)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="texts per step and objective")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    parser.add_argument("--coherence-weight", type=float, default=1.0, help="0 turns it off")
    parser.add_argument("--seed", type=int, help="default: the config's seed_everything, else 0")
    parser.add_argument("--log-every", type=int, default=50, help="progress line every N steps")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument(
        "--threads", type=int, help="CPU threads of torch (default: torch's; 1 on a busy CPU)"
    )
    parser.set_defaults(func=run)
    return parser


def merge_yaml_files(paths: list[Path]) -> dict[str, Any]:
    """Deep-merge YAML mappings; a later file's value wins, nested mappings are merged.

    Raises:
        FileNotFoundError: if a file does not exist.
        ValueError: if a file is not valid YAML or its top level is not a mapping.
    """

    def merge(base: dict, update: dict) -> dict:
        out = dict(base)
        for key, value in update.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if both else value
        return out

    merged: dict[str, Any] = {}
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping; got {type(data).__name__}")
        merged = merge(merged, data)
    return merged


def language_settings(config: dict, source: str) -> tuple[dict[str, Any], VisionLanguageConfig]:
    """Decoder sizes (``VisionLanguageHeads`` defaults filled in) and ``model.vl`` of a config.

    Args:
        config: merged YAML config.
        source: the config files, for error messages.

    Raises:
        ValueError: if there is no ``model.vl_heads`` or ``model.vl`` has an unknown key.
    """
    model = config.get("model") or {}
    heads = model.get("vl_heads")
    if not isinstance(heads, dict):
        raise ValueError(
            f"{source} has no model.vl_heads (the decoder sizes); layer the stage-3 config, e.g. "
            "--config experiments/base.yaml --config experiments/stage3.yaml"
        )
    init_args = heads.get("init_args") or {}
    defaults = inspect.signature(VisionLanguageHeads).parameters
    sizes = {name: init_args.get(name, defaults[name].default) for name in DECODER_ARGS}
    vl = dict(model.get("vl") or {})
    known = [f.name for f in fields(VisionLanguageConfig)]
    for key in vl:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{source}: model.vl.{key} is not a VisionLanguageConfig field{hint}")
    return sizes, VisionLanguageConfig(**vl)


def build_decoder(sizes: dict[str, Any]) -> ReportDecoder:
    """A fresh report decoder with stage 3's sizes and special token ids."""
    return ReportDecoder(
        **sizes,
        pad_token_id=SPECIAL_TOKENS.index("[PAD]"),
        bos_token_id=SPECIAL_TOKENS.index("[BOS]"),
        eos_token_id=SPECIAL_TOKENS.index("[EOS]"),
    )


def run(args: argparse.Namespace) -> int:
    """Execute ``lungvlm pretrain-language``; returns the exit code."""
    start = time.perf_counter()
    source = " + ".join(str(p) for p in args.config)
    config = merge_yaml_files(args.config)
    sizes, vl = language_settings(config, source)
    steps = vl.language_pretrain_steps if args.steps is None else args.steps
    if steps <= 0:
        raise ValueError(
            f"steps must be > 0; got {steps} (model.vl.language_pretrain_steps of {source}): "
            "pass --steps N"
        )
    seed = args.seed
    if seed is None:
        seed_everything = config.get("seed_everything")
        seed = seed_everything if isinstance(seed_everything, int) else 0
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    tokenizer = fit_report_tokenizer(vl, sizes["vocab_size"])
    torch.manual_seed(seed)
    decoder = build_decoder(sizes).to(device)
    result = pretrain_language(
        decoder,
        tokenizer,
        language_pretrain_corpus(vl),
        steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        coherence_weight=args.coherence_weight,
        log_every=args.log_every,
    )
    wall_s = time.perf_counter() - start
    save_language_checkpoint(
        args.out,
        decoder,
        tokenizer,
        lm_losses=result.lm_losses,
        coherence_losses=result.coherence_losses,
        final_lm_loss=result.final_lm_loss,
        heldout_lm_loss=result.heldout_lm_loss,
        coherence_accuracy=result.coherence_accuracy,
        train_seconds=result.seconds,
        wall_seconds=wall_s,
        settings={
            "configs": [str(p) for p in args.config],
            "steps": steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "coherence_weight": args.coherence_weight,
            "seed": seed,
            "texts": vl.language_pretrain_texts,
            "train_texts": result.n_train_texts,
            "heldout_texts": result.n_heldout_texts,
            "device": str(device),
        },
    )

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    print(
        f"wrote {args.out}: {steps} steps, final LM loss {fmt(result.final_lm_loss)} nats/token "
        f"(held-out {fmt(result.heldout_lm_loss)}), held-out coherence accuracy "
        f"{fmt(result.coherence_accuracy)}, {wall_s:.1f} s"
    )
    return 0
