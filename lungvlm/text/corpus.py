"""The report corpus a tokenizer is trained on (no download: rendered by our own renderer)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lungvlm.text.renderer import RenderStyle, render_report
from lungvlm.text.sampling import random_exam_findings

#: Fixed sentences that are not produced by the findings renderer but appear in data/prompts.
EXTRA_SENTENCES: tuple[str, ...] = (
    "No pulmonary nodule is seen in this region.",
    "A spiculated nodule.",
    "A smooth nodule.",
)


def build_report_corpus(
    n_reports: int = 2000,
    seed: int = 0,
    extra_files: Sequence[str | Path] = (),
    extra_texts: Iterable[str] = (),
) -> list[str]:
    """Render ``n_reports`` seeded random reports (full text and findings) plus user texts.

    Args:
        n_reports: number of random exams rendered with :func:`render_report`.
        seed: seed of the random findings and of the renderer's wording.
        extra_files: UTF-8 text files whose non-empty lines are added (e.g. real reports).
        extra_texts: further texts to add (e.g. a DataModule's training reports).

    Returns:
        The corpus, one text per entry.

    Raises:
        FileNotFoundError: if an extra file does not exist.
    """
    if n_reports < 0:
        raise ValueError(f"n_reports must be >= 0; got {n_reports}")
    rng = np.random.default_rng(seed)
    corpus: list[str] = list(EXTRA_SENTENCES)
    for i in range(n_reports):
        rendered = render_report(random_exam_findings(rng), seed=seed * 1_000_003 + i)
        corpus.append(rendered.text)
    for path in extra_files:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer corpus file {path} does not exist")
        corpus.extend(
            line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        )
    corpus.extend(str(t) for t in extra_texts if str(t).strip())
    return corpus


def crop_findings_corpus(n_texts: int, seed: int = 0) -> list[str]:
    """Findings sections of random one-nodule (or nodule-free) exams, like crop reports.

    The language stage trains on them, and the tokenizer sees them beside the exam reports.

    Args:
        n_texts: number of texts.
        seed: seed of the findings and of the wording (the first ``k`` texts of a seed are the
            same whatever ``n_texts``).

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
