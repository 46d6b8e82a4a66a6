"""Trivial baselines for the stage-3 test metrics, computed on the same phantom test split.

Every stage-3 number must beat a trivial baseline. This script computes, with the same metric
classes as training, what these score on the phantom test split:

- Lung-RADS: always the majority category of the *training* split;
- malignancy: a constant probability (the training prevalence) -> AUROC 0.5;
- growth: a constant risk -> C-index 0.5;
- report: one constant report for every crop (the most frequent training report) -> BLEU-4,
  ROUGE-L and clinical concept F1 against the references;
- grounding: a heatmap that is a point at the crop centre (nodule crops are centred, so this is
  a strong baseline for the pointing game) and a uniform heatmap (mass in mask = mask fraction);
- retrieval: random ranking -> R@1 = 1 / N;
- questions: for each kind of question the most frequent training answer (e.g. always "The
  margin is smooth.") -> accuracy per kind and overall.

Usage: ``python -m benchmarks.stage3_baselines [--n-train 256 --n-test 48 --cache-dir DIR]``
(defaults match experiments/base.yaml, so the phantom cache of a training run is reused).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from data_modules.phantom_datamodule import PhantomDataModule
from lungvlm.metrics.grounding import HeatmapMassInMask, PointingGame
from lungvlm.metrics.report import (
    ClinicalConceptF1,
    QuestionAnswerAccuracy,
    ReportTextMetrics,
)
from lungvlm.metrics.risk import ConcordanceIndex, lungrads_metrics, malignancy_metrics


def _batches(loader):
    yield from loader


def run(
    n_train: int = 256,
    n_test: int = 48,
    crop_size_vox: int = 32,
    cache_dir: str | None = "runs/phantom_cache",
    seed: int = 0,
    hard_negative_fraction: float = 0.5,
) -> dict[str, float]:
    """Compute the baseline values; returns ``{"split/task/metric": value}``."""
    dm = PhantomDataModule(
        crop_size_vox=crop_size_vox,
        n_train=n_train,
        n_val=48,
        n_test=n_test,
        batch_size=8,
        num_workers=0,
        seed=seed,
        cache_dir=cache_dir,
        augment=False,
        positive_fraction=0.8,
        hard_negative_fraction=hard_negative_fraction,
    )
    dm.setup("fit")
    dm.setup("test")
    lungrads, malignant, reports = Counter(), [], Counter()
    answers: dict[str, Counter] = {}
    for batch in _batches(dm.train_dataloader()):
        lungrads.update(batch.lungrads[batch.lungrads_present].tolist())
        malignant += batch.malignancy[batch.malignancy_present].tolist()
        reports.update(batch.report_text)
        for kind, answer in zip(batch.qa_kind, batch.qa_answer, strict=True):
            if kind:
                answers.setdefault(kind, Counter())[answer] += 1
    majority = lungrads.most_common(1)[0][0]
    prevalence = sum(malignant) / max(1, len(malignant))
    constant_report = reports.most_common(1)[0][0]

    lr_metrics, mal_metrics = lungrads_metrics(), malignancy_metrics()
    text, concept = ReportTextMetrics(), ClinicalConceptF1()
    cindex = ConcordanceIndex()
    pointing, mass = PointingGame(), HeatmapMassInMask()
    qa = QuestionAnswerAccuracy()
    majority_answer = {kind: c.most_common(1)[0][0] for kind, c in answers.items()}
    n_nodule = 0
    for batch in _batches(dm.test_dataloader()):
        b = batch.batch_size
        lr_metrics.update(torch.full((b,), majority), batch.lungrads, batch.lungrads_present)
        mal_metrics.update(
            torch.full((b,), prevalence), batch.malignancy.long(), batch.malignancy_present
        )
        cindex.update(
            torch.zeros(b), batch.growth_time_months, batch.growth_event, batch.growth_present
        )
        text.update([constant_report] * b, batch.report_text)
        concept.update([constant_report] * b, batch.report_text)
        asked = [i for i, kind in enumerate(batch.qa_kind) if kind in majority_answer]
        qa.update(
            [batch.qa_kind[i] for i in asked],
            [majority_answer[batch.qa_kind[i]] for i in asked],
            [batch.qa_answer[i] for i in asked],
        )
        masks = batch.seg_mask[:, 0] > 0.5
        keep = batch.seg_present & masks.flatten(1).any(1)
        if bool(keep.any()):
            shape = masks.shape[1:]
            centre = torch.zeros((int(keep.sum()), *shape))
            centre[:, shape[0] // 2, shape[1] // 2, shape[2] // 2] = 1.0
            uniform = torch.full_like(centre, 1.0 / centre[0].numel())
            pointing.update(centre, masks[keep])
            mass.update(uniform, masks[keep])
            n_nodule += int(keep.sum())
    out: dict[str, float] = {}
    for key, value in lr_metrics.compute().items():
        out[f"test/risk/lungrads_{key}"] = float(value)
    out["test/risk/malignancy_auroc"] = float(mal_metrics.compute()["auroc"])
    out["test/risk/growth_cindex"] = float(cindex.compute())
    for key, value in text.compute().items():
        out[f"test/report/{key}"] = float(value)
    out["test/report/concept_f1"] = float(concept.compute()["micro_f1"])
    out["test/grounding/pointing_game_centre_point"] = float(pointing.compute())
    out["test/grounding/mass_in_mask_uniform"] = float(mass.compute())
    out["test/retrieval/recall_at_1_random"] = 1.0 / max(1, n_nodule)
    for key, value in qa.compute().items():
        out[f"test/qa/accuracy_{key}_majority_answer"] = float(value)
    out["majority_lungrads_index"] = float(majority)
    out["malignancy_prevalence_train"] = float(prevalence)
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Command-line entry point: prints the baselines as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--n-test", type=int, default=48)
    parser.add_argument("--crop-size-vox", type=int, default=32)
    parser.add_argument("--cache-dir", default="runs/phantom_cache")
    parser.add_argument("--hard-negative-fraction", type=float, default=0.5)
    args = parser.parse_args(argv)
    result = run(
        args.n_train, args.n_test, args.crop_size_vox, args.cache_dir,
        hard_negative_fraction=args.hard_negative_fraction,
    )  # fmt: skip
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
