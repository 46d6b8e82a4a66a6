"""Clinical field F1 with a fake parser, text metrics and retrieval recall (hand-counted)."""

import sys
import types

import pytest
import torch

from lungvlm.metrics.report import (
    ClinicalConceptF1,
    ReportTextMetrics,
    default_report_fields,
    flatten_report,
    report_field_names,
    retrieval_recall_at_k,
    values_match,
)
from lungvlm.text.schema import ExamFindings, Impression, NoduleFinding

PARSED = {
    "ref_a": {"nodule0.margin": "spiculated", "nodule0.mean_diameter_mm": 7.4, "category": "4A"},
    "gen_a": {
        "nodule0.margin": "spiculated",
        "nodule0.mean_diameter_mm": 8.4,  # 7 vs 8 mm after rounding: within 1 mm
        "category": "3",
        "emphysema": "mild",  # not in the reference
    },
    "ref_b": {"nodule0.margin": "smooth", "emphysema": "none"},
    "gen_b": {},
}
FIELDS = ("nodule0.margin", "nodule0.mean_diameter_mm", "category", "emphysema")


def fake_parse(text: str) -> dict:
    if text not in PARSED:
        raise ValueError(f"cannot parse {text!r}")
    return PARSED[text]


@pytest.mark.parametrize(
    ("field", "generated", "reference", "expected"),
    [
        ("nodule0.mean_diameter_mm", 7.5, 6.5, True),  # 8 vs 7
        ("nodule0.mean_diameter_mm", 7.4, 8.6, False),  # 7 vs 9
        ("nodule0.mean_diameter_mm", 10.0, 10.0, True),
        ("nodule0.margin", "Spiculated ", "spiculated", True),
        ("nodule0.margin", "smooth", "lobulated", False),
        ("nodule0.contains_fat", True, False, False),
    ],
)
def test_values_match(field, generated, reference, expected):
    assert values_match(field, generated, reference) is expected


def test_clinical_concept_f1_exact_counts():
    metric = ClinicalConceptF1(parse_fn=fake_parse, fields=FIELDS)
    metric.update(["gen_a", "gen_b"], ["ref_a", "ref_b"])
    assert metric.tp.tolist() == [1, 1, 0, 0]
    assert metric.fp.tolist() == [0, 0, 1, 1]
    assert metric.fn.tolist() == [1, 0, 1, 1]
    result = metric.compute()
    assert result["nodule0.margin/precision"].item() == pytest.approx(1.0)
    assert result["nodule0.margin/recall"].item() == pytest.approx(0.5)
    assert result["nodule0.margin/f1"].item() == pytest.approx(2 / 3)
    assert result["nodule0.mean_diameter_mm/f1"].item() == pytest.approx(1.0)
    assert result["category/f1"].item() == 0.0
    # Micro: TP 2, FP 2, FN 3 -> P 0.5, R 0.4, F1 = 4 / 9.
    assert result["micro_precision"].item() == pytest.approx(0.5)
    assert result["micro_recall"].item() == pytest.approx(0.4)
    assert result["micro_f1"].item() == pytest.approx(4 / 9)


def test_clinical_concept_f1_unparseable_generation_and_errors():
    metric = ClinicalConceptF1(parse_fn=fake_parse, fields=FIELDS)
    metric.update(["gibberish"], ["ref_a"])
    assert metric.fn.tolist() == [1, 1, 1, 0] and metric.fp.sum().item() == 0
    with pytest.raises(ValueError, match="got 1 generated reports and 2 references"):
        metric.update(["gen_a"], ["ref_a", "ref_b"])
    assert "nodule0.margin" in report_field_names(1) and "category" in report_field_names(1)


def test_flatten_report_with_schema_findings():
    nodule = NoduleFinding(
        side="right",
        lobe="upper",
        mean_diameter_mm=7.44,
        attenuation="solid",
        margin="spiculated",
        shape="irregular",
    )
    findings = ExamFindings(
        nodules=[nodule], emphysema="mild", impression=Impression("4X", "Diagnostic CT")
    )
    flat = flatten_report(findings)
    assert flat["nodule0.mean_diameter_mm"] == 7.4
    assert flat["nodule0.margin"] == "spiculated"
    assert flat["emphysema"] == "mild" and flat["category"] == "4X"
    assert "nodule0.solid_component_mm" not in flat  # None = not stated


def test_default_report_fields_imports_parser_lazily(monkeypatch):
    parsed = types.SimpleNamespace(
        nodules=[{"margin": "smooth", "mean_diameter_mm": 5.2, "volume_mm3": None}],
        emphysema="none",
        category="2",
    )
    fake = types.ModuleType("lungvlm.text.parser")
    fake.parse_report = lambda text: parsed
    monkeypatch.setitem(sys.modules, "lungvlm.text.parser", fake)
    assert default_report_fields("any text") == {
        "nodule0.margin": "smooth",
        "nodule0.mean_diameter_mm": 5.2,
        "emphysema": "none",
        "category": "2",
    }


def test_report_text_metrics_hand_values():
    metric = ReportTextMetrics()
    batch = metric(["a b c d e"], ["a b c d f"])
    # Clipped n-gram precisions 4/5, 3/4, 2/3, 1/2; brevity penalty 1 -> (0.2)^(1/4).
    assert batch["bleu4"].item() == pytest.approx(0.2**0.25, abs=1e-4)
    # LCS 4 of 5 tokens each way -> F = 0.8.
    assert batch["rougeL_f"].item() == pytest.approx(0.8, abs=1e-4)
    metric.update(["the cat sat on the mat"], ["the cat is on the mat"])
    total = metric.compute()
    # ROUGE-L is averaged per pair: (0.8 + 5/6) / 2.
    assert total["rougeL_f"].item() == pytest.approx((0.8 + 5 / 6) / 2, abs=1e-4)
    metric.reset()
    metric.update(["x y z w"], ["x y z w"])
    assert metric.compute()["bleu4"].item() == pytest.approx(1.0)


def test_retrieval_recall_at_k():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.2], [0.3, 0.3, 0.3]])
    # True ranks (others scoring >= the true item): 0, 1, 2.
    assert retrieval_recall_at_k(sim, 1).item() == pytest.approx(1 / 3)
    assert retrieval_recall_at_k(sim, 2).item() == pytest.approx(2 / 3)
    assert retrieval_recall_at_k(sim, 3).item() == pytest.approx(1.0)
    # Column 0 as every target: 0.9 and 0.8 are row maxima, 0.3 ties with two others -> 2/3.
    column0 = retrieval_recall_at_k(sim, 1, targets=torch.tensor([0, 0, 0]))
    assert column0.item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k=0 must be >= 1"):
        retrieval_recall_at_k(sim, 0)
