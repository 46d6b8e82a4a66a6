"""The input-pipeline benchmark's wait/step accounting, on a fake clock and on real sleeps."""

from __future__ import annotations

import time

import pytest

from benchmarks.bench_input_pipeline import (
    MINED_CROPS_PER_KIND,
    epoch_share,
    time_loop,
    training_data,
    wait_share,
)


class FakeClock:
    """Seconds that only move when a fake batch or step says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_loop_splits_wait_and_step_on_a_fake_clock():
    clock = FakeClock()
    # Seconds each next() takes: first batch (workers start), 2 warm-up batches, 3 timed ones.
    waits = [0.5, 0.1, 0.1, 0.02, 0.04, 0.06]
    stepped = []

    def batches():
        for i, wait in enumerate(waits):
            clock.now += wait
            yield i

    def step(batch):
        clock.now += 0.2
        stepped.append(batch)

    out = time_loop(batches(), step, steps=3, warmup=2, clock=clock)
    assert out["first_wait_ms"] == pytest.approx(500.0)
    assert out["wait_ms"] == pytest.approx([20.0, 40.0, 60.0])
    assert out["step_ms"] == pytest.approx([200.0, 200.0, 200.0])
    assert out["last_batch"] == 5
    assert stepped == [0, 1, 2, 3, 4, 5]
    # 120 ms waited against 600 ms of steps.
    assert wait_share(out["wait_ms"], out["step_ms"]) == pytest.approx(120.0 / 720.0)


def test_time_loop_on_real_sleeps_counts_the_wait_apart_from_the_step():
    def batches():
        while True:
            time.sleep(0.03)
            yield None

    out = time_loop(batches(), lambda _: time.sleep(0.01), steps=3, warmup=0)
    # Sleeps only overshoot; a swapped wait/step would put the 10 ms sleep in the wait list.
    assert min(out["wait_ms"]) >= 29.9
    assert min(out["step_ms"]) >= 9.9
    assert out["first_wait_ms"] >= 29.9


def test_epoch_share_adds_the_worker_start_up_once_per_epoch():
    # 10 steps: 500 ms first wait + 9 x 40 ms, against 10 x 200 ms of steps.
    share = epoch_share(500.0, [20.0, 40.0, 60.0], [200.0, 200.0, 200.0], steps_per_epoch=10)
    assert share == pytest.approx(860.0 / 2860.0)
    assert epoch_share(40.0, [40.0], [200.0], steps_per_epoch=1) == pytest.approx(40.0 / 240.0)


def test_accounting_errors():
    with pytest.raises(ValueError, match=r"steps must be >= 1 and warmup >= 0; got steps=0"):
        time_loop(iter([]), lambda _: None, steps=0, warmup=0)
    with pytest.raises(ValueError, match=r"no time measured: sum\(wait_ms\)=0.0"):
        wait_share([0.0], [0.0])
    with pytest.raises(ValueError, match=r"steps_per_epoch=0 must be >= 1"):
        epoch_share(1.0, [1.0], [1.0], steps_per_epoch=0)


def test_training_data_is_the_stage_setting_with_a_warm_cache_and_a_pool(tmp_path):
    dm = training_data("segment", tmp_path, n_batches=1)
    hp = dm.hparams
    assert (hp.batch_size, hp.num_workers, hp.crop_size_vox) == (8, 2, 32)  # base.yaml
    assert (hp.mined_fraction, hp.positive_fraction) == (0.3, 0.6)  # stage2.yaml
    assert dm.mined_count == 2 * MINED_CROPS_PER_KIND
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 8  # one file per training sample
