"""Language pretraining of the report decoder: a text-only causal LM on the report corpus.

Run once before stage 3 sees images (``model.vl.language_pretrain_steps``), so the decoder
already writes well-formed radiology language when it starts to learn what the image says.
The decoder's cross-attention sub-layers are skipped (no visual input), so only the language
weights shared with the grounded decoder are trained.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

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


def pretrain_language(
    decoder: ReportDecoder,
    tokenizer,
    texts: Sequence[str],
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Train ``decoder`` as a causal LM on ``texts`` for ``steps`` AdamW steps.

    Args:
        decoder: the report decoder (trained in place).
        tokenizer: the report tokenizer.
        texts: training texts.
        steps: optimizer steps.
        batch_size: texts per step.
        lr: AdamW learning rate.
        seed: sampling seed.

    Returns:
        The loss (nats per token) of every step.
    """
    if steps <= 0 or not texts:
        return []
    device = next(decoder.parameters()).device
    ids, attention = encode_reports(tokenizer, list(texts), decoder.max_length)
    params = [p for n, p in decoder.gpt2.named_parameters() if "crossattention" not in n]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    was_training = decoder.training
    decoder.train()
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        pick = torch.randint(0, ids.shape[0], (batch_size,), generator=generator)
        batch_ids, batch_att = ids[pick].to(device), attention[pick].to(device)
        labels = batch_ids.masked_fill(batch_att == 0, IGNORE_INDEX)
        out = decoder.gpt2(input_ids=batch_ids, attention_mask=batch_att, labels=labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    decoder.train(was_training)
    log.info(
        "language pretraining: %d steps in %.1f s, loss %.3f -> %.3f nats/token",
        steps,
        time.perf_counter() - start,
        losses[0],
        losses[-1],
    )
    return losses
