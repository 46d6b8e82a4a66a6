"""``lungvlm report``: end to end on a phantom DICOM series, report assembly, bad input."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import lungvlm.cli as cli
from data_modules.io import read_dicom_series
from data_modules.phantom import PhantomConfig, generate_case
from data_modules.phantom.writers import write_dicom_series
from lungvlm.clinical.emphysema import laa950_percent
from lungvlm.clinical.lungrads import EXAM_PRIORITY
from lungvlm.export.identifiers import series_pseudonym
from lungvlm.export.json_report import read_report_json
from lungvlm.export.schema import REPORT_SCHEMA_VERSION, Source
from lungvlm.imaging.lung_mask import lung_mask
from lungvlm.inference.nodule_heads import GeneratedSentence, NoduleHeadOutput
from lungvlm.inference.report_analysis import (
    ReportModel,
    ReportSettings,
    ScanAnalysis,
    rank_nodules,
    ranked_label_map,
)
from lungvlm.inference.report_findings import assemble_report, texture_attenuation
from lungvlm.inference.scan import DetectedNodule, ScanSegmentation, prepare_scan
from lungvlm.labels import CONCEPT_NAMES, LUNGRADS_CATEGORIES
from tests.report_fixtures import write_segment_checkpoint


def run_cli(args: list[str]) -> int:
    """``lungvlm.cli.main`` without progress bars (they would fill the captured stderr)."""
    return cli.main([*args, "--no-progress"])


@pytest.fixture(scope="module")
def phantom():
    return generate_case(0, PhantomConfig.tiny())


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory, phantom) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "PHANTOM-0000"
    write_dicom_series(phantom, folder)
    return folder


def test_report_on_a_dicom_series_writes_every_output(ckpt, dicom_dir, tmp_path, capsys):
    out = tmp_path / "case"
    # The untrained test model's findings describe nothing: keep every component to test wiring.
    # It segments the whole lung, which the guard refuses (tests/test_bad_input_images.py).
    args = ["report", str(dicom_dir), "--ckpt", str(ckpt), "--out", str(out), "--keep-unconfirmed",
            "--no-guard"]  # fmt: skip
    assert run_cli(args) == 0
    for name in ("report.md", "report.json", "index.html", "segmentation.nii.gz",
                 "overlays/nodule_01.png", "dicom/seg.dcm", "dicom/sr.dcm"):  # fmt: skip
        assert (out / name).is_file(), name
    report = read_report_json(out / "report.json")  # validates the schema
    assert report.schema_version == REPORT_SCHEMA_VERSION
    assert report.source.format == "dicom" and report.source.path is None
    volume = read_dicom_series(dicom_dir)
    # The case id is the series UID's pseudonym, not the folder name (tests/test_identifiers.py).
    assert report.case_id == series_pseudonym(volume.metadata["series_instance_uid"])
    # Emphysema is measured on the original HU inside the lung mask.
    expected = laa950_percent(volume.array_hu, lung_mask(volume.array_hu, volume.spacing_mm))
    assert report.exam.emphysema.laa950_percent == pytest.approx(expected)
    # Nodules are ranked by malignancy probability x volume and numbered from 1.
    n = len(report.nodules)
    assert n >= 1 and [x.index for x in report.nodules] == list(range(1, n + 1))
    scores = [x.malignancy_probability * x.volume_mm3 for x in report.nodules]
    assert scores == sorted(scores, reverse=True)
    # The exam category is the most suspicious nodule category.
    top = max((x.lungrads_category for x in report.nodules), key=EXAM_PRIORITY.index)
    assert report.exam.lungrads_category == top
    for nodule in report.nodules:
        assert nodule.sentences and all((out / s.heatmap_file).is_file() for s in nodule.sentences)
        # Uncalibrated: sentences under the default threshold 0.5 are uncertain.
        assert all(s.uncertain == (s.confidence < 0.5) for s in nodule.sentences)
    seg_image = sitk.ReadImage(str(out / "segmentation.nii.gz"))
    labels = sitk.GetArrayFromImage(seg_image)
    assert labels.shape == volume.shape and set(np.unique(labels)) == set(range(n + 1))
    # The probability map lies on the scan grid; every labelled voxel had a high probability.
    prob_image = sitk.ReadImage(str(out / "probability.nii.gz"))
    prob = sitk.GetArrayFromImage(prob_image)
    assert prob.shape == volume.shape and prob.dtype == np.float32
    assert prob_image.GetOrigin() == pytest.approx(seg_image.GetOrigin())
    assert 0.0 <= prob.min() and prob.max() <= 1.0 and prob[labels > 0].mean() > 0.5
    # Each sentence's heatmap also as NIfTI, placed on its box of the scan (world coordinates).
    first = report.nodules[0].sentences[0]
    heat_image = sitk.ReadImage(str(out / "heatmaps" / (Path(first.heatmap_file).stem + ".nii.gz")))
    corner = heat_image.TransformIndexToPhysicalPoint((0, 0, 0))
    index = seg_image.TransformPhysicalPointToContinuousIndex(corner)
    assert np.allclose(index, np.round(index), atol=1e-4)  # on scan voxel centres
    assert heat_image.GetSpacing() == pytest.approx(seg_image.GetSpacing())
    assert len(pydicom.dcmread(out / "dicom" / "seg.dcm").SegmentSequence) == n
    assert {"read", "lung_mask", "segmentation", "nodule_heads", "generation", "export"} <= set(
        report.timings_s
    )
    assert f"Lung-RADS v2022 category {report.exam.lungrads_category}" in (
        out / "report.md"
    ).read_text(encoding="utf-8")
    assert "not calibrated" in capsys.readouterr().err


def test_prior_from_another_patient_is_skipped_with_a_warning(
    ckpt, dicom_dir, phantom, tmp_path, capsys
):
    prior = tmp_path / "prior"
    write_dicom_series(phantom, prior, patient_id="SOMEONE-ELSE")
    out = tmp_path / "case"
    args = ["report", str(dicom_dir), "--ckpt", str(ckpt), "--out", str(out),
            "--keep-unconfirmed", "--no-guard",
            "--prior", str(prior), "--interval-days", "90"]  # fmt: skip
    assert run_cli(args) == 0
    err = capsys.readouterr().err
    # Neither PatientID is named without --keep-identifiers (tests/test_identifiers.py).
    assert "warning: prior scan belongs to another patient" in err and "SOMEONE-ELSE" not in err
    assert "comparison skipped" in err
    report = read_report_json(out / "report.json")
    assert all(n.comparison is None for n in report.nodules)
    assert "Not compared" in (out / "report.md").read_text(encoding="utf-8")


def _copy(src: Path, dst: Path, keep=lambda i, n: True) -> Path:
    dst.mkdir()
    files = sorted(src.iterdir())
    for i, f in enumerate(files):
        if keep(i, len(files)):
            shutil.copy(f, dst / f.name)
    return dst


def _mr(dicom_dir: Path, tmp: Path) -> Path:
    folder = _copy(dicom_dir, tmp / "mr")
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    return folder


BAD_SCANS = {
    "mr": (_mr, r"Modality 'MR'; expected 'CT'"),
    "single_slice": (lambda d, t: _copy(d, t / "one", lambda i, n: i == 0), r"single slice"),
    "gap": (lambda d, t: _copy(d, t / "gap", lambda i, n: i != n // 2), r"a slice is missing"),
    "empty_folder": (lambda d, t: _copy(d, t / "empty", lambda i, n: False), r"no DICOM image"),
    "unreadable": (lambda d, t: _write(t / "junk" / "1.dcm", b"not a DICOM file"),
                   r"no DICOM preamble"),
    "missing": (lambda d, t: t / "nowhere", r"does not exist"),
}  # fmt: skip


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir()
    path.write_bytes(data)
    return path.parent


@pytest.mark.parametrize("kind", sorted(BAD_SCANS))
def test_bad_scans_fail_with_the_file_and_the_problem(kind, ckpt, dicom_dir, tmp_path, capsys):
    build, problem = BAD_SCANS[kind]
    scan = build(dicom_dir, tmp_path)
    rc = run_cli(["report", str(scan), "--ckpt", str(ckpt), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(scan) in err
    assert re.search(problem, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["stage2", "corrupt"])
def test_bad_checkpoints_fail_with_the_file_and_the_problem(kind, dicom_dir, tmp_path, capsys):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "stage2":
        write_segment_checkpoint(path)
        problem = r"stage 'segment' .*needs a stage-3 \('vision_language'\) checkpoint"
    else:
        path.write_bytes(b"\x00garbage" * 10)
        problem = r"is not readable"
    rc = run_cli(["report", str(dicom_dir), "--ckpt", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err
    assert re.search(problem, err), err


def test_prior_needs_an_interval(ckpt, dicom_dir, tmp_path, capsys):
    args = ["report", str(dicom_dir), "--ckpt", str(ckpt), "--out", str(tmp_path / "o"),
            "--prior", str(dicom_dir)]  # fmt: skip
    assert run_cli(args) == 2
    assert "--prior needs --interval-days" in capsys.readouterr().err


# ---------------------------------------------------------------- assembly without a model
def _head(text: str, malignancy: float, lungrads: dict[str, float], texture: float = 1.0):
    probs = {c: 0.0 for c in LUNGRADS_CATEGORIES}
    probs.update(lungrads)
    sentences = [GeneratedSentence(text, 0.9, np.zeros((4, 4, 4), np.float32))]
    concepts = {name: 0.5 for name in CONCEPT_NAMES} | {"texture": texture}
    return NoduleHeadOutput(0.0, malignancy, probs, 0.2, concepts, text, sentences, (0, 0, 0))


def _instance(label: int, centre, diameter_mm: float, volume_mm3: float) -> DetectedNodule:
    return DetectedNodule(label, 0.9, 8, centre, centre, centre, volume_mm3, diameter_mm,
                          diameter_mm, diameter_mm)  # fmt: skip


def _analysis(instances, heads, labels) -> ScanAnalysis:
    prepared = prepare_scan(np.zeros(labels.shape, np.float32), (1.0, 1.0, 1.0), 1.0)
    seg = ScanSegmentation(np.zeros(labels.shape, np.float32), labels, instances, prepared, 1, 1)
    return ScanAnalysis(prepared, seg, heads, 3.0)


def test_measured_size_and_parsed_attributes_make_the_category():
    labels = np.zeros((8, 8, 8), np.int32)
    labels[1, 1, 1], labels[6, 6, 6] = 1, 2
    heads = [
        # The text says 12 mm; the segmentation measured 7 mm: the measurement wins.
        _head("A 12.0 mm solid nodule in the right upper lobe with a spiculated margin.", 0.5,
              {"4B": 0.52, "4X": 0.48}),
        _head("A 5.0 mm nodule in the left lower lobe.", 0.1, {"2": 0.9, "3": 0.1}, 0.0),
    ]  # fmt: skip
    instances = [
        _instance(1, (1.0, 1.0, 1.0), 7.0, 100.0),
        _instance(2, (6.0, 6.0, 6.0), 5.0, 1000.0),
    ]
    analysis = _analysis(instances, heads, labels)
    order = rank_nodules(analysis)
    assert order == [1, 0]  # 0.1 x 1000 mm³ = 100 > 0.5 x 100 mm³ = 50
    rm = ReportModel(None, Path("model.ckpt"), ReportSettings())
    report = assemble_report(rm, analysis, order, "case", Source("scan.nii.gz", "nifti"))
    first, second = report.nodules
    # Rank 1: no attenuation in the text; texture 0.0 (LIDC 1) -> ground glass < 30 mm -> 2.
    assert (first.mean_diameter_mm, first.attenuation, first.lungrads_category) == (
        5.0, "ground_glass", "2")  # fmt: skip
    assert (first.side, first.lobe) == ("left", "lower")
    # Rank 2: solid 7.0 mm at baseline -> 3, spiculated -> 4X.
    assert (second.mean_diameter_mm, second.volume_mm3, second.attenuation) == (7.0, 100.0, "solid")
    assert (second.side, second.lobe, second.attributes.margin) == ("right", "upper", "spiculated")
    assert second.lungrads_category == "4X" and report.exam.lungrads_category == "4X"
    assert report.exam.emphysema.laa950_percent == 3.0
    reasons = report.exam.review_reasons
    assert any("nodule 1: attenuation not stated" in r for r in reasons)
    assert any("nodule 2: the two most probable Lung-RADS categories differ by 0.04" in r
               for r in reasons)  # fmt: skip
    assert report.exam.needs_review


@pytest.mark.parametrize(
    ("texture", "attenuation"),
    [(0.0, "ground_glass"), (0.374, "ground_glass"), (0.375, "part_solid"), (0.624, "part_solid"),
     (0.625, "solid"), (1.0, "solid")],
)  # fmt: skip
def test_texture_fallback_follows_the_lidc_scale(texture, attenuation):
    # rating = 1 + 4 * unit: < 2.5 ground glass, < 3.5 part-solid, else solid.
    assert texture_attenuation(texture) == attenuation


def test_a_nodule_lost_in_resampling_keeps_its_centre_voxel():
    labels = np.zeros((4, 4, 4), np.int32)
    labels[1, 1, 1] = 1  # prepared voxel 1 is never sampled by original index o -> 2 o
    prepared = prepare_scan(np.zeros((2, 2, 2), np.float32), (2.0, 2.0, 2.0), 1.0)
    seg = ScanSegmentation(np.zeros((4, 4, 4), np.float32), labels,
                           [_instance(1, (0.5, 0.5, 0.5), 1.0, 1.0)], prepared, 1, 1)  # fmt: skip
    out = ranked_label_map(ScanAnalysis(prepared, seg, [], None), [0])
    expected = np.zeros((2, 2, 2), np.int32)
    expected[0, 0, 0] = 1  # rint(0.5) = 0
    np.testing.assert_array_equal(out, expected)


def test_nodule_heads_give_probabilities_sentences_and_heatmaps(ckpt):
    from lungvlm.inference.nodule_heads import run_nodule_heads
    from lungvlm.inference.report_analysis import load_report_model

    rm = load_report_model(ckpt)
    image = np.random.default_rng(0).uniform(0, 1, (30, 30, 30)).astype(np.float32)
    norm = rm.model.normalization
    one = run_nodule_heads(rm.model, image, (10.2, 15.0, 3.6), 24, 2.0, norm, temperature=2.0)
    assert one.crop_start_vox == (-2, 3, -8)  # round(centre) - 24 // 2
    # Temperature scaling: p = sigmoid(logit / T).
    assert one.malignancy_probability == pytest.approx(
        1 / (1 + math.exp(-one.malignancy_logit / 2))
    )
    assert sum(one.lungrads_probabilities.values()) == pytest.approx(1.0)
    assert 0.0 <= one.growth_probability_12m <= 1.0
    assert one.sentences and " ".join(s.text for s in one.sentences) == " ".join(one.text.split())
    for sentence in one.sentences:
        assert sentence.heatmap.shape == (24, 24, 24)
        assert float(sentence.heatmap.sum()) == pytest.approx(1.0, rel=1e-4)


def test_crop_heatmap_lands_on_the_scan_box():
    from lungvlm.inference.nodule_heads import heatmap_on_original_box

    heat = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    box = (slice(3, 5), slice(3, 5), slice(3, 5))
    # zoom 1: original index o is crop index o - start = o - 2.
    np.testing.assert_array_equal(heatmap_on_original_box(heat, (2, 2, 2), (1, 1, 1), box),
                                  heat[1:3, 1:3, 1:3])  # fmt: skip
    # zoom 2 (prepared grid twice as fine): original o sits at crop index 2 o - 2.
    box = (slice(1, 3), slice(1, 2), slice(2, 3))
    np.testing.assert_array_equal(heatmap_on_original_box(heat, (2, 2, 2), (2, 2, 2), box),
                                  heat[[0, 2]][:, [0]][:, :, [2]])  # fmt: skip


def test_report_settings_come_from_the_data_config_and_the_calibration():
    from lungvlm.inference.report_analysis import settings_from_checkpoint

    plain = settings_from_checkpoint({"datamodule_hyper_parameters": {"crop_size_vox": 48}})
    assert (plain.crop_size_vox, plain.sentence_threshold, plain.calibrated) == (48, 0.5, False)
    calibrated = settings_from_checkpoint({
        "hyper_parameters": {"data": {"init_args": {"crop_size_vox": 40, "spacing_mm": 1.5}}},
        "lungvlm": {"calibration": {"sentence_threshold": 0.3, "malignancy_temperature": 2.0}},
    })  # fmt: skip
    assert (calibrated.crop_size_vox, calibrated.spacing_mm) == (40, 1.5)
    assert (calibrated.sentence_threshold, calibrated.malignancy_temperature) == (0.3, 2.0)
    assert calibrated.calibrated


def test_scan_reader_is_picked_by_the_path(tmp_path):
    from data_modules.io import DataError, write_nifti
    from lungvlm.commands.scan_io import read_volume as read_scan

    image = np.full((3, 4, 5), -800.0, np.float32)
    path = write_nifti(image, tmp_path / "scan.nii.gz", spacing_mm=(2.0, 1.0, 1.0))
    scan = read_scan(path)
    volume, kind, sources = scan.volume, scan.format, scan.source_datasets
    assert (kind, sources, volume.shape, volume.spacing_mm) == (
        "nifti",
        None,
        (3, 4, 5),
        (2.0, 1.0, 1.0),
    )
    flat = write_nifti(image[:1], tmp_path / "flat.nii", spacing_mm=(2.0, 1.0, 1.0))
    with pytest.raises(DataError, match=r"flat.nii holds a single slice"):
        read_scan(flat)
    other = tmp_path / "scan.png"
    other.write_bytes(b"png")
    with pytest.raises(DataError, match=r"scan.png has an unknown format"):
        read_scan(other)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FINDINGS:\nNo pulmonary nodules.\nNo evidence of emphysema.", False),
        ("FINDINGS:\nIn the LUL, there is a 6.1 mm solid nodule. No calcification.", True),
        ("", False),
    ],
)
def test_a_candidate_is_a_nodule_when_its_findings_describe_one(text, expected):
    from lungvlm.inference.report_analysis import describes_nodule

    assert describes_nodule(_head(text, 0.1, {"2": 1.0})) is expected


def test_unconfirmed_candidates_are_dropped_from_the_analysis(ckpt, phantom):
    """With the lungs as candidates (constant segmentation logit), confirmation keeps exactly
    the candidates whose generated findings describe a nodule and counts the others."""
    from types import SimpleNamespace

    from lungvlm.inference.report_analysis import analyse_scan, describes_nodule, load_report_model

    rm = load_report_model(ckpt)
    volume = SimpleNamespace(
        array_hu=phantom.image_hu, spacing_mm=phantom.spacing_mm,
        origin_lps_mm=phantom.origin_lps_mm, direction=np.eye(3), metadata={},
    )  # fmt: skip
    lungs = lung_mask(volume.array_hu, volume.spacing_mm)
    kept = analyse_scan(rm, volume, lungs, confirm=False)
    confirmed = analyse_scan(rm, volume, lungs, confirm=True)
    n = len(kept.segmentation.instances)
    described = [
        i.label
        for i, h in zip(kept.segmentation.instances, kept.heads, strict=True)
        if describes_nodule(h)
    ]
    assert n >= 1 and kept.n_unconfirmed == 0
    assert [i.label for i in confirmed.segmentation.instances] == described
    assert len(confirmed.heads) == len(described)
    assert confirmed.n_unconfirmed == n - len(described)


def three_box_scan():
    """A 10 mm grid (the tiny model's spacing) with three separate "lungs" of different texture:
    with the constant segmentation logit each box is one candidate."""
    from types import SimpleNamespace

    rng = np.random.default_rng(3)
    image = np.full((30, 40, 40), -1000.0, np.float32)
    lungs = np.zeros(image.shape, bool)
    for k, (hu, spread) in enumerate([(-850.0, 50.0), (-500.0, 300.0), (-100.0, 400.0)]):
        box = (slice(10, 20), slice(4, 14), slice(2 + 13 * k, 10 + 13 * k))
        image[box] = hu + spread * rng.standard_normal(image[box].shape)
        lungs[box] = True
    volume = SimpleNamespace(
        array_hu=image, spacing_mm=(10.0, 10.0, 10.0), origin_lps_mm=(0.0, 0.0, 0.0),
        direction=np.eye(3), metadata={},
    )  # fmt: skip
    return volume, lungs


def test_detection_threshold_keeps_candidates_before_the_heads_run(tmp_path, monkeypatch):
    """With a stored candidate threshold the report keeps the candidates at or above it, runs
    the nodule heads on those only and no longer filters by the generated text."""
    import lungvlm.inference.report_analysis as analysis_module
    from lungvlm.inference.report_analysis import analyse_scan, load_report_model
    from lungvlm.inference.report_pipeline import candidate_notes, generate_report
    from lungvlm.lightning.checkpoint import write_calibrated_checkpoint
    from tests.test_candidate_score import write_candidate_checkpoint

    ckpt = write_candidate_checkpoint(tmp_path / "last.ckpt")
    volume, lungs = three_box_scan()
    calls = []
    real_heads = analysis_module.run_nodule_heads

    def counted_heads(model, image, centre, *args, **kwargs):
        calls.append(tuple(centre))
        return real_heads(model, image, centre, *args, **kwargs)

    monkeypatch.setattr(analysis_module, "run_nodule_heads", counted_heads)
    uncalibrated = load_report_model(ckpt)
    assert uncalibrated.settings.candidate_threshold is None
    everything = analyse_scan(uncalibrated, volume, lungs, confirm=False)
    probabilities = [n.candidate_probability for n in everything.segmentation.instances]
    assert len(probabilities) == 3 and len(set(probabilities)) == 3
    assert probabilities == sorted(probabilities, reverse=True)  # ranked by the candidate score
    assert len(calls) == 3 and everything.n_below_threshold == 0

    threshold = probabilities[1]  # keeps the top two
    detection = {"candidate_threshold": threshold, "max_fps_per_scan": 1.0, "val_sensitivity": 1.0,
                 "val_fps_per_scan": 0.5, "n_chests": 2}  # fmt: skip
    rm = load_report_model(write_calibrated_checkpoint(ckpt, {"detection": detection}))
    assert rm.settings.candidate_threshold == threshold and not rm.settings.calibrated
    calls.clear()
    kept = analyse_scan(rm, volume, lungs)
    centres = [n.centroid_vox for n in everything.segmentation.instances[:2]]
    assert [n.centroid_vox for n in kept.segmentation.instances] == centres
    assert calls == [tuple(c) for c in centres]  # the heads ran on the two kept candidates only
    assert (kept.n_below_threshold, kept.n_unconfirmed, len(kept.heads)) == (1, 0, 2)
    assert kept.candidate_threshold == threshold
    # The text filter is an explicit opt-in on top of the threshold.
    calls.clear()
    confirmed = analyse_scan(rm, volume, lungs, confirm=True)
    assert len(calls) == 2 and confirmed.n_below_threshold == 1
    assert confirmed.n_unconfirmed + len(confirmed.segmentation.instances) == 2

    source = Source("scan.nii.gz", "nifti")
    narrative = generate_report(rm, volume, lungs, None, source, "case").report.narrative
    assert "1 segmentation candidate(s) are not reported: their candidate probability is below the detection threshold" in narrative  # fmt: skip
    assert candidate_notes(everything)[0].startswith(
        "The checkpoint has no detection threshold (run `lungvlm calibrate --detection`)"
    )
