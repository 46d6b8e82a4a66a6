"""The benchmark runner's markdown writer and helpers, on fake results (no timing asserted)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import run_all
from benchmarks.bench_generation import never_stop
from benchmarks.bench_training import STAGES, stage_config, synthetic_batch
from benchmarks.run_all import (
    figure,
    format_value,
    median_of,
    render_markdown,
    suffix_figures,
    write_atomic,
)


def fake_results() -> dict:
    return {
        "machine": {
            "cpu": "Fake CPU 9000",
            "cores": 2,
            "ram_gib": 7.75,
            "torch_threads": 2,
            "gpu": "none",
        },
        "versions": {"python": "3.12.1", "torch": "2.14.1", "numpy": "2.4.6"},
        "date": "2025-01-02T03:04:05+00:00",
        "wall_s": 412.6,
        "quick": False,
        "remark": "contended: a training run shared the 2 cores",
        "sections": [
            {
                "title": "Training step per stage and data loading",
                "status": "ok",
                "note": "batch 4 x 32³ crops.",
                "figures": [
                    figure("segment optimizer step", 1234.5, "ms"),
                    figure("segment share of step spent loading", 23.71, "%"),
                ],
            },
            {
                "title": "Report generation",
                "status": "ok",
                "note": "greedy.",
                "figures": [
                    figure("with KV cache", 31.02, "tokens/s"),
                    figure("KV cache speed-up", 1.789, "×"),
                ],
            },
            {
                "title": "Preprocessed cache",
                "status": "ok",
                "note": "bench_cache.run().",
                "figures": suffix_figures(
                    {"cases_per_min": 17.04, "crop_from_cache_s": 0.00029, "speedup": 582.4}
                ),
            },
            {"title": "Phantom generation", "status": "skipped", "reason": "not importable"},
        ],
    }


def test_markdown_has_machine_versions_and_figures_with_units():
    text = render_markdown(fake_results())
    assert "- CPU: Fake CPU 9000, 2 logical cores, torch threads 2" in text
    assert "- RAM: 7.75 GiB" in text
    assert "- torch: 2.14.1" in text
    assert "2025-01-02T03:04:05+00:00" in text and "total wall time 413 s" in text
    assert "- Note: contended: a training run shared the 2 cores" in text
    assert "## Training step per stage and data loading" in text
    assert "| segment optimizer step | 1,234 ms |" in text  # 1234.5 rounds half to even
    assert "| segment share of step spent loading | 23.7 % |" in text
    assert "| with KV cache | 31.0 tokens/s |" in text
    assert "| KV cache speed-up | 1.79× |" in text
    assert "| cases_per_min | 17.0 cases/min |" in text
    assert "| crop_from_cache_s | 0.00029 s |" in text
    assert "| speedup | 582× |" in text
    assert "## Phantom generation\n\nskipped: not importable" in text


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (0.0123456, "s", "0.0123 s"),
        (3.14159, "ms", "3.14 ms"),
        (42.06, "tokens/s", "42.1 tokens/s"),
        (98765.4, "ms", "98,765 ms"),
        (2.5, "×", "2.50×"),
        (7.0, "", "7"),
        (2.5, "", "2.50"),
        ("160x256x256", "", "160x256x256"),
    ],
)
def test_format_value(value, unit, expected):
    assert format_value(value, unit) == expected


def test_median_of_is_keywise_and_keeps_text():
    calls = [{"a_s": 1.0, "shape": "x"}, {"a_s": 5.0, "shape": "y"}, {"a_s": 2.0, "shape": "z"}]
    assert median_of(calls) == {"a_s": 2.0, "shape": "x"}


def test_suffix_units():
    rows = suffix_figures({"crop32_ms": 1.0, "whole_chest_s": 2.0, "cases": 4.0, "speedup": 3.0})
    assert [r["unit"] for r in rows] == ["ms", "s", "", "×"]


def test_write_atomic_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("old")
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]


def test_main_skips_missing_and_records_failures(tmp_path, monkeypatch, capsys):
    def missing(quick):
        import benchmarks.no_such_benchmark  # noqa: F401

    def broken(quick):
        raise RuntimeError("boom")

    def fine(quick):
        return f"quick={quick}", [figure("step", 12.5, "ms")]

    monkeypatch.setattr(
        run_all, "BENCHMARKS", (("Missing", missing), ("Broken", broken), ("Fine", fine))
    )
    out = tmp_path / "r.md"
    with pytest.raises(SystemExit) as exit_info:
        run_all.main(["--out", str(out), "--quick"])
    assert exit_info.value.code == 1
    printed = capsys.readouterr().out
    assert "skipped: Missing: benchmarks.no_such_benchmark is not importable" in printed
    assert "failed: Broken: RuntimeError('boom')" in printed
    text = out.read_text()
    assert "failed: RuntimeError('boom')" in text
    assert "quick=True\n\n| figure | value |\n|---|---|\n| step | 12.5 ms |" in text


def test_stage_configs_layer_base_and_stage_yaml():
    pretrain = stage_config("pretrain")["model"]
    assert pretrain["encoder"]["init_args"]["widths"] == [8, 16, 32, 48, 64]
    assert pretrain["encoder"]["init_args"]["use_context"] is False
    vl = stage_config("vision_language")["model"]
    assert vl["encoder"]["init_args"]["use_context"] is True
    assert vl["vl_heads"]["init_args"]["d_model"] == 64
    with pytest.raises(ValueError, match="stage='stage9' is not a stage"):
        stage_config("stage9")


def test_synthetic_batch_has_labelled_spheres():
    batch = synthetic_batch(2, 20)
    assert batch.image.shape == (2, 1, 20, 20, 20)
    # Radius 20 / 5 = 4 voxels: about (4/3) pi 4^3 = 268 voxels, depending on the sub-voxel centre.
    voxels = batch.seg_mask.sum(dim=(1, 2, 3, 4))
    assert torch.all((voxels > 200) & (voxels < 320)), voxels
    assert torch.all(batch.image[batch.seg_mask > 0] == 0.75)


def test_never_stop_disables_eos_and_restores_it():
    class Decoder:
        eos_token_id = 2

    decoder = Decoder()
    with never_stop(decoder):
        assert decoder.eos_token_id == -1
    assert decoder.eos_token_id == 2


def test_report_benchmark_is_skipped_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LUNGVLM_BENCH_CKPT", str(tmp_path / "missing.ckpt"))
    monkeypatch.setattr(
        run_all, "BENCHMARKS", (("End-to-end report per phantom chest", run_all.bench_report),)
    )
    out = tmp_path / "r.md"
    run_all.main(["--out", str(out), "--quick"])
    assert "no stage-3 checkpoint at" in capsys.readouterr().out
    assert "skipped: no stage-3 checkpoint at" in out.read_text()


def test_every_benchmarked_stage_has_its_yaml():
    # The text-only language stage has no image step to time (and no stageN.yaml).
    assert STAGES == ("pretrain", "segment", "vision_language")
    assert [stage_config(stage)["model"]["stage"] for stage in STAGES] == list(STAGES)


def test_input_pipeline_section_reports_share_per_stage(monkeypatch):
    from benchmarks import bench_input_pipeline

    stage = {"batch_size": 8, "num_workers": 2, "mined_fraction": 0.3, "mined_pool": 8,
             "first_wait_ms": 300.0, "wait_ms": 12.5, "max_wait_ms": 20.0, "step_ms": 487.5,
             "share": 0.025, "epoch_share": 0.0336, "step_alone_ms": 406.25, "contention": 1.2}  # fmt: skip
    fake = {"threads": 2, "steps": 4, "warmup": 1, "stages": {"segment": stage}}
    monkeypatch.setattr(bench_input_pipeline, "run", lambda steps, warmup: fake)
    note, rows = run_all.bench_input_pipeline(quick=True)
    values = {row["name"]: (row["value"], row["unit"]) for row in rows}
    assert values["segment input-pipeline share"] == (2.5, "%")
    assert values["segment share, worker start-up once per epoch"] == pytest.approx((3.36, "%"))
    assert values["segment wait on next(iterator)"] == (12.5, "ms")
    assert values["segment step slowdown while workers run"] == (1.2, "×")
    assert "segment: batch 8, 2 workers, mined fraction 0.3 (pool of 8)" in note
