"""Instance-level segmentation helpers: connected components of a probability map, per-nodule Dice.

Arrays are (D, H, W) = (z, y, x). Components use 26-connectivity (voxels touching by a face,
edge or corner belong to one nodule), the usual choice for 3-D nodule masks; this is a
convention, not a clinical rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from lungvlm.models.blocks import check_option

COMPONENT_SCORES = ("max", "mean")
CONNECTIVITY_26 = ndimage.generate_binary_structure(3, 3)


@dataclass(frozen=True)
class NoduleInstance:
    """One connected component of a thresholded probability map.

    Attributes:
        label: its value in the label map returned by :func:`label_components`.
        centroid_vox: unweighted mean voxel position (z, y, x).
        score: maximum or mean probability inside the component.
        num_voxels: component size in voxels.
        bbox: ``(slice_z, slice_y, slice_x)`` bounding box.
    """

    label: int
    centroid_vox: tuple[float, float, float]
    score: float
    num_voxels: int
    bbox: tuple[slice, slice, slice]


def _as_3d_numpy(name: str, array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = (
            array.detach().float().cpu().numpy()
            if array.is_floating_point()
            else array.cpu().numpy()
        )
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D (D, H, W) array; got shape {array.shape}")
    return array


def label_components(
    prob: np.ndarray | torch.Tensor,
    threshold: float = 0.5,
    min_voxels: int = 1,
    score: str = "max",
) -> tuple[np.ndarray, list[NoduleInstance]]:
    """Threshold a probability map and split it into 26-connected nodule instances.

    Args:
        prob: probabilities in [0, 1], (D, H, W).
        threshold: voxels with ``prob >= threshold`` are foreground.
        min_voxels: components with fewer voxels are dropped (removed from the label map).
        score: ``"max"`` or ``"mean"`` probability of the component.

    Returns:
        ``(labels, instances)``: an int32 (D, H, W) label map (0 = background, kept components
        numbered 1..N by decreasing score) and the instances in the same order.
    """
    check_option("score", score, COMPONENT_SCORES)
    if not isinstance(min_voxels, int) or min_voxels < 1:
        raise ValueError(f"min_voxels must be a positive int; got {min_voxels!r}")
    prob = _as_3d_numpy("prob", prob).astype(np.float64)
    raw, n = ndimage.label(prob >= threshold, structure=CONNECTIVITY_26)
    found = []
    for index, bbox in enumerate(ndimage.find_objects(raw), start=1):
        inside = raw[bbox] == index
        count = int(inside.sum())
        if count < min_voxels:
            continue
        values = prob[bbox][inside]
        coords = np.argwhere(inside).mean(axis=0) + [s.start for s in bbox]
        value = float(values.max() if score == "max" else values.mean())
        found.append((value, index, tuple(float(c) for c in coords), count, bbox))
    found.sort(key=lambda item: (-item[0], item[1]))
    lookup = np.zeros(n + 1, dtype=np.int32)  # raw component index -> kept label (0: dropped)
    instances = []
    for new_label, (value, index, centroid, count, bbox) in enumerate(found, start=1):
        lookup[index] = new_label
        instances.append(NoduleInstance(new_label, centroid, value, count, bbox))
    return lookup[raw], instances


def connected_components(
    prob: np.ndarray | torch.Tensor,
    threshold: float = 0.5,
    min_voxels: int = 1,
    score: str = "max",
) -> list[NoduleInstance]:
    """Nodule instances of a probability map, by decreasing score (see :func:`label_components`)."""
    return label_components(prob, threshold, min_voxels, score)[1]


def per_nodule_dice(
    pred_mask: np.ndarray | torch.Tensor, gt_mask: np.ndarray | torch.Tensor
) -> list[float]:
    """Dice of each reference nodule against the predicted components that overlap it.

    Each 26-connected component of ``gt_mask`` is one nodule (an integer ``gt_mask`` with
    values > 1 is taken as an instance label map instead). Its Dice is computed against the
    union of the predicted components that share at least one voxel with it, so a second,
    separate false-positive component elsewhere does not lower it; a missed nodule scores 0.

    Args:
        pred_mask: predicted binary mask (D, H, W).
        gt_mask: reference binary mask or instance label map (D, H, W).

    Returns:
        One Dice per reference nodule, in label order.
    """
    pred = _as_3d_numpy("pred_mask", pred_mask).astype(bool)
    gt = _as_3d_numpy("gt_mask", gt_mask)
    if pred.shape != gt.shape:
        raise ValueError(f"pred_mask shape {pred.shape} != gt_mask shape {gt.shape}")
    if gt.dtype != bool and gt.max(initial=0) > 1:
        gt_labels, n_gt = gt.astype(np.int64), int(gt.max())
    else:
        gt_labels, n_gt = ndimage.label(gt.astype(bool), structure=CONNECTIVITY_26)
    pred_labels, _ = ndimage.label(pred, structure=CONNECTIVITY_26)
    dices = []
    for index in range(1, n_gt + 1):
        nodule = gt_labels == index
        if not nodule.any():
            continue
        touching = np.unique(pred_labels[nodule & pred])
        matched = np.isin(pred_labels, touching[touching > 0])
        overlap = np.logical_and(matched, nodule).sum()
        dices.append(float(2.0 * overlap / (matched.sum() + nodule.sum())))
    return dices
