"""LIDC XML parsing, series pairing, rasterisation, clustering, consensus and rating labels.

Scene (4 slices at z = 0, 2, 4, 6 mm, 20 x 20 pixels of 1 mm, four readers):
  nodule A, all four readers, slices 1-2; reader 2 has a one-pixel hole at (5, 5);
  nodule B, readers 0 and 2, slice 3; plus a small (< 3 mm) nodule and a nonNodule.
A square with corners (a, a)-(b, b) covers the (b - a - 1)**2 pixels strictly inside it.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from data_modules.io import (
    AnnotationError,
    ClusterError,
    aggregate_ratings,
    binarize_malignancy,
    cluster_annotations,
    consensus_mask,
    find_lidc_series,
    parse_lidc_xml,
    rasterize_annotation,
    read_dicom_series,
)
from data_modules.io.lidc_xml import ROI, ReaderNodule
from tests.io_fixtures import lidc_nodule_xml, ramp_volume, write_ct_series, write_lidc_xml


def square(a: int, b: int) -> list[tuple[int, int]]:
    return [(a, a), (b, a), (b, b), (a, b)]


@pytest.fixture
def scene(tmp_path):
    series = write_ct_series(
        tmp_path / "series",
        ramp_volume((4, 20, 20)),
        spacing_mm=(2.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
    )
    sop = series.sop_uids

    def roi(k, pts, inclusion=True):
        return (2.0 * k, sop[k], inclusion, pts)

    sessions = [
        lidc_nodule_xml("A0", [roi(1, square(2, 8)), roi(2, square(2, 8))], malignancy=4)
        + lidc_nodule_xml("B0", [roi(3, square(14, 18))], malignancy=2),
        lidc_nodule_xml("A1", [roi(1, square(3, 9)), roi(2, square(3, 9))], malignancy=5),
        lidc_nodule_xml("A2", [roi(1, square(2, 8)), roi(1, square(4, 6), False)], malignancy=3)
        + lidc_nodule_xml("B2", [roi(3, square(14, 17))], malignancy=3),
        lidc_nodule_xml("A3", [roi(1, square(2, 9))], malignancy=4)
        + lidc_nodule_xml("small", [roi(0, [(15, 3)])], malignancy=None)
        + f"<nonNodule><nonNoduleID>n1</nonNoduleID><imageZposition>0.0</imageZposition>"
        f"<imageSOP_UID>{sop[0]}</imageSOP_UID><locus><xCoord>11</xCoord>"
        f"<yCoord>12</yCoord></locus></nonNodule>",
    ]
    xml = write_lidc_xml(
        tmp_path / "series" / "069.xml", series.series_uid, series.study_uid, sessions
    )
    return series, xml, read_dicom_series(tmp_path / "series")


def test_parse_readers_nodules_and_non_nodules(scene):
    series, xml, _ = scene
    msg = parse_lidc_xml(xml)
    assert (msg.series_uid, msg.study_uid, msg.n_readers) == (
        series.series_uid,
        series.study_uid,
        4,
    )
    assert [(n.reader_index, n.nodule_id) for n in msg.nodules] == [
        (0, "A0"),
        (0, "B0"),
        (1, "A1"),
        (2, "A2"),
        (2, "B2"),
        (3, "A3"),
        (3, "small"),
    ]
    a2 = msg.nodules[3]
    assert [r.inclusion for r in a2.rois] == [True, False]
    np.testing.assert_array_equal(a2.rois[1].xy, [[4, 4], [6, 4], [6, 6], [4, 6]])
    assert a2.characteristics["malignancy"] == 3 and a2.characteristics["calcification"] == 6
    assert [n.is_small for n in msg.nodules] == [False] * 6 + [True]
    assert [n.has_complete_ratings for n in msg.nodules] == [True] * 6 + [False]
    (non,) = msg.non_nodules
    assert (non.reader_index, non.non_nodule_id, non.z_mm, non.sop_uid) == (
        3,
        "n1",
        0.0,
        series.sop_uids[0],
    )
    np.testing.assert_array_equal(non.xy, [[11, 12]])


@pytest.mark.parametrize(
    ("root", "namespace", "series_tag"),
    [
        ("IdriReadMessage", True, "SeriesInstanceUid"),
        ("LidcReadMessage", False, "SeriesInstanceUID"),
    ],
)
def test_header_variants(tmp_path, root, namespace, series_tag):
    xml = write_lidc_xml(
        tmp_path / "a.xml",
        "1.2.3.4",
        "1.2.3",
        [lidc_nodule_xml("1", [(0.0, "9.9", True, square(1, 3))])],
        root=root,
        namespace=namespace,
        series_tag=series_tag,
    )
    msg = parse_lidc_xml(xml)
    assert (msg.series_uid, msg.study_uid, len(msg.nodules)) == ("1.2.3.4", "1.2.3", 1)


def test_bad_xml(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<LidcReadMessage><ResponseHeader>")
    with pytest.raises(AnnotationError, match="cannot parse LIDC XML .*bad.xml"):
        parse_lidc_xml(bad)
    no_uid = tmp_path / "no_uid.xml"
    no_uid.write_text(
        '<LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader>'
        "<Version>1</Version></ResponseHeader></LidcReadMessage>"
    )
    with pytest.raises(AnnotationError, match="has no SeriesInstanceUid"):
        parse_lidc_xml(no_uid)
    text = lidc_nodule_xml("1", [(0.0, "9.9", True, [(1, 2)])]).replace(
        "<malignancy>3</malignancy>", "<malignancy>high</malignancy>"
    )
    with pytest.raises(AnnotationError, match=r"rating <malignancy> is 'high'"):
        parse_lidc_xml(write_lidc_xml(tmp_path / "r.xml", "1.2", "1.3", [text]))
    text = lidc_nodule_xml("1", [(0.0, "9.9", True, [("x", 2)])])
    with pytest.raises(AnnotationError, match=r"<xCoord> is 'x', expected a number"):
        parse_lidc_xml(write_lidc_xml(tmp_path / "c.xml", "1.2", "1.3", [text]))


def test_find_lidc_series_pairs_by_uid(tmp_path):
    root = tmp_path / "LIDC-IDRI"
    a = write_ct_series(root / "LIDC-IDRI-0001" / "x" / "s1", ramp_volume((2, 16, 16)))
    b = write_ct_series(root / "LIDC-IDRI-0002" / "y" / "s2", ramp_volume((2, 16, 16)))
    write_ct_series(root / "LIDC-IDRI-0003" / "z" / "cxr", ramp_volume((1, 16, 16)), modality="DX")
    xml_a = write_lidc_xml(
        root / "LIDC-IDRI-0001" / "x" / "s1" / "069.xml", a.series_uid, a.study_uid, []
    )
    (tmp_path / "tcia-lidc-xml").mkdir()
    xml_b = write_lidc_xml(tmp_path / "tcia-lidc-xml" / "158.xml", b.series_uid, b.study_uid, [])
    write_lidc_xml(tmp_path / "tcia-lidc-xml" / "999.xml", "1.2.999", "1.2", [])
    (tmp_path / "tcia-lidc-xml" / "notes.xml").write_text("<notes/>")
    assert find_lidc_series(root) == [(a.paths[0].parent, xml_a)]
    assert find_lidc_series(tmp_path) == [(a.paths[0].parent, xml_a), (b.paths[0].parent, xml_b)]


def test_rasterize_squares_holes_and_contour_points(scene):
    _, xml, vol = scene
    a0, b0, a1, a2, b2, a3, small = parse_lidc_xml(xml).nodules
    counts = [rasterize_annotation(n, vol).sum(axis=(1, 2)).tolist() for n in (a0, a2, a3, b0)]
    assert counts == [[0, 25, 25, 0], [0, 24, 0, 0], [0, 36, 0, 0], [0, 0, 0, 9]]
    hole = rasterize_annotation(a2, vol)
    assert not hole[1, 5, 5] and hole[1, 4, 4] and hole[1, 3, 7] and not hole[1, 2, 2]
    with_points = rasterize_annotation(a0, vol, include_contour_points=True)
    assert with_points.sum() == 2 * 49
    assert rasterize_annotation(small, vol).sum() == 0
    small_points = rasterize_annotation(small, vol, include_contour_points=True)
    assert np.argwhere(small_points).tolist() == [[0, 3, 15]]


def test_rasterize_diagonal_edge_triangle(scene):
    _, _, vol = scene
    tri = ReaderNodule(
        0,
        "t",
        None,
        [ROI(0.0, "no-such-uid", True, np.array([[2.0, 2.0], [8.0, 2.0], [2.0, 8.0]]))],
    )
    # strictly inside x > 2, y > 2, x + y < 10: 4 + 3 + 2 + 1 pixels; edges hold 18 more
    assert rasterize_annotation(tri, vol).sum() == 10  # placed by z = 0.0 -> slice 0
    assert rasterize_annotation(tri, vol, include_contour_points=True)[0].sum() == 28


def test_roi_matching_no_slice(scene):
    _, xml, vol = scene
    nodule = ReaderNodule(
        1, "x", None, [ROI(3.5, "1.2.3.4.5", True, np.array([[1.0, 1.0]]))], source_path=xml
    )
    # z 3.5 is 1.5 mm from the nearest slice (z 4.0 is 0.5 away -> accepted; 7.5 is not)
    assert rasterize_annotation(nodule, vol, include_contour_points=True)[2, 1, 1]
    nodule.rois[0].z_mm = 7.5
    with pytest.raises(
        AnnotationError, match=re.escape(str(xml)) + r".*SOPInstanceUID 1\.2\.3\.4\.5"
    ):
        rasterize_annotation(nodule, vol)


def test_clusters_consensus_and_labels(scene):
    _, xml, vol = scene
    msg = parse_lidc_xml(xml)
    clusters = cluster_annotations([n for n in msg.nodules if not n.is_small], vol)
    assert [[n.nodule_id for n in c] for c in clusters] == [["A0", "A1", "A2", "A3"], ["B0", "B2"]]
    masks_a = [rasterize_annotation(n, vol) for n in clusters[0]]
    # slice 1: r3's 6x6 block minus (3, 8) and (8, 3), the only pixels r3 alone covers -> 34;
    # slice 2: r0 (3..7) and r1 (4..8) overlap on 4..7 -> 16
    assert consensus_mask(masks_a).sum(axis=(1, 2)).tolist() == [0, 34, 16, 0]
    assert consensus_mask(masks_a, level=1.0).sum() == 4 * 4 - 1  # 4..7 square minus the hole
    masks_b = [rasterize_annotation(n, vol) for n in clusters[1]]
    assert (consensus_mask(masks_b).sum(), consensus_mask(masks_b, level=1.0).sum()) == (9, 4)
    ratings_a = aggregate_ratings([n.characteristics for n in clusters[0]] + [None])
    assert ratings_a["malignancy"] == {"mean": 4.0, "median": 4.0, "median_high": 4.0, "n": 4.0}
    assert ratings_a["calcification"]["mean"] == 6.0
    mal_b = [n.characteristics["malignancy"] for n in clusters[1]]
    assert [binarize_malignancy([4, 5, 3, 4], r) for r in ("mean_gt3", "mean_le2_ge4")] == [1, 1]
    assert [binarize_malignancy(mal_b, r) for r in ("mean_gt3", "mean_le2_ge4", "median_high")] == [
        0,
        None,
        None,
    ]


@pytest.mark.parametrize(
    ("ratings", "rule", "label"),
    [
        ([3, 3, 3], "mean_gt3", None),
        ([3, 3, 4], "mean_gt3", 1),
        ([1, 2, 3], "mean_le2_ge4", 0),
        ([2, 2, 3], "mean_le2_ge4", None),
        ([1, 4, 5, 5], "median_high", 1),
        ([1, 2, 4, 5], "median_high", 1),
        ([1, 2, 3, 5], "median_high", None),
        ([1, 2, 2, 5], "median_high", 0),
    ],
)
def test_binarize_boundaries(ratings, rule, label):
    assert binarize_malignancy(ratings, rule) == label


def test_binarize_rejects_bad_input():
    with pytest.raises(ValueError, match="did you mean 'mean_gt3'"):
        binarize_malignancy([3], "mean_gt_3")
    with pytest.raises(ValueError, match=r"integers 1-5, got \[0, 3\]"):
        binarize_malignancy([0, 3])


def _reader(i: int, x0: int) -> ReaderNodule:
    pts = np.array([(x0, 2), (x0 + 4, 2), (x0 + 4, 6), (x0, 6)], dtype=float)
    return ReaderNodule(i % 4, f"n{i}", None, [ROI(0.0, "u", True, pts)])


def test_cluster_tolerance_shrinks_until_four(scene):
    _, _, vol = scene
    left = [_reader(i, 2) for i in range(4)]  # x in 2..6
    right = [_reader(i, 8) for i in range(4)]  # x in 8..12: 2 mm from the left group
    clusters = cluster_annotations(left + right, vol, tol_mm=2.5)  # 2.5 -> 2.25 -> 2.03 -> 1.82
    assert [len(c) for c in clusters] == [4, 4] and clusters[0] == left
    assert len(cluster_annotations(left[:2] + right[:2], vol, tol_mm=2.5)) == 1
    with pytest.raises(ClusterError, match="more than 4 annotations"):
        cluster_annotations([_reader(i, 2) for i in range(5)], vol, tol_mm=2.5)


def test_consensus_mask_rejects_mixed_shapes():
    with pytest.raises(ValueError, match="masks must share one shape"):
        consensus_mask([np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool)])
