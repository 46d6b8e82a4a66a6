"""Analysis behind ``lungvlm report``: scan -> nodules -> head outputs, ranking and review rules.

Steps (timed in ``ExamReport.timings_s``): the scan is resampled and normalised exactly as in
training (:func:`lungvlm.inference.scan.prepare_scan` with the checkpoint's normalisation);
%LAA-950 is measured on the **original HU** inside the lung mask; the scan is segmented (the
full sliding window by default; ``cascade=True`` runs the adaptive-resolution cascade of
:mod:`lungvlm.inference.cascade`, off by default because on the phantom test chests it saved
5.5 % of the segmentation time only); every nodule instance goes
through the stage-3 heads (:mod:`lungvlm.inference.nodule_heads`).

Which source wins (project conventions):

- **Size, volume, centre**: always the segmentation's measurements
  (:func:`lungvlm.clinical.measure.measure_nodule` on the prepared grid), except that a
  subsolid nodule is measured on its mask grown into the surrounding ground glass
  (:func:`lungvlm.clinical.attenuation.measure_hu`; the segmentation may hold only the solid
  core); numbers in the generated text are kept only in the sentences, never in the
  structured JSON.
- **Attenuation and solid component**: measured on the image, from the HU inside the
  (extended) mask (:func:`lungvlm.clinical.attenuation.classify_attenuation`; HU = the prepared
  image de-normalised). The generated text (else the concept head) is secondary evidence: when
  it disagrees, the case is flagged. Only when the mask holds no tissue (median HU below
  :data:`lungvlm.clinical.attenuation.MIN_MEASURABLE_HU`) does the text decide, as below.
- **Margin, calcification, shape, pleural relation, fat, side, lobe** (and attenuation without
  an image measurement): the generated findings read back with
  :func:`lungvlm.text.parser.parse_report`. An attenuation the text does not state falls back
  to the concept head's texture rating (LIDC texture 1-2 non-solid -> ground glass, 3
  part-solid, 4-5 solid; ``reference/lidc-idri.md``) and the case is flagged. A part-solid
  solid component without an image measurement: the stated solid size scaled by measured /
  stated total size and capped at the measured total; none stated -> the measured total (the
  conservative upper bound) and the case is flagged.
- **Lung-RADS category**: :func:`lungvlm.clinical.lungrads.categorize` on the measured size and
  the attributes above, with status "baseline" or the prior comparison's
  (:mod:`lungvlm.inference.prior`); benign calcification = central/diffuse/popcorn/laminated;
  juxtapleural_benign = juxtapleural or perifissural, solid, smooth and oval; suspicious
  features = spiculated margin. The exam category is
  :func:`~lungvlm.clinical.lungrads.categorize_exam`. The risk head's Lung-RADS probabilities are
  reported beside it, not used for the category.
- **Which candidates are nodules**: every segmentation component is a candidate with a
  ``candidate_probability`` from the candidate head (:mod:`lungvlm.inference.scan`). When the
  checkpoint holds a detection threshold (``lungvlm calibrate --detection``: chosen on
  validation chests for a stated false-positive rate), the report keeps the candidates at or
  above it, **before** the nodule-level heads run (rejected candidates cost no generation);
  their count is ``ScanAnalysis.n_below_threshold``. The generated text then describes the
  kept nodules and does not decide what is a nodule (``confirm=True`` still applies the text
  filter below, as an explicit opt-in). Without a threshold (an uncalibrated checkpoint), a
  component is reported only when the model's own findings for the crop centred on it describe
  a nodule (the parser reads at least one); components it describes as "no pulmonary
  nodules" are dropped (the vision-language model as a second-stage filter; ``confirm=False``
  keeps every component). The count of components dropped by the text is
  ``ScanAnalysis.n_unconfirmed``.
- **Order**: nodules are ranked by volume-weighted risk, malignancy probability x volume (mm³),
  highest first; report index 1 is the top-ranked nodule.

Review flag ("needs radiologist review"): any generated nodule sentence whose confidence is
below the sentence threshold (calibrated, else :data:`DEFAULT_SENTENCE_THRESHOLD`); a nodule
whose two most probable Lung-RADS categories are within :data:`LUNGRADS_PROBABILITY_MARGIN`; a
malignancy probability within :data:`MALIGNANCY_RELATIVE_MARGIN` (relative) of a Lung-RADS risk
band edge (1, 2, 5, 15 %, ``reference/lung-rads.md``); the attribute fallbacks above; or no
lung found.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from lungvlm.clinical.attenuation import (
    BACKGROUND_SHELL_MM,
    MAX_GROWTH_MM,
    HUMeasurement,
    measure_hu,
)
from lungvlm.clinical.emphysema import emphysema_severity, laa950_percent
from lungvlm.clinical.hu import denormalize_hu
from lungvlm.imaging.volume import affine_lps
from lungvlm.inference.calibration import MalignancyCalibrator
from lungvlm.inference.cascade import segment_scan_cascade
from lungvlm.inference.guard import GuardError, InferenceGuard
from lungvlm.inference.nodule_heads import NoduleHeadOutput, run_nodule_heads
from lungvlm.inference.prior import MeasuredNodule
from lungvlm.inference.scan import (
    DetectedNodule,
    PreparedScan,
    ScanSegmentation,
    prepare_scan,
    segment_scan,
)
from lungvlm.lightning.checkpoint import (
    CHECKPOINT_KEY,
    checkpoint_stage,
    load_model,
    read_calibration,
    read_checkpoint,
)
from lungvlm.progress import update as progress_update
from lungvlm.text.parser import parse_report

log = logging.getLogger(__name__)

#: Sentence confidence below which a sentence is uncertain when the checkpoint is uncalibrated
#: (project choice: mean token entropy above ln 2 nats).
DEFAULT_SENTENCE_THRESHOLD = 0.5
LUNGRADS_PROBABILITY_MARGIN = 0.1
MALIGNANCY_BAND_EDGES: tuple[float, ...] = (0.01, 0.02, 0.05, 0.15)
MALIGNANCY_RELATIVE_MARGIN = 0.2
DEFAULT_CROP_SIZE_VOX = 32
#: Context (mm) around a nodule mask for its HU measurement: the largest ground-glass growth
#: plus the lung shell behind it (:mod:`lungvlm.clinical.attenuation`).
HU_CROP_MARGIN_MM = MAX_GROWTH_MM + BACKGROUND_SHELL_MM[1] + 2.0


@dataclass
class ReportSettings:
    """Inference settings read from a checkpoint (with defaults when absent).

    Attributes:
        crop_size_vox: training crop edge (voxels), also the sliding-window size.
        context_scale: training context field-of-view factor.
        spacing_mm: training (prepared) isotropic spacing (mm).
        sentence_threshold: confidence below which a sentence is uncertain.
        malignancy_temperature: temperature of the malignancy logit.
        malignancy_calibrator: the calibrator ``lungvlm audit`` kept (temperature or isotonic);
            when None, the temperature above is applied.
        calibrated: whether the two values above come from ``lungvlm calibrate``.
        candidate_threshold: candidate probability at or above which a candidate is reported
            (``lungvlm calibrate --detection``); None when the checkpoint has none.
    """

    crop_size_vox: int = DEFAULT_CROP_SIZE_VOX
    context_scale: float = 2.0
    spacing_mm: float = 1.0
    sentence_threshold: float = DEFAULT_SENTENCE_THRESHOLD
    malignancy_temperature: float = 1.0
    calibrated: bool = False
    candidate_threshold: float | None = None
    malignancy_calibrator: MalignancyCalibrator | None = None

    def malignancy_map(self) -> MalignancyCalibrator:
        """The logit-to-probability map the heads apply (audit calibrator, else temperature)."""
        if self.malignancy_calibrator is not None:
            return self.malignancy_calibrator
        return MalignancyCalibrator(kind="temperature", temperature=self.malignancy_temperature)


@dataclass
class ReportModel:
    """A loaded stage-3 model with its checkpoint path and inference settings.

    ``guard``: the limits of each whole-scan run (:mod:`lungvlm.inference.guard`), checked by
    :func:`segment_volume`; None (the library's default) checks nothing. The commands set
    :class:`~lungvlm.inference.guard.InferenceGuard` defaults unless told ``--no-guard``.
    """

    model: object
    checkpoint_path: Path
    settings: ReportSettings
    guard: InferenceGuard | None = None


def settings_from_checkpoint(checkpoint: dict) -> ReportSettings:
    """Crop size / context scale / spacing from the data config saved with the checkpoint
    (``datamodule_hyper_parameters``, else ``hyper_parameters["data"]``), plus calibration."""
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if not data:
        nested = (checkpoint.get("hyper_parameters") or {}).get("data") or {}
        data = dict(nested.get("init_args", nested)) if isinstance(nested, dict) else {}
    settings = ReportSettings(
        crop_size_vox=int(data.get("crop_size_vox", DEFAULT_CROP_SIZE_VOX)),
        context_scale=float(data.get("context_scale", 2.0)),
        spacing_mm=float(data.get("spacing_mm", 1.0)),
    )
    calibration = read_calibration(checkpoint) or {}
    if "sentence_threshold" in calibration:
        settings.sentence_threshold = float(calibration["sentence_threshold"])
        settings.malignancy_temperature = float(calibration["malignancy_temperature"])
        settings.calibrated = True
    if calibration.get("malignancy_calibrator"):
        settings.malignancy_calibrator = MalignancyCalibrator.from_dict(
            calibration["malignancy_calibrator"]
        )
    detection = calibration.get("detection") or {}
    if "candidate_threshold" in detection:
        settings.candidate_threshold = float(detection["candidate_threshold"])
    return settings


def load_report_model(ckpt_path: str | Path, map_location: str = "cpu") -> ReportModel:
    """Load a stage-3 checkpoint for reporting (the file is read once, safely).

    Args:
        ckpt_path: a stage-3 (``vision_language``) checkpoint, calibrated or not.
        map_location: device of the model ("cpu", "cuda", ...).

    Raises:
        ValueError: missing, corrupt or non-Lightning file, or one a safe load refuses; a
            checkpoint of another stage (message "needs a stage-3 checkpoint"); a model that
            cannot be rebuilt; malformed calibration or data settings (names the file).
    """
    path = Path(ckpt_path)
    try:
        checkpoint = read_checkpoint(path)
    except FileNotFoundError as err:
        raise ValueError(f"checkpoint {path} does not exist") from err
    meta = checkpoint.get(CHECKPOINT_KEY) or {}
    stage = checkpoint_stage(checkpoint)
    has_heads = any(k.startswith("vl_heads.") for k in checkpoint["state_dict"])
    if stage != "vision_language" or not has_heads or "tokenizer_json" not in meta:
        raise ValueError(
            f"checkpoint {path} is a stage {stage!r} checkpoint without vision-language heads or "
            "tokenizer; lungvlm report needs a stage-3 ('vision_language') checkpoint"
        )
    try:
        settings = settings_from_checkpoint(checkpoint)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"checkpoint {path}: its calibration or data settings are malformed ({err}); "
            "calibrate it again from the uncalibrated checkpoint"
        ) from err
    model = load_model(path, map_location=map_location, checkpoint=checkpoint)
    return ReportModel(model, path, settings)


@dataclass
class ScanAnalysis:
    """Everything measured and predicted on one scan, before the report is assembled.

    Attributes:
        prepared: the resampled, normalised scan.
        segmentation: whole-scan segmentation (instances on the prepared grid).
        heads: per instance (same order), the stage-3 head outputs.
        laa950_percent: %LAA-950 in the lung mask; None when the mask is empty.
        timings_s: seconds per step.
        n_unconfirmed: segmentation components dropped because the model's findings for
            their crop describe no nodule (module docstring).
        n_below_threshold: candidates dropped because their candidate probability is below
            the checkpoint's detection threshold.
        candidate_threshold: that threshold; None when the checkpoint has none.
        hu: per instance, its HU measurement (:meth:`hu_measurements`); None until computed.
    """

    prepared: PreparedScan
    segmentation: ScanSegmentation
    heads: list[NoduleHeadOutput]
    laa950_percent: float | None
    timings_s: dict[str, float] = field(default_factory=dict)
    n_unconfirmed: int = 0
    n_below_threshold: int = 0
    candidate_threshold: float | None = None
    hu: list[HUMeasurement] | None = field(default=None, repr=False)

    def hu_measurements(self) -> list[HUMeasurement]:
        """Per instance (same order), full extent, size and attenuation from the HU
        (:func:`measure_instances_hu`); computed on first use."""
        if self.hu is None:
            self.hu = measure_instances_hu(self.segmentation)
        return self.hu

    @property
    def emphysema_grade(self) -> str | None:
        """Display word of the measured %LAA-950."""
        return None if self.laa950_percent is None else emphysema_severity(self.laa950_percent)

    def measured_nodules(self) -> list[MeasuredNodule]:
        """Centres, diameters and volumes of the instances (for prior comparison); subsolid
        nodules are measured on their extended masks."""
        return measured_nodules(self.segmentation.instances, self.hu_measurements())


def instance_size(instance: DetectedNodule, hu: HUMeasurement) -> tuple[float, float, float, float]:
    """(mean diameter, volume, long axis, short axis) in mm / mm³ of an instance: measured on the
    extended mask when the HU grew it into ground glass, else the segmentation's."""
    if hu.extended:
        size = hu.size
        return size.mean_diameter_mm, size.volume_mm3, size.long_axis_mm, size.short_axis_mm
    n = instance
    return n.mean_diameter_mm, n.volume_mm3, n.long_axis_mm, n.short_axis_mm


def measured_nodules(
    instances: Sequence[DetectedNodule], hu: Sequence[HUMeasurement]
) -> list[MeasuredNodule]:
    """:class:`MeasuredNodule` of each instance with its :func:`instance_size`."""
    out = []
    for n, m in zip(instances, hu, strict=True):
        diameter, volume, _, _ = instance_size(n, m)
        out.append(MeasuredNodule(n.centroid_world_mm, diameter, volume))
    return out


def measure_instances_hu(segmentation: ScanSegmentation) -> list[HUMeasurement]:
    """:func:`lungvlm.clinical.attenuation.measure_hu` of every instance, on a crop of the
    prepared grid (HU = the prepared image de-normalised with its ``normalization``; values
    outside its clip range are clipped, which no decision here depends on) with
    :data:`HU_CROP_MARGIN_MM` of context around the instance's mask."""
    prepared, labels = segmentation.prepared, segmentation.labels
    boxes = ndimage.find_objects(labels)
    pad = np.ceil(HU_CROP_MARGIN_MM / np.asarray(prepared.spacing_mm)).astype(int)
    out = []
    for instance in segmentation.instances:
        found = boxes[instance.label - 1] if instance.label <= len(boxes) else None
        if found is None:
            raise ValueError(f"instance {instance.label} has no voxel in the label map")
        box = tuple(
            slice(max(0, s.start - p), min(n, s.stop + p))
            for s, p, n in zip(found, pad, labels.shape, strict=True)
        )
        hu = denormalize_hu(prepared.image[box], **prepared.normalization)
        out.append(measure_hu(labels[box] == instance.label, hu, prepared.spacing_mm))
    return out


def scan_label(volume) -> str:
    """The file or folder a volume was read from (its metadata), else "the in-memory scan"."""
    metadata = getattr(volume, "metadata", None) or {}
    return str(metadata.get("source_path") or metadata.get("source_folder") or "the in-memory scan")


def segment_volume(
    rm: ReportModel, volume, lung_mask: NDArray, cascade: bool = False
) -> tuple[PreparedScan, ScanSegmentation, float]:
    """Prepare and segment a scan; returns (prepared, segmentation, seconds).

    With ``rm.guard`` set, the memory budget is checked before resampling and the components
    right after the segmentation, before the candidate head scores them.

    Raises:
        GuardError: a guard limit, the message naming the scan and the checkpoint.
    """
    s = rm.settings
    start = time.perf_counter()
    try:
        if rm.guard is not None:
            rm.guard.check_memory(volume.array_hu.shape, volume.spacing_mm, (s.spacing_mm,) * 3)
        prepared = prepare_scan(
            volume.array_hu, volume.spacing_mm, s.spacing_mm, rm.model.normalization,
            affine=affine_lps(volume.spacing_mm, volume.origin_lps_mm, getattr(volume, "direction", None)),
        )  # fmt: skip
        segment = segment_scan_cascade if cascade else segment_scan
        segmentation = segment(
            rm.model, prepared, roi_size_vox=s.crop_size_vox, lung_mask=lung_mask,
            context_scale=s.context_scale, guard=rm.guard,
        )  # fmt: skip
    except GuardError as err:
        raise type(err)(
            f"{scan_label(volume)} with checkpoint {rm.checkpoint_path}: {err}"
        ) from None
    return prepared, segmentation, time.perf_counter() - start


def describes_nodule(head: NoduleHeadOutput) -> bool:
    """Whether the generated findings of a candidate's crop describe at least one nodule."""
    return bool(parse_report(head.text).nodules)


def threshold_candidates(
    rm: ReportModel, segmentation: ScanSegmentation
) -> tuple[ScanSegmentation, int]:
    """Keep the instances whose ``candidate_probability`` reaches the checkpoint's detection
    threshold; returns the segmentation with those instances and the number dropped.
    Without a threshold every instance is kept.

    Raises:
        ValueError: a threshold but instances without a candidate probability (the model has
            no candidate head).
    """
    threshold = rm.settings.candidate_threshold
    if threshold is None:
        return segmentation, 0
    instances = segmentation.instances
    if any(n.candidate_probability is None for n in instances):
        raise ValueError(
            f"checkpoint {rm.checkpoint_path} has a detection threshold but its model has no "
            "candidate head"
        )
    kept = [n for n in instances if n.candidate_probability >= threshold]
    return replace(segmentation, instances=kept), len(instances) - len(kept)


def confirms_by_text(rm: ReportModel, confirm: bool | None) -> bool:
    """Whether the generated findings decide which candidates are nodules: ``confirm`` when
    given, else only when the checkpoint has no detection threshold (module docstring)."""
    return rm.settings.candidate_threshold is None if confirm is None else bool(confirm)


def analyse_scan(
    rm: ReportModel,
    volume,
    lung_mask: NDArray,
    cascade: bool = False,
    confirm: bool | None = None,
) -> ScanAnalysis:
    """Emphysema, segmentation and per-nodule heads of one scan (module docstring).

    Args:
        rm: the loaded stage-3 model.
        volume: CTVolume-like (``array_hu``, ``spacing_mm``, ``origin_lps_mm``, ``direction``).
        lung_mask: boolean lung mask on the scan's grid.
        cascade: use the adaptive-resolution cascade instead of the full sliding window.
        confirm: keep only the components whose generated findings describe a nodule; None
            (default): only when the checkpoint has no detection threshold.
    """
    mask = np.asarray(lung_mask).astype(bool)
    if mask.shape != tuple(volume.array_hu.shape):
        raise ValueError(f"lung_mask has shape {mask.shape}; expected {volume.array_hu.shape}")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    laa = laa950_percent(volume.array_hu, mask) if mask.any() else None
    timings["emphysema"] = time.perf_counter() - start
    prepared, segmentation, seconds = segment_volume(rm, volume, mask, cascade)
    timings["segmentation"] = seconds
    segmentation, n_below = threshold_candidates(rm, segmentation)
    if rm.settings.candidate_threshold is None:
        log.info("%s has no detection threshold: run `lungvlm calibrate --detection`",
                 rm.checkpoint_path)  # fmt: skip
    elif n_below:
        log.info("%d of %d candidates below the detection threshold %.3f: dropped", n_below,
                 n_below + len(segmentation.instances), rm.settings.candidate_threshold)  # fmt: skip
    heads = []
    timings["nodule_heads"] = timings["generation"] = 0.0
    n_candidates = len(segmentation.instances)
    progress_update("candidate nodules", 0, n_candidates)
    for done, instance in enumerate(segmentation.instances, start=1):
        out = run_nodule_heads(
            rm.model, prepared.image, instance.centroid_vox, rm.settings.crop_size_vox,
            rm.settings.context_scale, prepared.normalization, rm.settings.malignancy_map(),
        )  # fmt: skip
        heads.append(out)
        progress_update("candidate nodules", done, n_candidates)
        timings["nodule_heads"] += out.timings_s["heads"]
        timings["generation"] += out.timings_s["generation"]
    n_unconfirmed = 0
    if confirms_by_text(rm, confirm):
        keep = [i for i, head in enumerate(heads) if describes_nodule(head)]
        n_unconfirmed = len(heads) - len(keep)
        instances = [segmentation.instances[i] for i in keep]
        segmentation = replace(segmentation, instances=instances)
        heads = [heads[i] for i in keep]
        if n_unconfirmed:
            log.info("%d of %d segmentation candidates not confirmed by their findings: dropped",
                     n_unconfirmed, n_unconfirmed + len(keep))  # fmt: skip
    analysis = ScanAnalysis(
        prepared, segmentation, heads, laa, timings, n_unconfirmed, n_below,
        rm.settings.candidate_threshold,
    )  # fmt: skip
    start = time.perf_counter()
    analysis.hu_measurements()
    timings["hu_measurement"] = time.perf_counter() - start
    return analysis


def rank_nodules(analysis: ScanAnalysis) -> list[int]:
    """Instance positions ordered by malignancy probability x volume (mm³), highest first."""
    scores = [
        h.malignancy_probability * n.volume_mm3
        for h, n in zip(analysis.heads, analysis.segmentation.instances, strict=True)
    ]
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def ranked_label_map(analysis: ScanAnalysis, order: Sequence[int]) -> NDArray[np.int32]:
    """Instance label map on the **original** grid, renumbered so nodule k (1-based) is the
    k-th of ``order``. A nodule that loses every voxel in the resampling keeps the voxel
    nearest its centre (so every reported nodule has a segment)."""
    seg, prepared = analysis.segmentation, analysis.prepared
    original = prepared.to_original_grid(seg.labels, order=0)
    out = np.zeros(prepared.original_shape, dtype=np.int32)
    for rank, position in enumerate(order, start=1):
        instance = seg.instances[position]
        inside = original == instance.label
        if not inside.any():
            index = np.clip(
                np.rint(instance.centroid_original_vox).astype(int), 0,
                np.asarray(prepared.original_shape) - 1,
            )  # fmt: skip
            inside[tuple(index)] = True
        out[inside] = rank
    return out


def needs_review_reasons(index: int, head: NoduleHeadOutput, threshold: float) -> list[str]:
    """Review reasons of one nodule from its sentences and probabilities (module docstring)."""
    reasons = []
    low = [s for s in head.sentences if s.confidence < threshold]
    if low:
        reasons.append(
            f"nodule {index}: {len(low)} generated sentence(s) below the confidence threshold "
            f"{threshold:.2f}"
        )
    probs = sorted(head.lungrads_probabilities.values(), reverse=True)
    if len(probs) > 1 and probs[0] - probs[1] < LUNGRADS_PROBABILITY_MARGIN:
        reasons.append(
            f"nodule {index}: the two most probable Lung-RADS categories differ by "
            f"{probs[0] - probs[1]:.2f} (< {LUNGRADS_PROBABILITY_MARGIN})"
        )
    p = head.malignancy_probability
    near = [e for e in MALIGNANCY_BAND_EDGES if abs(p - e) <= MALIGNANCY_RELATIVE_MARGIN * e]
    if near:
        reasons.append(
            f"nodule {index}: malignancy probability {100 * p:.1f} % is near the "
            f"{100 * near[0]:g} % risk band edge"
        )
    return reasons
