"""Report generation from visual tokens: greedy and beam search with a KV cache, per-token
entropy, per-token cross-attention (for heatmaps) and per-sentence confidence.

What the cache holds (transformers ``EncoderDecoderCache`` built by GPT-2): the self-attention
keys/values of every generated position, extended by one position per step, and the
cross-attention keys/values of the visual tokens, projected once on the first step and reused
for every later step (beam search reorders both with the beams).

``[PAD]`` and ``[BOS]`` are never generated (their logits are set to -inf). Entropy convention:
the entropy of step l is ``-sum_v p_v log p_v`` (nats) of that softmax when the model chose
token l (before any beam pruning), in ``[0, log(vocab_size - 2)]``. Positions after ``[EOS]`` are padding with entropy 0 and
``token_mask`` False. ``cross_attentions[i][:, :, l]`` is layer i's attention of the query that
produced token l.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import Cache, PreTrainedTokenizerBase

from lungvlm.models.report_decoder import ReportDecoder


@dataclass
class GenerationOutput:
    """Generated reports.

    Attributes:
        token_ids: (B, L) int64 generated tokens ([BOS] excluded, [EOS] included, then [PAD]).
        token_entropies: (B, L) float32 entropy (nats) of the step that chose each token.
        token_mask: (B, L) bool, True up to and including [EOS].
        cross_attentions: per layer (B, heads, L, N): the attention that produced each token.
        sequences: decoded texts (special tokens skipped) when a tokenizer was given, else None.
        scores: (B,) log-probability of each returned sequence (beam search: length-normalised).
    """

    token_ids: Tensor
    token_entropies: Tensor
    token_mask: Tensor
    cross_attentions: tuple[Tensor, ...]
    sequences: list[str] | None
    scores: Tensor


def _entropy(log_probs: Tensor) -> Tensor:
    return torch.special.entr(log_probs.exp()).sum(-1)  # entr(0) = 0 for suppressed tokens


def _check(decoder: ReportDecoder, visual_tokens: Tensor, max_new_tokens: int) -> None:
    if visual_tokens.ndim != 3 or visual_tokens.shape[-1] != decoder.d_model:
        raise ValueError(
            f"visual_tokens must be (B, N, d_model={decoder.d_model}); got {tuple(visual_tokens.shape)}"
        )
    if not 1 <= max_new_tokens < decoder.max_length:
        raise ValueError(
            f"max_new_tokens must be in [1, {decoder.max_length - 1}] (max_length minus [BOS]); "
            f"got {max_new_tokens}"
        )


def _step(
    decoder: ReportDecoder,
    sequence: Tensor,
    visual_tokens: Tensor,
    visual_mask: Tensor | None,
    cache: Cache | None,
    use_cache: bool,
) -> tuple[Tensor, list[Tensor], Cache | None]:
    """Last-position log-probs (B, V), cross-attentions per layer (B, heads, N) and the cache."""
    fed = sequence[:, -1:] if (use_cache and cache is not None) else sequence
    # Every position is real (tokens after [EOS] are ignored by the caller), so attend to all.
    attention_mask = torch.ones_like(sequence)
    out = decoder.decode_step(
        fed, visual_tokens, visual_mask, cache, use_cache=use_cache, attention_mask=attention_mask
    )
    logits = out.logits[:, -1].float()
    # [PAD] and [BOS] are never valid outputs: suppress them before the softmax.
    logits[:, [decoder.pad_token_id, decoder.bos_token_id]] = -math.inf
    log_probs = logits.log_softmax(-1)
    return log_probs, [a[:, :, -1] for a in out.cross_attentions], out.past_key_values


def _finish(decoder, ids, entropies, attentions, scores, tokenizer) -> GenerationOutput:
    eos = ids == decoder.eos_token_id
    after_eos = (eos.cumsum(1) - eos.long()) > 0
    mask = ~after_eos
    ids = ids.masked_fill(after_eos, decoder.pad_token_id)
    entropies = entropies.masked_fill(after_eos, 0.0)
    cross = tuple(a * mask[:, None, :, None] for a in attentions)
    sequences = None
    if tokenizer is not None:
        sequences = tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
    return GenerationOutput(ids, entropies, mask, cross, sequences, scores)


@torch.no_grad()
def greedy_generate(
    decoder: ReportDecoder,
    visual_tokens: Tensor,
    max_new_tokens: int,
    visual_mask: Tensor | None = None,
    use_cache: bool = True,
    tokenizer: PreTrainedTokenizerBase | None = None,
    prefix_ids: Tensor | None = None,
) -> GenerationOutput:
    """Greedy decoding from ``[BOS]`` until every sequence has emitted ``[EOS]`` or the limit.

    Args:
        decoder: the report decoder (put it in eval mode for deterministic output).
        visual_tokens: (B, N, d_model).
        max_new_tokens: most tokens generated after ``[BOS]`` (after the prefix, if given).
        visual_mask: optional (B, N).
        use_cache: reuse keys/values (see module docstring); False re-runs the whole prefix each
            step (reference path for tests).
        tokenizer: optional tokenizer to decode ``sequences``.
        prefix_ids: optional (B, P) prompt starting with ``[BOS]`` (e.g. ``Q: ... A:``); the
            output holds only the tokens generated after it. Prompt + output must fit in
            ``decoder.max_length``.
    """
    _check(decoder, visual_tokens, max_new_tokens)
    b = visual_tokens.shape[0]
    if prefix_ids is None:
        sequence = torch.full(
            (b, 1), decoder.bos_token_id, dtype=torch.long, device=visual_tokens.device
        )
    else:
        if prefix_ids.ndim != 2 or prefix_ids.shape[0] != b:
            raise ValueError(f"prefix_ids must be (B={b}, P); got {tuple(prefix_ids.shape)}")
        if not bool((prefix_ids[:, 0] == decoder.bos_token_id).all()):
            raise ValueError("prefix_ids must start with [BOS]")
        if prefix_ids.shape[1] + max_new_tokens > decoder.max_length:
            raise ValueError(
                f"prompt ({prefix_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) "
                f"exceed the decoder's max_length {decoder.max_length}"
            )
        sequence = prefix_ids.to(visual_tokens.device).long()
    start = sequence.shape[1]
    done = torch.zeros(b, dtype=torch.bool, device=visual_tokens.device)
    score = torch.zeros(b, device=visual_tokens.device)
    entropies, steps_attention, cache = [], [], None
    for _ in range(max_new_tokens):
        log_probs, attention, cache = _step(
            decoder, sequence, visual_tokens, visual_mask, cache, use_cache
        )
        token = log_probs.argmax(-1)
        token = torch.where(done, torch.full_like(token, decoder.pad_token_id), token)
        score = score + torch.where(done, 0.0, log_probs.gather(1, token[:, None]).squeeze(1))
        entropies.append(_entropy(log_probs))
        steps_attention.append(attention)
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        done = done | (token == decoder.eos_token_id)
        if bool(done.all()):
            break
    per_layer = tuple(torch.stack(a, dim=2) for a in zip(*steps_attention, strict=True))
    return _finish(
        decoder, sequence[:, start:], torch.stack(entropies, 1), per_layer, score, tokenizer
    )


@torch.no_grad()
def beam_search_generate(
    decoder: ReportDecoder,
    visual_tokens: Tensor,
    max_new_tokens: int,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    visual_mask: Tensor | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> GenerationOutput:
    """Beam search with a KV cache; returns the best beam per crop.

    Finished beams (those that emitted ``[EOS]``) stay in the beam with a frozen score, extended
    by ``[PAD]`` at log-probability 0. The returned beam maximises
    ``sum log p / length ** length_penalty`` (length counts tokens up to and including [EOS]).
    With ``num_beams=1`` this is greedy decoding.
    """
    _check(decoder, visual_tokens, max_new_tokens)
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1; got {num_beams}")
    b, k, device = visual_tokens.shape[0], num_beams, visual_tokens.device
    visual = visual_tokens.repeat_interleave(k, dim=0)  # (B*K, N, d)
    mask = None if visual_mask is None else visual_mask.repeat_interleave(k, dim=0)
    sequence = torch.full((b * k, 1), decoder.bos_token_id, dtype=torch.long, device=device)
    # Only beam 0 is live at the start so the K beams do not all repeat the same first token.
    beam_score = torch.full((b, k), -math.inf, device=device)
    beam_score[:, 0] = 0.0
    beam_score = beam_score.flatten()
    done = torch.zeros(b * k, dtype=torch.bool, device=device)
    entropies = torch.zeros(b * k, 0, device=device)
    attentions: list[Tensor] | None = None
    cache = None
    for _ in range(max_new_tokens):
        log_probs, attention, cache = _step(decoder, sequence, visual, mask, cache, True)
        entropy = _entropy(log_probs)
        frozen = torch.full_like(log_probs, -math.inf)
        frozen[:, decoder.pad_token_id] = 0.0
        log_probs = torch.where(done[:, None], frozen, log_probs)
        vocab = log_probs.shape[-1]
        candidates = (beam_score[:, None] + log_probs).view(b, k * vocab)
        top_score, top_index = candidates.topk(k, dim=1)  # (B, K)
        source = (top_index // vocab + torch.arange(b, device=device)[:, None] * k).flatten()
        token = (top_index % vocab).flatten()
        beam_score = top_score.flatten()
        cache.reorder_cache(source)
        sequence = torch.cat([sequence[source], token[:, None]], dim=1)
        step_entropy = torch.where(done[source], 0.0, entropy[source])
        entropies = torch.cat([entropies[source], step_entropy[:, None]], dim=1)
        step_attention = [a[source] for a in attention]
        attentions = (
            [a[:, :, None] for a in step_attention]
            if attentions is None
            else [
                torch.cat([h[source], a[:, :, None]], dim=2)
                for h, a in zip(attentions, step_attention, strict=True)
            ]
        )
        done = done[source] | (token == decoder.eos_token_id)
        if bool(done.all()):
            break
    generated = sequence[:, 1:]
    eos = generated == decoder.eos_token_id
    length = torch.where(
        eos.any(1),
        eos.long().argmax(1) + 1,
        torch.full_like(eos[:, 0], generated.shape[1], dtype=torch.long),
    )
    normalised = (beam_score / length.float() ** length_penalty).view(b, k)
    best = normalised.argmax(1) + torch.arange(b, device=device) * k
    return _finish(
        decoder,
        generated[best],
        entropies[best],
        tuple(a[best] for a in attentions),
        normalised.flatten()[best],
        tokenizer,
    )


def generated_token_offsets(
    tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int] | Tensor
) -> tuple[str, list[tuple[int, int]]]:
    """Decode generated ids and give each token its (start, end) character span in the text.

    Offsets come from decoding growing prefixes (special tokens skipped, so they get empty spans);
    this is exact for byte-level BPE whenever no multi-byte character is split across tokens.

    Returns:
        The decoded text and one (start, end) per token id.
    """
    ids = [int(i) for i in token_ids]
    offsets, previous = [], 0
    for i in range(len(ids)):
        length = len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True))
        offsets.append((previous, max(previous, length)))
        previous = max(previous, length)
    return tokenizer.decode(ids, skip_special_tokens=True), offsets


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentence_bounds(text: str) -> list[tuple[int, int]]:
    """Character (start, end) of each non-empty sentence of ``text``.

    Sentences end after ".", "!" or "?" followed by white space, and at line breaks.
    """
    bounds, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        bounds.append((start, match.start()))
        start = match.end()
    bounds.append((start, len(text)))
    return [(s, e) for s, e in bounds if text[s:e].strip()]


def sentence_token_groups(
    text: str, offsets: Sequence[tuple[int, int]]
) -> list[tuple[str, list[int]]]:
    """Sentences of ``text`` (:func:`sentence_bounds`) and the indices of their tokens: a token
    belongs to the sentence holding its first non-space character; tokens with empty offsets
    (special tokens) and pure white-space tokens belong to none."""
    bounds = sentence_bounds(text)
    groups: list[list[int]] = [[] for _ in bounds]
    for t, (tok_start, tok_end) in enumerate(offsets):
        piece = text[tok_start:tok_end]
        first = tok_start + len(piece) - len(piece.lstrip())
        if tok_end <= tok_start or first >= tok_end:
            continue
        for i, (s, e) in enumerate(bounds):
            if s <= first < e:
                groups[i].append(t)
                break
    return [(text[s:e].strip(), g) for (s, e), g in zip(bounds, groups, strict=True)]


def sentence_confidence(
    text: str, token_offsets: Sequence[tuple[int, int]], token_entropies: Sequence[float] | Tensor
) -> list[tuple[str, float]]:
    """Confidence of each sentence of a generated report from its tokens' entropies.

    Sentences are split after ".", "!" or "?" followed by white space, and at line breaks.
    A token belongs to the sentence that contains its first non-space character; special tokens
    (empty offsets) are skipped. Confidence (convention chosen here) is
    ``exp(-mean entropy in nats)`` of the sentence's tokens: 1 when every token was certain,
    ``1 / vocab_size`` for uniform choices.

    Args:
        text: the decoded report.
        token_offsets: (start, end) character offsets of each generated token in ``text``.
        token_entropies: entropy (nats) of each generated token, same length as the offsets.

    Returns:
        ``[(sentence, confidence), ...]`` in text order; sentences without tokens get 1.0.
    """
    entropies = [float(e) for e in token_entropies]
    if len(entropies) != len(token_offsets):
        raise ValueError(
            f"token_offsets ({len(token_offsets)}) and token_entropies ({len(entropies)}) "
            "must have one entry per token"
        )
    return [
        (sentence, math.exp(-sum(entropies[t] for t in tokens) / len(tokens)) if tokens else 1.0)
        for sentence, tokens in sentence_token_groups(text, token_offsets)
    ]


__all__ = [
    "GenerationOutput",
    "beam_search_generate",
    "generated_token_offsets",
    "greedy_generate",
    "sentence_bounds",
    "sentence_confidence",
    "sentence_token_groups",
]
