"""Storage of mined training crops (:class:`lungvlm.types.MinedCrop`) as a pool the phantom
DataModule draws from.

A pool is a folder of ``.npz`` samples in the phantom cache's format
(:func:`data_modules.phantom_datamodule.write_cached_sample`: arrays plus JSON, never a pickle)
and a ``manifest.json`` listing them per chest with the mining counts. Every sample is written
to a temporary file and renamed, and the manifest is rewritten (temp file + rename) only after
all of a chest's samples exist: a crash mid-chest leaves at most orphan sample files that no
manifest names, never a manifest naming a missing or half-written file. Mining a chest that the
manifest already lists replaces its entry (a repeated round is idempotent).

Every mined crop is nodule-free at its centre, so its text is the nodule-free report the phantom
crops use ("no pulmonary nodules ..."); risk, growth and concept labels are absent.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_modules.phantom.report import exam_findings, findings_spans, render
from lungvlm.labels import CONCEPT_NAMES
from lungvlm.types import MINED_KINDS, MinedCrop

MANIFEST_NAME: str = "manifest.json"
MANIFEST_VERSION: int = 1


def _atomic_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.json")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The pool's manifest: ``{"version", "chests": {case_id: {"files", "stats"}}}``.

    A folder without a manifest is an empty pool.

    Raises:
        ValueError: a manifest that is not this format (names the file).
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return {"version": MANIFEST_VERSION, "chests": {}}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"mined-crop manifest {path} is not readable JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(
            f"mined-crop manifest {path} has version {manifest.get('version')!r} "
            f"(expected {MANIFEST_VERSION}); delete the folder and mine again"
        )
    return manifest


def pool_files(folder: str | Path) -> list[Path]:
    """Every sample file the manifest of ``folder`` lists, in chest order.

    Raises:
        ValueError: a listed file is missing (names it).
    """
    folder = Path(folder)
    files = []
    for case_id, entry in read_manifest(folder)["chests"].items():
        for name in entry["files"]:
            path = folder / name
            if not path.is_file():
                raise ValueError(
                    f"mined-crop pool {folder}: {path} of chest {case_id} is listed in "
                    f"{MANIFEST_NAME} but missing; delete the folder and mine again"
                )
            files.append(path)
    return files


def stored_sample(
    crop: MinedCrop, spacing_mm: float, context_scale: float, wording_seed: int
) -> dict[str, Any]:
    """A mined crop in the phantom cache's stored-sample layout (nodule-free labels)."""
    if crop.kind not in MINED_KINDS:
        raise ValueError(f"crop kind {crop.kind!r} is not one of {MINED_KINDS}")
    report = render(
        exam_findings([], None, with_slice=False), seed=wording_seed, state_defaults=True
    )
    context = crop.image if crop.context is None else crop.context
    return {
        "image": np.asarray(crop.image, np.float32),
        "context": np.asarray(context, np.float32),
        "mask": np.asarray(crop.mask, np.uint8),
        "concepts": np.zeros(len(CONCEPT_NAMES), np.float32),
        "has_nodule": False,
        "malignant": None,
        "lungrads": None,
        "growth": None,
        "findings_text": report.findings_text,
        "impression_text": report.impression_text,
        "spans": [(sp.start, sp.end, sp.nodule_index, sp.field) for sp in findings_spans(report)],
        "spacing_mm": (float(spacing_mm),) * 3,
        "context_spacing_mm": (float(spacing_mm) * float(context_scale or 1.0),) * 3,
        "meta": {
            "scanner": None,
            "seed": int(wording_seed),
            "case_id": crop.case_id,
            "mined_kind": crop.kind,
            "mined_score": crop.score,
            "world_centre_lps_mm": list(crop.centre_world_mm),
            "positive": False,
            "negative_site": f"mined_{crop.kind}",
            "labels": None,
        },
    }


def store_mined(
    folder: str | Path,
    case_id: str,
    crops: Sequence[MinedCrop],
    stats: dict[str, Any],
    *,
    spacing_mm: float,
    context_scale: float,
    round_index: int = 0,
) -> list[Path]:
    """Write one chest's mined crops into the pool at ``folder`` and list them in its manifest.

    Args:
        folder: the pool folder (created if needed).
        case_id: the chest's id (a manifest key; a second call for it replaces the entry).
        crops: the crops of :func:`lungvlm.inference.mining.mine_chest`.
        stats: JSON-serialisable counts kept with the entry (``MiningResult.stats()``).
        spacing_mm: the crops' isotropic spacing (mm).
        context_scale: their context field-of-view factor.
        round_index: the mining round (file names and the entry record it).

    Returns:
        The paths of the written samples.
    """
    from data_modules.phantom_datamodule import write_cached_sample

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in case_id)
    paths = []
    for i, crop in enumerate(crops):
        path = folder / f"{stem}-r{int(round_index)}-{i:03d}-{crop.kind}.npz"
        wording = int(
            np.random.default_rng([zlib.crc32(stem.encode()), int(round_index), i]).integers(2**31)
        )
        write_cached_sample(path, stored_sample(crop, spacing_mm, context_scale, wording))
        paths.append(path)
    manifest = read_manifest(folder)
    manifest["chests"][case_id] = {
        "files": [p.name for p in paths],
        "round": int(round_index),
        "stats": stats,
    }
    _atomic_json(folder / MANIFEST_NAME, manifest)
    return paths
