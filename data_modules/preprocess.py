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
from data_modules.io import (
    CTVolume,
    DataError,
    LunaAnnotation,
    aggregate_ratings,
    binarize_malignancy,
    check_rows_inside,
    cluster_annotations,
    consensus_mask,
    find_lidc_series,
    fold_of_subset_folder,
    list_series,
    parse_lidc_xml,
    rasterize_annotation,
    read_annotations_csv,
    read_candidates_csv,
    read_dicom_series,
    read_metaimage,
)
from data_modules.io.lidc_consensus import MALIGNANCY_RULES
from lungvlm.clinical.measure import measure_nodule

FORMATS = ("lidc", "luna16", "dicom")
LUNA16_MASKS = ("none", "sphere")
CONSENSUS_LEVEL = 0.5
MAX_NODULES = 255  # the label map is uint8


@dataclass(frozen=True)
class CaseTask:
    """One case to preprocess (picklable, sent to worker processes).

    Attributes:
        case_id: cache folder name (the SeriesInstanceUID).
        format: one of :data:`FORMATS`.
        source: the series folder (LIDC, DICOM) or the ``.mhd`` file (LUNA16).
        xml_path: the LIDC read message; ``ignored_xml`` lists further XML files of the series.
        annotations: LUNA16 rows (x, y, z, diameter) in world mm.
        candidates: LUNA16 candidate rows (x, y, z, class).
        fold: LUNA16 subset index, None elsewhere.
    """

    case_id: str
    format: str
    source: str
    xml_path: str | None = None
    ignored_xml: tuple[str, ...] = ()
    annotations: tuple[tuple[float, float, float, float], ...] = ()
    candidates: tuple[tuple[float, float, float, int], ...] = ()
    fold: int | None = None


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
    """What one run did: case ids written, skipped (already cached) and failed (with errors)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)


def discover_cases(fmt: str, src: str | PathLike[str]) -> list[CaseTask]:
    """List the cases of a source tree, sorted by case id.

    Args:
        fmt: "lidc" (series folders paired with their XML by SeriesInstanceUID), "luna16"
            (``subset*/<uid>.mhd`` with ``annotations.csv`` / ``candidates_V2.csv`` found
            anywhere under ``src``) or "dicom" (every series in every folder).
        src: the data root.

    Raises:
        ValueError: an unknown format or a missing ``src``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"source folder {src} does not exist or is not a folder")
    if fmt == "lidc":
        by_uid: dict[str, list[tuple[Path, Path]]] = {}
        for folder, xml in find_lidc_series(src):
            uid = parse_lidc_xml(xml).series_uid
            by_uid.setdefault(uid, []).append((folder, xml))
        # A series with several XML files (a resubmitted read): the first by path is used and
        # the others are recorded in case.json (project choice; the files do not say which wins).
        return [
            CaseTask(uid, fmt, str(p[0][0]), str(p[0][1]), tuple(str(x) for _, x in p[1:]))
            for uid, p in sorted(by_uid.items())
        ]
    if fmt == "dicom":
        tasks = []
        for folder in sorted({p.parent for p in src.rglob("*") if p.is_file()}):
            try:
                uids = list_series(folder)
            except DataError:
                continue  # a folder without DICOM images
            tasks.extend(CaseTask(uid, fmt, str(folder)) for uid in uids)
        return sorted(tasks, key=lambda t: t.case_id)
    return _discover_luna16(src)


def _discover_luna16(src: Path) -> list[CaseTask]:
    annotations: dict[str, list[tuple[float, ...]]] = {}
    for path in sorted(src.rglob("annotations.csv")):
        for row in read_annotations_csv(path):
            annotations.setdefault(row.seriesuid, []).append((*row.xyz_mm, row.diameter_mm))
    candidates: dict[str, list[tuple[float, ...]]] = {}
    for path in sorted(src.rglob("candidates_V2.csv")):
        for row in read_candidates_csv(path):
            candidates.setdefault(row.seriesuid, []).append((*row.xyz_mm, row.label))
    tasks = []
    for mhd in sorted(src.rglob("*.mhd")):
        try:
            fold: int | None = fold_of_subset_folder(mhd.parent)
        except ValueError:
            continue  # not inside subset0..9 (e.g. seg-lungs-LUNA16 masks)
        uid = mhd.stem
        tasks.append(
            CaseTask(
                uid,
                "luna16",
                str(mhd),
                annotations=tuple(tuple(a) for a in annotations.get(uid, [])),  # type: ignore[misc]
                candidates=tuple(tuple(c) for c in candidates.get(uid, [])),  # type: ignore[misc]
                fold=fold,
            )
        )
    return sorted(tasks, key=lambda t: t.case_id)


def _load_lidc(task: CaseTask, options: PreprocessOptions):
    volume = read_dicom_series(task.source, series_uid=task.case_id, duplicates="keep_first")
    message = parse_lidc_xml(task.xml_path)  # type: ignore[arg-type]
    kept = [n for n in message.nodules if n.has_complete_ratings]
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
        },
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
    rows = [
        LunaAnnotation(task.case_id, (x, y, z), d, Path(task.source), i + 1)
        for i, (x, y, z, d) in enumerate(task.annotations)
    ]
    check_rows_inside(volume, rows, task.case_id)


def preprocess_case(task: CaseTask, dst: str, spec: CacheSpec, options: PreprocessOptions) -> Path:
    """Read, label, resample, crop, normalise and atomically write one case.

    Returns:
        The written case folder ``dst/<case_id>``.
    """
    volume, label_map, nodules, info = LOADERS[task.format](task, options)
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
    return write_case_atomic(dst, task.case_id, arrays, case)


def _run_one(
    task: CaseTask, dst: str, spec: CacheSpec, options: PreprocessOptions
) -> tuple[str, str | None]:
    try:
        preprocess_case(task, dst, spec, options)
        return task.case_id, None
    except Exception as exc:  # one bad case must never stop the others
        return task.case_id, f"{type(exc).__name__}: {exc}"


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

    Cases already complete in ``dst`` are skipped; ``.tmp-*`` leftovers of a killed run are
    removed first (so run one preprocess per ``dst`` at a time). ``dst/failures.json`` lists
    this run's failures as ``[{"case", "error", "source"}]`` (``[]`` when none).

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
    """
    spec, options = spec or CacheSpec(), options or PreprocessOptions()
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    tasks = discover_cases(fmt, src)
    dst = open_cache(dst, spec)
    remove_stale_temp_folders(dst)
    if not tasks:
        raise ValueError(f"no {fmt} case found under {src}")
    result = PreprocessResult(skipped=[t.case_id for t in tasks if case_done(dst, t.case_id)])
    todo = [t for t in tasks if t.case_id not in set(result.skipped)]
    sources = {t.case_id: t.source for t in todo}
    with _progress_bar(progress, len(todo), f"preprocess {fmt}") as advance:
        if workers == 1:
            outcomes = (_run_one(t, str(dst), spec, options) for t in todo)
            for case_id, error in outcomes:
                _record(result, case_id, error, sources)
                advance()
        else:
            with ProcessPoolExecutor(max_workers=int(workers)) as pool:
                futures = {pool.submit(_run_one, t, str(dst), spec, options): t for t in todo}
                for future in as_completed(futures):
                    try:
                        case_id, error = future.result()
                    except Exception as exc:  # a worker died (e.g. out of memory)
                        case_id, error = futures[future].case_id, f"{type(exc).__name__}: {exc}"
                    _record(result, case_id, error, sources)
                    advance()
    result.failed.sort(key=lambda f: f["case"])
    write_json_atomic(Path(dst) / "failures.json", result.failed)
    return result


def _record(
    result: PreprocessResult, case_id: str, error: str | None, sources: dict[str, str]
) -> None:
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
