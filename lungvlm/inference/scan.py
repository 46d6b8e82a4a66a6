"""Whole-scan inference: load a checkpoint, resample and normalise a CT, segment it by sliding
windows, and turn the probability map into measured nodule instances.

Grids. The original scan is (z, y, x) with spacing ``spacing_mm`` and a 4x4 ``affine`` taking a
homogeneous (z, y, x, 1) index to LPS world (x, y, z, 1) mm (the layout of
``CTVolume.affine_lps``). The prepared grid keeps the centre of voxel (0, 0, 0) and the
direction and has ``target_spacing_mm`` voxels: prepared index ``o`` lies at original index
``o * target / spacing`` and each axis has ``round(n * spacing / target)`` voxels, as the
training cache (``data_modules/cache.py``) resamples. HU are resampled linearly (edge voxels
repeat beyond the last original voxel centre) and then normalised with the checkpoint's
``hu_min``/``hu_max`` through :func:`lungvlm.clinical.hu.normalize_hu`, as training did.

Windows. The model sees ``roi_size_vox`` windows (the training crop size) through MONAI
``sliding_window_inference``. When the encoder has a context branch, each window also gets the
context crop training used: the same grid size covering ``context_scale`` times the field of
view around the window centre (voxel ``size // 2`` of the window), sampled linearly from the
normalised scan; outside the scan it is 0 (``hu_min``). Windows may be skipped (outside the
dilated lung mask, or outside the cascade's candidate region); the predictor then returns a
zero weight so skipped windows do not dilute the average of the processed ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from torch import nn

from lungvlm.clinical.hu import normalize_hu
from lungvlm.clinical.measure import measure_nodule
from lungvlm.lightning.checkpointing import CHECKPOINT_KEY, read_checkpoint
from lungvlm.lightning.module import LungVLMModule
from lungvlm.metrics.segmentation import label_components

#: Volume (mm³) of a 3 mm sphere: LUNA16 ignores findings under 3 mm (``reference/luna16.md``),
#: so smaller components are dropped by default (a project choice).
MIN_NODULE_VOLUME_MM3: float = 4.0 / 3.0 * math.pi * 1.5**3

WindowSelector = Callable[[tuple[slice, slice, slice]], bool]


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> LungVLMModule:
    """Rebuild a :class:`LungVLMModule` with a segmentation head from a ``lungvlm fit`` checkpoint.

    The checkpoint's hyper-parameters hold the LightningCLI class-path config, which
    ``LungVLMModule.load_from_checkpoint`` instantiates; ``init_from`` is cleared so no other
    checkpoint is read. The model is returned in eval mode with the checkpoint's normalisation.

    Raises:
        ValueError: the file is missing or unreadable, it is a stage-1 ('pretrain') checkpoint or
            has no segmentation head, or its hyper-parameters cannot rebuild the model.
    """
    path = Path(ckpt_path)
    try:
        checkpoint = read_checkpoint(path)
    except FileNotFoundError as err:
        raise ValueError(f"checkpoint {path} does not exist") from err
    meta = checkpoint.get(CHECKPOINT_KEY, {})
    stage = meta.get("stage", checkpoint.get("hyper_parameters", {}).get("stage"))
    if stage == "pretrain":
        raise ValueError(
            f"checkpoint {path} is a stage 'pretrain' checkpoint without a segmentation head; "
            "use a 'segment' or 'vision_language' checkpoint"
        )
    if not any(k.startswith("seg_head.") for k in checkpoint["state_dict"]):
        raise ValueError(f"checkpoint {path} has no segmentation head weights (seg_head.*)")
    if "encoder" not in checkpoint.get("hyper_parameters", {}):
        raise ValueError(
            f"checkpoint {path} has no model configuration in its hyper-parameters (it was not "
            "written by `lungvlm fit`); build the module and load its state_dict instead"
        )
    try:
        model = LungVLMModule.load_from_checkpoint(
            path, map_location=map_location, weights_only=False, init_from=None
        )
    except (TypeError, KeyError, RuntimeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} cannot rebuild the model: {err}") from err
    return model.eval()


def _check_spacing(name: str, spacing_mm: ArrayLike) -> tuple[float, float, float]:
    values = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{name}={spacing_mm!r} must be three positive (z, y, x) spacings in mm")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def grid_affine(
    spacing_mm: Sequence[float], origin_lps_mm: Sequence[float] = (0.0, 0.0, 0.0)
) -> NDArray[np.float64]:
    """4x4 affine (z, y, x, 1) index -> LPS (x, y, z, 1) mm of an identity-direction grid."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.asarray(spacing_mm, dtype=np.float64))[:, ::-1].T[:, ::-1][::-1]
    affine[:3, 3] = np.asarray(origin_lps_mm, dtype=np.float64)
    return affine


@dataclass(frozen=True)
class PreparedScan:
    """A scan resampled to the model's spacing and normalised.

    Attributes:
        image: normalised intensities in [0, 1], (z, y, x) float32 at ``spacing_mm``.
        spacing_mm: prepared (target) spacing (z, y, x) in mm.
        original_spacing_mm: spacing (z, y, x) of the scan as given (mm).
        original_shape: shape (z, y, x) of the scan as given.
        zoom: prepared / original voxel count ratio per axis, ``original_spacing / spacing``.
        affine: 4x4 (z, y, x, 1) original index -> LPS (x, y, z, 1) mm.
        normalization: the ``hu_min``/``hu_max`` used (HU).
    """

    image: NDArray[np.float32]
    spacing_mm: tuple[float, float, float]
    original_spacing_mm: tuple[float, float, float]
    original_shape: tuple[int, int, int]
    zoom: tuple[float, float, float]
    affine: NDArray[np.float64]
    normalization: dict[str, float]

    def to_original_index(self, index_zyx: ArrayLike) -> NDArray[np.float64]:
        """Prepared (z, y, x) indices (..., 3) -> original (z, y, x) indices."""
        return np.asarray(index_zyx, dtype=np.float64) / np.asarray(self.zoom)

    def to_world(self, original_index_zyx: ArrayLike) -> NDArray[np.float64]:
        """Original (z, y, x) indices (..., 3) -> LPS world (x, y, z) in mm."""
        idx = np.asarray(original_index_zyx, dtype=np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def to_prepared_grid(self, volume: ArrayLike, order: int) -> NDArray:
        """Resample an original-grid (z, y, x) array onto the prepared grid (order 0 or 1)."""
        return _resample(np.asarray(volume), self.image.shape, 1.0 / np.asarray(self.zoom), order)

    def to_original_grid(self, volume: ArrayLike, order: int) -> NDArray:
        """Resample a prepared-grid (z, y, x) array back onto the original grid (order 0 or 1)."""
        return _resample(np.asarray(volume), self.original_shape, np.asarray(self.zoom), order)


def _resample(volume: NDArray, out_shape: Sequence[int], step: ArrayLike, order: int) -> NDArray:
    """Sample ``volume`` at ``o * step`` for every output index ``o`` (edge values repeat)."""
    step = np.asarray(step, dtype=np.float64)
    if tuple(out_shape) == volume.shape and np.allclose(step, 1.0):
        return volume.copy()
    source = volume.astype(np.float32) if order > 0 else volume
    return ndimage.affine_transform(
        source, step, output_shape=tuple(int(n) for n in out_shape), order=order, mode="nearest"
    )


def prepare_scan(
    image_hu: ArrayLike,
    spacing_mm: Sequence[float],
    target_spacing_mm: float | Sequence[float] = 1.0,
    normalization: dict[str, float] | None = None,
    origin_lps_mm: Sequence[float] | None = None,
    affine: ArrayLike | None = None,
) -> PreparedScan:
    """Resample a CT (HU) to ``target_spacing_mm`` and normalise it exactly as training did.

    Args:
        image_hu: CT volume (z, y, x) in HU.
        spacing_mm: its voxel spacing (z, y, x) in mm.
        target_spacing_mm: the model's spacing, one number (isotropic) or (z, y, x), mm.
        normalization: ``{"hu_min", "hu_max"}`` (HU) from the checkpoint (``model.normalization``);
            ``None`` uses the defaults of :func:`normalize_hu`.
        origin_lps_mm: world (x, y, z) of voxel (0, 0, 0) for an identity-direction scan.
        affine: 4x4 (z, y, x, 1) -> LPS (x, y, z, 1) matrix (``CTVolume.affine_lps()``);
            overrides ``origin_lps_mm``. Neither: origin 0 and identity direction.

    Raises:
        ValueError: a non-3-D image, bad spacings, or a bad affine.
    """
    image = np.asarray(image_hu)
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"image_hu must be a non-empty 3-D (z, y, x) array; got {image.shape}")
    spacing = _check_spacing("spacing_mm", spacing_mm)
    target = np.broadcast_to(np.asarray(target_spacing_mm, dtype=np.float64), (3,))
    target = _check_spacing("target_spacing_mm", target)
    norm = {"hu_min": -1000.0, "hu_max": 400.0, **(normalization or {})}
    if affine is None:
        affine = grid_affine(spacing, origin_lps_mm if origin_lps_mm is not None else (0, 0, 0))
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix; got shape {affine.shape}")
    shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(image.shape, spacing, target))
    zoom = tuple(s / t for s, t in zip(spacing, target, strict=True))
    resampled = _resample(image.astype(np.float32), shape, 1.0 / np.asarray(zoom), order=1)
    normalized = normalize_hu(resampled, float(norm["hu_min"]), float(norm["hu_max"]))
    return PreparedScan(
        image=normalized,
        spacing_mm=target,
        original_spacing_mm=spacing,
        original_shape=tuple(int(n) for n in image.shape),  # type: ignore[arg-type]
        zoom=zoom,  # type: ignore[arg-type]
        affine=affine,
        normalization={k: float(norm[k]) for k in ("hu_min", "hu_max")},
    )
