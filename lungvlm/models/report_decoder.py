"""Grounded report decoder: a small GPT-2 that cross-attends to visual tokens.

The decoder is ``transformers.GPT2LMHeadModel`` with ``add_cross_attention=True``, randomly
initialised from a config (nothing is downloaded). Attention runs in the "eager" implementation so
the per-layer cross-attention weights (B, heads, T, N) are returned for grounding.

Attention convention: the cross-attention at query position ``t`` is the one that *produced*
token ``t + 1`` (its logits predict ``t + 1``). Grounding losses and generation follow this
(see ``lungvlm.losses.grounding`` and ``lungvlm.models.generation``).

"Dual attention": besides vision being attended by language (cross-attention), the pooled
language context re-weights the visual tokens and channels (:class:`LanguageGuidedVisualAttention`),
giving a text-conditioned visual embedding. It is conditioned on the report, so it must not be
used as the visual side of the contrastive loss (that would leak the pairing); use a pooled
visual representation there and this embedding for explanation/risk features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Cache, GPT2Config, GPT2LMHeadModel

IGNORE_INDEX = -100


@dataclass
class DecoderOutput:
    """Output of :meth:`ReportDecoder.forward`.

    Attributes:
        logits: (B, T, V) next-token logits; position t predicts token t + 1.
        loss: teacher-forced cross-entropy (nats per token), padding ignored; None if there is
            no target token at all.
        cross_attentions: per layer (B, heads, T, N), or None when not requested.
        hidden_states: (B, T, d) last hidden states (after the final layer norm).
        language_context: (B, d) mean of ``hidden_states`` over real tokens.
        visual_weights: (B, N) language-guided weights over visual tokens (sum to one).
        attended_visual: (B, d) language-guided, channel-gated visual embedding.
    """

    logits: Tensor
    loss: Tensor | None
    cross_attentions: tuple[Tensor, ...] | None
    hidden_states: Tensor
    language_context: Tensor
    visual_weights: Tensor
    attended_visual: Tensor


@dataclass
class DecoderStep:
    """Output of :meth:`ReportDecoder.decode_step` (one incremental decoding call).

    Attributes:
        logits: (B, t, V) logits of the fed positions.
        cross_attentions: per layer (B, heads, t, N).
        past_key_values: the updated cache (self-attention keys/values of all positions so far
            and the cross-attention keys/values of the visual tokens, computed once).
    """

    logits: Tensor
    cross_attentions: tuple[Tensor, ...]
    past_key_values: Cache | None


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` (B, T, d) over positions where ``mask`` (B, T) is non-zero -> (B, d)."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class LanguageGuidedVisualAttention(nn.Module):
    """Language re-weights vision: additive attention of a text context over visual tokens.

    ``score_n = w^T tanh(W_v v_n + W_l l)`` is soft-maxed over the N visual tokens (masked ones
    excluded) and a channel gate ``sigmoid(W_g l)`` scales the pooled result:
    ``attended = gate * sum_n a_n v_n``.

    Args:
        d_model: width of visual tokens and language context.
        hidden: width of the scoring MLP (default ``d_model``).
    """

    def __init__(self, d_model: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or d_model
        self.visual_proj = nn.Linear(d_model, hidden)
        self.language_proj = nn.Linear(d_model, hidden, bias=False)
        self.score = nn.Linear(hidden, 1, bias=False)
        self.channel_gate = nn.Linear(d_model, d_model)

    def forward(
        self, visual_tokens: Tensor, language_context: Tensor, visual_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Re-weight visual tokens by a language context.

        Args:
            visual_tokens: (B, N, d).
            language_context: (B, d).
            visual_mask: optional (B, N), non-zero for valid tokens.

        Returns:
            attended: (B, d) gated, weighted sum of visual tokens.
            weights: (B, N) token weights summing to one over valid tokens.
        """
        hidden = torch.tanh(
            self.visual_proj(visual_tokens) + self.language_proj(language_context)[:, None, :]
        )
        scores = self.score(hidden).squeeze(-1)  # (B, N)
        if visual_mask is not None:
            scores = scores.masked_fill(visual_mask == 0, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        gate = torch.sigmoid(self.channel_gate(language_context))
        attended = gate * torch.einsum("bn,bnd->bd", weights, visual_tokens)
        return attended, weights


class ReportDecoder(nn.Module):
    """GPT-2 report decoder cross-attending to visual tokens.

    Args:
        vocab_size: tokenizer vocabulary size.
        d_model: hidden width (must equal the visual token width).
        n_layers: number of transformer blocks.
        n_heads: attention heads per block (must divide ``d_model``).
        max_length: longest token sequence (GPT-2 ``n_positions``).
        dropout: dropout on embeddings, residuals and attention weights.
        pad_token_id: id of ``[PAD]``.
        bos_token_id: id of ``[BOS]`` (generation starts from it).
        eos_token_id: id of ``[EOS]`` (generation stops at it).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        max_length: int = 128,
        dropout: float = 0.1,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        for name, token_id in (("pad", pad_token_id), ("bos", bos_token_id), ("eos", eos_token_id)):
            if not 0 <= token_id < vocab_size:
                raise ValueError(f"{name}_token_id must be in [0, {vocab_size}); got {token_id}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=max_length,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            add_cross_attention=True,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
        )
        # Eager attention is the implementation that returns attention weights.
        config._attn_implementation = "eager"
        self.gpt2 = GPT2LMHeadModel(config)
        self.visual_attention = LanguageGuidedVisualAttention(d_model)
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    def _check_inputs(self, input_ids: Tensor, visual_tokens: Tensor | None) -> None:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, T); got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.max_length:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens; max_length is {self.max_length}"
            )
        if visual_tokens is not None and (
            visual_tokens.ndim != 3
            or visual_tokens.shape[0] != input_ids.shape[0]
            or visual_tokens.shape[2] != self.d_model
        ):
            raise ValueError(
                f"visual_tokens must be (B={input_ids.shape[0]}, N, d_model={self.d_model}); "
                f"got {tuple(visual_tokens.shape)}"
            )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        visual_tokens: Tensor,
        visual_mask: Tensor | None = None,
        output_attentions: bool = True,
    ) -> DecoderOutput:
        """Teacher-forced pass over ``[BOS] report [EOS] [PAD]...``.

        Args:
            input_ids: (B, T) int64 token ids.
            attention_mask: (B, T), 1 for real tokens, 0 for padding.
            visual_tokens: (B, N, d_model) from :class:`~lungvlm.models.visual_tokens.VisualTokenizer`.
            visual_mask: optional (B, N), 1 for valid visual tokens.
            output_attentions: return the cross-attention weights.

        Returns:
            A :class:`DecoderOutput`; the loss is the mean cross-entropy of tokens 1..T-1 given
            their prefixes, over non-padding targets.
        """
        self._check_inputs(input_ids, visual_tokens)
        out = self.gpt2.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=visual_tokens,
            encoder_attention_mask=visual_mask,
            use_cache=False,
            output_attentions=output_attentions,
        )
        hidden = out.last_hidden_state  # (B, T, d), after ln_f
        logits = self.gpt2.lm_head(hidden)
        targets = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)[:, 1:]
        loss = None
        if bool((targets != IGNORE_INDEX).any()):
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        context = masked_mean(hidden, attention_mask)
        attended, weights = self.visual_attention(visual_tokens, context, visual_mask)
        return DecoderOutput(
            logits=logits,
            loss=loss,
            cross_attentions=tuple(out.cross_attentions) if output_attentions else None,
            hidden_states=hidden,
            language_context=context,
            visual_weights=weights,
            attended_visual=attended,
        )

    def decode_step(
        self,
        input_ids: Tensor,
        visual_tokens: Tensor,
        visual_mask: Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = True,
        attention_mask: Tensor | None = None,
    ) -> DecoderStep:
        """One incremental decoding call (used by :mod:`lungvlm.models.generation`).

        With ``use_cache`` the returned ``past_key_values`` is a transformers
        ``EncoderDecoderCache``: feed only the new tokens next time. Its cross-attention part
        holds the visual keys/values, projected once on the first call and reused afterwards.

        Args:
            input_ids: (B, t) the tokens not yet in the cache (all tokens when not caching).
            visual_tokens: (B, N, d_model).
            visual_mask: optional (B, N).
            past_key_values: the cache returned by the previous call, or None.
            use_cache: build/extend the cache.
            attention_mask: optional (B, cached + t) mask over all positions so far.
        """
        self._check_inputs(input_ids, visual_tokens)
        out = self.gpt2(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=visual_tokens,
            encoder_attention_mask=visual_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=True,
        )
        return DecoderStep(out.logits, tuple(out.cross_attentions), out.past_key_values)

    def report_embedding(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Text-only embedding of a report: masked mean of the last hidden states -> (B, d).

        No visual input is given: GPT-2 blocks skip their cross-attention sub-layer when
        ``encoder_hidden_states`` is None, so the embedding depends on the text alone (same
        weights as the grounded decoder). Used by contrastive alignment and by the risk head.
        """
        self._check_inputs(input_ids, None)
        out = self.gpt2.transformer(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        )
        return masked_mean(out.last_hidden_state, attention_mask)


__all__ = [
    "DecoderOutput",
    "DecoderStep",
    "LanguageGuidedVisualAttention",
    "ReportDecoder",
    "masked_mean",
]
