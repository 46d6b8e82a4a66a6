"""Language pretraining of the report decoder: causal LM plus a report-coherence objective.

Run once before stage 3 sees images (``make train-language`` writes a language checkpoint that
stage 3 loads through ``model.vl.language_init``; without one, stage 3 runs it inline for
``model.vl.language_pretrain_steps``), so the decoder already writes well-formed radiology
language when it starts to learn what the image says. The decoder's cross-attention sub-layers
are skipped (no visual input), so only the language weights shared with the grounded decoder
are trained.

Report coherence: a small :class:`CoherenceHead` reads the decoder's pooled
``report_embedding`` and says whether a text's sentences are in their original order or were
shuffled by :func:`perturb_sentence_order`. The head exists only during pretraining; the stage-3
model never holds it, so stage-3 checkpoints keep their keys.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lungvlm.models.generation import sentence_bounds
from lungvlm.models.report_decoder import IGNORE_INDEX, ReportDecoder
from lungvlm.text.renderer import RenderStyle, render_report
from lungvlm.text.sampling import random_exam_findings
from lungvlm.text.tokenizer import encode_reports

log = logging.getLogger(__name__)


def crop_findings_corpus(n_texts: int, seed: int = 0) -> list[str]:
    """Findings sections of random one-nodule (or nodule-free) exams, like crop reports.

    Args:
        n_texts: number of texts.
        seed: seed of the findings and of the wording.

    Returns:
        ``n_texts`` FINDINGS sections.
    """
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n_texts):
        findings = random_exam_findings(rng, max_nodules=1)
        style = RenderStyle(mention_defaults=1.0) if not findings.nodules else None
        texts.append(render_report(findings, seed=seed * 7919 + i, style=style).findings_text)
    return texts


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
) -> float | None:
    """Accuracy of ``head`` on each reorderable text of ``texts`` and one reordered copy.

    Args:
        decoder: the report decoder (its train/eval mode is restored afterwards).
        head: the coherence head.
        tokenizer: the report tokenizer.
        texts: texts to judge; only those :func:`coherence_texts` keeps are used.
        seed: seed of the reordered copies.
        batch_size: texts per forward pass.

    Returns:
        The fraction of originals judged original plus copies judged reordered (0..1), or None
        when no text can be reordered.
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
    return float(((logits > 0).float() == labels).float().mean())


# ---------------------------------------------------------------- pretraining
@dataclass
class LanguagePretrainResult:
    """What :func:`pretrain_language` measured.

    Attributes:
        lm_losses: causal-LM loss of every step, nats per token (original-order texts).
        coherence_losses: coherence BCE of every step, nats (empty when the weight is 0).
        coherence_accuracy: held-out coherence accuracy (0..1); None when off or nothing held out.
        heldout_lm_loss: causal-LM loss on the held-out texts, nats per token (None: none held).
        n_train_texts: texts trained on.
        n_heldout_texts: texts held out (never trained on).
        seconds: wall time of the training loop and evaluation, s.
    """

    lm_losses: list[float] = field(default_factory=list)
    coherence_losses: list[float] = field(default_factory=list)
    coherence_accuracy: float | None = None
    heldout_lm_loss: float | None = None
    n_train_texts: int = 0
    n_heldout_texts: int = 0
    seconds: float = 0.0

    @property
    def final_lm_loss(self) -> float | None:
        """Mean LM loss of the last 10 steps, nats per token (less noisy than the last step)."""
        return float(np.mean(self.lm_losses[-10:])) if self.lm_losses else None


@torch.no_grad()
def _heldout_lm_loss(decoder: ReportDecoder, tokenizer, texts: Sequence[str]) -> float | None:
    """Token-weighted causal-LM loss of ``texts``, nats per token (None for no text)."""
    if not texts:
        return None
    ids, attention = encode_reports(tokenizer, list(texts), decoder.max_length)
    was_training = decoder.training
    decoder.eval()
    device = next(decoder.parameters()).device
    total, count = 0.0, 0
    for i in range(0, ids.shape[0], 64):
        batch_ids, batch_att = ids[i : i + 64].to(device), attention[i : i + 64].to(device)
        labels = batch_ids.masked_fill(batch_att == 0, IGNORE_INDEX)
        n_targets = int((labels[:, 1:] != IGNORE_INDEX).sum())
        out = decoder.gpt2(input_ids=batch_ids, attention_mask=batch_att, labels=labels)
        total, count = total + float(out.loss) * n_targets, count + n_targets
    decoder.train(was_training)
    return total / max(count, 1)


def pretrain_language(
    decoder: ReportDecoder,
    tokenizer,
    texts: Sequence[str],
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    coherence_weight: float = 1.0,
    heldout_fraction: float = 0.1,
    log_every: int = 50,
) -> LanguagePretrainResult:
    """Train ``decoder`` as a causal LM plus a sentence-order classifier for ``steps`` steps.

    Each AdamW step minimises ``lm + coherence_weight * coherence``: the LM loss on
    ``batch_size`` original-order texts, and the BCE of a :class:`CoherenceHead` on
    ``batch_size`` reorderable texts, half of them as written (label 1) and half reordered by
    :func:`perturb_sentence_order` (label 0). A seeded ``heldout_fraction`` of ``texts`` is
    never trained on; the coherence accuracy and a LM loss are measured on it at the end.

    Args:
        decoder: the report decoder (trained in place; cross-attention left untouched).
        tokenizer: the report tokenizer.
        texts: the corpus.
        steps: optimizer steps.
        batch_size: texts per step and objective.
        lr: AdamW learning rate.
        seed: seed of the held-out split, the batches and the reorderings.
        coherence_weight: weight of the coherence loss; 0 turns the objective off.
        heldout_fraction: fraction of ``texts`` held out for evaluation (0..1).
        log_every: log a progress line every this many steps (0: only the summary).

    Returns:
        Per-step losses and the held-out measures (:class:`LanguagePretrainResult`).

    Raises:
        ValueError: on a negative weight, a fraction outside [0, 1), or when the coherence
            objective is on but no training text has two sentences to reorder.
    """
    if coherence_weight < 0:
        raise ValueError(f"coherence_weight must be >= 0; got {coherence_weight}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1); got {heldout_fraction}")
    if steps <= 0 or not texts:
        return LanguagePretrainResult()
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    texts = list(texts)
    order = rng.permutation(len(texts))
    n_held = int(round(heldout_fraction * len(texts))) if len(texts) > 1 else 0
    heldout = [texts[i] for i in order[:n_held]]
    train = [texts[i] for i in order[n_held:]]
    ids, attention = encode_reports(tokenizer, train, decoder.max_length)

    device = next(decoder.parameters()).device
    params = [p for n, p in decoder.gpt2.named_parameters() if "crossattention" not in n]
    head = None
    if coherence_weight > 0:
        reorderable = coherence_texts(tokenizer, train, decoder.max_length)
        if not reorderable:
            raise ValueError(
                "coherence_weight > 0 needs training texts with >= 2 different sentences "
                f"that fit in max_length={decoder.max_length} tokens; none of the {len(train)} "
                "texts has them (set coherence_weight=0)"
            )
        coherent_ids, coherent_att = encode_reports(tokenizer, reorderable, decoder.max_length)
        head = CoherenceHead(decoder.d_model).to(device)
        params += list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    was_training = decoder.training
    decoder.train()
    result = LanguagePretrainResult(n_train_texts=len(train), n_heldout_texts=len(heldout))
    n_pos = max(1, batch_size // 2)
    for step in range(1, steps + 1):
        pick = torch.from_numpy(rng.integers(0, ids.shape[0], batch_size))
        batch_ids, batch_att = ids[pick].to(device), attention[pick].to(device)
        labels = batch_ids.masked_fill(batch_att == 0, IGNORE_INDEX)
        lm = decoder.gpt2(input_ids=batch_ids, attention_mask=batch_att, labels=labels).loss
        loss = lm
        if head is not None:
            positives = torch.from_numpy(rng.integers(0, len(reorderable), n_pos))
            sources = rng.integers(0, len(reorderable), max(1, batch_size - n_pos))
            negatives = [perturb_sentence_order(reorderable[i], rng) for i in sources]
            neg_ids, neg_att = encode_reports(tokenizer, negatives, decoder.max_length)
            both_ids = torch.cat([coherent_ids[positives], neg_ids]).to(device)
            both_att = torch.cat([coherent_att[positives], neg_att]).to(device)
            target = torch.cat([torch.ones(n_pos), torch.zeros(len(negatives))]).to(device)
            logits = head(decoder.report_embedding(both_ids, both_att)).float()
            coherence = F.binary_cross_entropy_with_logits(logits, target)
            loss = lm + coherence_weight * coherence
            result.coherence_losses.append(float(coherence.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        result.lm_losses.append(float(lm.detach()))
        if log_every > 0 and (step % log_every == 0 or step == steps):
            coherence_text = (
                f", coherence {np.mean(result.coherence_losses[-log_every:]):.3f}" if head else ""
            )
            log.info(
                "language step %d/%d: lm %.3f nats/token%s (%.0f s)",
                step,
                steps,
                np.mean(result.lm_losses[-log_every:]),
                coherence_text,
                time.perf_counter() - start,
            )
    decoder.train(was_training)
    result.heldout_lm_loss = _heldout_lm_loss(decoder, tokenizer, heldout)
    if head is not None:
        result.coherence_accuracy = evaluate_coherence(decoder, head, tokenizer, heldout, seed)
    result.seconds = time.perf_counter() - start
    log.info(
        "language pretraining: %d steps in %.1f s, lm loss %.3f -> %.3f nats/token "
        "(held-out %s), held-out coherence accuracy %s",
        steps,
        result.seconds,
        result.lm_losses[0],
        result.final_lm_loss,
        "-" if result.heldout_lm_loss is None else f"{result.heldout_lm_loss:.3f}",
        "-" if result.coherence_accuracy is None else f"{result.coherence_accuracy:.3f}",
    )
    return result
