"""Bad-input corpus for images, DICOM series and checkpoints (issue 16, parts 1, 5 and 6).

Each case builds a small broken input (volumes of 16-32 voxels a side), runs ``lungvlm report``
in-process and asserts the exit code, that the output names the file and the problem, that
nothing raised (no traceback), and that nothing half-written is left: no ``--out`` folder and no
``.partial`` folder beside it. Two cases trip the runaway-inference guard: the test checkpoint
segments whole lungs, and a stub segmentation that fires on a lattice of specks.
"""

from __future__ import annotations

import gzip
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from data_modules.io import write_nifti
from data_modules.io.checks import SPACING_RANGE_MM
from lungvlm.cli import main
from lungvlm.commands.scan_io import read_volume
from tests.cli_helpers import CreatesMarker, assert_clear_error, run_cli
from tests.io_fixtures import ramp_volume, write_ct_series
from tests.report_fixtures import write_stage3_checkpoint

#: The synthetic chest: (z, y, x) voxels of (z, y, x) mm.
CHEST_SHAPE = (16, 32, 32)
CHEST_SPACING_MM = (10.0, 10.0, 10.0)
#: DICOM series of the corpus: 6 slices of 16 x 16, 10 mm voxels.
DICOM_SHAPE = (6, 16, 16)
NIFTI_PIXDIM_Z_OFFSET = 88  # NIfTI-1 header: pixdim[3] (float32) at byte 76 + 3 * 4
NIFTI_SROW_Z2_OFFSET = 320  # srow_z[2] (float32): bytes 280 + 2 * 16 + 2 * 4


def chest_hu() -> np.ndarray:
    """A (16, 32, 32) chest in HU: air outside, a soft-tissue body, two lungs at -850 HU."""
    z, y, x = np.mgrid[: CHEST_SHAPE[0], : CHEST_SHAPE[1], : CHEST_SHAPE[2]].astype(np.float32)
    image = np.full(CHEST_SHAPE, -1000.0, np.float32)
    image[((y - 15.5) / 13) ** 2 + ((x - 15.5) / 15) ** 2 <= 1] = 40.0
    for centre_x in (9.0, 22.0):
        lung = ((z - 7.5) / 7) ** 2 + ((y - 15.5) / 9) ** 2 + ((x - centre_x) / 5) ** 2 <= 1
        image[lung] = -850.0
    return image


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """A stage-3 checkpoint (it segments every lung voxel) and a clean chest NIfTI."""
    root = tmp_path_factory.mktemp("pristine")
    ckpt = write_stage3_checkpoint(root / "last.ckpt")
    chest = write_nifti(chest_hu(), root / "chest.nii.gz", spacing_mm=CHEST_SPACING_MM)
    return {"ckpt": ckpt, "chest": chest}


@dataclass
class Case:
    """A corpus entry: ``build(tmp, pristine, monkeypatch)`` returns (argv, file named)."""

    name: str
    build: Callable[..., tuple[list[str], str]]
    code: int
    problem: str  # regex the output must match


def _report(scan: Path, tmp: Path, pristine, *extra: str, ckpt: Path | None = None) -> list[str]:
    ckpt = pristine["ckpt"] if ckpt is None else ckpt
    return ["report", str(scan), "--ckpt", str(ckpt), "--out", str(tmp / "out"), "--no-progress",
            "--device", "cpu", *extra]  # fmt: skip


def _nifti(tmp: Path, name: str, array: np.ndarray, spacing_mm=CHEST_SPACING_MM) -> Path:
    return write_nifti(array, tmp / name, spacing_mm=spacing_mm)


def _metaimage(tmp: Path, name: str, array: np.ndarray, spacing_mm=CHEST_SPACING_MM) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_mm[::-1]))
    path = tmp / name
    sitk.WriteImage(image, str(path), useCompression=False)
    return path


def _series(folder: Path, description: str = "", seed: int = 0, prefix: str = ""):
    written = write_ct_series(
        folder, ramp_volume(DICOM_SHAPE, high=2000), spacing_mm=(10.0, 10.0, 10.0),
        seed=seed, prefix=prefix,
    )  # fmt: skip
    if description:
        for path in written.paths:
            ds = pydicom.dcmread(path)
            ds.SeriesDescription = description
            ds.save_as(path)
    return written


# ------------------------------------------------------------------ NIfTI / MetaImage builders
def nifti_nan_voxel(tmp, pristine, mp):
    image = chest_hu()
    image[3, 4, 5] = np.nan
    path = _nifti(tmp, "nan.nii.gz", image)
    return _report(path, tmp, pristine), str(path)


def nifti_inf_voxels_uncompressed(tmp, pristine, mp):
    image = chest_hu()
    image[0, :2, :2] = -np.inf
    path = _nifti(tmp, "inf.nii", image)
    return _report(path, tmp, pristine), str(path)


def metaimage_inf_voxel(tmp, pristine, mp):
    image = chest_hu()
    image[8, 16, 16] = np.inf
    path = _metaimage(tmp, "inf.mhd", image)
    return _report(path, tmp, pristine), str(path)


def nifti_gz_truncated(tmp, pristine, mp):
    path = tmp / "cut.nii.gz"
    data = pristine["chest"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return _report(path, tmp, pristine), str(path)


def nifti_gz_crc_corrupt(tmp, pristine, mp):
    path = tmp / "crc.nii.gz"
    data = bytearray(pristine["chest"].read_bytes())
    data[-6] ^= 0xFF  # the CRC-32 of the gzip trailer
    path.write_bytes(bytes(data))
    return _report(path, tmp, pristine), str(path)


def nifti_gz_not_gzip(tmp, pristine, mp):
    path = tmp / "plain.nii.gz"
    path.write_bytes(b"this file was never a NIfTI, nor gzip-compressed\n" * 20)
    return _report(path, tmp, pristine), str(path)


def nifti_uncompressed_truncated(tmp, pristine, mp):
    path = _nifti(tmp, "cut.nii", chest_hu())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4096])
    return _report(path, tmp, pristine), str(path)


def nifti_zero_spacing(tmp, pristine, mp):
    path = _nifti(tmp, "flat.nii", chest_hu())
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, NIFTI_PIXDIM_Z_OFFSET, 0.0)
    struct.pack_into("<f", data, NIFTI_SROW_Z2_OFFSET, 0.0)
    path.write_bytes(bytes(data))
    assert sitk.ReadImage(str(path)).GetSpacing()[2] == 1.0  # what ITK alone would report
    return _report(path, tmp, pristine), str(path)


def nifti_spacing_1e9(tmp, pristine, mp):
    path = _nifti(tmp, "thin.nii.gz", chest_hu(), spacing_mm=(1e-9, 10.0, 10.0))
    return _report(path, tmp, pristine), str(path)


def metaimage_spacing_50mm(tmp, pristine, mp):
    path = _metaimage(tmp, "thick.mhd", chest_hu(), spacing_mm=(50.0, 10.0, 10.0))
    return _report(path, tmp, pristine), str(path)


def volume_over_memory_budget(tmp, pristine, mp):
    # The 16 x 32 x 32 chest at 10 mm needs 16384 x (18 + 40) B = 0.000885 GiB.
    return _report(pristine["chest"], tmp, pristine, "--max-memory-gb", "0.0005"), str(
        pristine["chest"]
    )


# ------------------------------------------------------------------ DICOM builders
def dicom_missing_slice(tmp, pristine, mp):
    written = _series(tmp / "series")
    written.paths[3].unlink()  # the fourth slice by position
    return _report(tmp / "series", tmp, pristine), str(written.paths[2])


def dicom_unreadable_file(tmp, pristine, mp):
    written = _series(tmp / "series")
    written.paths[1].write_bytes(b"\x00" * 64 + b"not DICOM")
    return _report(tmp / "series", tmp, pristine), str(written.paths[1])


def dicom_truncated_slice(tmp, pristine, mp):
    written = _series(tmp / "series")
    data = written.paths[4].read_bytes()
    written.paths[4].write_bytes(data[: len(data) - 200])
    return _report(tmp / "series", tmp, pristine), str(written.paths[4])


def dicom_nan_rescale_slope(tmp, pristine, mp):
    written = _series(tmp / "series")
    ds = pydicom.dcmread(written.paths[0])
    with pytest.warns(UserWarning, match="Invalid value for VR DS"):
        ds.RescaleSlope = "NaN"
    ds.save_as(written.paths[0])
    return _report(tmp / "series", tmp, pristine), str(written.paths[0])


def dicom_two_series_without_uid(tmp, pristine, mp):
    _series(tmp / "mixed", "CHEST 1.0 B30f", seed=0, prefix="a")
    _series(tmp / "mixed", "SCOUT", seed=1, prefix="b")
    return _report(tmp / "mixed", tmp, pristine), str(tmp / "mixed")


def dicom_unknown_series_uid(tmp, pristine, mp):
    _series(tmp / "mixed", "CHEST 1.0 B30f", seed=0, prefix="a")
    _series(tmp / "mixed", "SCOUT", seed=1, prefix="b")
    args = _report(tmp / "mixed", tmp, pristine, "--series-uid", "1.2.3.4")
    return args, str(tmp / "mixed")


def dicom_empty_folder(tmp, pristine, mp):
    (tmp / "empty").mkdir()
    (tmp / "empty" / "README.txt").write_text("the export failed")
    return _report(tmp / "empty", tmp, pristine), str(tmp / "empty")


# ------------------------------------------------------------------ checkpoint builders
def ckpt_text_file(tmp, pristine, mp):
    bad = tmp / "model.ckpt"
    bad.write_text("weights are on the shared drive\n")
    return _report(pristine["chest"], tmp, pristine, ckpt=bad), str(bad)


def ckpt_pickled_object(tmp, pristine, mp):
    bad = tmp / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": CreatesMarker(tmp / "MARKER")}, bad)
    return _report(pristine["chest"], tmp, pristine, ckpt=bad), str(bad)


def ckpt_plain_tensor(tmp, pristine, mp):
    bad = tmp / "tensor.ckpt"
    torch.save(torch.zeros(3), bad)
    return _report(pristine["chest"], tmp, pristine, ckpt=bad), str(bad)


def ckpt_truncated(tmp, pristine, mp):
    bad = tmp / "half.ckpt"
    data = pristine["ckpt"].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return _report(pristine["chest"], tmp, pristine, ckpt=bad), str(bad)


def ckpt_missing(tmp, pristine, mp):
    return _report(pristine["chest"], tmp, pristine, ckpt=tmp / "nowhere.ckpt"), str(
        tmp / "nowhere.ckpt"
    )


# ------------------------------------------------------------------ guard builders
def guard_model_fires_everywhere(tmp, pristine, mp):
    return _report(pristine["chest"], tmp, pristine), str(pristine["chest"])


def guard_too_many_candidates(tmp, pristine, mp):
    """A stub segmentation that fires on a lattice of single voxels: hundreds of components."""
    import lungvlm.inference.scan as scan_module

    def specks(model, image, *args, **kwargs):
        probability = np.zeros(image.shape, np.float32)
        probability[::2, ::2, ::2] = 1.0
        return probability, 1, 1

    mp.setattr(scan_module, "sliding_window_probability", specks)
    return _report(pristine["chest"], tmp, pristine), str(pristine["chest"])


def guard_ask_without_a_report(tmp, pristine, mp):
    """``ask`` without ``--report`` segments the whole scan too: the same guard stops it."""
    args = ["ask", str(pristine["chest"]), "Where is it?", "--ckpt", str(pristine["ckpt"]),
            "--nodule", "1", "--out", str(tmp / "out"), "--no-progress", "--device", "cpu"]  # fmt: skip
    return args, str(pristine["chest"])


def cli_max_candidates_zero(tmp, pristine, mp):
    return _report(pristine["chest"], tmp, pristine, "--max-candidates", "0"), "--max-candidates"


# One line per case: name, builder, exit code, the problem the message must state.
# fmt: off
CORPUS = [
    Case("nifti_nan_voxel", nifti_nan_voxel, 2, r"1 of 16384 raw voxels are not finite .*nan, at \(z, y, x\) index \(3, 4, 5\)"),
    Case("nifti_inf_voxels_uncompressed", nifti_inf_voxels_uncompressed, 2, r"4 of 16384 raw voxels are not finite \(NaN or inf; the first, -inf"),
    Case("metaimage_inf_voxel", metaimage_inf_voxel, 2, r"1 of 16384 voxels are not finite .*index \(8, 16, 16\)"),
    Case("nifti_gz_truncated", nifti_gz_truncated, 2, r"is truncated: its gzip stream \(\d+ bytes on disk\) ends before the end-of-stream marker"),
    Case("nifti_gz_crc_corrupt", nifti_gz_crc_corrupt, 2, r"is a corrupt gzip file \(CRC check failed"),
    Case("nifti_gz_not_gzip", nifti_gz_not_gzip, 2, r"is a corrupt gzip file \(Not a gzipped file"),
    Case("nifti_uncompressed_truncated", nifti_uncompressed_truncated, 2, r"is truncated: it holds \d+ bytes but its header \(shape \(32, 32, 16\), float32\) needs \d+"),
    Case("nifti_zero_spacing", nifti_zero_spacing, 2, r"voxel size \(pixdim\) along z is 0 mm; .*ITK would silently read it as 1 mm"),
    Case("nifti_spacing_1e-9_mm", nifti_spacing_1e9, 2, r"z spacing 1e-09 mm is outside the plausible CT range 0\.1-20 mm \(SPACING_RANGE_MM\)"),
    Case("metaimage_spacing_50_mm", metaimage_spacing_50mm, 2, r"z spacing 50 mm is outside the plausible CT range 0\.1-20 mm"),
    Case("volume_over_memory_budget", volume_over_memory_budget, 2, r"16 x 32 x 32 grid; the run would need about 0\.000885 GiB, over the memory budget of 0\.0005 GiB; raise it with --max-memory-gb"),
    Case("dicom_missing_slice", dicom_missing_slice, 2, r"gap of 20\.000 mm between .* \(median slice step 10\.000 mm\): a slice is missing"),
    Case("dicom_unreadable_file", dicom_unreadable_file, 2, r"has a \.dcm name but no DICOM preamble"),
    Case("dicom_truncated_slice", dicom_truncated_slice, 2, r"cannot decode pixel data .*number of bytes of pixel data is less than expected"),
    Case("dicom_nan_rescale_slope", dicom_nan_rescale_slope, 2, r"RescaleSlope nan and RescaleIntercept -1024\.0 do not map stored values to HU"),
    Case("dicom_two_series_without_uid", dicom_two_series_without_uid, 2, r"holds 2 series: [\d.]+ \(6 slice\(s\), '(CHEST 1\.0 B30f|SCOUT)'\); [\d.]+ \(6 slice\(s\), '(CHEST 1\.0 B30f|SCOUT)'\); choose one with --series-uid UID"),
    Case("dicom_unknown_series_uid", dicom_unknown_series_uid, 2, r"no file of series 1\.2\.3\.4 \(--series-uid\) in folder .*; it holds 2 series: [\d.]+ \(6 slice\(s\), '"),
    Case("dicom_empty_folder", dicom_empty_folder, 2, r"no DICOM image files found in folder"),
    Case("ckpt_text_file", ckpt_text_file, 2, r"checkpoint .* is not readable \(corrupt or not a checkpoint\)"),
    Case("ckpt_pickled_object", ckpt_pickled_object, 2, r"holds a Python object \(\S*open\) that a safe load refuses"),
    Case("ckpt_plain_tensor", ckpt_plain_tensor, 2, r"has no 'state_dict'; is it a Lightning checkpoint\?"),
    Case("ckpt_truncated", ckpt_truncated, 2, r"checkpoint .* is not readable"),
    Case("ckpt_missing", ckpt_missing, 2, r"checkpoint .* does not exist"),
    Case("guard_model_fires_everywhere", guard_model_fires_everywhere, 2, r"2 of 2 segmented component\(s\) are larger than any chest finding: the largest measures \d+\.\d mm mean diameter and [\d.]+ litres \(limits 100 mm and 0\.524 litres.*stopped before the nodule heads and the report\. Pass --no-guard to go on"),
    Case("guard_too_many_candidates", guard_too_many_candidates, 2, r"found \d{3,} candidate components, more than the 500 a chest CT plausibly holds.*Pass --no-guard \(or a larger --max-candidates\)"),
    Case("guard_ask_without_a_report", guard_ask_without_a_report, 2, r"2 of 2 segmented component\(s\) are larger than any chest finding.*Pass --no-guard to go on"),
    Case("cli_max_candidates_zero", cli_max_candidates_zero, 2, r"argument --max-candidates: expected an integer >= 1, got 0"),
]
# fmt: on


def first_message_line(text: str) -> str:
    """The first line that says something (skips notes, warnings and argparse usage lines)."""
    lines = [
        ln for ln in text.splitlines()
        if ln.strip() and not ln.startswith(("usage", " ", "note:", "warning:"))
        and "Warning" not in ln
    ]  # fmt: skip
    return lines[0] if lines else ""


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_bad_input_corpus(case: Case, pristine, tmp_path: Path, capsys, monkeypatch):
    argv, named = case.build(tmp_path, pristine, monkeypatch)
    code, output = run_cli(argv, capsys)
    assert_clear_error(code, output, case.code, named, case.problem)
    # Nothing half-written: no report folder, no .partial folder of one.
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))
    assert not (tmp_path / "MARKER").exists()  # the pickled payload was never unpickled
    line = first_message_line(output)
    print(f"| {case.name} | {code} | {line[:160]} |", file=sys.__stdout__)


def test_clean_inputs_pass_every_check(pristine, tmp_path: Path):
    """The checks refuse only what is broken: the same files, intact, read as before."""
    chest = read_volume(pristine["chest"]).volume
    assert chest.shape == CHEST_SHAPE and chest.spacing_mm == CHEST_SPACING_MM
    assert np.array_equal(chest.array_hu, chest_hu())
    plain = read_volume(_nifti(tmp_path, "plain.nii", chest_hu())).volume
    assert np.array_equal(plain.array_hu, chest_hu())
    meta = read_volume(_metaimage(tmp_path, "chest.mhd", chest_hu(), (20.0, 0.1, 0.1))).volume
    assert meta.spacing_mm == pytest.approx((SPACING_RANGE_MM[1], 0.1, 0.1))  # both range ends
    first = _series(tmp_path / "mixed", "CHEST 1.0 B30f", seed=0, prefix="a")
    second = _series(tmp_path / "mixed", "SCOUT", seed=1, prefix="b")
    for written in (first, second):
        read = read_volume(tmp_path / "mixed", series_uid=written.series_uid)
        assert read.series_uid == written.series_uid and read.volume.shape == DICOM_SHAPE


def test_gzip_members_are_checked_to_their_end(pristine, tmp_path: Path):
    """A file cut just before the gzip trailer still decompresses every voxel: only the CRC and
    length at the end tell it is incomplete, and they are read."""
    data = pristine["chest"].read_bytes()
    cut = tmp_path / "no_trailer.nii.gz"
    cut.write_bytes(data[:-8])
    with gzip.open(cut) as handle:  # the voxels themselves are all there
        assert len(handle.read(len(gzip.decompress(data)))) == len(gzip.decompress(data))
    with pytest.raises(ValueError, match=r"no_trailer\.nii\.gz is truncated: its gzip stream"):
        read_volume(cut)


def test_predict_lists_a_runaway_scan_as_failed_without_its_folder(
    pristine, tmp_path: Path, capsys
):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "chest.nii.gz").write_bytes(pristine["chest"].read_bytes())
    out = tmp_path / "batch"
    args = ["predict", str(scans), "--ckpt", str(pristine["ckpt"]), "--out", str(out),
            "--device", "cpu", "--no-progress", "--num-workers", "0"]  # fmt: skip
    assert main(args) == 1
    failures = (out / "failures.json").read_text()
    assert "larger than any chest finding" in failures and "--no-guard" in failures
    assert sorted(p.name for p in out.iterdir()) == ["failures.json", "summary.csv"]
    assert "0 reported, 0 skipped (done before), 1 failed" in capsys.readouterr().out
