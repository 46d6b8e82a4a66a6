"""`lungvlm audit`: sections on hand-built records, the HTML page, and the command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lungvlm.evaluation.audit import (
    brock_of,
    brock_section,
    deferral_section,
    fairness_section,
    risk_coverage_curve,
    run_audit,
)
from lungvlm.export.audit_html import write_audit_page
from lungvlm.lightning.checkpoint import CALIBRATION_KEY, CHECKPOINT_KEY, read_checkpoint
from tests.browser import needs_chromium, screenshot
from tests.report_fixtures import write_stage3_checkpoint
from tests.test_report_pipeline import run_cli

VENDORS = ("SIEMENS", "GE MEDICAL SYSTEMS")


def _record(i: int, rng: np.random.Generator) -> dict:
    malignant = int(i % 3 == 0)
    size = 14.0 if malignant else 5.0
    category = 4 if malignant else 2  # 4A or 2
    probs = np.full(7, 0.02)
    probs[category if rng.random() < 0.8 else (2 if malignant else 4)] = 0.88
    return {
        "crop_id": f"c{i}",
        "profile": {"manufacturer": VENDORS[i % 2], "kernel": "soft" if i % 4 < 2 else "sharp",
                    "slice_thickness_mm": 1.0 + (i % 3), "exposure_mas": 20.0 + 40 * (i % 4)},
        "nodule": {"mean_diameter_mm": size, "attenuation": "solid", "lobe": "upper",
                   "margin": "spiculated" if malignant else "smooth", "calcification": "none",
                   "shape": "irregular" if malignant else "round"},
        "zero_shot": {"spiculated": 0.9 if malignant else 0.1, "round": 0.5},
        "concept_probabilities": {"spiculation": 0.2, "sphericity": 0.3 if malignant else 0.8},
        "malignancy_logit": (3.0 if malignant else -3.0) + rng.normal(0, 2.0),
        "malignant": malignant,
        "lungrads_probabilities": (probs / probs.sum()).tolist(),
        "lungrads": category,
        "growth_probability_12m": 0.7 if malignant else 0.2,
        "growth_time_months": 9.0 if malignant else 24.0,
        "growth_event": malignant,
        "dice": 0.8,
        "sentences": [(0.9, True), (0.3, bool(i % 2))],
        "text": "",
    }  # fmt: skip


@pytest.fixture(scope="module")
def records():
    rng = np.random.default_rng(0)
    return [_record(i, rng) for i in range(60)], [_record(i, rng) for i in range(60, 120)]


def test_brock_of_a_phantom_nodule_is_the_published_formula():
    nodule = {"mean_diameter_mm": 4.0, "attenuation": "solid", "lobe": "lower", "margin": "smooth"}
    # age 62, male, no history, no emphysema, 4 mm solid, lower lobe, count 1, not spiculated
    x = -6.7892 - 0.0824 * (1 - 4)
    assert brock_of({"nodule": nodule}) == pytest.approx(1 / (1 + math.exp(-x)), rel=1e-6)
    assert brock_of({"nodule": None}) is None


def test_brock_section_on_perfectly_separated_features(records):
    _, test = records
    out = brock_section(test, None, n_boot=100)
    assert out["n"] == 60 and out["positives"] == 20
    assert out["brock"]["auroc"] == pytest.approx(1.0)  # size and spiculation separate them
    assert 0.5 < out["ours"]["auroc"] < 1.0
    assert out["ours_minus_brock"]["difference"] == pytest.approx(out["ours"]["auroc"] - 1.0)


def test_zero_shot_section_beside_the_concept_head(records):
    from lungvlm.evaluation.zero_shot import zero_shot_section

    _, test = records
    out = zero_shot_section(test, n_boot=50)
    assert out["spiculated"]["n"] == 60 and out["spiculated"]["positives"] == 20
    assert out["spiculated"]["zero_shot_auroc"]["value"] == pytest.approx(1.0)
    assert out["spiculated"]["concept_head_auroc"]["value"] == pytest.approx(0.5)  # constant
    assert out["round"]["zero_shot_auroc"]["value"] == pytest.approx(0.5)
    assert out["round"]["concept_head_auroc"]["value"] == pytest.approx(1.0)
    assert out["calcified"]["zero_shot_auroc"]["value"] is None  # no calcified nodule
    assert out["solid"]["n"] == 0  # no zero-shot score recorded for it


def test_risk_coverage_and_deferral(records):
    curve = risk_coverage_curve([0.9, 0.8, 0.7, 0.2, 0.1], [True, True, False, True, False])
    assert [row["kept"] for row in curve][:2] == [1, 1] and curve[-1]["kept"] == 5
    at_80 = next(row for row in curve if row["coverage"] == 0.8)
    assert at_80["kept"] == 4 and at_80["precision"] == pytest.approx(3 / 4)
    _, test = records
    out = deferral_section(test)
    # 60 confident correct sentences first, then 60 at 0.3 of which half are correct
    assert out["n_sentences"] == 120
    assert out["precision_at_80"] == pytest.approx((60 + 18) / 96, abs=0.03)
    assert out["meets_target"] is False


#: Fields of a `lungvlm evaluate` scan record the fairness rows do not use.
EXTRA = {"instances": [], "windows_fraction": 1.0, "timings_s": {}}


def test_fairness_section_with_chest_rows_at_the_operating_point(records):
    from lungvlm.evaluation.audit import chest_rows

    _, test = records
    siemens = {"scan_id": "a", "dice": [], "detected": [], "n_false_positives": 0, **EXTRA,
               "references": [[0, 0, 0, 8.0], [20, 0, 0, 4.0]],
               "candidates": [[0, 0, 0, 0.99], [50, 0, 0, 0.995], [60, 0, 0, 0.5], [20, 0, 0, 0.3]],
               "profile": {"manufacturer": "SIEMENS", "kernel": "soft"}}  # fmt: skip
    ge = {"scan_id": "b", "dice": [], "detected": [], "n_false_positives": 0, **EXTRA,
          "references": [[0, 0, 0, 9.0]],
          "candidates": [[0, 0, 0, 0.5], [30, 0, 0, 0.95], [40, 0, 0, 0.97], [50, 0, 0, 0.99]],
          "profile": {"manufacturer": "GE MEDICAL SYSTEMS", "kernel": "soft"}}  # fmt: skip
    rows = chest_rows([siemens, ge], candidate_threshold=0.9)
    assert [r["detected"] for r in rows] == [[True, False], [False]]
    assert [r["n_false_positives"] for r in rows] == [1, 3]
    every = chest_rows([siemens, ge], candidate_threshold=None)
    assert [r["detected"] for r in every] == [[True, True], [True]]
    assert [r["n_false_positives"] for r in every] == [2, 3]
    out = fairness_section(test, rows * 3, None, n_boot=50)
    groups = out["chests"]["axes"]["vendor"]["groups"]
    assert groups["SIEMENS"]["sensitivity_ge_6mm"]["value"] == 1.0  # the 4 mm one is not counted
    assert groups["GE MEDICAL SYSTEMS"]["sensitivity_ge_6mm"]["value"] == 0.0
    assert out["largest_gaps"]["sensitivity_ge_6mm"]["gap"] == 1.0
    assert out["largest_gaps"]["fps_per_scan"]["gap"] == 2.0
    assert out["crops"]["overall"]["crop_dice"]["value"] == pytest.approx(0.8)


def _overconfident(n: int, seed: int) -> list[dict]:
    """Records whose malignancy logit is four times the true log-odds of their label."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = rng.normal(0.0, 1.5)
        label = int(rng.random() < 1 / (1 + math.exp(-t)))
        out.append({**_record(i, rng), "malignancy_logit": 4.0 * t, "malignant": label})
    return out


def test_run_audit_and_page(records, tmp_path):
    val, test = _overconfident(240, 1), _overconfident(240, 2)
    audit = run_audit(val, test, None, n_boot=50)
    head = audit["headline"]
    assert head["calibrator"] in ("temperature", "isotonic")
    assert head["malignancy_ece_before"] > 0.1
    assert head["malignancy_ece_after"] < head["malignancy_ece_before"] / 2
    # the argmax misses 20 % of the suspicious (4A) nodules; the constrained rule fewer
    assert head["catastrophic_miss_rate_constrained"] <= 0.1
    assert audit["calibration"]["growth_12m"]["n_test"] == 240
    page = write_audit_page({**audit, "checkpoint": "x.ckpt"}, tmp_path)
    text = page.read_text()
    for title in (
        "1. Calibration",
        "2. Baselines",
        "3. Hierarchical",
        "4. Fairness",
        "6. Deferral",
    ):
        assert title in text
    pngs = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert "reliability_malignancy.png" in pngs and "risk_coverage.png" in pngs
    assert all((tmp_path / "figures" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert not [p for p in tmp_path.rglob("*.partial")]


def test_audit_command_end_to_end(tmp_path, capsys):
    ckpt = write_stage3_checkpoint(tmp_path / "last.ckpt", seg_logit=None)
    out = tmp_path / "audit"
    args = ["audit", "--ckpt", str(ckpt), "--out", str(out), "--n-val", "12", "--n-test", "12",
            "--batch-size", "4", "--n-chests", "0", "--bootstrap", "20"]  # fmt: skip
    assert run_cli(args) == 0
    printed = capsys.readouterr().out
    assert "malignancy_ece_before" in printed and "audit.html" in printed
    audit = json.loads((out / "audit.json").read_text())
    assert audit["n_val_crops"] == 12 and audit["n_test_crops"] == 12
    records = json.loads((out / "crops_test.json").read_text())["records"]
    assert len(records) == 12
    assert all(len(r["lungrads_probabilities"]) == 7 for r in records)
    assert any(r["malignant"] is not None for r in records)  # phantom crops carry labels
    assert all(r["profile"]["manufacturer"] for r in records)
    assert (out / "audit.html").is_file()
    if "calibrator_written_to" in audit:  # both classes among the validation nodules
        stored = read_checkpoint(tmp_path / "last_calibrated.ckpt")
        calibrator = stored[CHECKPOINT_KEY][CALIBRATION_KEY]["malignancy_calibrator"]
        assert calibrator["kind"] == audit["headline"]["calibrator"]
        from lungvlm.inference.report_analysis import load_report_model

        rm = load_report_model(tmp_path / "last_calibrated.ckpt")
        assert rm.settings.malignancy_map().kind == calibrator["kind"]
    # a second run, on the calibrated file (same weights), reuses the stored crop records
    calibrated = tmp_path / "last_calibrated.ckpt"
    again = [str(calibrated) if a == str(ckpt) and calibrated.is_file() else a for a in args]
    mtime = (out / "crops_test.json").stat().st_mtime_ns
    assert run_cli(again + ["--no-keep-calibrator", "--no-robustness"]) == 0
    assert (out / "crops_test.json").stat().st_mtime_ns == mtime


def test_weights_digest_ignores_everything_but_the_weights():
    from lungvlm.lightning.checkpoint import weights_digest

    state = {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.zeros(2)}
    same = {k: v.clone() for k, v in reversed(state.items())}
    assert weights_digest(state) == weights_digest(same)
    same["a.bias"][0] = 1e-7
    assert weights_digest(state) != weights_digest(same)
    assert weights_digest(state) != weights_digest({**state, "a.bias": torch.zeros(2).double()})


def test_audit_command_rejects_a_bad_detection_file(tmp_path, capsys):
    ckpt = write_stage3_checkpoint(tmp_path / "last.ckpt", seg_logit=None)
    bad = tmp_path / "evaluation.json"
    bad.write_text("{}")
    args = ["audit", "--ckpt", str(ckpt), "--out", str(tmp_path / "a"), "--n-val", "4",
            "--n-test", "4", "--detection", str(bad)]  # fmt: skip
    assert run_cli(args) != 0
    assert "evaluation.json" in capsys.readouterr().err


def test_perturbations_change_the_image_as_stated():
    from types import SimpleNamespace

    from lungvlm.evaluation.robustness import fgsm, gaussian_blur, gaussian_noise

    image = torch.full((2, 1, 8, 8, 8), 0.5)
    noisy = gaussian_noise(100.0, 1000.0)(image, None)
    assert noisy.std().item() == pytest.approx(0.1, rel=0.15)  # 100 HU over a 1000 HU range
    spike = torch.zeros(1, 1, 9, 9, 9)
    spike[0, 0, 4, 4, 4] = 1.0
    blurred = gaussian_blur(1.0, 1.0)(spike, None)
    assert blurred[0, 0, 4, 4, 4].item() < 0.2 and blurred.sum().item() == pytest.approx(
        1.0, rel=0.05
    )

    conv = torch.nn.Conv3d(1, 1, 1)  # a 1x1x1 convolution standing in for encoder + head

    class Identity:
        use_context = False

        def __call__(self, x, context):
            return x

    tiny = SimpleNamespace(encoder=Identity(), seg_head=lambda features: [conv(features)])
    mask = (torch.rand(2, 1, 8, 8, 8) > 0.5).float()
    batch = SimpleNamespace(seg_present=torch.tensor([True, False]), seg_mask=mask,
                            context=torch.zeros_like(image))  # fmt: skip
    x = torch.rand(2, 1, 8, 8, 8)
    attacked = fgsm(tiny, 8.0, 1000.0)(x, batch)
    assert torch.equal(attacked[1], x[1])  # no mask: unchanged
    assert (attacked[0] - x[0]).abs().max().item() == pytest.approx(0.008, abs=1e-6)

    def loss(img):
        return torch.nn.functional.binary_cross_entropy_with_logits(conv(img[:1]), mask[:1])

    assert loss(attacked).item() > loss(x).item()  # the step raises the segmentation loss


@needs_chromium
def test_audit_page_renders_in_headless_chromium(records, tmp_path):
    import matplotlib.image as mpimg

    val, test = records
    audit = run_audit(val, test, None, n_boot=20)
    page = write_audit_page({**audit, "checkpoint": "x.ckpt"}, tmp_path / "audit")
    png = screenshot(page, tmp_path / "shot.png", tmp_path / "profile", (1000, 1400))
    rgb = mpimg.imread(png)[..., :3]
    assert rgb.shape == (1400, 1000, 3)
    # The reliability diagram's coloured line and markers: pixels far from grey mean the
    # relative <img> links resolved (the page's own text and tables are black on white).
    colour = rgb.max(axis=-1) - rgb.min(axis=-1)
    assert (colour > 0.3).mean() > 0.001


def test_malformed_calibrator_is_an_error_naming_the_checkpoint(tmp_path):
    from lungvlm.inference.report_analysis import load_report_model

    path = write_stage3_checkpoint(tmp_path / "last.ckpt")
    checkpoint = read_checkpoint(path)
    checkpoint[CHECKPOINT_KEY][CALIBRATION_KEY] = {
        "malignancy_calibrator": {"kind": "isotonic", "knots_logit": 3.0}  # not a list
    }
    bad = tmp_path / "bad_calibrated.ckpt"
    torch.save(checkpoint, bad)
    with pytest.raises(ValueError, match=r"bad_calibrated\.ckpt.*calibration or data settings"):
        load_report_model(bad)
