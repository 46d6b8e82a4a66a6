"""The whole-chest detection benchmark of ``make bench``: a clear skip without a checkpoint."""

from __future__ import annotations

import pytest

from benchmarks import run_all


def test_whole_chest_benchmark_is_skipped_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "missing.ckpt"
    monkeypatch.setenv("LUNGVLM_BENCH_DETECTION_CKPT", str(missing))
    monkeypatch.setattr(
        run_all, "BENCHMARKS", (("Whole-chest detection (FROC/CPM)", run_all.bench_whole_chest),)
    )
    out = tmp_path / "r.md"
    run_all.main(["--out", str(out), "--quick"])
    assert f"skipped: Whole-chest detection (FROC/CPM): no checkpoint at {missing}" in (
        capsys.readouterr().out
    )
    assert f"skipped: no checkpoint at {missing}" in out.read_text()


def test_bench_chests_and_checkpoint_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("LUNGVLM_BENCH_DETECTION_CKPT", raising=False)
    monkeypatch.setenv("LUNGVLM_BENCH_CKPT", str(tmp_path / "stage3.ckpt"))
    assert run_all.detection_bench_ckpt() == tmp_path / "stage3.ckpt"
    monkeypatch.setenv("LUNGVLM_BENCH_CHESTS", "3")
    assert (run_all.bench_chests(quick=False), run_all.bench_chests(quick=True)) == (3, 1)
    monkeypatch.setenv("LUNGVLM_BENCH_CHESTS", "0")
    with pytest.raises(ValueError, match="LUNGVLM_BENCH_CHESTS must be >= 1; got 0"):
        run_all.bench_chests(quick=False)
