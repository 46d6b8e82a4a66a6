"""Language pretraining: sentence-order perturbation, coherence objective, language checkpoint."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
import torch

from lungvlm.cli import main
from lungvlm.lightning.language import (
    can_perturb,
    coherence_texts,
    crop_findings_corpus,
    perturb_sentence_order,
    pretrain_language,
)
from lungvlm.lightning.language_checkpoint import read_language_checkpoint
from lungvlm.lightning.module import LungVLMModule
from lungvlm.lightning.vl_task import VisionLanguageConfig, fit_report_tokenizer
from lungvlm.models.encoder import MultiScaleEncoder3D
from lungvlm.models.generation import sentence_bounds
from lungvlm.models.heads.segmentation import SegmentationHead
from lungvlm.models.report_decoder import ReportDecoder
from lungvlm.models.vlm import VisionLanguageHeads
from lungvlm.text.tokenizer import tokenizer_to_json
from tests.conftest import TINY_ENCODER

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


# ---------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tokenizer):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    decoder = ReportDecoder(VOCAB, D_MODEL, n_layers=1, n_heads=2, max_length=MAX_LENGTH)
    result = pretrain_language(decoder, tokenizer, crop_findings_corpus(300, 0), 60, seed=0)
    torch.set_num_threads(threads)
    return result


def test_coherence_is_learned_on_held_out_texts(trained):
    # Measured over seeds 0..6: 0.875-1.0 after 60 steps; chance is 0.5.
    assert trained.coherence_accuracy >= 0.75
    assert trained.n_heldout_texts == 30 and trained.n_train_texts == 270
    assert len(trained.coherence_losses) == 60
    assert trained.coherence_losses[0] == pytest.approx(math.log(2), abs=0.1)
    assert np.mean(trained.coherence_losses[-10:]) < 0.45


def test_language_model_loss_falls(trained):
    assert trained.lm_losses[0] == pytest.approx(math.log(VOCAB), abs=0.3)  # uniform at init
    assert trained.final_lm_loss < trained.lm_losses[0] - 1.5  # measured 5.70 -> 3.3-3.5
    assert trained.heldout_lm_loss < math.log(VOCAB) - 1.5


def test_coherence_weight_zero_turns_the_objective_off(tokenizer, one_thread):
    decoder = ReportDecoder(VOCAB, D_MODEL, n_layers=1, n_heads=2, max_length=MAX_LENGTH)
    result = pretrain_language(decoder, tokenizer, [TEXT] * 10, 2, coherence_weight=0.0)
    assert len(result.lm_losses) == 2
    assert result.coherence_losses == [] and result.coherence_accuracy is None
    with pytest.raises(ValueError, match="coherence_weight must be >= 0; got -1"):
        pretrain_language(decoder, tokenizer, [TEXT], 2, coherence_weight=-1.0)


# ---------------------------------------------------------------- checkpoint + stage 3
def write_configs(tmp_path) -> list[str]:
    """A base file and an override (d_model 64 -> 32), like base.yaml + stage3.yaml."""
    base = tmp_path / "base.yaml"
    base.write_text(
        "seed_everything: 3\nmodel:\n  vl_heads:\n    init_args:\n"
        f"      vocab_size: {VOCAB}\n      d_model: 64\n      n_layers: 1\n      n_heads: 2\n"
        f"      max_length: {MAX_LENGTH}\n      dropout: 0.0\n"
    )
    stage = tmp_path / "stage.yaml"
    stage.write_text(
        "model:\n  vl_heads:\n    init_args:\n      d_model: 32\n  vl:\n"
        "    tokenizer_corpus_size: 40\n    language_pretrain_texts: 60\n"
        "    language_pretrain_steps: 100\n"
    )
    return ["--config", str(base), "--config", str(stage)]


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


@pytest.fixture(scope="module")
def language_file(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("language")
    out = tmp_path / "language" / "language.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    code = main(["pretrain-language", *write_configs(tmp_path), "--out", str(out), "--steps", "6"])
    torch.set_num_threads(threads)
    assert code == 0
    return out


def test_cli_writes_a_language_checkpoint(language_file, tokenizer):
    data = read_language_checkpoint(language_file)
    assert data["decoder_config"]["d_model"] == D_MODEL  # the later file wins
    assert data["decoder_config"]["max_length"] == MAX_LENGTH
    assert len(data["lm_losses"]) == 6 and len(data["coherence_losses"]) == 6
    assert data["settings"]["seed"] == 3 and data["settings"]["heldout_texts"] == 6
    assert 0.0 <= data["coherence_accuracy"] <= 1.0
    assert data["wall_seconds"] > data["train_seconds"] > 0
    # The tokenizer is the one stage 3 trains from the same settings.
    assert data["tokenizer_json"] == tokenizer_to_json(tokenizer)
    assert not list(language_file.parent.glob("*.tmp"))


def test_stage3_starts_from_the_language_checkpoint(language_file, one_thread):
    # language_pretrain_steps > 0: loading must replace inline pretraining, not precede it.
    module = stage3_module(language_init=str(language_file), language_pretrain_steps=3)
    module.setup("fit")
    data = read_language_checkpoint(language_file)
    assert tokenizer_to_json(module.vl.tokenizer) == data["tokenizer_json"]
    state = module.vl_heads.decoder.state_dict()
    assert set(state) == set(data["decoder_state_dict"])
    for key, value in data["decoder_state_dict"].items():
        assert torch.equal(state[key], value), key
    # The coherence head lives only during pretraining: stage-3 keys are unchanged.
    assert not [k for k in module.state_dict() if "coherence" in k]


def test_mismatched_decoder_size_names_the_file(language_file):
    module = stage3_module(d_model=16, language_init=str(language_file))
    pattern = re.escape(str(language_file)) + r".*d_model=32 in the file, 16 in the config"
    with pytest.raises(ValueError, match=pattern):
        module.setup("fit")


def test_a_file_that_is_not_a_language_checkpoint_is_refused(tmp_path):
    path = tmp_path / "stage2.ckpt"
    torch.save({"state_dict": {}}, path)
    module = stage3_module(language_init=str(path))
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a language checkpoint")):
        module.setup("fit")


def test_missing_language_checkpoint_falls_back_to_inline(tmp_path, caplog):
    module = stage3_module(language_init=str(tmp_path / "none.pt"), language_pretrain_steps=0)
    logger = logging.getLogger("lungvlm.lightning.vl_task")
    logger.addHandler(caplog.handler)  # `lungvlm` may not propagate (configure_logging)
    try:
        module.setup("fit")
    finally:
        logger.removeHandler(caplog.handler)
    assert module.vl.tokenizer is not None and len(module.vl.tokenizer) <= VOCAB
    assert "none.pt does not exist" in caplog.text


def test_cli_without_decoder_sizes_names_the_config(tmp_path, capsys):
    config = tmp_path / "stage1.yaml"
    config.write_text("model:\n  stage: pretrain\n")
    code = main(["pretrain-language", "--config", str(config), "--out", str(tmp_path / "l.pt")])
    assert code == 2
    assert f"{config} has no model.vl_heads" in capsys.readouterr().err
