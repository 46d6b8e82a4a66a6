"""Phantom -> DICOM / LIDC-IDRI / LUNA16 writers, read back by the real readers and preprocess."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from data_modules.cache import CacheSpec, load_case_arrays, load_case_json
from data_modules.io import (
    find_lidc_series,
    parse_lidc_xml,
    read_annotations_csv,
    read_candidates_csv,
    read_dicom_series,
    read_metaimage,
)
from data_modules.io.lidc_xml import roi_region
from data_modules.phantom.generator import PhantomConfig, generate_case
from data_modules.phantom.writers import (
    malignancy_rating,
    outer_contours,
    write_dicom_series,
    write_lidc_tree,
    write_luna16_tree,
)
from data_modules.preprocess import PreprocessOptions, preprocess
from lungvlm.clinical.measure import measure_nodule
from lungvlm.commands.phantom_formats import add_format_arguments, write_phantom_set
from lungvlm.labels import CONCEPT_NAMES

CONFIG = PhantomConfig.tiny(
    shape_zyx=(40, 48, 48), z_extent_mm=160.0, with_report=False, n_nodules=(2, 3)
)
SPEC = CacheSpec(spacing_mm=2.0)


@pytest.fixture(scope="module")
def case():
    return generate_case(2, CONFIG)


def test_dicom_series_tags_and_values(case, tmp_path: Path):
    written = write_dicom_series(case, tmp_path / "s", patient_id="P-7")
    ds = pydicom.dcmread(written["files"][3])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert ds.Manufacturer == case.profile.manufacturer
    assert ds.ConvolutionKernel == case.profile.convolution_kernel
    assert float(ds.KVP) == case.profile.kvp
    assert float(ds.SliceThickness) == pytest.approx(4.0)  # max(profile 0.74 mm, 4 mm slices)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx(case.spacing_mm[1:])
    assert (ds.RescaleSlope, ds.RescaleIntercept, ds.PixelRepresentation) == (1, -1024, 0)
    assert ds.PatientID == "P-7" and ds.pixel_array.dtype == np.uint16
    volume = read_dicom_series(tmp_path / "s")
    expected = np.maximum(np.rint(case.image_hu), -1024)
    assert np.array_equal(volume.array_hu, expected)
    assert volume.spacing_mm == pytest.approx(case.spacing_mm)
    assert volume.origin_lps_mm == pytest.approx(case.origin_lps_mm)
    assert volume.metadata["series_instance_uid"] == written["series_uid"]


def test_outer_contours_rasterise_back_to_the_region():
    region = np.zeros((9, 10), dtype=bool)
    region[2:6, 3:7] = True
    region[6, 4] = True  # a one-pixel bump
    region[1, 8] = True  # a separate single pixel
    contours = outer_contours(region)
    assert len(contours) == 2
    assert sorted(len(c) for c in contours)[0] == 4  # a single pixel: its 4 neighbours
    back = np.zeros_like(region)
    for points in contours:
        assert np.all(region[points[:, 1], points[:, 0]] == 0)  # points lie outside
        back |= roi_region(points.astype(float), region.shape, include_contour=False)
    assert np.array_equal(back, region)


def test_lidc_xml_schema_and_reader_variation(case, tmp_path: Path):
    folder = write_lidc_tree(case, tmp_path / "LIDC-IDRI")
    [(series_folder, xml)] = find_lidc_series(tmp_path / "LIDC-IDRI")
    assert series_folder == folder
    root_tag = xml.read_text().split("<LidcReadMessage", 1)[1][:200]
    assert 'xmlns="http://www.nih.gov"' in root_tag
    message = parse_lidc_xml(xml)
    assert message.n_readers == 4 and len(message.non_nodules) == 1
    assert message.series_uid == read_dicom_series(folder).metadata["series_instance_uid"]
    rated = [n for n in message.nodules if n.has_complete_ratings]
    assert len(rated) >= 3 * len(case.nodules)  # a shrunken outline may vanish
    outlines = {len(np.concatenate([r.xy for r in n.rois])) for n in rated}
    assert len(outlines) > 1  # the readers' contours differ
    all_mal = [n.characteristics["malignancy"] for n in rated]
    assert set(all_mal) <= {
        malignancy_rating(case, i) + d for i in range(len(case.nodules)) for d in (-1, 0, 1)
    }


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_lidc_round_trip_masks_and_labels(case, tmp_path: Path):
    write_lidc_tree(case, tmp_path / "src")
    result = preprocess("lidc", tmp_path / "src", tmp_path / "cache", SPEC, progress=False)
    [case_id] = result.written
    info = load_case_json(tmp_path / "cache" / case_id)
    arrays = load_case_arrays(tmp_path / "cache" / case_id)
    assert len(info["nodules"]) == len(case.nodules)
    # Put the cache mask back on the phantom's (source) grid with nearest neighbour.
    cached = sitk.GetImageFromArray(np.asarray(arrays["mask"]))
    cached.SetSpacing(info["spacing_mm"][::-1])
    cached.SetOrigin(info["origin_lps_mm"])
    source = sitk.GetImageFromArray(case.nodule_labels.astype(np.uint8))
    source.SetSpacing(case.spacing_mm[::-1])
    source.SetOrigin(case.origin_lps_mm)
    back = sitk.GetArrayFromImage(
        sitk.Resample(cached, source, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )
    for truth in case.nodules:
        record = min(
            info["nodules"],
            key=lambda r: np.linalg.norm(np.subtract(r["centre_lps_mm"], truth.centroid_lps_mm)),
        )
        assert _dice(case.nodule_labels == truth.index + 1, back == record["label"]) >= 0.95
        assert record["centre_lps_mm"] == pytest.approx(truth.centroid_lps_mm, abs=1e-3)
        # Same mask, same grid -> same size. (Compared with measure_nodule on the full grid,
        # not truth.mean_diameter_mm: that was measured on a crop, and measure_nodule's short
        # axis can change when a coarse mask is translated by one voxel.)
        full = measure_nodule(case.nodule_labels == truth.index + 1, case.spacing_mm)
        assert record["diameter_mm"] == pytest.approx(full.mean_diameter_mm, abs=1e-4)
        assert record["volume_mm3"] == pytest.approx(truth.volume_mm3)
        medians = {k: v["median"] for k, v in record["ratings"].items()}
        for name in CONCEPT_NAMES:
            lidc_name = "internalStructure" if name == "internal_structure" else name
            assert medians[lidc_name] == truth.characteristics[name]
        assert record["malignancy"]["label"] == int(truth.malignant)
        assert record["malignancy"]["rule"] == "mean_gt3"
    assert info["lidc"]["small_nodule_marks"] == 0 and info["lidc"]["non_nodule_marks"] == 1


@pytest.mark.parametrize("mask_kind", ["none", "sphere"])
def test_luna16_round_trip_world_coordinates(case, tmp_path: Path, mask_kind: str):
    mhd = write_luna16_tree(case, tmp_path / "luna", subset=3, n_negatives=5)
    assert mhd.parent.name == "subset3" and mhd.with_suffix(".raw").is_file()
    volume = read_metaimage(mhd)
    assert np.array_equal(volume.array_hu, np.rint(case.image_hu))
    assert volume.origin_lps_mm == pytest.approx(case.origin_lps_mm)
    rows = read_annotations_csv(tmp_path / "luna" / "annotations.csv")
    candidates = read_candidates_csv(tmp_path / "luna" / "candidates_V2.csv")
    assert len(rows) == len(case.nodules)
    assert (
        sum(c.label for c in candidates) == len(case.nodules)
        and len(candidates) == len(case.nodules) + 5
    )
    options = PreprocessOptions(luna16_mask=mask_kind)
    result = preprocess("luna16", tmp_path / "luna", tmp_path / "c", SPEC, options, progress=False)
    info = load_case_json(tmp_path / "c" / result.written[0])
    assert (
        info["fold"] == 3
        and info["mask_source"] == {"none": "none", "sphere": "luna16_sphere"}[mask_kind]
    )
    assert len(info["candidates"]) == len(case.nodules) + 5
    origin, spacing = np.asarray(info["origin_lps_mm"]), np.asarray(info["spacing_mm"])
    for row, record in zip(rows, info["nodules"], strict=True):
        world = origin + spacing[::-1] * np.asarray(record["centroid_voxel_zyx"])[::-1]
        error_vox = np.abs(world - np.asarray(row.xyz_mm)) / spacing[::-1]
        assert np.all(error_vox <= 0.5)
        truth = min(
            case.nodules, key=lambda n: np.linalg.norm(np.subtract(n.centroid_lps_mm, row.xyz_mm))
        )
        assert row.xyz_mm == pytest.approx(truth.centroid_lps_mm)
        assert record["in_mask"] is (mask_kind == "sphere")


def test_writers_cli_writes_each_format(tmp_path: Path):
    parser = argparse.ArgumentParser()
    add_format_arguments(parser)
    args = parser.parse_args(["--format", "lidc"])
    args.out, args.n, args.seed, args.shape = tmp_path / "lidc", 1, 5, (24, 32, 32)
    args.shape_source, args.follow_up, args.progress = "procedural", 6.0, False
    assert write_phantom_set(args) == 0
    pairs = find_lidc_series(tmp_path / "lidc")
    assert len(pairs) == 2  # baseline and follow-up: two series of one patient
    patients = {read_dicom_series(folder).metadata["patient_id"] for folder, _ in pairs}
    assert patients == {"PHANTOM-0005"}
    args.format = "nifti"
    with pytest.raises(ValueError, match="must be one of"):
        write_phantom_set(args)


def test_phantom_command_choices_match_the_generator():
    """The command spells its choices (fast --help); they must equal the generator's."""
    from data_modules.phantom.generator import SHAPE_SOURCES
    from lungvlm.commands import phantom as command

    assert command.SHAPE_SOURCE_CHOICES == SHAPE_SOURCES
