"""Lung mask, cache building and the resumable, atomic ``preprocess`` runner."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data_modules.cache as cache_module
from data_modules.cache import (
    CacheSpec,
    build_case,
    list_cached_cases,
    load_case_arrays,
    load_case_json,
)
from data_modules.io import CTVolume
from data_modules.phantom.generator import PhantomConfig, generate_case
from data_modules.phantom.writers import write_lidc_tree
from data_modules.preprocess import discover_cases, preprocess, read_failures
from lungvlm.commands.preprocess import register
from lungvlm.imaging.lung_mask import bounding_box, lung_mask
from lungvlm.imaging.resample import resample_to_spacing

TINY = PhantomConfig.tiny(shape_zyx=(24, 40, 40), z_extent_mm=160.0, with_report=False)
SPEC = CacheSpec(spacing_mm=4.0)


def chest(lung_hu: float = -850.0) -> np.ndarray:
    """20 x 40 x 40: air outside, a body box, two lung boxes, a nodule, a gas pocket."""
    image = np.full((20, 40, 40), -1000.0, dtype=np.float32)
    image[:, 4:36, 2:38] = 40.0  # body (soft tissue) touching neither side face
    image[2:18, 8:30, 5:17] = lung_hu  # right lung: 16 x 22 x 12 voxels
    image[2:18, 8:30, 22:35] = lung_hu  # left lung: 16 x 22 x 13 voxels
    image[9:12, 15:18, 9:12] = 60.0  # a solid nodule inside the right lung
    image[8:10, 32:34, 18:20] = -900.0  # 8-voxel gas pocket (bowel gas stand-in)
    return image


def test_lung_mask_keeps_two_lungs_fills_nodule_drops_outside_air_and_gas():
    mask = lung_mask(chest(), (1.0, 1.0, 1.0))
    expected = np.zeros(mask.shape, dtype=bool)
    expected[2:18, 8:30, 5:17] = True
    expected[2:18, 8:30, 22:35] = True
    assert np.array_equal(mask, expected)  # boxes are convex: closing leaves them unchanged
    assert mask.sum() == 16 * 22 * 12 + 16 * 22 * 13


def test_lung_mask_single_merged_lung_drops_small_second_component():
    image = chest()
    image[2:18, 8:30, 17:22] = -850.0  # join the lungs into one component
    image[10, 20, 36] = -900.0  # a 1-voxel pocket: far below 10 % of the lung
    mask = lung_mask(image, (1.0, 1.0, 1.0), closing_radius_mm=0.0)
    assert mask.sum() == 16 * 22 * 30
    assert not mask[10, 20, 36]


def test_lung_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="3-D"):
        lung_mask(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="second_lung_min_fraction"):
        lung_mask(chest(), second_lung_min_fraction=1.5)


def test_bounding_box_with_margin_is_clipped():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[1, 4:6, 8] = True
    assert bounding_box(mask, (2, 1, 3)) == (slice(0, 4), slice(3, 7), slice(5, 10))
    assert bounding_box(np.zeros((3, 3, 3)), (0, 0, 0)) is None


def test_resample_to_same_spacing_is_exact_and_halving_doubles_size():
    volume = CTVolume(np.arange(60, dtype=np.float32).reshape(3, 4, 5), (2.0, 2.0, 2.0), (1, 2, 3))
    same = resample_to_spacing(volume.array_hu, volume.spacing_mm, 2.0, order=1)
    assert np.array_equal(same, volume.array_hu)
    assert resample_to_spacing(volume.array_hu, volume.spacing_mm, 1.0, order=1).shape == (6, 8, 10)


def test_build_case_crops_lungs_normalises_and_places_nodule():
    image = chest()
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[9:12, 15:18, 9:12] = 1
    volume = CTVolume(image, (1.0, 1.0, 1.0), (-20.0, -20.0, -10.0))
    spec = CacheSpec(spacing_mm=1.0, margin_mm=2.0, image_dtype="float32")
    nodules = [{"label": 1, "centre_lps_mm": [-10.0, -4.0, 0.0]}]
    arrays, case = build_case(volume, labels, nodules, spec)
    # lungs span z 2..17, y 8..29, x 5..34; a 2-voxel margin, clipped at z = 20
    assert case["crop_offset_zyx"] == [0, 6, 3]
    assert arrays["image"].shape == (20, 26, 34)
    assert case["origin_lps_mm"] == [-17.0, -14.0, -10.0]
    # -850 HU -> (-850 + 1000) / 1400; 40 HU -> 1040 / 1400
    assert arrays["image"][5, 5, 5] == pytest.approx(150 / 1400)
    assert arrays["image"][0, 0, 0] == pytest.approx(1040 / 1400)
    assert case["nodules"][0]["centroid_voxel_zyx"] == [10.0, 10.0, 7.0]
    assert case["nodules"][0]["in_mask"] is True
    assert arrays["lung"].sum() == 16 * 22 * 25 and arrays["mask"].sum() == 27


@pytest.fixture
def lidc_src(tmp_path: Path) -> Path:
    """An LIDC tree of two phantom series; the second loses a middle slice (a gap)."""
    src = tmp_path / "lidc"
    folders = [write_lidc_tree(generate_case(seed, TINY), src) for seed in (0, 1)]
    (folders[1] / "1-012.dcm").unlink()
    return src


def test_bad_case_goes_to_failures_and_rerun_skips_done(lidc_src, tmp_path: Path):
    src = lidc_src
    dst = tmp_path / "cache"
    tasks = discover_cases("lidc", src)
    bad_uid = next(t.case_id for t in tasks if not (Path(t.source) / "1-012.dcm").exists())
    first = preprocess("lidc", src, dst, SPEC, progress=False)
    assert len(first.written) == 1 and len(first.failed) == 1
    failures = read_failures(dst)
    assert failures[0]["case"] == bad_uid
    assert "SliceGeometryError" in failures[0]["error"] and "gap" in failures[0]["error"]
    assert [p.name for p in list_cached_cases(dst)] == first.written
    case = load_case_json(dst / first.written[0])
    assert case["format"] == "lidc" and case["patient_id"] == "PHANTOM-0000"
    assert case["normalization"] == {
        "method": "lungvlm.clinical.hu.normalize_hu", "hu_min": -1000.0, "hu_max": 400.0,
    }  # fmt: skip
    image = np.load(dst / first.written[0] / "image.npy", mmap_mode="r")
    assert isinstance(image, np.memmap) and image.dtype == np.float16
    second = preprocess("lidc", src, dst, SPEC, progress=False)
    assert second.skipped == first.written and second.written == []
    assert len(second.failed) == 1  # the bad case is retried and fails again


def test_crash_mid_case_leaves_no_half_written_folder(lidc_src, tmp_path: Path, monkeypatch):
    src = lidc_src
    dst = tmp_path / "cache"
    real_save = np.save

    def save_then_crash(path, array):
        real_save(path, array)
        if Path(path).name == "mask.npy":
            raise OSError("disk full (simulated)")

    monkeypatch.setattr(cache_module.np, "save", save_then_crash)
    result = preprocess("lidc", src, dst, SPEC, progress=False)
    assert result.written == [] and len(result.failed) == 2
    assert any("disk full" in f["error"] for f in result.failed)
    assert sorted(p.name for p in dst.iterdir()) == ["cache.json", "failures.json"]
    monkeypatch.setattr(cache_module.np, "save", real_save)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid whose process is gone, as after a SIGKILL
    stale, live = dst / f".tmp-leftover-{dead.pid}", dst / f".tmp-running-{os.getpid()}"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "image.npy").write_bytes(b"partial")
    again = preprocess("lidc", src, dst, SPEC, progress=False)
    assert len(again.written) == 1 and not stale.exists()
    assert (live / "image.npy").read_bytes() == b"partial"  # its writer is alive: kept


def test_two_workers_and_settings_mismatch(tmp_path: Path):
    src = tmp_path / "lidc"
    for seed in (2, 3):
        write_lidc_tree(generate_case(seed, TINY), src)
    dst = tmp_path / "cache"
    result = preprocess("lidc", src, dst, SPEC, workers=2, progress=False)
    assert len(result.written) == 2 and result.failed == []
    assert json.loads((dst / "failures.json").read_text()) == []
    with pytest.raises(ValueError, match="was built with"):
        preprocess("lidc", src, dst, CacheSpec(spacing_mm=2.0), progress=False)
    arrays = load_case_arrays(dst / result.written[0])
    assert arrays["mask"].dtype == np.uint8 and arrays["lung"].max() == 1


def test_cli_parses_and_runs(tmp_path: Path):
    src = tmp_path / "lidc"
    write_lidc_tree(generate_case(4, TINY), src)
    parser = argparse.ArgumentParser(prog="lungvlm")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["preprocess", "lidc", "--src", str(src), "--dst", str(tmp_path / "c"), "--spacing", "4",
         "--hu-min", "-1100", "--hu-max", "300", "--no-progress"]
    )  # fmt: skip
    assert args.func(args) == 0
    spec = json.loads((tmp_path / "c" / "cache.json").read_text())
    assert (spec["spacing_mm"], spec["hu_min"], spec["hu_max"]) == (4.0, -1100.0, 300.0)
    with pytest.raises(ValueError, match="does not exist"):
        preprocess("lidc", tmp_path / "missing", tmp_path / "c2", progress=False)
    with pytest.raises(ValueError, match="format must be one of"):
        discover_cases("nifti", src)


def test_preprocess_command_choices_match_the_data_modules():
    """The command spells its choices (fast --help); they must equal the data modules' own."""
    from data_modules.cache import IMAGE_DTYPES
    from data_modules.io import MALIGNANCY_RULES
    from data_modules.preprocess import FORMATS, LUNA16_MASKS
    from lungvlm.commands import preprocess as command

    assert command.FORMAT_CHOICES == FORMATS
    assert command.LUNA16_MASK_CHOICES == LUNA16_MASKS
    assert command.DTYPE_CHOICES == IMAGE_DTYPES
    assert command.MALIGNANCY_RULE_CHOICES == MALIGNANCY_RULES
