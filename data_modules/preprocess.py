"""Preprocess LIDC-IDRI, LUNA16 or plain DICOM data into the case cache (:mod:`data_modules.cache`).

One case per CT series, keyed by SeriesInstanceUID (LIDC and LUNA16 both key on it,
``reference/lidc-idri.md``, ``reference/luna16.md``). Each case is read, labelled, resampled,
lung-cropped, normalised and written atomically; a case already in the cache is skipped (resume
after a kill); a case that fails is listed in ``dst/failures.json`` and never stops the others.

Label conventions (project choices, ``reference/lidc-idri.md`` "Common conventions"):

- LIDC: only "nodule >= 3 mm" annotations (all nine ratings present and non-zero, as pylidc
  keeps them); "< 3 mm" one-point marks and non-nodules are counted in ``case.json`` but get no
  mask. Annotations are grouped with :func:`~data_modules.io.cluster_annotations` at a
  tolerance of max(SliceThickness, pixel spacing) in mm (pylidc uses SliceThickness; the
  larger value also joins two readers' outlines one pixel apart on one slice when pixels are
  coarser than slices) and each cluster's mask is the 50 % consensus (pylidc's ``clevel=0.5``). Where two consensus masks
  overlap, the voxel keeps the earlier nodule's label. Size is measured on the consensus mask
  at the source spacing with :func:`lungvlm.clinical.measure.measure_nodule`. The binary
  malignancy label uses ``malignancy_rule`` (default ``"mean_gt3"``), recorded per nodule
  together with the raw ratings so another rule can be applied later.
- LUNA16: ``annotations.csv`` gives centres and diameters, no outlines; with
  ``luna16_mask="none"`` (default) the mask is empty and ``mask_source`` says so; ``"sphere"``
  paints a ball of the listed diameter on the resampled grid (an approximation, recorded as
  ``"luna16_sphere"``).
  The .mhd files carry no patient id: ``patient_id`` is the series UID.
- DICOM: images only; no nodule labels.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from data_modules.cache import (
    CacheSpec,
    build_case,
    case_done,
    open_cache,
    remove_stale_temp_folders,
    write_case_atomic,
    write_json_atomic,
)
from data_modules.discover import (  # FORMATS, discover_cases: re-exported (tests, callers)
    FORMATS,
    CaseTask,
    discover,
    discover_cases,
    no_case_message,
)
from data_modules.io import (
    AnnotationError,
    CTVolume,
    DataError,
    LunaAnnotation,
    aggregate_ratings,
    binarize_malignancy,
    check_rows_inside,
    cluster_annotations,
    consensus_mask,
    parse_lidc_xml,
    rasterize_annotation,
    read_dicom_series,
    read_metaimage,
)
from data_modules.io.checks import check_finite, check_spacing
from data_modules.io.lidc_consensus import MALIGNANCY_RULES
from lungvlm.clinical.measure import measure_nodule
from lungvlm.processes import die_with_parent

log = logging.getLogger(__name__)

LUNA16_MASKS = ("none", "sphere")
CONSENSUS_LEVEL = 0.5
MAX_NODULES = 255  # the label map is uint8


@dataclass(frozen=True)
class PreprocessOptions:
    """Label options of a preprocessing run (see the module docstring)."""

    malignancy_rule: str = "mean_gt3"
    luna16_mask: str = "none"

    def __post_init__(self) -> None:
        if self.malignancy_rule not in MALIGNANCY_RULES:
            raise ValueError(
                f"malignancy_rule must be one of {MALIGNANCY_RULES}, got {self.malignancy_rule!r}"
            )
        if self.luna16_mask not in LUNA16_MASKS:
            raise ValueError(f"luna16_mask must be one of {LUNA16_MASKS}, got {self.luna16_mask!r}")


@dataclass
class PreprocessResult:
    """What one run did: case ids written, skipped (already cached), failed (with errors).

    ``failed`` also holds the source files that gave no case (an unreadable XML, a series
    without XML, ...); ``warnings`` are the counted notes on data not used (also logged).
    """

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


#: Documented scale of each LIDC rating (``reference/lidc-idri.md``, "Characteristics").
RATING_RANGES = {"internalStructure": (1, 4), "calcification": (1, 6)}


def _check_readings(message, volume: CTVolume) -> tuple[list, dict[str, int], list[str]]:
    """Split the readings into those kept for the masks and counted others; word warnings.

    Kept: all nine ratings present and non-zero (pylidc's rule). Counted, never dropped
    silently: "< 3 mm" marks, contoured readings with missing ratings, ratings outside their
    scale (kept; the count says so) and rois placed by z because their SOPInstanceUID is not
    in the series.

    Raises:
        AnnotationError: a malignancy rating outside 1..5 (it would make a wrong label).
    """
    xml = message.path
    kept = [n for n in message.nodules if n.has_complete_ratings]
    incomplete = [n for n in message.nodules if not n.has_complete_ratings and not n.is_small]
    warnings = [
        f"{xml}: reader {n.reader_index + 1} nodule {n.nodule_id!r} has contours but "
        f"incomplete ratings ({sorted(n.characteristics or {})}): no mask, counted in "
        "case.json lidc.incomplete_ratings"
        for n in incomplete
    ]
    out_of_range = 0
    for n in kept:
        for name, value in (n.characteristics or {}).items():
            lo, hi = RATING_RANGES.get(name, (1, 5))
            if lo <= value <= hi:
                continue
            where = f"{xml}: reader {n.reader_index + 1} nodule {n.nodule_id!r}"
            if name == "malignancy":
                raise AnnotationError(f"{where}: malignancy {value} is outside 1..5", xml)
            out_of_range += 1
            warnings.append(f"{where}: {name} {value} is outside {lo}..{hi} (kept)")
    uids = set(volume.metadata.get("sop_instance_uids") or [])
    by_z = [r for n in kept for r in n.rois if uids and r.sop_uid not in uids]
    if by_z:
        warnings.append(
            f"{xml}: {len(by_z)} roi(s) name a SOPInstanceUID not in the series (first: "
            f"{by_z[0].sop_uid!r}); placed on the slice at their imageZposition"
        )
    counts = {
        "incomplete_ratings": len(incomplete),
        "ratings_out_of_range": out_of_range,
        "rois_placed_by_z": len(by_z),
    }
    return kept, counts, warnings


def _load_lidc(task: CaseTask, options: PreprocessOptions):
    volume = read_dicom_series(task.source, series_uid=task.case_id, duplicates="keep_first")
    message = parse_lidc_xml(task.xml_path)  # type: ignore[arg-type]
    kept, counts, warnings = _check_readings(message, volume)
    label_map = np.zeros(volume.shape, dtype=np.uint8)
    nodules: list[dict[str, Any]] = []
    empty_clusters = 0
    thickness = volume.metadata.get("slice_thickness_mm") or volume.spacing_mm[0]
    tol_mm = max(float(thickness), *volume.spacing_mm[1:])
    for cluster in cluster_annotations(kept, volume, tol_mm=tol_mm):
        consensus = consensus_mask(
            [rasterize_annotation(n, volume) for n in cluster], CONSENSUS_LEVEL
        )
        if not consensus.any():
            empty_clusters += 1  # every contour too thin to cover a pixel centre
            warnings.append(
                f"{task.xml_path}: a nodule of {len(cluster)} reading(s) covers no voxel "
                "centre at the 50 % consensus: no mask (lidc.empty_consensus_clusters)"
            )
            continue
        label = len(nodules) + 1
        if label > MAX_NODULES:
            raise ValueError(f"{task.xml_path}: more than {MAX_NODULES} nodules in one series")
        label_map[consensus & (label_map == 0)] = label
        size = measure_nodule(consensus, volume.spacing_mm)
        chars = [dict(n.characteristics or {}) for n in cluster]
        malignancy = [c["malignancy"] for c in chars]
        ratings = aggregate_ratings(chars)
        nodules.append(
            {
                "label": label,
                "centre_lps_mm": volume.voxel_to_world(size.centroid_voxel).tolist(),
                "diameter_mm": size.mean_diameter_mm,
                "long_axis_mm": size.long_axis_mm,
                "short_axis_mm": size.short_axis_mm,
                "volume_mm3": size.volume_mm3,
                "ratings": ratings,
                "reader_ratings": chars,
                "texture": ratings["texture"]["median"],
                "malignancy": {
                    "ratings": malignancy,
                    "label": binarize_malignancy(malignancy, options.malignancy_rule),
                    "rule": options.malignancy_rule,
                },
                "consensus": {
                    "level": CONSENSUS_LEVEL,
                    "n_annotations": len(cluster),
                    "n_readers_in_file": message.n_readers,
                },
            }
        )
    info = {
        "mask_source": "lidc_consensus",
        "source_files": [*volume.metadata["files"], task.xml_path],
        "ignored_xml": list(task.ignored_xml),
        "lidc": {
            "n_readers": message.n_readers,
            "annotations_ge3mm": len(kept),
            "small_nodule_marks": sum(n.is_small for n in message.nodules),
            "non_nodule_marks": len(message.non_nodules),
            "empty_consensus_clusters": empty_clusters,
            **counts,
        },
        "warnings": warnings,
    }
    return volume, label_map, nodules, info


def _load_luna16(task: CaseTask, options: PreprocessOptions):
    volume = read_metaimage(task.source)
    nodules = [
        {"label": i + 1, "centre_lps_mm": [x, y, z], "diameter_mm": d}
        for i, (x, y, z, d) in enumerate(task.annotations)
    ]
    if len(nodules) > MAX_NODULES:
        raise ValueError(f"{task.source}: more than {MAX_NODULES} annotations")
    mhd = Path(task.source)
    info = {
        "mask_source": "luna16_sphere" if options.luna16_mask == "sphere" else "none",
        "source_files": [str(mhd), str(mhd.with_suffix(".raw"))],
        "fold": task.fold,
    }
    return volume, None, nodules, info


def _load_dicom(task: CaseTask, options: PreprocessOptions):
    volume = read_dicom_series(task.source, series_uid=task.case_id)
    return volume, None, [], {"mask_source": "none", "source_files": volume.metadata["files"]}


LOADERS: dict[str, Callable[[CaseTask, PreprocessOptions], tuple]] = {
    "lidc": _load_lidc,
    "luna16": _load_luna16,
    "dicom": _load_dicom,
}


def _check_luna_rows(task: CaseTask, volume: CTVolume) -> None:
    where = task.annotation_rows or [(task.source, i + 1) for i in range(len(task.annotations))]
    rows = [
        LunaAnnotation(task.case_id, (x, y, z), d, Path(path), line)
        for (x, y, z, d), (path, line) in zip(task.annotations, where, strict=True)
    ]
    check_rows_inside(volume, rows, task.case_id)


def preprocess_case(task: CaseTask, dst: str, spec: CacheSpec, options: PreprocessOptions) -> Path:
    """Read, label, resample, crop, normalise and atomically write one case.

    Returns:
        The written case folder ``dst/<case_id>``.
    """
    return _preprocess_case(task, dst, spec, options)[0]


def _preprocess_case(
    task: CaseTask, dst: str, spec: CacheSpec, options: PreprocessOptions
) -> tuple[Path, list[str]]:
    volume, label_map, nodules, info = LOADERS[task.format](task, options)
    check_spacing(volume.spacing_mm, task.source)  # as `lungvlm report` reads scans
    check_finite(volume.array_hu, task.source)
    if task.format == "luna16":
        _check_luna_rows(task, volume)
    balls = task.format == "luna16" and options.luna16_mask == "sphere"
    arrays, case = build_case(volume, label_map, nodules, spec, paint_balls=balls)
    meta = volume.metadata
    case.update(
        {
            "schema_version": 1,
            "case_id": task.case_id,
            "format": task.format,
            "patient_id": meta.get("patient_id") or task.case_id,
            "series_uid": meta.get("series_instance_uid") or task.case_id,
            "study_uid": meta.get("study_instance_uid"),
            "scanner": {
                key: meta.get(key)
                for key in ("manufacturer", "manufacturer_model_name", "convolution_kernel", "kvp")
                + ("slice_thickness_mm",)
            },
            "fold": None,
            **info,
        }
    )
    if task.candidates:
        geometry = CTVolume(
            np.zeros((1, 1, 1), np.float32),
            case["spacing_mm"],
            case["origin_lps_mm"],
            np.reshape(case["direction"], (3, 3)),
        )
        xyz = np.asarray([c[:3] for c in task.candidates], dtype=np.float64)
        case["candidates"] = [
            {"centre_lps_mm": list(p), "voxel_zyx": v.tolist(), "class": int(c[3])}
            for p, v, c in zip(
                xyz.tolist(), geometry.world_to_voxel(xyz), task.candidates, strict=True
            )
        ]
    return write_case_atomic(dst, task.case_id, arrays, case), list(info.get("warnings", []))


def _run_one(
    task: CaseTask, dst: str, spec: CacheSpec, options: PreprocessOptions
) -> tuple[str, str | None, list[str]]:
    try:
        return task.case_id, None, _preprocess_case(task, dst, spec, options)[1]
    except Exception as exc:  # one bad case must never stop the others
        return task.case_id, f"{type(exc).__name__}: {exc}", []


def preprocess(
    fmt: str,
    src: str | PathLike[str],
    dst: str | PathLike[str],
    spec: CacheSpec | None = None,
    options: PreprocessOptions | None = None,
    workers: int = 1,
    progress: bool = True,
) -> PreprocessResult:
    """Preprocess every case of ``src`` into the cache ``dst`` (see the module docstring).

    Cases already complete in ``dst`` are skipped; ``.tmp-*`` leftovers whose writer process
    is dead are removed first (those of a run still going are kept). ``dst/failures.json``
    lists this run's failed cases and the source files that gave no case, as
    ``[{"case", "error", "source"}]`` (``[]`` when none); warnings are logged and returned.

    Args:
        fmt: one of :data:`FORMATS`.
        src: data root.
        dst: cache folder.
        spec: resampling/normalisation settings (default :class:`CacheSpec`).
        options: label options (default :class:`PreprocessOptions`).
        workers: processes; 1 runs in this process.
        progress: show a rich progress bar.

    Raises:
        ValueError: bad arguments, or ``dst`` built with other settings.
        DataError: no case at all under ``src`` (the message says what was searched for and
            the nearest miss); ``dst`` is then not created.
        CSVFormatError: a LUNA16 CSV with a missing column or a bad row.
    """
    spec, options = spec or CacheSpec(), options or PreprocessOptions()
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    found = discover(fmt, src)
    if not found.tasks:  # before dst is created: a failed start leaves nothing behind
        raise DataError(no_case_message(fmt, src, found), src)
    dst = open_cache(dst, spec)
    for path in remove_stale_temp_folders(dst):
        log.warning("removed %s, left by a killed run", path)
    tasks = found.tasks
    result = PreprocessResult(skipped=[t.case_id for t in tasks if case_done(dst, t.case_id)])
    result.warnings = list(found.warnings)
    result.failed = [
        {"case": p.case, "error": p.error, "source": str(p.path)} for p in found.problems
    ]
    todo = [t for t in tasks if t.case_id not in set(result.skipped)]
    sources = {t.case_id: t.source for t in todo}
    with _progress_bar(progress, len(todo), f"preprocess {fmt}") as advance:
        if workers == 1:
            for outcome in (_run_one(t, str(dst), spec, options) for t in todo):
                _record(result, outcome, sources)
                advance()
        else:
            # Workers die with this process (kill -9 included): no orphan keeps writing into
            # dst while the user reruns (lungvlm.processes.die_with_parent).
            with ProcessPoolExecutor(
                max_workers=int(workers), initializer=die_with_parent, initargs=(os.getpid(),)
            ) as pool:
                futures = {pool.submit(_run_one, t, str(dst), spec, options): t for t in todo}
                for future in as_completed(futures):
                    try:
                        outcome = future.result()
                    except Exception as exc:  # a worker died (e.g. out of memory)
                        outcome = (futures[future].case_id, f"{type(exc).__name__}: {exc}", [])
                    _record(result, outcome, sources)
                    advance()
    result.failed.sort(key=lambda f: f["case"])
    for warning in result.warnings:
        log.warning("%s", warning)
    write_json_atomic(Path(dst) / "failures.json", result.failed)
    return result


def _record(
    result: PreprocessResult,
    outcome: tuple[str, str | None, list[str]],
    sources: dict[str, str],
) -> None:
    case_id, error, warnings = outcome
    result.warnings.extend(warnings)
    if error is None:
        result.written.append(case_id)
    else:
        result.failed.append({"case": case_id, "error": error, "source": sources[case_id]})


@contextmanager
def _progress_bar(enabled: bool, total: int, label: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar yielding an ``advance()`` callable (a no-op when disabled)."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


def read_failures(dst: str | PathLike[str]) -> list[dict[str, str]]:
    """The ``failures.json`` of a cache (``[]`` when the file is absent)."""
    path = Path(dst) / "failures.json"
    return json.loads(path.read_text()) if path.is_file() else []


__all__ = [
    "FORMATS",
    "LUNA16_MASKS",
    "CaseTask",
    "PreprocessOptions",
    "PreprocessResult",
    "discover_cases",
    "preprocess",
    "preprocess_case",
    "read_failures",
]
