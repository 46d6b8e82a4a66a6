"""Attenuation from the HU inside a nodule mask (lungvlm/clinical/attenuation.py) on hand-built
32³ spheres at 1 mm: lung -850 HU, ground glass -650 HU, solid tissue -100 / +40 HU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungvlm.clinical.attenuation import (
    AttenuationMeasurement,
    classify_attenuation,
    measure_hu,
    solid_component,
)
from lungvlm.export.schema import Source
from lungvlm.inference.nodule_heads import GeneratedSentence, NoduleHeadOutput
from lungvlm.inference.report_analysis import ReportModel, ReportSettings, ScanAnalysis
from lungvlm.inference.report_findings import assemble_report, nodule_findings
from lungvlm.inference.scan import DetectedNodule, ScanSegmentation, prepare_scan
from lungvlm.labels import CONCEPT_NAMES, LUNGRADS_CATEGORIES

SPACING = (1.0, 1.0, 1.0)
LUNG_HU, GROUND_GLASS_HU, CORE_HU, TISSUE_HU = -850.0, -650.0, -100.0, 40.0


def radius_vox(size: int = 32) -> np.ndarray:
    """Distance (voxels) of each voxel centre from the centre voxel (16, 16, 16)."""
    z, y, x = np.mgrid[:size, :size, :size] - size // 2
    return np.sqrt(z * z + y * y + x * x)


def part_solid(noise_sd_hu: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A -100 HU core of radius 3 voxels in -650 HU ground glass out to radius 6: (image, mask)."""
    r = radius_vox()
    image = np.full(r.shape, LUNG_HU, np.float32)
    image[r <= 6] = GROUND_GLASS_HU
    image[r <= 3] = CORE_HU
    if noise_sd_hu:
        image += np.random.default_rng(0).normal(0.0, noise_sd_hu, r.shape).astype(np.float32)
    return image, r <= 6


def test_part_solid_sphere_is_part_solid_with_its_core_size():
    image, mask = part_solid()
    result = classify_attenuation(mask, image, SPACING)
    assert result.attenuation == "part_solid"
    # The r = 3 core is 7.0 mm by the voxel convention (6 mm centre to centre + 1 pixel); the
    # 0.6 mm smoothing pulls its four diagonal rim voxels (r = 3.0 exactly on two axes) just
    # below -300 HU on the slice of greatest area, so it measures 6.66 mm: "about 6 mm".
    assert result.solid_component_mm == pytest.approx(6.657, abs=0.01)
    assert result.edge_hu == pytest.approx(-700.5, abs=1.0)  # ground glass blurred into lung
    assert result.solid_fraction == pytest.approx(93 / 925, abs=0.001)


def test_noise_does_not_change_the_class():
    image, mask = part_solid(noise_sd_hu=40.0)  # about low-dose noise
    result = classify_attenuation(mask, image, SPACING)
    assert result.attenuation == "part_solid"
    assert result.solid_component_mm == pytest.approx(6.66, abs=1.0)


def test_solid_sphere_is_solid():
    r = radius_vox()
    image = np.where(r <= 5, TISSUE_HU, LUNG_HU).astype(np.float32)
    result = classify_attenuation(r <= 5, image, SPACING)
    assert result.attenuation == "solid"
    assert result.edge_hu > -550.0  # boundary voxels are dense (about -194 HU)
    assert result.solid_component_mm == pytest.approx(9.94, abs=0.01)


def test_ground_glass_sphere_with_a_crossing_vessel_is_ground_glass():
    r = radius_vox()
    z, y, _ = np.mgrid[:32, :32, :32] - 16
    image = np.where(r <= 6, GROUND_GLASS_HU, LUNG_HU).astype(np.float32)
    vessel = np.hypot(z, y - 3) <= 1.0  # a +40 HU vessel along x through the nodule
    image[vessel] = TISSUE_HU
    result = classify_attenuation(r <= 6, image, SPACING)
    # The vessel's solid part is 13 voxels long and 3 wide: elongation 0.16 < 0.35.
    assert (result.attenuation, result.solid_component_mm) == ("ground_glass", 0.0)


def test_a_vessel_through_the_core_is_cut_off_the_solid_component():
    # A 29 mm long ground-glass ellipsoid (semi-axes 5, 5, 14 voxels) with a -100 HU core of
    # radius 3 and a +40 HU vessel of radius 1 along its long axis: core + vessel form one
    # solid group of elongation 0.17 (vessel-like); the 1.5 mm opening cuts the vessel off and
    # leaves the core, 7.0 mm by the voxel convention.
    z, y, x = np.mgrid[:32, :32, :32] - 16
    nodule = (z / 5.0) ** 2 + (y / 5.0) ** 2 + (x / 14.0) ** 2 <= 1.0
    image = np.full(nodule.shape, LUNG_HU, np.float32)
    image[nodule] = GROUND_GLASS_HU
    image[radius_vox() <= 3] = CORE_HU
    image[(np.hypot(z, y) <= 1.0) & nodule] = TISSUE_HU
    component = solid_component(nodule, image, SPACING)
    assert component is not None and not component[16, 16, 16 + 8]  # no vessel voxel kept
    result = classify_attenuation(nodule, image, SPACING)
    assert (result.attenuation, result.solid_component_mm) == ("part_solid", 7.0)


def test_measure_hu_grows_a_core_only_mask_and_reads_part_solid():
    image, full = part_solid()
    core = radius_vox() <= 3
    result = measure_hu(core, image, SPACING)
    assert result.extended
    assert result.attenuation is not None and result.attenuation.attenuation == "part_solid"
    assert result.size.mean_diameter_mm == 13.0  # the full r = 6 sphere: 12 mm + 1 pixel
    assert result.mask.sum() == pytest.approx(full.sum(), rel=0.05)


def test_measure_hu_keeps_a_solid_nodule_mask():
    r = radius_vox()
    image = np.where(r <= 5, TISSUE_HU, LUNG_HU).astype(np.float32)
    result = measure_hu(r <= 5, image, SPACING)
    assert (result.extended, result.attenuation.attenuation) == (False, "solid")
    assert result.size.mean_diameter_mm == 11.0


@pytest.mark.parametrize("background_hu", [0.0, -1000.0])
def test_no_attenuation_without_lung_or_tissue(background_hu):
    # 0 HU everywhere: no aerated lung around; -1000 HU: no tissue in the mask.
    image = np.full((32, 32, 32), background_hu, np.float32)
    result = measure_hu(radius_vox() <= 3, image, SPACING)
    assert (result.attenuation, result.extended) == (None, False)
    assert result.size.mean_diameter_mm == 7.0


@pytest.mark.parametrize(
    ("mask", "image", "match"),
    [
        (np.ones((4, 4, 4), bool), np.zeros((4, 4, 5)), r"image_hu has shape \(4, 4, 5\) but mask"),
        (np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4)), r"mask is empty"),
        (np.ones((4, 4), bool), np.zeros((4, 4)), r"expected a 3-D \(z, y, x\) array"),
    ],
)
def test_bad_input_is_rejected(mask, image, match):
    with pytest.raises(ValueError, match=match):
        classify_attenuation(mask, image, SPACING)


# ------------------------------------------------------------- wiring into the report findings
def _head(text: str) -> NoduleHeadOutput:
    probs = dict.fromkeys(LUNGRADS_CATEGORIES, 0.0) | {"3": 1.0}
    concepts = dict.fromkeys(CONCEPT_NAMES, 0.5) | {"texture": 1.0}  # concept head: solid
    sentences = [GeneratedSentence(text, 0.9, np.zeros((4, 4, 4), np.float32))]
    return NoduleHeadOutput(0.0, 0.1, probs, 0.2, concepts, text, sentences, (0, 0, 0))


def test_the_image_measurement_wins_over_the_text_and_the_disagreement_is_a_reason():
    measured = AttenuationMeasurement("part_solid", 6.0, -700.0, 0.1)
    head = _head("A 12.0 mm solid nodule in the right upper lobe.")
    findings = nodule_findings(1, head, 13.0, measured)
    assert (findings.attenuation, findings.solid_component_mm) == ("part_solid", 6.0)
    assert findings.reasons == [
        "nodule 1: the image measures part-solid (HU inside the nodule) but the generated text "
        "says solid; the image measurement is used"
    ]
    agreeing = nodule_findings(1, _head("A 12.0 mm part-solid nodule."), 13.0, measured)
    assert agreeing.reasons == [] and agreeing.solid_component_mm == 6.0
    # Without an image measurement the text decides, as before.
    assert nodule_findings(1, head, 13.0, None).attenuation == "solid"


def test_report_of_a_core_only_segmentation_measures_the_whole_part_solid_nodule():
    image, _ = part_solid()
    prepared = prepare_scan(image, SPACING, 1.0)
    labels = (radius_vox() <= 3).astype(np.int32)  # the network found only the solid core
    centre = (16.0, 16.0, 16.0)
    core = DetectedNodule(1, 0.9, 123, centre, centre, centre, 123.0, 7.0, 7.0, 7.0)
    segmentation = ScanSegmentation(
        np.zeros(labels.shape, np.float32), labels, [core], prepared, 1, 1
    )
    analysis = ScanAnalysis(prepared, segmentation, [_head("A 7.0 mm solid nodule.")], 3.0)
    rm = ReportModel(None, Path("model.ckpt"), ReportSettings())
    report = assemble_report(rm, analysis, [0], "case", Source("scan.nii.gz", "nifti"))
    (nodule,) = report.nodules
    # 13.0 mm total (the r = 6 sphere), solid component 6.66 mm: part-solid >= 6 mm total with
    # a solid component >= 6 to < 8 mm at baseline -> 4A.
    assert (nodule.mean_diameter_mm, nodule.attenuation) == (13.0, "part_solid")
    assert nodule.solid_component_mm == pytest.approx(6.66, abs=0.01)
    assert nodule.lungrads_category == "4A"
    assert analysis.measured_nodules()[0].mean_diameter_mm == 13.0
    assert any("the image measures part-solid" in r for r in report.exam.review_reasons)
