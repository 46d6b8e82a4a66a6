"""Language pretraining: perturbation, the shared LM + coherence step, the language stage
(Lightning fit of experiments/language.yaml), its checkpoint and stage 3's language_init."""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lungvlm.cli import main
from lungvlm.commands.fit import LungVLMCLI
from lungvlm.lightning.checkpoint import CHECKPOINT_KEY, read_checkpoint
from lungvlm.lightning.language import (
    DECODER_PREFIX,
    CoherenceHead,
    can_perturb,
    coherence_texts,
    evaluate_coherence,
    language_losses,
    perturb_sentence_order,
    pretrain_language,
)
from lungvlm.lightning.module import LungVLMModule
from lungvlm.lightning.vision_language import VisionLanguageConfig, fit_report_tokenizer
from lungvlm.models.encoder import MultiScaleEncoder3D
from lungvlm.models.generation import sentence_bounds
from lungvlm.models.heads.segmentation import SegmentationHead
from lungvlm.models.report_decoder import ReportDecoder
from lungvlm.models.vision_language import VisionLanguageHeads
from lungvlm.text.corpus import crop_findings_corpus
from lungvlm.text.tokenizer import tokenizer_to_json
from lungvlm.types import TextBatch
from tests.conftest import TINY_ENCODER

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
VOCAB, D_MODEL, MAX_LENGTH = 300, 32, 128  # 128 tokens: most findings texts fit untruncated
TEXT = (
    "FINDINGS:\nA 6 mm solid nodule in the right upper lobe. Smooth margin.\n"
    "Mild emphysema.\nNo pleural effusion."
)


def sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in sentence_bounds(text)]


def separators(text: str) -> list[str]:
    """The white space between consecutive sentences."""
    bounds = sentence_bounds(text)
    return [text[a[1] : b[0]] for a, b in zip(bounds, bounds[1:], strict=False)]


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is faster and steadier on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return fit_report_tokenizer(VisionLanguageConfig(tokenizer_corpus_size=40), VOCAB)


# ---------------------------------------------------------------- perturbation
@pytest.mark.parametrize("seed", range(12))
def test_perturbation_reorders_and_keeps_the_sentences(seed):
    perturbed = perturb_sentence_order(TEXT, np.random.default_rng(seed))
    assert perturbed != TEXT
    assert sorted(sentences(perturbed)) == sorted(sentences(TEXT))
    assert sentences(perturbed)[0] == "FINDINGS:"  # the heading stays in place
    assert separators(perturbed) == separators(TEXT) == ["\n", " ", "\n", "\n"]


def test_perturbation_uses_swaps_and_rotations():
    outputs = {perturb_sentence_order(TEXT, np.random.default_rng(s)) for s in range(40)}
    # 4 movable sentences: 6 swaps + 3 rotations (rotation by 2 of ABCD is not a swap).
    rotated = "FINDINGS:\nMild emphysema. No pleural effusion.\nA 6 mm solid nodule in the " + (
        "right upper lobe.\nSmooth margin."
    )
    assert rotated in outputs
    assert len(outputs) > 4


def test_two_sentences_have_one_other_order():
    text = "FINDINGS:\nNo pulmonary nodules are identified.\nEmphysema: moderate."
    expected = "FINDINGS:\nEmphysema: moderate.\nNo pulmonary nodules are identified."
    assert perturb_sentence_order(text, np.random.default_rng(0)) == expected


@pytest.mark.parametrize(
    "text",
    ["FINDINGS:\nNo pulmonary nodules are identified.", "Mild emphysema.", "Normal. Normal.", ""],
)
def test_texts_without_two_different_sentences_are_left_out(text, tokenizer):
    assert not can_perturb(text)
    assert perturb_sentence_order(text, np.random.default_rng(0)) is None
    assert coherence_texts(tokenizer, [text, TEXT], MAX_LENGTH) == [TEXT]


def test_truncated_texts_are_left_out_of_coherence(tokenizer):
    long_text = TEXT + " Mild coronary artery calcification." * 30
    assert can_perturb(long_text)
    assert coherence_texts(tokenizer, [long_text, TEXT], MAX_LENGTH) == [TEXT]


# ---------------------------------------------------------------- the shared step
def tiny_decoder() -> ReportDecoder:
    return ReportDecoder(VOCAB, D_MODEL, n_layers=1, n_heads=2, max_length=MAX_LENGTH)


def test_coherence_loss_hand_values(tokenizer, one_thread):
    decoder, head = tiny_decoder(), CoherenceHead(D_MODEL)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.fill_(1.0)  # every logit is 1
    two = [TEXT, "FINDINGS:\nNo pulmonary nodules are identified.\nEmphysema: moderate."]
    losses = language_losses(decoder, head, tokenizer, two, np.random.default_rng(0))
    # One text as written (label 1: softplus(-1)), one reordered (label 0: softplus(1)).
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2  # 0.8133
    assert float(losses["coherence"].detach()) == pytest.approx(expected, abs=1e-6)
    assert float(losses["language_lm"].detach()) == pytest.approx(math.log(VOCAB), abs=0.3)
    # No reorderable text: coherence is 0, still connected to the head (DDP needs its grads).
    none = language_losses(decoder, head, tokenizer, ["Mild emphysema."], np.random.default_rng(0))
    assert float(none["coherence"].detach()) == 0.0 and none["coherence"].requires_grad
    assert set(language_losses(decoder, None, tokenizer, two, np.random.default_rng(0))) == {
        "language_lm"
    }


@pytest.fixture(scope="module")
def trained(tokenizer):
    """60 inline steps (the stage-3 fallback) on 270 texts; 30 held out."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    texts = crop_findings_corpus(300, 0)
    decoder = tiny_decoder()
    result = pretrain_language(decoder, tokenizer, texts[30:], 60, seed=0)
    decoder.eval()
    with torch.no_grad():
        heldout = language_losses(
            decoder, result.head, tokenizer, texts[:30], np.random.default_rng(0)
        )
    accuracy = evaluate_coherence(decoder, result.head, tokenizer, texts[:30])
    torch.set_num_threads(threads)
    return result, heldout, accuracy


def test_coherence_is_learned_on_held_out_texts(trained):
    result, _, (accuracy, examples) = trained
    # Measured over seeds 0..3: 0.85-0.925 after 60 steps (chance is 0.5); last-10 BCE 0.18-0.22.
    assert accuracy >= 0.75 and examples == 2 * 20  # 20 of the 30 fit and can be reordered
    assert len(result.coherence_losses) == 60
    assert result.coherence_losses[0] == pytest.approx(math.log(2), abs=0.1)
    assert np.mean(result.coherence_losses[-10:]) < 0.45


def test_language_model_loss_falls(trained):
    result, heldout, _ = trained
    assert result.lm_losses[0] == pytest.approx(math.log(VOCAB), abs=0.3)  # uniform at init
    assert result.final_lm_loss < result.lm_losses[0] - 1.5  # measured 5.70 -> 3.54-3.60
    assert float(heldout["language_lm"]) < math.log(VOCAB) - 1.5


def test_coherence_weight_zero_turns_the_objective_off(tokenizer, one_thread):
    decoder = tiny_decoder()
    result = pretrain_language(decoder, tokenizer, [TEXT] * 10, 2, loss_weights={"coherence": 0})
    assert len(result.lm_losses) == 2
    assert result.coherence_losses == [] and result.head is None
    with pytest.raises(ValueError, match=r"weights must be >= 0; got \{'coherence': -1.0\}"):
        pretrain_language(decoder, tokenizer, [TEXT], 2, loss_weights={"coherence": -1.0})


def test_text_batch_checks_its_texts():
    assert TextBatch(["a", "b"]).batch_size == 2
    with pytest.raises(TypeError, match="got an item of type int"):
        TextBatch(["a", 3])


# ---------------------------------------------------------------- the language stage
def test_language_config_parses_with_the_stage3_decoder_sizes():
    def parse(name):
        args = ["--config", str(EXPERIMENTS / "base.yaml"), "--config", str(EXPERIMENTS / name)]
        return LungVLMCLI(args=args, run=False)

    language, stage3 = parse("language.yaml"), parse("stage3.yaml")
    assert language.model.stage == "language"
    assert type(language.datamodule).__name__ == "LanguageDataModule"
    assert language.trainer.max_steps == stage3.model.vl_config.language_pretrain_steps == 400
    assert stage3.model.vl_config.language_init == "runs/language/checkpoints/last.ckpt"
    sizes = [
        dict(m.vl_heads.decoder.gpt2.config.to_dict(), max_length=m.vl_heads.max_length)
        for m in (language.model, stage3.model)
    ]
    for key in ("vocab_size", "n_embd", "n_layer", "n_head", "max_length", "resid_pdrop"):
        assert sizes[0][key] == sizes[1][key], key


def test_language_stage_trains_only_the_decoder_language_weights():
    module = language_module()
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    assert "language.coherence_head.linear.weight" in trained
    assert "vl_heads.decoder.gpt2.transformer.wte.weight" in trained
    assert not [n for n in trained if not n.startswith(("vl_heads.decoder.gpt2.", "language."))]
    assert not [n for n in trained if "crossattention" in n]
    optimizer = module.configure_optimizers()
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trained)
    with pytest.raises(ValueError, match="stage='language' needs vl_heads"):
        LungVLMModule(encoder=MultiScaleEncoder3D(**TINY_ENCODER), stage="language")


TINY_OVERLAY = f"""
trainer:
  accelerator: cpu
  devices: 1
  precision: 32-true
  max_steps: 30
  val_check_interval: 15
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
model:
  encoder:
    init_args:
      widths: [4, 8, 8, 16, 16]
      fpn_channels: 8
  vl_heads:
    init_args:
      vocab_size: {VOCAB}
      d_model: {D_MODEL}
      n_layers: 1
      n_heads: 2
      max_length: {MAX_LENGTH}
      dropout: 0.0
  vl:
    tokenizer_corpus_size: 40
data:
  init_args:
    n_texts: 60
    batch_size: 8
"""


@pytest.fixture(scope="module")
def language_run(tmp_path_factory) -> Path:
    """`lungvlm fit` of base.yaml + language.yaml + a tiny overlay: 30 steps on 54 texts."""
    run_dir = tmp_path_factory.mktemp("language")
    overlay = run_dir / "tiny.yaml"
    overlay.write_text(f"run_dir: {run_dir}\n" + TINY_OVERLAY)
    args = ["fit"]
    for config in (EXPERIMENTS / "base.yaml", EXPERIMENTS / "language.yaml", overlay):
        args += ["--config", str(config)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    return run_dir


def logged(run_dir: Path, key: str) -> list[float]:
    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open())
    return [float(row[key]) for row in rows if row.get(key)]


def test_language_stage_lm_loss_falls(language_run):
    train = logged(language_run, "train/language/lm_loss_step")
    val = logged(language_run, "val/language/lm_loss")
    assert len(train) == 30 and len(val) == 2  # validations at steps 15 and 30
    assert train[0] == pytest.approx(math.log(VOCAB), abs=0.3)  # uniform at init
    # Measured (seed_everything 1234, 1 and 2): validation 4.55-4.61 at step 15, 4.00-4.03 at 30.
    assert val[1] < val[0] < train[0] - 0.5
    assert val[1] < math.log(VOCAB) - 1.5
    accuracy = logged(language_run, "val/language/coherence_accuracy")
    assert len(accuracy) == 2 and all(0.0 <= a <= 1.0 for a in accuracy)
    assert len(logged(language_run, "train/language/coherence_loss_step")) == 30


def test_language_checkpoint_loads_safely(language_run, tokenizer):
    path = language_run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    meta = checkpoint[CHECKPOINT_KEY]
    assert meta["stage"] == "language" and meta["tasks"] == ["language_lm", "coherence"]
    assert meta["decoder_config"]["d_model"] == D_MODEL
    # The tokenizer is the one stage 3 fits from the same settings, saved as stage 3 saves it.
    assert meta["tokenizer_json"] == tokenizer_to_json(tokenizer)
    assert (language_run / "tokenizer" / "tokenizer.json").is_file()
    state = checkpoint["state_dict"]
    assert "language.coherence_head.linear.weight" in state
    assert checkpoint["global_step"] == 30


# ---------------------------------------------------------------- stage 3: language_init
def language_module() -> LungVLMModule:
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    heads = VisionLanguageHeads(
        encoder.feature_info, vocab_size=VOCAB, d_model=D_MODEL, n_layers=1, n_heads=2,
        max_length=MAX_LENGTH, dropout=0.0, embed_dim=16, risk_hidden_dim=16,
    )  # fmt: skip
    return LungVLMModule(encoder=encoder, stage="language", vl_heads=heads)


def stage3_module(d_model: int = D_MODEL, **vl) -> LungVLMModule:
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    heads = VisionLanguageHeads(
        encoder.feature_info, vocab_size=VOCAB, d_model=d_model, n_layers=1, n_heads=2,
        max_length=MAX_LENGTH, dropout=0.0, embed_dim=16, risk_hidden_dim=16,
    )  # fmt: skip
    config = VisionLanguageConfig(tokenizer_corpus_size=40, **vl)
    return LungVLMModule(
        encoder=encoder,
        stage="vision_language",
        seg_head=SegmentationHead(encoder.feature_info),
        vl_heads=heads,
        vl=config,
    )


def test_stage3_starts_from_the_language_checkpoint(language_run, one_thread):
    path = language_run / "checkpoints" / "last.ckpt"
    # language_pretrain_steps > 0: loading must replace inline pretraining, not precede it.
    module = stage3_module(language_init=str(path), language_pretrain_steps=3)
    module.setup("fit")
    checkpoint = read_checkpoint(path)
    assert tokenizer_to_json(module.vl.tokenizer) == checkpoint[CHECKPOINT_KEY]["tokenizer_json"]
    saved = {
        k.removeprefix(DECODER_PREFIX): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(DECODER_PREFIX)
    }
    state = module.vl_heads.decoder.state_dict()
    assert set(state) == set(saved)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    # The trained weights differ from a fresh decoder's: something was really loaded.
    fresh = stage3_module().vl_heads.decoder.state_dict()
    assert not torch.equal(
        fresh["gpt2.transformer.wte.weight"], state["gpt2.transformer.wte.weight"]
    )
    # The coherence head lives only in the language stage: stage-3 keys are unchanged.
    assert not [k for k in module.state_dict() if "coherence" in k]


def test_mismatched_decoder_size_names_the_file(language_run):
    path = language_run / "checkpoints" / "last.ckpt"
    module = stage3_module(d_model=16, language_init=str(path))
    pattern = re.escape(str(path)) + r".*d_model=32 in the file, 16 in the config"
    with pytest.raises(ValueError, match=pattern):
        module.setup("fit")


def test_a_file_that_is_not_a_language_checkpoint_is_refused(tmp_path):
    path = tmp_path / "stage2.ckpt"
    torch.save({"state_dict": {}, CHECKPOINT_KEY: {"stage": "segment"}}, path)
    module = stage3_module(language_init=str(path))
    with pytest.raises(
        ValueError, match=re.escape(f"{path} is not a language checkpoint (stage 'segment'")
    ):
        module.setup("fit")


def test_missing_language_checkpoint_falls_back_to_inline(tmp_path, caplog, one_thread):
    module = stage3_module(
        language_init=str(tmp_path / "none.ckpt"),
        language_pretrain_steps=2,
        language_pretrain_texts=8,
    )
    before = module.vl_heads.decoder.gpt2.transformer.wte.weight.detach().clone()
    logger = logging.getLogger("lungvlm.lightning.vision_language")
    logger.addHandler(caplog.handler)  # `lungvlm` may not propagate (configure_logging)
    try:
        module.setup("fit")
    finally:
        logger.removeHandler(caplog.handler)
    assert module.vl.tokenizer is not None and len(module.vl.tokenizer) <= VOCAB
    assert "none.ckpt does not exist" in caplog.text
    # The inline fallback trained the decoder (2 steps of the shared step function).
    after = module.vl_heads.decoder.gpt2.transformer.wte.weight
    assert not torch.equal(before, after)
    assert not [k for k in module.state_dict() if "coherence" in k]
