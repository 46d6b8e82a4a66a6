"""The language checkpoint: a pretrained report decoder and its tokenizer, read by stage 3.

``lungvlm pretrain-language`` (``make train-language``) writes it; stage 3 loads it through
``model.vl.language_init`` instead of fitting a tokenizer and pretraining inline. It is a plain
``torch.save`` dict (tensors, strings, numbers), read with ``weights_only=True``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from lungvlm.models.report_decoder import ReportDecoder
from lungvlm.text.tokenizer import tokenizer_from_json, tokenizer_to_json

#: Value of the ``format`` key that marks a language checkpoint.
LANGUAGE_FORMAT = "lungvlm-language"
#: Version of the layout below; bump on incompatible changes.
LANGUAGE_FORMAT_VERSION = 1
#: Decoder sizes that must match between the file and the stage-3 config.
SIZE_KEYS: tuple[str, ...] = ("vocab_size", "d_model", "n_layers", "n_heads", "max_length")


def decoder_config(decoder: ReportDecoder) -> dict[str, Any]:
    """The constructor arguments of ``decoder`` (sizes, dropout and special token ids)."""
    config = decoder.gpt2.config
    return {
        "vocab_size": decoder.vocab_size,
        "d_model": decoder.d_model,
        "n_layers": config.n_layer,
        "n_heads": config.n_head,
        "max_length": decoder.max_length,
        "dropout": config.resid_pdrop,
        "pad_token_id": decoder.pad_token_id,
        "bos_token_id": decoder.bos_token_id,
        "eos_token_id": decoder.eos_token_id,
    }


def save_language_checkpoint(
    path: str | Path,
    decoder: ReportDecoder,
    tokenizer: PreTrainedTokenizerFast,
    **extra: Any,
) -> Path:
    """Write a language checkpoint atomically (temporary file + ``os.replace``).

    Args:
        path: destination file (its folder is created).
        decoder: the pretrained decoder; its full state_dict is stored (on the CPU).
        tokenizer: the tokenizer it was trained with.
        **extra: further plain entries (losses, accuracy, wall seconds, settings).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": LANGUAGE_FORMAT,
        "format_version": LANGUAGE_FORMAT_VERSION,
        "tokenizer_json": tokenizer_to_json(tokenizer),
        "decoder_config": decoder_config(decoder),
        "decoder_state_dict": {k: v.detach().cpu() for k, v in decoder.state_dict().items()},
        **extra,
    }
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        tmp = f.name
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_language_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a file written by :func:`save_language_checkpoint`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is not a language checkpoint (or a newer format version).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"language checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors have no common base class
        raise ValueError(f"{path} is not a language checkpoint (cannot be read: {err})") from err
    if not isinstance(data, dict) or data.get("format") != LANGUAGE_FORMAT:
        raise ValueError(
            f"{path} is not a language checkpoint (no format={LANGUAGE_FORMAT!r}); write one "
            "with `lungvlm pretrain-language` (make train-language)"
        )
    version = data.get("format_version")
    if version != LANGUAGE_FORMAT_VERSION:
        raise ValueError(
            f"{path} has language checkpoint format_version {version}; this LungVLM reads "
            f"version {LANGUAGE_FORMAT_VERSION}"
        )
    return data


def load_language_checkpoint(
    path: str | Path, decoder: ReportDecoder
) -> tuple[PreTrainedTokenizerFast, dict[str, Any]]:
    """Load a language checkpoint's weights into ``decoder`` (strictly) and its tokenizer.

    Args:
        path: the language checkpoint.
        decoder: the decoder to fill; its sizes must equal the file's.

    Returns:
        (tokenizer, the file's contents).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is not a language checkpoint, or its decoder sizes differ from
            ``decoder``'s (each differing size is named).
    """
    data = read_language_checkpoint(path)
    theirs, ours = data["decoder_config"], decoder_config(decoder)
    differences = [
        f"{key}={theirs.get(key)} in the file, {ours[key]} in the config"
        for key in SIZE_KEYS
        if theirs.get(key) != ours[key]
    ]
    if differences:
        raise ValueError(
            f"language checkpoint {path} does not fit the stage-3 decoder: "
            + "; ".join(differences)
            + " (rerun `make train-language` with this config)"
        )
    tokenizer = tokenizer_from_json(data["tokenizer_json"])
    if len(tokenizer) > decoder.vocab_size:
        raise ValueError(
            f"language checkpoint {path}: its tokenizer has {len(tokenizer)} tokens, more than "
            f"the decoder's vocab_size={decoder.vocab_size}"
        )
    try:
        decoder.load_state_dict(data["decoder_state_dict"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"language checkpoint {path}: decoder weights do not load: {err}") from err
    return tokenizer, data
