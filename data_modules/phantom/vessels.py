"""Tube structures of the phantom: recursive vessel and airway trees and their rasteriser.

Trees are grown in world millimetres by splitting territories: points sampled uniformly in a
lung are the leaves, and every branch serves half of its parent's points (see
:func:`territory_tree`), so vessels reach the whole lung and taper by Murray's law. Segments are tapered capsules. Wide segments are rasterised exactly (distance to the
capsule with a linear partial-volume ramp); segments thinner than a voxel are splatted as line
density (cross-section area x length) and smoothed, which gives their partial-volume occupancy.
All constants are phantom conventions, not anatomical measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from data_modules.phantom.grid import Grid


@dataclass(frozen=True)
class Segments:
    """A set of tapered capsules in world mm (LPS).

    Attributes:
        start: (N, 3) start points (x, y, z) mm.
        end: (N, 3) end points (x, y, z) mm.
        radius_start: (N,) radius at ``start`` (mm).
        radius_end: (N,) radius at ``end`` (mm).
    """

    start: NDArray[np.float64]
    end: NDArray[np.float64]
    radius_start: NDArray[np.float64]
    radius_end: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.start.shape[0])

    @staticmethod
    def concat(parts: list[Segments]) -> Segments:
        """Join several segment sets."""
        return Segments(
            np.concatenate([p.start for p in parts]).reshape(-1, 3),
            np.concatenate([p.end for p in parts]).reshape(-1, 3),
            np.concatenate([p.radius_start for p in parts]),
            np.concatenate([p.radius_end for p in parts]),
        )


def _unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def sample_inside(
    inside: Callable[[NDArray[np.float64]], NDArray[np.bool_]],
    low: NDArray[np.float64],
    high: NDArray[np.float64],
    n: int,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """``n`` points uniformly distributed in the region ``inside`` within the box [low, high]."""
    found: list[NDArray[np.float64]] = []
    count = 0
    for _ in range(50):
        cand = rng.uniform(low, high, size=(4 * n, 3))
        cand = cand[inside(cand)]
        found.append(cand)
        count += len(cand)
        if count >= n:
            break
    pts = np.concatenate(found)
    if len(pts) < n:
        raise ValueError(f"could not sample n={n} points inside the region; got {len(pts)}")
    return pts[:n]


def territory_tree(
    root: NDArray[np.float64],
    targets: NDArray[np.float64],
    leaf_radius_mm: float,
    rng: np.random.Generator,
    step: tuple[float, float] = (0.3, 0.55),
) -> Segments:
    """Grow one tree from ``root`` whose leaves end at the ``targets`` (a territory split).

    Each branch serves a set of target points: it advances a random fraction ``step`` of the
    way toward their centroid, then splits them in two by a plane across their widest spread;
    each child serves one half. Radii follow Murray's law with equal leaves,
    ``r = leaf_radius_mm * n ** (1/3)`` for a branch serving ``n`` targets, so the tree tapers
    from the hilum to the periphery and fills the region the targets sample.
    """
    starts, ends, radii = [], [], []
    stack = [(np.asarray(root, dtype=np.float64), np.arange(len(targets)))]
    while stack:
        pos, idx = stack.pop()
        n = len(idx)
        radius = leaf_radius_mm * n ** (1.0 / 3.0)
        if n == 1:
            starts.append(pos)
            ends.append(targets[idx[0]])
            radii.append(radius)
            continue
        pts = targets[idx]
        centre = pts.mean(axis=0)
        nxt = pos + (centre - pos) * rng.uniform(*step)
        starts.append(pos)
        ends.append(nxt)
        radii.append(radius)
        spread = pts.std(axis=0)
        axis = _unit(spread * (1.0 + 0.5 * rng.standard_normal(3)))
        order = np.argsort((pts - centre) @ axis)
        k = int(np.clip(round(n * rng.uniform(0.35, 0.65)), 1, n - 1))
        stack.append((nxt, idx[order[:k]]))
        stack.append((nxt, idx[order[k:]]))
    r = np.asarray(radii)
    return Segments(np.asarray(starts), np.asarray(ends), r, r * 0.93)


def _select(segs: Segments, grid: Grid, margin_mm: float) -> NDArray[np.bool_]:
    lo, hi = grid.extent_lps_mm
    rmax = np.maximum(segs.radius_start, segs.radius_end)[:, None] + margin_mm
    seg_lo = np.minimum(segs.start, segs.end) - rmax
    seg_hi = np.maximum(segs.start, segs.end) + rmax
    return np.all((seg_hi >= lo) & (seg_lo <= hi), axis=1)


def capsule_occupancy(
    grid: Grid,
    a: NDArray[np.float64],
    b: NDArray[np.float64],
    ra: float,
    rb: float,
    out: NDArray[np.float32],
) -> None:
    """Rasterise one tapered capsule into ``out`` (max-combined occupancy in [0, 1])."""
    vox = float(np.mean(grid.spacing_mm))
    rmax = max(ra, rb) + vox
    lo = grid.world_to_index(np.minimum(a, b) - rmax)
    hi = grid.world_to_index(np.maximum(a, b) + rmax)
    i0 = np.maximum(np.floor(lo).astype(int), 0)
    i1 = np.minimum(np.ceil(hi).astype(int) + 1, np.asarray(grid.shape_zyx))
    if np.any(i1 <= i0):
        return
    z, y, x = grid.axes_mm()
    z, y, x = z[i0[0] : i1[0]], y[:, i0[1] : i1[1]], x[:, :, i0[2] : i1[2]]
    ba = (b - a).astype(np.float32)
    denom = max(float(ba @ ba), 1e-9)
    px, py, pz = x - np.float32(a[0]), y - np.float32(a[1]), z - np.float32(a[2])
    h = np.clip((px * ba[0] + py * ba[1] + pz * ba[2]) / denom, 0.0, 1.0)
    dist = np.sqrt((px - h * ba[0]) ** 2 + (py - h * ba[1]) ** 2 + (pz - h * ba[2]) ** 2)
    occ = np.clip(0.5 - (dist - (ra + h * (rb - ra))) / vox, 0.0, 1.0)
    view = out[i0[0] : i1[0], i0[1] : i1[1], i0[2] : i1[2]]
    np.maximum(view, occ, out=view)


def rasterise(segs: Segments, grid: Grid, *, splat_below_vox: float = 0.8) -> NDArray[np.float32]:
    """Partial-volume occupancy (z, y, x) in [0, 1] of a set of segments on ``grid``."""
    out = np.zeros(grid.shape_zyx, dtype=np.float32)
    if len(segs) == 0:
        return out
    vox = float(min(grid.spacing_mm))
    sel = np.nonzero(_select(segs, grid, vox))[0]
    rmean = 0.5 * (segs.radius_start + segs.radius_end)
    wide = sel[rmean[sel] >= splat_below_vox * vox]
    thin = sel[rmean[sel] < splat_below_vox * vox]
    for i in wide:
        capsule_occupancy(
            grid, segs.start[i], segs.end[i], segs.radius_start[i], segs.radius_end[i], out
        )
    if len(thin):
        step = 0.5 * vox
        lengths = np.linalg.norm(segs.end[thin] - segs.start[thin], axis=1)
        counts = np.maximum(np.ceil(lengths / step).astype(int), 1)
        owner = np.repeat(np.arange(len(thin)), counts)
        frac = (
            np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 0.5
        ) / np.repeat(counts, counts)
        pts = segs.start[thin][owner] + (segs.end[thin] - segs.start[thin])[owner] * frac[:, None]
        radius = (
            segs.radius_start[thin] + (segs.radius_end[thin] - segs.radius_start[thin]) * 0.5
        )[owner]
        weight = np.pi * radius**2 * (lengths / counts)[owner] / float(np.prod(grid.spacing_mm))
        idx = np.rint(grid.world_to_index(pts)).astype(int)
        valid = np.all((idx >= 0) & (idx < np.asarray(grid.shape_zyx)), axis=1)
        density = np.zeros(grid.shape_zyx, dtype=np.float32)
        np.add.at(density, tuple(idx[valid].T), weight[valid].astype(np.float32))
        density = ndimage.gaussian_filter(density, 0.6, truncate=2.5)
        np.maximum(out, np.minimum(density, 1.0), out=out)
    return out
