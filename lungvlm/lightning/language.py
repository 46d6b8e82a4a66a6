"""Language pretraining of the report decoder: causal LM plus a report-coherence objective.

It runs before stage 3 sees images, so the decoder already writes well-formed radiology
language when it starts to learn what the image says. Two ways in, one step function
(:func:`language_losses`):

- the ``language`` stage of :class:`~lungvlm.lightning.module.LungVLMModule`
  (``make train-language``: ``experiments/language.yaml``, texts from
  ``data_modules.language_datamodule.LanguageDataModule``), whose Lightning checkpoint stage 3
  loads through ``model.vl.language_init`` (:func:`load_language_decoder`);
- without that checkpoint, stage 3 runs :func:`pretrain_language` inline for
  ``model.vl.language_pretrain_steps``.

The decoder's cross-attention sub-layers are skipped (no visual input), so only the language
weights shared with the grounded decoder are trained.

Report coherence: a small :class:`CoherenceHead` reads the decoder's pooled
``report_embedding`` and says whether a text's sentences are in their original order or were
shuffled by :func:`perturb_sentence_order`. The head exists only in the language stage; the
stage-3 model never holds it, so stage-3 checkpoints keep their keys.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lungvlm.lightning.checkpoint import CHECKPOINT_KEY, checkpoint_stage, read_checkpoint
from lungvlm.models.generation import sentence_bounds
from lungvlm.models.report_decoder import IGNORE_INDEX, ReportDecoder
from lungvlm.text.tokenizer import encode_reports, tokenizer_from_json

log = logging.getLogger(__name__)

#: Names of the language-stage losses (keys of ``model.loss_weights``) and their log keys.
LANGUAGE_LOSS_KEYS: dict[str, str] = {
    "language_lm": "language/lm_loss",
    "coherence": "language/coherence_loss",
}
#: Prefix of the decoder's weights in a :class:`LungVLMModule` state_dict.
DECODER_PREFIX = "vl_heads.decoder."
#: Decoder sizes that must match between a language checkpoint and the stage-3 config.
SIZE_KEYS: tuple[str, ...] = ("vocab_size", "d_model", "n_layers", "n_heads", "max_length")


# ---------------------------------------------------------------- report coherence
def _movable_sentences(text: str) -> tuple[list[tuple[int, int]], list[int]]:
    """Sentence bounds of ``text`` and the indices of those that may move.

    A section heading ("FINDINGS:", a sentence ending with ":") stays where it is: moving it
    would make the task trivial instead of teaching the order of the findings.
    """
    bounds = sentence_bounds(text)
    movable = [i for i, (s, e) in enumerate(bounds) if not text[s:e].rstrip().endswith(":")]
    return bounds, movable


def can_perturb(text: str) -> bool:
    """Whether ``text`` has at least two different sentences (headings excluded) to reorder."""
    bounds, movable = _movable_sentences(text)
    return len({text[slice(*bounds[i])] for i in movable}) >= 2


def perturb_sentence_order(text: str, rng: np.random.Generator) -> str | None:
    """A copy of ``text`` with its sentences out of their original order.

    Sentences are found by :func:`lungvlm.models.generation.sentence_bounds`. Two different
    sentences are swapped, or (half the time when there are three or more) the sentence list
    is rotated by 1..n-1 places; section headings and the white space between sentences stay in place, so
    the copy holds exactly the original sentences.

    Args:
        text: a report or findings section.
        rng: random generator (choice of swap/rotation and of the sentences).

    Returns:
        The reordered text (never equal to ``text``), or None if ``text`` has fewer than two
        different movable sentences.
    """
    bounds, movable = _movable_sentences(text)
    sentences = [text[slice(*bounds[i])] for i in movable]
    if len(set(sentences)) < 2:
        return None
    n = len(sentences)
    order = list(range(n))
    if n > 2 and rng.random() < 0.5:
        shift = int(rng.integers(1, n))
        order = order[shift:] + order[:shift]
    if [sentences[k] for k in order] == sentences:  # a swap, or a rotation of a periodic list
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if sentences[i] != sentences[j]]
        i, j = pairs[int(rng.integers(len(pairs)))]
        order = list(range(n))
        order[i], order[j] = j, i
    replaced = dict(zip(movable, (sentences[k] for k in order), strict=True))
    pieces, cursor = [], 0
    for index, (start, end) in enumerate(bounds):
        pieces += [text[cursor:start], replaced.get(index, text[start:end])]
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def coherence_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[str]:
    """The texts of ``texts`` that can be reordered and fit in ``max_length`` tokens.

    A truncated text is left out: reordering only its cut-off tail would give a "reordered"
    example identical to the original the decoder sees.
    """
    texts = [t for t in texts if can_perturb(t)]
    if not texts:
        return []
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]  # [BOS] text [EOS]
    return [t for t, n in zip(texts, lengths, strict=True) if n <= max_length]


class CoherenceHead(nn.Module):
    """Logit that a report's sentences are in their original order, from its pooled embedding.

    Args:
        d_model: width of the decoder's ``report_embedding``.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, 1)

    def forward(self, embedding: Tensor) -> Tensor:
        """(B, d_model) report embeddings -> (B,) logits (> 0: original order)."""
        return self.linear(embedding).squeeze(-1)


def _coherence_logits(decoder, head, tokenizer, texts: Sequence[str], device) -> Tensor:
    ids, attention = encode_reports(tokenizer, list(texts), decoder.max_length)
    return head(decoder.report_embedding(ids.to(device), attention.to(device))).float()


@torch.no_grad()
def evaluate_coherence(
    decoder: ReportDecoder,
    head: CoherenceHead,
    tokenizer,
    texts: Sequence[str],
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[float, int] | None:
    """Accuracy of ``head`` on each reorderable text of ``texts`` and one reordered copy.

    Args:
        decoder: the report decoder (its train/eval mode is restored afterwards).
        head: the coherence head.
        tokenizer: the report tokenizer.
        texts: texts to judge; only those :func:`coherence_texts` keeps are used.
        seed: seed of the reordered copies.
        batch_size: texts per forward pass.

    Returns:
        (accuracy, examples): the fraction of originals judged original plus copies judged
        reordered (0..1) and the number of judged examples; None when no text can be reordered.
    """
    rng = np.random.default_rng(seed)
    originals = coherence_texts(tokenizer, texts, decoder.max_length)
    if not originals:
        return None
    examples = originals + [perturb_sentence_order(t, rng) for t in originals]
    labels = torch.tensor([1.0] * len(originals) + [0.0] * len(originals))
    was_training = decoder.training, head.training
    decoder.eval()
    head.eval()
    device = next(decoder.parameters()).device
    logits = torch.cat(
        [
            _coherence_logits(decoder, head, tokenizer, examples[i : i + batch_size], device)
            for i in range(0, len(examples), batch_size)
        ]
    ).cpu()
    decoder.train(was_training[0])
    head.train(was_training[1])
    return float(((logits > 0).float() == labels).float().mean()), len(examples)


# ---------------------------------------------------------------- the step
def language_parameters(decoder: ReportDecoder, head: CoherenceHead | None) -> list[nn.Parameter]:
    """What language pretraining trains: the decoder's GPT-2 weights except cross-attention,
    and the coherence head."""
    params = [p for n, p in decoder.gpt2.named_parameters() if "crossattention" not in n]
    return params + (list(head.parameters()) if head is not None else [])


def language_losses(
    decoder: ReportDecoder,
    head: CoherenceHead | None,
    tokenizer,
    texts: Sequence[str],
    rng: np.random.Generator,
) -> dict[str, Tensor]:
    """Named losses of one language step on ``texts`` (the language stage and stage 3 inline).

    - ``language_lm``: causal-LM cross-entropy of the texts as written, nats per token.
    - ``coherence`` (when ``head`` is given): BCE of ``head`` on the texts that
      :func:`coherence_texts` keeps: the first half as written (label 1), the rest reordered by
      :func:`perturb_sentence_order` (label 0). A batch with no such text gives 0 (with a
      graph through the head, so every rank of a DDP run has the same parameters in use).

    Args:
        decoder: the report decoder (on its device; no visual input is given).
        head: the coherence head, or None for the LM loss only.
        tokenizer: the report tokenizer.
        texts: B texts.
        rng: generator of the reorderings.

    Returns:
        ``{"language_lm": ..., "coherence": ...}`` scalars (no total: the caller weighs them).
    """
    device = next(decoder.parameters()).device
    ids, attention = encode_reports(tokenizer, list(texts), decoder.max_length)
    ids, attention = ids.to(device), attention.to(device)
    labels = ids.masked_fill(attention == 0, IGNORE_INDEX)
    lm = decoder.gpt2(input_ids=ids, attention_mask=attention, labels=labels).loss
    losses = {"language_lm": lm}
    if head is None:
        return losses
    reorderable = coherence_texts(tokenizer, texts, decoder.max_length)
    if not reorderable:
        losses["coherence"] = sum(p.sum() for p in head.parameters()) * 0.0
        return losses
    n_pos = len(reorderable) // 2
    negatives = [perturb_sentence_order(t, rng) for t in reorderable[n_pos:]]
    both_ids, both_att = encode_reports(
        tokenizer, reorderable[:n_pos] + negatives, decoder.max_length
    )
    target = torch.cat([torch.ones(n_pos), torch.zeros(len(negatives))]).to(device)
    logits = head(decoder.report_embedding(both_ids.to(device), both_att.to(device))).float()
    losses["coherence"] = F.binary_cross_entropy_with_logits(logits, target)
    return losses


class LanguageTask(nn.Module):
    """The language stage's coherence head, perturbation generator and held-out accuracy.

    The decoder is referenced, not owned (it stays ``vl_heads.decoder`` in the state_dict);
    the head's keys are ``language.coherence_head.*``.

    Args:
        decoder: the report decoder being pretrained.
        seed: seed of the training reorderings.
    """

    def __init__(self, decoder: ReportDecoder, seed: int = 0) -> None:
        super().__init__()
        self._decoder = (decoder,)  # a tuple keeps the decoder out of this module's parameters
        self.coherence_head = CoherenceHead(decoder.d_model)
        self.coherence_accuracy = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        self.rng = np.random.default_rng(seed)

    @property
    def decoder(self) -> ReportDecoder:
        return self._decoder[0]

    def trained_parameters(self) -> list[nn.Parameter]:
        """The parameters the language stage optimises (:func:`language_parameters`)."""
        return language_parameters(self.decoder, self.coherence_head)

    def losses(self, tokenizer, texts: Sequence[str], seed: int | None = None) -> dict[str, Tensor]:
        """:func:`language_losses` of ``texts``; ``seed`` fixes the reorderings (evaluation)."""
        rng = self.rng if seed is None else np.random.default_rng(seed)
        return language_losses(self.decoder, self.coherence_head, tokenizer, texts, rng)

    def update_metrics(self, split: str, tokenizer, texts: Sequence[str], seed: int) -> None:
        """Add the coherence accuracy of ``texts`` (seeded reorderings) to ``split``'s mean."""
        result = evaluate_coherence(self.decoder, self.coherence_head, tokenizer, texts, seed)
        if result is not None:
            accuracy, examples = result
            self.coherence_accuracy[split].update(accuracy, examples)


# ---------------------------------------------------------------- stage 3: load or run inline
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


def tokenizer_from_checkpoint(checkpoint: dict):
    """The report tokenizer stored in a LungVLM checkpoint (already read), or None.

    A resumed fit uses it instead of training a tokenizer again, so token ids keep meaning what
    the saved decoder learned.
    """
    meta = checkpoint.get(CHECKPOINT_KEY) or {}
    text = meta.get("tokenizer_json") if isinstance(meta, dict) else None
    return tokenizer_from_json(text) if text else None


def load_language_decoder(path: str | Path, decoder: ReportDecoder):
    """Load a language-stage checkpoint's decoder weights into ``decoder``; return its tokenizer.

    The file is a Lightning checkpoint of the ``language`` stage, read safely
    (:func:`~lungvlm.lightning.checkpoint.read_checkpoint`, ``weights_only=True``); only the
    weights under :data:`DECODER_PREFIX` are taken (strictly).

    Args:
        path: the checkpoint (``runs/language/checkpoints/last.ckpt``).
        decoder: the decoder to fill; its sizes must equal the file's.

    Returns:
        (tokenizer, the checkpoint's LungVLM metadata).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is not a language-stage checkpoint, or its decoder sizes differ from
            ``decoder``'s (each differing size is named).
    """
    checkpoint = read_checkpoint(path)
    meta = checkpoint.get(CHECKPOINT_KEY) or {}
    stage = checkpoint_stage(checkpoint)
    if stage != "language" or "tokenizer_json" not in meta:
        raise ValueError(
            f"{path} is not a language checkpoint (stage {stage!r}, tokenizer "
            f"{'present' if 'tokenizer_json' in meta else 'missing'}); write one with "
            "`make train-language`"
        )
    theirs, ours = meta.get("decoder_config") or {}, decoder_config(decoder)
    differences = [
        f"{key}={theirs.get(key)} in the file, {ours[key]} in the config"
        for key in SIZE_KEYS
        if key in theirs and theirs[key] != ours[key]
    ]
    if differences:
        raise ValueError(
            f"language checkpoint {path} does not fit the stage-3 decoder: "
            + "; ".join(differences)
            + " (rerun `make train-language` with the decoder sizes of this config)"
        )
    tokenizer = tokenizer_from_json(meta["tokenizer_json"])
    if len(tokenizer) > decoder.vocab_size:
        raise ValueError(
            f"language checkpoint {path}: its tokenizer has {len(tokenizer)} tokens, more than "
            f"the decoder's vocab_size={decoder.vocab_size}"
        )
    state = {
        key.removeprefix(DECODER_PREFIX): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(DECODER_PREFIX)
    }
    try:
        decoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"language checkpoint {path}: decoder weights do not load: {err}") from err
    return tokenizer, meta


@dataclass
class LanguagePretrainResult:
    """What :func:`pretrain_language` measured.

    Attributes:
        lm_losses: causal-LM loss of every step, nats per token.
        coherence_losses: coherence BCE of every step, nats (empty when the weight is 0).
        head: the trained coherence head (None when the weight is 0).
        seconds: wall time of the loop, s.
    """

    lm_losses: list[float] = field(default_factory=list)
    coherence_losses: list[float] = field(default_factory=list)
    head: CoherenceHead | None = None
    seconds: float = 0.0

    @property
    def final_lm_loss(self) -> float | None:
        """Mean LM loss of the last 10 steps, nats per token (less noisy than the last step)."""
        return float(np.mean(self.lm_losses[-10:])) if self.lm_losses else None


def pretrain_language(
    decoder: ReportDecoder,
    tokenizer,
    texts: Sequence[str],
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    loss_weights: Mapping[str, float] | None = None,
) -> LanguagePretrainResult:
    """Stage 3's inline fallback: ``steps`` AdamW steps of :func:`language_losses`.

    Each step draws ``batch_size`` texts (with replacement) and minimises
    ``w_lm * language_lm + w_coherence * coherence`` (weights from ``loss_weights``, missing
    names weigh 1.0, as in the LightningModule). A coherence weight of 0 drops the head.

    Args:
        decoder: the report decoder (trained in place; cross-attention left untouched).
        tokenizer: the report tokenizer.
        texts: the corpus.
        steps: optimizer steps (<= 0: nothing).
        batch_size: texts per step.
        lr: AdamW learning rate.
        seed: seed of the batches and the reorderings.
        loss_weights: weights of ``language_lm`` and ``coherence``.

    Returns:
        The per-step losses (:class:`LanguagePretrainResult`).

    Raises:
        ValueError: on a negative weight.
    """
    weights = {name: float((loss_weights or {}).get(name, 1.0)) for name in LANGUAGE_LOSS_KEYS}
    negative = {name: w for name, w in weights.items() if w < 0}
    if negative:
        raise ValueError(f"language loss weights must be >= 0; got {negative}")
    if steps <= 0 or not texts:
        return LanguagePretrainResult()
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    texts = list(texts)
    device = next(decoder.parameters()).device
    head = CoherenceHead(decoder.d_model).to(device) if weights["coherence"] > 0 else None
    optimizer = torch.optim.AdamW(language_parameters(decoder, head), lr=lr, weight_decay=0.01)
    was_training = decoder.training
    decoder.train()
    result = LanguagePretrainResult(head=head)
    for _ in range(steps):
        batch = [texts[i] for i in rng.integers(0, len(texts), batch_size)]
        losses = language_losses(decoder, head, tokenizer, batch, rng)
        total = sum(weights[name] * value for name, value in losses.items())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        result.lm_losses.append(float(losses["language_lm"].detach()))
        if "coherence" in losses:
            result.coherence_losses.append(float(losses["coherence"].detach()))
    decoder.train(was_training)
    result.seconds = time.perf_counter() - start
    log.info(
        "inline language pretraining: %d steps in %.1f s, lm loss %.3f -> %.3f nats/token",
        steps,
        result.seconds,
        result.lm_losses[0],
        result.final_lm_loss,
    )
    return result
