"""Question/answer pairs: reference answers, scoring, tokenisation, prompted generation, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungvlm.lightning.vision_language_losses import question_answer_loss
from lungvlm.metrics.report import QuestionAnswerAccuracy
from lungvlm.models.generation import greedy_generate
from lungvlm.models.report_decoder import ReportDecoder
from lungvlm.text.qa import (
    QUESTION_KINDS,
    QUESTIONS,
    answer_correct,
    answered_category,
    answers_agree,
    qa_prompt,
    reference_answer,
    sample_qa,
)
from lungvlm.text.tokenizer import encode_prompt, encode_qa, train_tokenizer

SPICULATED = {
    "side": "left",
    "lobe": "upper",
    "mean_diameter_mm": 7.46,
    "attenuation": "part_solid",
    "solid_component_mm": 3.2,
    "margin": "spiculated",
    "calcification": "none",
    "pleural_relation": "juxtapleural",
    "contains_fat": False,
    "lungrads_category": "4X",
}
SMOOTH = {
    **SPICULATED,
    "side": "right",
    "lobe": "middle",
    "mean_diameter_mm": 12.0,
    "attenuation": "solid",
    "solid_component_mm": None,
    "margin": "smooth",
    "calcification": "popcorn",
    "pleural_relation": "none",
    "lungrads_category": "2",
}


def test_reference_answers_state_the_labels():
    assert reference_answer("margin", SPICULATED) == "The margin is spiculated."
    assert reference_answer("size", SPICULATED) == "It measures 7.5 mm in mean diameter."
    assert reference_answer("attenuation", SPICULATED) == (
        "It is a part-solid nodule with a 3.2 mm solid component."
    )
    assert reference_answer("location", SPICULATED) == (
        "It is in the left upper lobe, abutting the pleura."
    )
    assert reference_answer("calcification", SPICULATED) == "No calcification."
    assert reference_answer("calcification", SMOOTH) == "It has popcorn calcification."
    assert reference_answer("risk", SMOOTH) == "Lung-RADS category 2."
    why = reference_answer("why", SPICULATED)
    assert why.startswith("Lung-RADS category 4X:") and "spiculated margin" in why


@pytest.mark.parametrize("kind", QUESTION_KINDS)
def test_each_answer_is_right_for_its_nodule_and_wrong_for_the_other(kind):
    for mine, other in ((SPICULATED, SMOOTH), (SMOOTH, SPICULATED)):
        assert answer_correct(kind, reference_answer(kind, mine), mine)
        assert not answer_correct(kind, reference_answer(kind, other), mine)
        assert not answer_correct(kind, "I cannot tell.", mine)


def test_size_tolerance_and_category_reading():
    ref = "It measures 12.0 mm in mean diameter."
    assert answers_agree("size", "It measures 14.3 mm in mean diameter.", ref)  # 20 % of 12
    assert not answers_agree("size", "It measures 14.6 mm in mean diameter.", ref)
    assert answers_agree("size", "About 1.2 cm.", ref)
    assert answered_category("LR 4B, Lung-RADS category 4B.") == "4B"
    assert answered_category("no category") is None
    with pytest.raises(ValueError, match="states no margin"):
        answers_agree("margin", "The margin is smooth.", "It is big.")
    with pytest.raises(ValueError, match="not one of"):
        reference_answer("colour", SMOOTH)


def test_sampling_covers_every_kind_and_wording():
    rng = np.random.default_rng(0)
    pairs = [sample_qa(SMOOTH, rng) for _ in range(400)]
    assert {p.kind for p in pairs} == set(QUESTION_KINDS)
    assert {p.question for p in pairs} == {q for qs in QUESTIONS.values() for q in qs}
    assert all(answer_correct(p.kind, p.answer, SMOOTH) for p in pairs)
    assert pairs[0].prompt == f"Q: {pairs[0].question} A:"


def test_accuracy_metric_counts_per_kind():
    metric = QuestionAnswerAccuracy()
    ref_margin = reference_answer("margin", SMOOTH)
    ref_risk = reference_answer("risk", SMOOTH)
    metric.update(
        ["margin", "margin", "risk"],
        ["The margin is smooth.", "The margin is spiculated.", "Lung-RADS category 2."],
        [ref_margin, ref_margin, ref_risk],
    )
    values = metric.compute()
    assert float(values["margin"]) == pytest.approx(0.5)
    assert float(values["risk"]) == pytest.approx(1.0)
    assert float(values["overall"]) == pytest.approx(2 / 3)
    assert "size" not in values


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [reference_answer(k, lab) for k in QUESTION_KINDS for lab in (SMOOTH, SPICULATED)]
    corpus += [qa_prompt(q) for qs in QUESTIONS.values() for q in qs]
    return train_tokenizer(corpus * 5, vocab_size=320)


def test_encode_qa_masks_exactly_the_answer(tokenizer):
    prompt = qa_prompt("What are the margins of this nodule?")
    answer = "The margin is smooth."
    ids, attention, mask = encode_qa(tokenizer, [prompt, ""], [answer, ""], 48)
    prefix = encode_prompt(tokenizer, prompt)[0]
    assert torch.equal(ids[0, : prefix.numel()], prefix)
    assert tokenizer.decode(ids[0][mask[0]], skip_special_tokens=True).strip() == answer
    assert int(ids[0][mask[0]][-1]) == tokenizer.convert_tokens_to_ids("[EOS]")
    assert int(attention[1].sum()) == 1 and not bool(mask[1].any())  # no question: [BOS] only
    with pytest.raises(ValueError, match="does not fit"):
        encode_qa(tokenizer, [prompt], [answer], 6)


def test_prompted_generation_returns_only_new_tokens():
    torch.manual_seed(0)
    decoder = ReportDecoder(40, d_model=32, n_layers=2, n_heads=4, max_length=32, dropout=0.0)
    decoder.eval()
    visual = torch.randn(1, 8, 32)
    prefix = torch.tensor([[1, 7, 9, 11]])
    cached = greedy_generate(decoder, visual, 10, prefix_ids=prefix)
    full = greedy_generate(decoder, visual, 10, prefix_ids=prefix, use_cache=False)
    assert torch.equal(cached.token_ids, full.token_ids)
    assert cached.token_ids.shape[1] <= 10
    # The same result as teacher-forcing the prompt and arg-maxing the next token.
    logits = decoder(prefix, torch.ones_like(prefix), visual).logits
    best = logits[0, -1].clone()
    best[[0, 1]] = -float("inf")
    assert int(cached.token_ids[0, 0]) == int(best.argmax())
    with pytest.raises(ValueError, match="start with"):
        greedy_generate(decoder, visual, 4, prefix_ids=torch.tensor([[7, 9]]))
    with pytest.raises(ValueError, match="max_length"):
        greedy_generate(decoder, visual, 30, prefix_ids=prefix)


class _Heads(torch.nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder


class _Batch:
    pass


def test_qa_training_answers_from_the_image(tokenizer):
    """Two crops (different visual tokens), the same questions, different answers: after a few
    steps the decoder answers each crop's question correctly, so the answer reads the image."""
    torch.manual_seed(0)
    decoder = ReportDecoder(
        len(tokenizer), d_model=32, n_layers=1, n_heads=2, max_length=48, dropout=0.0
    )
    visual = torch.randn(2, 6, 32)
    kinds = ["margin", "margin", "risk", "risk"]
    labels = [SMOOTH, SPICULATED, SMOOTH, SPICULATED]
    questions = [QUESTIONS[k][0] for k in kinds]
    answers = [reference_answer(k, lab) for k, lab in zip(kinds, labels, strict=True)]
    batch = _Batch()
    batch.qa_tokens, batch.qa_attention, batch.qa_answer_mask = encode_qa(
        tokenizer, [qa_prompt(q) for q in questions], answers, 48
    )
    tokens = visual[[0, 1, 0, 1]]
    heads = _Heads(decoder)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-2)
    first = None
    for _ in range(120):
        loss = question_answer_loss(heads, tokens, batch)
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 3.0 and float(loss) < 0.05
    decoder.eval()
    for i, (kind, lab) in enumerate(zip(kinds, labels, strict=True)):
        prefix = encode_prompt(tokenizer, qa_prompt(questions[i]))
        out = greedy_generate(
            decoder, tokens[i : i + 1], 30, tokenizer=tokenizer, prefix_ids=prefix
        )
        assert answer_correct(kind, out.sequences[0], lab), (kind, out.sequences[0])


def test_phantom_samples_carry_a_correct_question(tmp_path):
    from data_modules.phantom.generator import PhantomConfig
    from data_modules.phantom_datamodule import PhantomNoduleDataset

    dataset = PhantomNoduleDataset(
        0, 3, PhantomConfig.tiny(), positive_fraction=1.0, cache_dir=tmp_path
    )
    for i in range(3):
        sample = dataset[i]
        labels = sample.meta["labels"]
        assert sample.qa_kind in QUESTION_KINDS and sample.qa_question
        assert answer_correct(sample.qa_kind, sample.qa_answer, labels)
