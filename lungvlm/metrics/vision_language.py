"""Stage-3 metrics of one split: report text, concept F1, grounding, risk, retrieval, QA.

Keys are ``task/metric`` (the LightningModule adds the split): ``report/concept_f1``,
``grounding/pointing_game``, ``risk/malignancy_auroc``, ``retrieval/recall_at_1``, ...
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import CatMetric
from torchmetrics.classification import BinaryAUROC

from lungvlm.labels import GROWTH_BINS_MONTHS
from lungvlm.losses.survival import probability_event_by
from lungvlm.metrics.grounding import HeatmapMassInMask, PointingGame
from lungvlm.metrics.report import (
    ClinicalConceptF1,
    QuestionAnswerAccuracy,
    ReportTextMetrics,
    retrieval_recall_at_k,
)
from lungvlm.metrics.risk import ConcordanceIndex, lungrads_metrics, malignancy_metrics

#: Risk variants evaluated: which text the risk head sees.
RISK_VARIANTS: tuple[str, ...] = ("risk", "risk_generated", "risk_visual")


class VisionLanguageMetrics(nn.Module):
    """One set of stage-3 metrics for one split (val or test)."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ReportTextMetrics()
        self.concept_f1 = ClinicalConceptF1()
        self.pointing = PointingGame()
        self.mass = HeatmapMassInMask()
        self.growth_cindex = ConcordanceIndex()
        self.risk = nn.ModuleDict()
        for variant in RISK_VARIANTS:
            self.risk[f"{variant}_malignancy"] = malignancy_metrics()
            self.risk[f"{variant}_lungrads"] = lungrads_metrics()
        self.visual_embeddings = CatMetric()
        self.text_embeddings = CatMetric()
        self.zero_shot = BinaryAUROC()
        self.qa = QuestionAnswerAccuracy()

    def compute(self) -> dict[str, Tensor]:
        """All values keyed ``task/metric`` (the caller adds the split)."""
        out: dict[str, Tensor] = {}
        text = self.text.compute()
        out.update({f"report/{k}": v for k, v in text.items()})
        f1 = self.concept_f1.compute()
        for key, value in f1.items():  # "micro_f1" -> concept_f1, "margin/f1" -> concept_margin_f1
            name = key.removeprefix("micro_").replace("/", "_")
            out[f"report/concept_{name}"] = value
        out["grounding/pointing_game"] = self.pointing.compute()
        out["grounding/mass_in_mask"] = self.mass.compute()
        out["risk/growth_cindex"] = self.growth_cindex.compute()
        for name, metric in self.risk.items():
            variant, task = name.rsplit("_", 1)
            for key, value in metric.compute().items():
                out[f"{variant}/{task}_{key}"] = value
        visual, text_emb = self.visual_embeddings.compute(), self.text_embeddings.compute()
        if visual.ndim == 2 and visual.shape[0] > 1:
            sim = visual @ text_emb.T
            out["retrieval/recall_at_1"] = retrieval_recall_at_k(sim, 1)
            out["retrieval/recall_at_5"] = retrieval_recall_at_k(sim, min(5, sim.shape[0]))
        if bool(self.qa.total.sum() > 0):
            out.update({f"qa/accuracy_{k}": v for k, v in self.qa.compute().items()})
        try:
            out["zero_shot/spiculation_auroc"] = self.zero_shot.compute()
        except (ValueError, RuntimeError):
            pass  # no samples with both classes
        return out

    def reset(self) -> None:
        """Reset every metric."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset") and hasattr(module, "_defaults"):
                module.reset()


def risk_update(metrics: VisionLanguageMetrics, variant: str, risk, batch) -> None:
    """Update the malignancy and Lung-RADS metrics of one risk variant."""
    metrics.risk[f"{variant}_malignancy"].update(
        torch.sigmoid(risk.malignancy_logit.float()),
        batch.malignancy.long(),
        batch.malignancy_present,
    )
    metrics.risk[f"{variant}_lungrads"].update(
        risk.lungrads_prediction(), batch.lungrads, batch.lungrads_present
    )


def growth_risk_score(risk) -> Tensor:
    """P(growth by 12 months) from the hazard logits: the C-index risk score (B,)."""
    return probability_event_by(risk.growth_hazard_logits.float(), 12.0, GROWTH_BINS_MONTHS)
