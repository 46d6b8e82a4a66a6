"""Stage 3 through the LightningModule: tokens, composite loss, overfitting, metrics, checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from lungvlm.lightning.checkpoint import CHECKPOINT_KEY
from lungvlm.lightning.module import LungVLMModule
from lungvlm.lightning.vision_language import VL_LOSS_NAMES, VisionLanguageConfig
from lungvlm.models.encoder import MultiScaleEncoder3D
from lungvlm.models.heads.segmentation import SegmentationHead
from lungvlm.models.vision_language import VisionLanguageHeads
from tests.conftest import TINY_ENCODER, sphere_batch


def make_stage3(lr: float = 3e-3) -> LungVLMModule:
    encoder = MultiScaleEncoder3D(**TINY_ENCODER)
    module = LungVLMModule(
        encoder=encoder,
        stage="vision_language",
        seg_head=SegmentationHead(encoder.feature_info),
        vl_heads=VisionLanguageHeads(
            encoder.feature_info,
            vocab_size=300,
            d_model=32,
            n_layers=1,
            n_heads=2,
            max_length=40,
            dropout=0.0,
            embed_dim=16,
            risk_hidden_dim=16,
            mask_pooling=True,
        ),
        vl=VisionLanguageConfig(tokenizer_corpus_size=40, generation_max_new_tokens=38),
        optimizer=lambda p: torch.optim.AdamW(p, lr=lr),
    )
    module.vl.fit_tokenizer()
    return module


def tokenized_batch(module: LungVLMModule, n: int = 2):
    batch = sphere_batch(n)
    module.vl.tokenize_batch(batch)
    return batch


def test_tokens_and_nodule_labels_follow_the_report():
    module = make_stage3()
    batch = tokenized_batch(module)
    ids = batch.report_tokens[0][batch.report_attention[0].bool()]
    text = module.vl.tokenizer.decode(ids, skip_special_tokens=True)
    assert text == batch.report_text[0]
    # The span (2, 6) = "8 mm" is tied to nodule 0: exactly the tokens "8" and " mm".
    labelled = batch.token_nodule[0] == 0
    pieces = module.vl.tokenizer.convert_ids_to_tokens(batch.report_tokens[0][labelled])
    assert "".join(pieces).replace("Ġ", " ").strip() == "8 mm"


def test_composite_loss_has_every_task_and_is_finite():
    module = make_stage3()
    losses, _ = module.shared_step(tokenized_batch(module))
    assert set(losses) == {"segmentation", *VL_LOSS_NAMES, "total"}
    assert all(math.isfinite(float(v)) for v in losses.values())
    # An untrained decoder is close to uniform over the vocabulary.
    assert abs(float(losses["report"]) - math.log(300)) < 1.0
    expected = sum(float(v) for k, v in losses.items() if k != "total")
    assert float(losses["total"]) == pytest.approx(expected, rel=1e-5)


def test_absent_labels_leave_their_losses_at_zero():
    module = make_stage3()
    batch = tokenized_batch(module)
    batch.malignancy_present[:] = False
    batch.lungrads_present[:] = False
    batch.growth_present[:] = False
    batch.concepts_present[:] = False
    losses, _ = module.shared_step(batch)
    for name in ("malignancy", "lungrads", "growth", "concepts"):
        assert float(losses[name]) == 0.0


def test_few_steps_overfit_the_report_of_a_fixed_batch():
    torch.manual_seed(0)
    module = make_stage3(lr=1e-2)
    batch = tokenized_batch(module)
    optimizer = module.configure_optimizers()
    first = None
    for _ in range(60):
        optimizer.zero_grad()
        losses, _ = module.shared_step(batch)
        losses["total"].backward()
        optimizer.step()
        first = float(losses["report"]) if first is None else first
    assert first > 4.0
    assert float(losses["report"]) < 0.5  # report CE in nats per token


def test_validation_metrics_and_samples(tmp_path):
    module = make_stage3()
    batch = tokenized_batch(module, n=3)
    module.eval()
    with torch.no_grad():
        losses, outputs = module.shared_step(batch)
    module.vl.update_metrics("val", outputs["vl_forward"], batch, keep_samples=True)
    values = module.vl.compute_metrics("val")
    for key in (
        "report/bleu4",
        "report/rougeL_f",
        "report/concept_f1",
        "risk/lungrads_accuracy",
        "risk_generated/malignancy_auroc",
        "risk_visual/lungrads_kappa_linear",
        "grounding/pointing_game",
        "grounding/mass_in_mask",
        "retrieval/recall_at_1",
    ):
        assert key in values, sorted(values)
    # All three references are Lung-RADS 4A (index 4).
    predicted = outputs["vl_forward"].risk.lungrads_prediction()
    expected = float((predicted == 4).float().mean())
    assert float(values["risk/lungrads_accuracy"]) == pytest.approx(expected)
    assert 0.0 <= float(values["grounding/mass_in_mask"]) <= 1.0
    path = module.vl.write_samples("val", 0, str(tmp_path), [], 0)
    text = path.read_text()
    assert "sphere-0" in text and "**Generated**" in text


def test_checkpoint_carries_the_tokenizer():
    module = make_stage3()
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    meta = checkpoint[CHECKPOINT_KEY]
    assert meta["stage"] == "vision_language" and "report" in meta["tasks"]
    restored = make_stage3()
    restored.vl.tokenizer = None
    restored.on_load_checkpoint(checkpoint)
    sentence = "A 7.3 mm nodule."
    assert (
        restored.vl.tokenizer(sentence)["input_ids"] == module.vl.tokenizer(sentence)["input_ids"]
    )
