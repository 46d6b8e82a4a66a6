"""The preprocessed case cache: resample, crop to the lungs, normalise, write atomically, load fast.

Layout of a cache folder::

    dst/cache.json              the settings every case was built with (CacheSpec)
    dst/failures.json           [{"case", "error", "source"}] of the last run
    dst/<case_id>/image.npy     (z, y, x) float16/float32 in [0, 1] (normalize_hu)
    dst/<case_id>/mask.npy      (z, y, x) uint8 nodule label map: 0 background, k = nodule k
    dst/<case_id>/lung.npy      (z, y, x) uint8 lung mask (0/1)
    dst/<case_id>/case.json     labels per nodule + geometry + provenance

Every ``.npy`` is uncompressed so ``np.load(path, mmap_mode="r")`` reads only the voxels of one
crop. A case is built in ``dst/.tmp-<case_id>-<pid>/`` and renamed into place with one atomic
``os.replace``: a folder named after a case is always complete, and leftovers of a killed run
start with ``.tmp-`` and end in the writer's pid; :func:`remove_stale_temp_folders` removes
those whose writer is dead.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from data_modules.io import CTVolume
from lungvlm.clinical.hu import DEFAULT_NORMALIZATION_RANGE_HU, normalize_hu
from lungvlm.imaging.lung_mask import LUNG_THRESHOLD_HU, bounding_box, lung_mask
from lungvlm.imaging.resample import resample_to_spacing
from lungvlm.processes import owner_pid, pid_alive

#: 2: resampled by lungvlm.imaging.resample (edge values repeat instead of hu_min).
CACHE_SCHEMA_VERSION = 2
CASE_FILES = ("image.npy", "mask.npy", "lung.npy", "case.json")
TEMP_PREFIX = ".tmp-"
IMAGE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class CacheSpec:
    """Settings shared by every case of one cache (saved as ``cache.json``).

    Attributes:
        spacing_mm: isotropic target voxel size in mm.
        hu_min: lower HU clip bound, maps to 0 (``normalize_hu``).
        hu_max: upper HU clip bound, maps to 1.
        margin_mm: margin added around the lung (and nodule) bounding box, in mm.
        image_dtype: "float16" (default; 1/2048 steps, about 0.7 HU over 1400 HU) or "float32".
    """

    spacing_mm: float = 1.0
    hu_min: float = DEFAULT_NORMALIZATION_RANGE_HU[0]
    hu_max: float = DEFAULT_NORMALIZATION_RANGE_HU[1]
    margin_mm: float = 10.0
    image_dtype: str = "float16"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise ValueError(f"spacing_mm must be a positive size in mm, got {self.spacing_mm}")
        if not (
            np.isfinite(self.hu_min) and np.isfinite(self.hu_max) and self.hu_max > self.hu_min
        ):
            raise ValueError(f"need finite hu_min < hu_max (HU), got {self.hu_min}, {self.hu_max}")
        if not (np.isfinite(self.margin_mm) and self.margin_mm >= 0):
            raise ValueError(f"margin_mm must be >= 0 mm, got {self.margin_mm}")
        if self.image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image_dtype must be one of {IMAGE_DTYPES}, got {self.image_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings plus the normalisation method name and the schema version."""
        return {
            **asdict(self),
            "normalization": "lungvlm.clinical.hu.normalize_hu",
            "schema_version": CACHE_SCHEMA_VERSION,
        }


def _paint_ball(labels: NDArray[np.uint8], grid: CTVolume, nodule: dict[str, Any]) -> None:
    """Label the voxels whose centres lie within ``diameter_mm / 2`` of the nodule centre."""
    centre = grid.world_to_voxel(np.asarray(nodule["centre_lps_mm"], dtype=np.float64))
    radius_vox = nodule["diameter_mm"] / 2.0 / np.asarray(grid.spacing_mm)
    lo = np.maximum(np.floor(centre - radius_vox).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radius_vox).astype(int) + 1, labels.shape)
    if np.any(hi <= lo):
        return
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    axes = np.ogrid[box]
    dist2 = sum(((a - c) / r) ** 2 for a, c, r in zip(axes, centre, radius_vox, strict=True))
    region = labels[box]
    region[(dist2 <= 1.0) & (region == 0)] = int(nodule["label"])


def build_case(
    volume: CTVolume,
    label_map: NDArray[np.uint8] | None,
    nodules: Sequence[dict[str, Any]],
    spec: CacheSpec,
    paint_balls: bool = False,
) -> tuple[dict[str, NDArray], dict[str, Any]]:
    """Resample, lung-crop and normalise one case.

    The HU image is resampled with linear interpolation, the nodule label map with nearest
    neighbour; the lung mask is computed on the resampled HU image. The crop is the bounding
    box of the lungs and of every nodule, grown by ``spec.margin_mm`` (the whole volume when no
    lung is found; ``case["lung"]["empty"]`` says so).

    Args:
        volume: the CT in HU with its geometry.
        label_map: (z, y, x) uint8 nodule labels on the volume's grid, or None (no masks).
        nodules: one dict per nodule with at least ``"label"`` (its value in ``label_map``)
            and ``"centre_lps_mm"`` (world x, y, z); other keys are copied.
        spec: the cache settings.
        paint_balls: also paint each nodule as a ball of its ``"diameter_mm"`` around its
            centre, on the resampled grid (for data sets with centres but no outlines).

    Returns:
        ``({"image", "mask", "lung"} arrays in the cache grid, geometry/labels dict)``. Each
        nodule gets ``centroid_voxel_zyx`` (cache grid; the label's voxel centroid when it
        survives resampling, else its world centre mapped to the grid) and ``in_mask``.
    """
    # The one resampler (lungvlm.imaging.resample), as inference uses: same grid, same values.
    image = resample_to_spacing(volume.array_hu, volume.spacing_mm, spec.spacing_mm, order=1)
    spacing = (float(spec.spacing_mm),) * 3
    grid = CTVolume(image, spacing, volume.origin_lps_mm, volume.direction)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    if label_map is not None:
        if label_map.shape != volume.shape:
            raise ValueError(f"label_map shape {label_map.shape} != volume {volume.shape}")
        lab = np.ascontiguousarray(label_map, dtype=np.uint8)
        labels = resample_to_spacing(lab, volume.spacing_mm, spec.spacing_mm, order=0)
    if paint_balls:
        for nodule in nodules:
            _paint_ball(labels, grid, nodule)
    lungs = lung_mask(grid.array_hu, grid.spacing_mm)
    margin = [int(np.ceil(spec.margin_mm / spec.spacing_mm))] * 3
    box = bounding_box(lungs | (labels > 0), margin)
    if box is None:
        box = tuple(slice(0, n) for n in grid.shape)
    offset = np.array([b.start for b in box], dtype=np.float64)
    origin = grid.voxel_to_world(offset)
    cropped = CTVolume(
        grid.array_hu[box], grid.spacing_mm, origin, grid.direction, dict(volume.metadata)
    )
    arrays = {
        "image": normalize_hu(cropped.array_hu, spec.hu_min, spec.hu_max).astype(spec.image_dtype),
        "mask": np.ascontiguousarray(labels[box]),
        "lung": lungs[box].astype(np.uint8),
    }
    records = []
    for nodule in nodules:
        record = dict(nodule)
        voxels = np.argwhere(arrays["mask"] == int(nodule["label"]))
        record["in_mask"] = bool(len(voxels))
        centroid = (
            voxels.mean(axis=0)
            if len(voxels)
            else cropped.world_to_voxel(np.asarray(nodule["centre_lps_mm"], dtype=np.float64))
        )
        record["centroid_voxel_zyx"] = [float(v) for v in centroid]
        records.append(record)
    case = {
        "shape_zyx": list(cropped.shape),
        "spacing_mm": list(cropped.spacing_mm),
        "origin_lps_mm": list(cropped.origin_lps_mm),
        "direction": cropped.direction.reshape(-1).tolist(),
        "original_shape_zyx": list(volume.shape),
        "original_spacing_mm": list(volume.spacing_mm),
        "original_origin_lps_mm": list(volume.origin_lps_mm),
        "original_direction": volume.direction.reshape(-1).tolist(),
        "resampled_shape_zyx": list(grid.shape),
        "crop_offset_zyx": [int(v) for v in offset],
        "normalization": {
            "method": "lungvlm.clinical.hu.normalize_hu",
            "hu_min": spec.hu_min,
            "hu_max": spec.hu_max,
        },
        "image_dtype": spec.image_dtype,
        "lung": {
            "method": "lungvlm.imaging.lung_mask.lung_mask",
            "threshold_hu": LUNG_THRESHOLD_HU,
            "voxels": int(lungs.sum()),
            "empty": not bool(lungs.any()),
        },
        "nodules": records,
    }
    return arrays, case


def case_done(dst: str | PathLike[str], case_id: str) -> bool:
    """True when ``dst/<case_id>`` holds every cache file (it was renamed in complete)."""
    folder = Path(dst) / case_id
    return all((folder / name).is_file() for name in CASE_FILES)


def write_case_atomic(
    dst: str | PathLike[str], case_id: str, arrays: dict[str, NDArray], case: dict[str, Any]
) -> Path:
    """Write one case into a temp folder, then rename it to ``dst/<case_id>`` in one step.

    Raises:
        ValueError: a case id that is empty, hidden or holds a path separator.
        FileExistsError: ``dst/<case_id>`` already exists.
    """
    if not case_id or case_id.startswith(".") or "/" in case_id or os.sep in case_id:
        raise ValueError(f"case_id must be a plain folder name, got {case_id!r}")
    dst = Path(dst)
    final = dst / case_id
    if final.exists():
        raise FileExistsError(f"cache case {final} already exists")
    tmp = dst / f"{TEMP_PREFIX}{case_id}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in ("image", "mask", "lung"):
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arrays[name]))
        (tmp / "case.json").write_text(json.dumps(case, indent=1, default=_json_default))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in case.json")


def write_json_atomic(path: str | PathLike[str], payload: Any) -> None:
    """Write JSON to ``path`` through a temp file and ``os.replace`` (no half-written file)."""
    path = Path(path)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, default=_json_default))
    os.replace(tmp, path)


def remove_stale_temp_folders(dst: str | PathLike[str]) -> list[Path]:
    """Delete ``.tmp-*`` leftovers of a killed run; returns what was removed.

    A temp name ends in its writer's pid (``.tmp-<case_id>-<pid>``); a leftover is removed only
    when that process is dead on this machine, so a second run never deletes the folder of a
    run (or an orphaned worker) still writing. A name without a pid is removed.
    """
    removed = []
    for path in Path(dst).glob(f"{TEMP_PREFIX}*"):
        pid = owner_pid(path.name)
        if pid is not None and pid_alive(pid):
            continue  # its writer is still running
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def open_cache(dst: str | PathLike[str], spec: CacheSpec) -> Path:
    """Create ``dst`` (or reuse it) and record ``spec`` in ``cache.json``.

    Raises:
        ValueError: ``dst`` already holds a cache built with other settings (mixing them
            would give cases with different spacing or normalisation).
    """
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    manifest = dst / "cache.json"
    wanted = spec.to_dict()
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if found != wanted:
            raise ValueError(
                f"cache {dst} was built with {found}; requested {wanted}. Use another --dst "
                "or the same settings"
            )
    else:
        write_json_atomic(manifest, wanted)
    return dst


def read_cache_spec(root: str | PathLike[str]) -> dict[str, Any]:
    """The ``cache.json`` settings of a cache folder.

    Raises:
        FileNotFoundError: no ``cache.json`` in ``root``.
    """
    manifest = Path(root) / "cache.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: {root} is not a preprocessed cache")
    return json.loads(manifest.read_text())


def list_cached_cases(root: str | PathLike[str]) -> list[Path]:
    """Complete case folders of a cache, sorted by name (temp folders are skipped)."""
    root = Path(root)
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and case_done(root, p.name)
    )


def load_case_arrays(folder: str | PathLike[str], mmap: bool = True) -> dict[str, np.ndarray]:
    """``{"image", "mask", "lung"}`` of one case; memory-mapped (read-only) when ``mmap``."""
    folder = Path(folder)
    mode = "r" if mmap else None
    return {
        name: np.load(folder / f"{name}.npy", mmap_mode=mode) for name in ("image", "mask", "lung")
    }


def load_case_json(folder: str | PathLike[str]) -> dict[str, Any]:
    """The ``case.json`` of one case folder."""
    return json.loads((Path(folder) / "case.json").read_text())
