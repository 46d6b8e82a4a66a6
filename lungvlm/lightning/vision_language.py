"""Stage-3 plumbing used by the LightningModule: tokenizer, batch tokens, metrics, samples."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lungvlm.lightning.language import (
    LanguagePretrainResult,
    load_language_decoder,
    pretrain_language,
)
from lungvlm.lightning.vision_language_losses import (
    SPICULATED_UNIT_THRESHOLD,
    ZERO_SHOT_PROMPTS,
    RiskTextSchedule,
    concept_index,
    sentence_heatmaps,
    vision_language_losses,
)
from lungvlm.metrics.vision_language import (
    VisionLanguageMetrics,
    growth_risk_score,
    risk_update,
)
from lungvlm.models.generation import greedy_generate
from lungvlm.models.vision_language import VisionLanguageHeads
from lungvlm.text.corpus import build_report_corpus, crop_findings_corpus
from lungvlm.text.qa import qa_prompt
from lungvlm.text.tokenizer import (
    char_spans_to_token_labels,
    encode_prompt,
    encode_qa,
    encode_reports,
    save_tokenizer,
    train_tokenizer,
)

log = logging.getLogger(__name__)

#: Names of the stage-3 losses besides segmentation (keys of ``model.loss_weights``).
VL_LOSS_NAMES: tuple[str, ...] = (
    "report",
    "qa",
    "contrastive",
    "grounding",
    "malignancy",
    "lungrads",
    "growth",
    "concepts",
)


@dataclass
class VisionLanguageConfig:
    """Stage-3 settings that are not network sizes.

    Attributes:
        tokenizer_corpus_size: rendered random reports in the tokenizer's training corpus.
        tokenizer_corpus_files: text files (one report or sentence per line) added to it.
        tokenizer_seed: seed of the rendered corpus.
        generation_max_new_tokens: longest generated report in validation, tokens.
        num_sample_reports: generated reports written per evaluation (markdown + TensorBoard).
        language_pretrain_steps: text-only causal-LM + report-coherence steps of a fresh
            decoder before stage 3 when there is no ``language_init`` file (0: off).
        language_pretrain_texts: crop-style findings texts rendered for those inline steps.
        language_init: Lightning checkpoint of the ``language`` stage (``make train-language``:
            ``runs/language/checkpoints/last.ckpt``) whose tokenizer and decoder weights a
            fresh decoder starts from, instead of fitting and pretraining inline; a missing
            file is warned about and the inline path is used (None: inline).
        risk_text_dropout: probability per training batch that the risk head sees no text.
        risk_generated_text: probability per training batch that the risk head reads the
            decoder's own greedy findings instead of the reference (the inference setting).
        qa_max_new_tokens: longest generated answer to a question in validation, tokens.
    """

    tokenizer_corpus_size: int = 2000
    tokenizer_corpus_files: list[str] = field(default_factory=list)
    tokenizer_seed: int = 0
    generation_max_new_tokens: int = 90
    num_sample_reports: int = 8
    language_pretrain_steps: int = 0
    language_pretrain_texts: int = 4000
    language_init: str | None = None
    risk_text_dropout: float = 0.0
    risk_generated_text: float = 0.0
    qa_max_new_tokens: int = 48


def fit_report_tokenizer(config: VisionLanguageConfig, vocab_size: int, extra_texts=()):
    """Train the stage-3 tokenizer: rendered reports, crop findings, user files, ``extra_texts``.

    Shared by stage 3 and the ``language`` stage, so both train the same tokenizer.

    Args:
        config: the corpus settings (``tokenizer_corpus_size``/``_files``/``_seed``).
        vocab_size: largest vocabulary (the decoder's ``vocab_size``).
        extra_texts: further texts (e.g. a DataModule's training reports).

    Returns:
        The trained fast tokenizer.
    """
    # Crop reports describe one nodule: add such findings texts beside the exam reports.
    crop_texts = crop_findings_corpus(
        max(1, config.tokenizer_corpus_size // 4), config.tokenizer_seed
    )
    corpus = build_report_corpus(
        config.tokenizer_corpus_size,
        config.tokenizer_seed,
        config.tokenizer_corpus_files,
        [*crop_texts, *extra_texts],
    )
    tokenizer = train_tokenizer(corpus, vocab_size=vocab_size)
    log.info("tokenizer: %d tokens trained on %d texts", len(tokenizer), len(corpus))
    return tokenizer


def language_pretrain_corpus(config: VisionLanguageConfig) -> list[str]:
    """The language-pretraining texts: ``language_pretrain_texts`` crop findings sections."""
    return crop_findings_corpus(config.language_pretrain_texts, config.tokenizer_seed)


class VisionLanguageTask(nn.Module):
    """Holds the stage-3 metrics and the tokenizer; the heads are referenced, not owned."""

    def __init__(self, heads: VisionLanguageHeads, config: VisionLanguageConfig) -> None:
        super().__init__()
        self._heads = (heads,)  # a tuple keeps the heads out of this module's parameters
        self.config = config
        self.tokenizer = None
        self.metrics = nn.ModuleDict({s: VisionLanguageMetrics() for s in ("val", "test")})
        self.samples: dict[str, list[tuple[str, str, str]]] = {"val": [], "test": []}

    @property
    def heads(self) -> VisionLanguageHeads:
        return self._heads[0]

    # ---------------------------------------------------------------- tokenizer
    def fit_tokenizer(self, extra_texts=(), save_dir: str | None = None) -> None:
        """Train the tokenizer on the rendered corpus + ``extra_texts``; save it under ``save_dir``."""
        vocab = self.heads.decoder.vocab_size if hasattr(self.heads.decoder, "vocab_size") else 512
        self.tokenizer = fit_report_tokenizer(self.config, vocab, extra_texts)
        if save_dir:
            save_tokenizer(self.tokenizer, Path(save_dir) / "tokenizer")

    def load_language_init(self, save_dir: str | None = None) -> bool:
        """Take the tokenizer and decoder weights from ``config.language_init``.

        Args:
            save_dir: run folder; the loaded tokenizer is saved under ``save_dir/tokenizer``.

        Returns:
            True if loaded; False if ``language_init`` is unset or names no file (warned).

        Raises:
            ValueError: if the file is not a language-stage checkpoint or its decoder sizes
                differ from this decoder's (:func:`~lungvlm.lightning.language.load_language_decoder`).
        """
        path = self.config.language_init
        if not path:
            return False
        if not Path(path).is_file():
            log.warning(
                "language_init=%s does not exist (run `make train-language`): fitting the "
                "tokenizer and pretraining the decoder inline",
                path,
            )
            return False
        self.tokenizer, _ = load_language_decoder(path, self.heads.decoder)
        log.info(
            "language_init=%s: tokenizer (%d tokens) and decoder loaded", path, len(self.tokenizer)
        )
        if save_dir:
            save_tokenizer(self.tokenizer, Path(save_dir) / "tokenizer")
        return True

    def pretrain_language(self, loss_weights=None) -> LanguagePretrainResult:
        """Inline language pretraining of the decoder (:func:`~lungvlm.lightning.language.pretrain_language`).

        Args:
            loss_weights: the module's ``loss_weights`` (``language_lm``, ``coherence``; 1.0 if absent).
        """
        cfg = self.config
        return pretrain_language(
            self.heads.decoder,
            self.tokenizer,
            language_pretrain_corpus(cfg) if cfg.language_pretrain_steps > 0 else [],
            cfg.language_pretrain_steps,
            loss_weights=loss_weights,
        )

    def tokenize_batch(self, batch) -> None:
        """Fill ``report_tokens``, ``report_attention`` and ``token_nodule`` of ``batch``."""
        if self.tokenizer is None:
            raise RuntimeError(
                "stage 3 needs a tokenizer: call fit_tokenizer() or load a checkpoint"
            )
        length = self.heads.max_length
        ids, attention = encode_reports(self.tokenizer, batch.report_text, length)
        labels = [
            char_spans_to_token_labels(self.tokenizer, text, spans, length)
            for text, spans in zip(batch.report_text, batch.report_spans, strict=True)
        ]
        batch.report_tokens, batch.report_attention = ids, attention
        batch.token_nodule = torch.stack(labels)
        prompts = [qa_prompt(q) if q else "" for q in batch.qa_question]
        batch.qa_tokens, batch.qa_attention, batch.qa_answer_mask = encode_qa(
            self.tokenizer, prompts, batch.qa_answer, length
        )

    # ---------------------------------------------------------------- losses / metrics
    def losses(self, features: list[Tensor], batch, seg_logits: Tensor | None = None):
        """Named stage-3 losses and the forward outputs (see :func:`vision_language_losses`)."""
        cfg = self.config
        schedule = RiskTextSchedule(
            cfg.risk_text_dropout, cfg.risk_generated_text, cfg.generation_max_new_tokens
        )
        return vision_language_losses(self.heads, features, batch, schedule, seg_logits)

    def _embed_texts(self, texts: list[str], device) -> Tensor:
        ids, attention = encode_reports(self.tokenizer, texts, self.heads.max_length)
        return self.heads.decoder.report_embedding(ids.to(device), attention.to(device))

    @torch.no_grad()
    def update_metrics(self, split: str, fwd, batch, keep_samples: bool) -> None:
        """Update every stage-3 metric of ``split`` with one evaluated batch."""
        heads, metrics = self.heads, self.metrics[split]
        device = fwd.pooled.device
        generated = greedy_generate(
            heads.decoder,
            fwd.visual_tokens,
            self.config.generation_max_new_tokens,
            tokenizer=self.tokenizer,
        ).sequences
        metrics.text.update(generated, batch.report_text)
        metrics.concept_f1.update(generated, batch.report_text)

        risk_update(metrics, "risk", fwd.risk, batch)
        risk_update(metrics, "risk_visual", heads.risk_head(fwd.pooled, None), batch)
        generated_emb = self._embed_texts(generated, device)
        risk_update(metrics, "risk_generated", heads.risk_head(fwd.pooled, generated_emb), batch)
        metrics.growth_cindex.update(
            growth_risk_score(fwd.risk),
            batch.growth_time_months,
            batch.growth_event,
            batch.growth_present,
        )

        maps, masks = sentence_heatmaps(fwd, batch, tuple(batch.image.shape[2:]))
        if maps.shape[0]:
            metrics.pointing.update(maps, masks)
            metrics.mass.update(maps, masks)

        nodule = batch.seg_present & (batch.seg_mask.flatten(1).amax(1) > 0.5)
        if bool(nodule.any()):
            visual = heads.contrastive.embed_visual(fwd.pooled[nodule])
            text = heads.contrastive.embed_text(fwd.text_embedding[nodule])
            metrics.visual_embeddings.update(visual.float())
            metrics.text_embeddings.update(text.float())
            prompts = heads.contrastive.embed_text(
                self._embed_texts(list(ZERO_SHOT_PROMPTS), device)
            )
            scale = heads.contrastive.logit_scale()
            probs = (scale * visual @ prompts.T).softmax(-1)[:, 0]
            k = concept_index("spiculation")
            known = batch.concepts_present[nodule, k]
            if bool(known.any()):
                target = (batch.concepts[nodule, k] >= SPICULATED_UNIT_THRESHOLD).long()
                metrics.zero_shot.update(probs[known].float(), target[known])
        answers = self._answer_questions(fwd.visual_tokens, batch)
        asked = [i for i, q in enumerate(batch.qa_question) if q]
        if asked:
            metrics.qa.update(
                [batch.qa_kind[i] for i in asked],
                [answers[i] for i in asked],
                [batch.qa_answer[i] for i in asked],
            )
        if keep_samples:
            n = self.config.num_sample_reports
            qa = [
                (batch.qa_question[i], batch.qa_answer[i], answers[i]) if batch.qa_question[i]
                else None
                for i in range(len(batch.patient_id))
            ]  # fmt: skip
            self.samples[split] = list(
                zip(
                    batch.patient_id[:n], batch.report_text[:n], generated[:n], qa[:n],
                    strict=True,
                )
            )  # fmt: skip

    def answer_question(
        self, visual_tokens: Tensor, question: str, max_new_tokens: int | None = None
    ):
        """Greedy answer to ``question`` about one crop.

        Args:
            visual_tokens: (1, N, d_model) visual tokens of the crop.
            question: the question text (any wording; see :mod:`lungvlm.text.qa`).
            max_new_tokens: answer length limit (default ``config.qa_max_new_tokens``).

        Returns:
            The :class:`~lungvlm.models.generation.GenerationOutput` of the answer (its
            ``sequences[0]`` is the text; ``cross_attentions`` give the answer's heatmaps).
        """
        prefix = encode_prompt(self.tokenizer, qa_prompt(question)).to(visual_tokens.device)
        room = self.heads.max_length - prefix.shape[1]
        if room < 1:
            raise ValueError(f"the question {question!r} is too long for the decoder")
        limit = min(max_new_tokens or self.config.qa_max_new_tokens, room)
        return greedy_generate(
            self.heads.decoder, visual_tokens, limit, tokenizer=self.tokenizer, prefix_ids=prefix
        )

    def _answer_questions(self, visual_tokens: Tensor, batch) -> list[str]:
        """Generated answer of every sample's question ("" where it has none)."""
        answers = [""] * len(batch.qa_question)
        for i, question in enumerate(batch.qa_question):
            if question:
                answers[i] = self.answer_question(visual_tokens[i : i + 1], question).sequences[0]
        return answers

    def compute_metrics(self, split: str) -> dict[str, Tensor]:
        """Compute and reset the metrics of ``split``; keys are ``task/metric``."""
        metrics = self.metrics[split]
        values = metrics.compute()
        metrics.reset()
        return values

    def write_samples(
        self, split: str, epoch: int, run_dir: str, loggers, step: int
    ) -> Path | None:
        """Write the kept generated reports next to their references (markdown + TensorBoard)."""
        samples = self.samples.get(split) or []
        if not samples:
            return None
        lines = [f"# {split} samples, epoch {epoch}", ""]
        for patient, reference, generated, qa in samples:
            lines += [
                f"## {patient}",
                "",
                "**Reference**",
                "",
                reference,
                "",
                "**Generated**",
                "",
                generated or "_(empty)_",
                "",
            ]
            if qa is not None:
                question, expected, answer = qa
                lines += [
                    f"**Q:** {question}  ",
                    f"**Reference answer:** {expected}  ",
                    f"**Generated answer:** {answer or '_(empty)_'}",
                    "",
                ]
        text = "\n".join(lines)
        folder = Path(run_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{split}_epoch{epoch:03d}.md"
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        for item in loggers or []:
            experiment = getattr(item, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text(f"{split}/report/samples", text, step)
        self.samples[split] = []
        return path
