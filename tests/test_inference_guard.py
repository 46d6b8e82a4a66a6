"""The runaway-inference guard (:mod:`lungvlm.inference.guard`) and plain progress lines."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from lungvlm.commands.progress import PLAIN_LINE_AFTER_S, PLAIN_LINE_EVERY_S, PlainProgressLines
from lungvlm.inference.guard import (
    BYTES_PER_ORIGINAL_VOXEL,
    BYTES_PER_PREPARED_VOXEL,
    DEFAULT_MAX_CANDIDATES,
    MAX_FINDING_DIAMETER_MM,
    MAX_FINDING_VOLUME_MM3,
    InferenceGuard,
    MemoryBudgetError,
    RunawayInferenceError,
    estimate_memory_gib,
    prepared_shape,
)
from lungvlm.inference.scan import extract_instances, prepare_scan


def test_defaults_are_the_documented_limits():
    guard = InferenceGuard()
    assert guard.max_candidates == DEFAULT_MAX_CANDIDATES == 500
    assert guard.max_diameter_mm == MAX_FINDING_DIAMETER_MM == 100.0
    # the volume limit is the sphere of the diameter limit: pi/6 * 100^3 mm3 = 0.5236 litres
    assert guard.max_volume_mm3 == pytest.approx(523598.7756, rel=1e-9)


@pytest.mark.parametrize(
    ("n", "trips"), [(0, False), (499, False), (500, False), (501, True), (100000, True)]
)
def test_candidate_count_boundary(n, trips):
    guard = InferenceGuard()
    if trips:
        with pytest.raises(RunawayInferenceError, match=rf"found {n} candidate components, more "
                           r"than the 500 .*--no-guard \(or a larger --max-candidates\)"):  # fmt: skip
            guard.check_count(n)
    else:
        guard.check_count(n)


@pytest.mark.parametrize(
    ("diameter_mm", "volume_mm3", "trips"),
    [
        (30.0, 14137.0, False),  # the largest Lung-RADS nodule (30 mm sphere)
        (100.0, 500000.0, False),  # on the diameter limit, under the volume limit
        (100.1, 1000.0, True),  # a flat component: diameter alone
        (80.0, MAX_FINDING_VOLUME_MM3 + 1.0, True),  # an elongated one: volume alone
        (244.2, 7.291e6, True),  # the fire-everywhere checkpoint on a tiny phantom chest
    ],
)
def test_size_limits(diameter_mm, volume_mm3, trips):
    guard = InferenceGuard()
    sizes = ([8.0, diameter_mm], [268.0, volume_mm3])
    if trips:
        with pytest.raises(RunawayInferenceError) as info:
            guard.check_sizes(*sizes)
        message = str(info.value)
        assert "1 of 2 segmented component(s)" in message
        assert f"{diameter_mm:.1f} mm mean diameter and {volume_mm3 / 1e6:.3g} litres" in message
        assert "limits 100 mm and 0.524 litres" in message and "--no-guard" in message
    else:
        guard.check_sizes(*sizes)


def test_the_largest_offender_is_named():
    with pytest.raises(
        RunawayInferenceError, match=r"2 of 3 .* 230\.7 mm mean diameter and 6\.9 litres"
    ):
        InferenceGuard().check_sizes([150.0, 5.0, 230.7], [2.0e6, 65.0, 6.9e6])


def test_memory_only_guard_lets_any_candidate_through():
    guard = InferenceGuard.memory_only(4.0)
    guard.check_count(10**6)
    guard.check_sizes([500.0], [1e9])
    assert guard.max_memory_gib == 4.0


def test_memory_estimate_by_hand():
    # 300 x 512 x 512 voxels of 1 x 0.7 x 0.7 mm at 1 mm: 300 x 358 x 358 (round(358.4))
    assert prepared_shape((300, 512, 512), (1.0, 0.7, 0.7), (1.0, 1.0, 1.0)) == (300, 358, 358)
    expected = (300 * 512 * 512 * BYTES_PER_ORIGINAL_VOXEL + 300 * 358 * 358 * 40) / 2**30
    assert BYTES_PER_PREPARED_VOXEL == 40
    assert estimate_memory_gib((300, 512, 512), (1.0, 0.7, 0.7), (1.0,) * 3) == pytest.approx(
        expected
    )
    assert 2.5 < expected < 4.0  # a standard chest fits the 16 GiB default with room


def test_memory_budget_refuses_with_the_numbers():
    guard = InferenceGuard(max_memory_gib=16.0)
    guard.check_memory((300, 512, 512), (1.0, 0.7, 0.7), (1.0,) * 3)
    # 0.1 mm voxels resampled to 0.1 mm: 2000 x 512 x 512 original, same grid prepared
    need = 2000 * 512 * 512 * (BYTES_PER_ORIGINAL_VOXEL + BYTES_PER_PREPARED_VOXEL) / 2**30
    with pytest.raises(MemoryBudgetError, match=rf"2000 x 512 x 512 grid; the run would need "
                       rf"about {need:.3g} GiB, over the memory budget of 16 GiB.*--max-memory-gb"):  # fmt: skip
        guard.check_memory((2000, 512, 512), (0.1, 0.1, 0.1), (0.1,) * 3)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_candidates": 0}, {"max_candidates": 2.5}, {"max_candidates": True},
     {"max_diameter_mm": -1.0}, {"max_volume_mm3": math.nan}, {"max_memory_gib": 0.0}],
)  # fmt: skip
def test_bad_limits_are_refused(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"{name}="):
        InferenceGuard(**kwargs)


def test_extract_instances_checks_before_measuring():
    """The count is checked on the labelled components, the sizes on the measured ones."""
    probability = np.zeros((20, 20, 20), np.float32)
    probability[::2, ::2, ::2] = 1.0  # 1000 isolated voxels: 1000 components of 1 mm3
    prepared = prepare_scan(np.zeros((20, 20, 20), np.float32), (1.0,) * 3, 1.0)
    with pytest.raises(RunawayInferenceError, match=r"found 1000 candidate components"):
        extract_instances(probability, prepared, min_volume_mm3=0.5, guard=InferenceGuard())
    labels, instances = extract_instances(probability, prepared, min_volume_mm3=0.5)
    assert len(instances) == 1000 and labels.max() == 1000
    block = np.ones((20, 20, 20), np.float32)  # one 20 mm cube: under the limits
    big = prepare_scan(np.zeros((20, 20, 20), np.float32), (6.0,) * 3, 6.0)  # 120 mm cube
    assert len(extract_instances(block, prepared, guard=InferenceGuard())[1]) == 1
    with pytest.raises(RunawayInferenceError, match=r"1 of 1 segmented component"):
        extract_instances(block, big, guard=InferenceGuard())


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_lines_only_for_long_steps():
    stream, clock = io.StringIO(), _Clock()
    lines = PlainProgressLines(stream, clock)
    lines("segmentation windows", 0, 8)
    clock.now += PLAIN_LINE_AFTER_S - 1
    lines("segmentation windows", 8, 8)  # a short step: silent
    assert stream.getvalue() == ""
    lines("candidate scores", 0, 900)
    clock.now += PLAIN_LINE_AFTER_S
    lines("candidate scores", 10, 900)  # long: a first line
    clock.now += 1.0
    lines("candidate scores", 11, 900)  # too soon for another
    clock.now += PLAIN_LINE_EVERY_S
    lines("candidate scores", 500, 900)
    clock.now += 1.0
    lines("candidate scores", 900, 900)  # the end of a step that printed
    assert stream.getvalue().splitlines() == [
        "candidate scores: 10/900 (5 s)",
        "candidate scores: 500/900 (36 s)",
        "candidate scores: 900/900 (37 s)",
    ]
