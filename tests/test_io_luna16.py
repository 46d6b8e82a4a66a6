"""LUNA16 MetaImage reader, CSV readers, world -> voxel mapping and bad inputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk

from data_modules.io import (
    LUNA16_SUBSETS,
    CSVFormatError,
    MetaImageError,
    PointOutsideImageError,
    check_rows_inside,
    fold_of_subset_folder,
    read_annotations_csv,
    read_candidates_csv,
    read_metaimage,
    world_to_voxel_zyx,
)

UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"


def _write_mhd(folder, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    array = (np.arange(5 * 6 * 7, dtype=np.int16) - 1000).reshape(5, 6, 7)  # (z, y, x)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.7, 2.5))  # x, y, z
    image.SetOrigin((-195.0, -190.0, -378.0))
    image.SetDirection(direction)
    path = folder / f"{UID}.mhd"
    sitk.WriteImage(image, str(path))
    return path, array, image


def test_read_metaimage_geometry_and_values(tmp_path):
    path, array, _ = _write_mhd(tmp_path)
    assert "ElementType = MET_SHORT" in path.read_text()
    vol = read_metaimage(path)
    assert vol.array_hu.dtype == np.float32 and vol.shape == (5, 6, 7)
    np.testing.assert_array_equal(vol.array_hu, array)
    assert vol.spacing_mm == (2.5, 0.7, 0.8) and vol.origin_lps_mm == (-195.0, -190.0, -378.0)
    assert vol.metadata["series_instance_uid"] == UID
    # identity direction: ijk = (xyz - Offset) / ElementSpacing, reported as (z, y, x)
    xyz = (-195.0 + 4 * 0.8, -190.0 + 2 * 0.7, -378.0 + 3 * 2.5)
    np.testing.assert_allclose(world_to_voxel_zyx(vol, xyz), [3.0, 2.0, 4.0], atol=1e-9)
    assert vol.array_hu[3, 2, 4] == 3 * 42 + 2 * 7 + 4 - 1000


def test_non_identity_direction_matches_simpleitk(tmp_path):
    path, _, image = _write_mhd(tmp_path, direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))
    assert "TransformMatrix = 0 -1 0 1 0 0 0 0 1" in path.read_text()  # written transposed
    vol = read_metaimage(path)
    np.testing.assert_allclose(vol.direction, [[0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    xyz = (-197.0, -187.0, -373.0)
    np.testing.assert_allclose(
        world_to_voxel_zyx(vol, xyz)[::-1],
        image.TransformPhysicalPointToContinuousIndex(xyz),
        atol=1e-9,
    )


def test_missing_and_truncated_raw(tmp_path):
    path, _, _ = _write_mhd(tmp_path)
    raw = tmp_path / f"{UID}.raw"
    data = raw.read_bytes()
    raw.write_bytes(data[:-10])
    with pytest.raises(
        MetaImageError, match=rf"{re.escape(str(raw))} holds 410 bytes .* needs 420"
    ):
        read_metaimage(path)
    raw.unlink()
    with pytest.raises(MetaImageError, match=f"data file {re.escape(str(raw))} is missing"):
        read_metaimage(path)
    path.write_text("ObjectType = Image\nNDims = 3\nElementType = MET_SHORT\n")
    with pytest.raises(MetaImageError, match="lacks DimSize"):
        read_metaimage(path)


def test_truncated_compressed_data(tmp_path):
    array = np.random.default_rng(0).normal(0, 100, (6, 8, 8)).astype(np.int16)
    path = tmp_path / "scan.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=True)
    zraw = tmp_path / "scan.zraw"
    assert np.array_equal(read_metaimage(path).array_hu, array)  # intact: reads
    data = zraw.read_bytes()
    zraw.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        MetaImageError, match=rf"{re.escape(str(zraw))} holds \d+ bytes .* truncated"
    ):
        read_metaimage(path)
    zraw.write_bytes(b"not zlib at all")
    with pytest.raises(MetaImageError, match="not a readable compressed data file"):
        read_metaimage(path)


def test_annotations_csv_and_inside_check(tmp_path):
    path, _, _ = _write_mhd(tmp_path)
    vol = read_metaimage(path)
    csv_path = tmp_path / "annotations.csv"
    csv_path.write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{UID},-192.6,-188.6,-370.5,5.2\n"
        "1.2.3,0,0,0,4.0\n"
        f"{UID},-150.0,-188.6,-370.5,6.1\n"
    )
    rows = read_annotations_csv(csv_path)
    assert [(r.seriesuid, r.xyz_mm, r.diameter_mm, r.row_number) for r in rows[:2]] == [
        (UID, (-192.6, -188.6, -370.5), 5.2, 2),
        ("1.2.3", (0.0, 0.0, 0.0), 4.0, 3),
    ]
    assert check_rows_inside(vol, rows[:2]) == 1  # the 1.2.3 row belongs to another series
    with pytest.raises(
        PointOutsideImageError, match=rf"annotations.csv row 4: series {re.escape(UID)} point"
    ):
        check_rows_inside(vol, rows)


def test_candidates_csv(tmp_path):
    csv_path = tmp_path / "candidates_V2.csv"
    csv_path.write_text("seriesuid,coordX,coordY,coordZ,class\n1.2,1.5,2,3,1\n1.2,4,5,6,0\n")
    assert [(c.xyz_mm, c.label) for c in read_candidates_csv(csv_path)] == [
        ((1.5, 2.0, 3.0), 1),
        ((4.0, 5.0, 6.0), 0),
    ]
    csv_path.write_text("seriesuid,coordX,coordY,coordZ,class\n1.2,1.5,2,3,2\n")
    with pytest.raises(CSVFormatError, match="row 2: class '2' must be 0 or 1"):
        read_candidates_csv(csv_path)


def test_bad_csv_rows(tmp_path):
    csv_path = tmp_path / "annotations.csv"
    csv_path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,3,4\n1.2,x,2,3,4\n")
    with pytest.raises(CSVFormatError, match="annotations.csv row 3: cannot parse"):
        read_annotations_csv(csv_path)
    csv_path.write_text("seriesuid,coordX,coordY,diameter_mm\n1.2,1,2,4\n")
    with pytest.raises(CSVFormatError, match=r"lacks column\(s\) \['coordZ'\]"):
        read_annotations_csv(csv_path)


@pytest.mark.parametrize(("name", "fold"), [("subset0", 0), ("subset9", 9)])
def test_fold_of_subset_folder(tmp_path, name, fold):
    assert fold_of_subset_folder(tmp_path / name) == fold
    assert LUNA16_SUBSETS == 10


@pytest.mark.parametrize("name", ["subset10", "subsetA", "seg-lungs-LUNA16"])
def test_fold_of_bad_folder(name):
    with pytest.raises(ValueError, match=f"subset0..subset9, got '{name}'"):
        fold_of_subset_folder(f"/data/{name}")
