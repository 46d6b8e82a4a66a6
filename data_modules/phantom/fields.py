"""World-anchored smooth random fields (parenchymal texture, emphysema clusters).

Lattice values are a hash of (seed, integer lattice coordinates), so any two grids that view the
same world region see the same field: a fine nodule crop and its wider context crop share one
texture. Values are interpolated with cubic B-spline weights normalised to unit variance.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from data_modules.phantom.grid import Grid

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix(v: NDArray[np.uint64]) -> NDArray[np.uint64]:
    with np.errstate(over="ignore"):
        v = v + np.uint64(0x9E3779B97F4A7C15)
        v = (v ^ (v >> np.uint64(30))) * _M1
        v = (v ^ (v >> np.uint64(27))) * _M2
        return v ^ (v >> np.uint64(31))


def lattice_normal(
    seed: int, iz: NDArray[np.int64], iy: NDArray[np.int64], ix: NDArray[np.int64]
) -> NDArray[np.float32]:
    """Standard-normal values at integer lattice points (broadcasting), a pure hash of inputs."""
    with np.errstate(over="ignore"):
        key = _splitmix(np.uint64(seed & 0xFFFFFFFF) + np.uint64(0x1234567))
        h = _splitmix(key ^ (iz.astype(np.uint64) * np.uint64(0x9E3779B1)))
        h = _splitmix(h ^ (iy.astype(np.uint64) * np.uint64(0x85EBCA77)))
        h = _splitmix(h ^ (ix.astype(np.uint64) * np.uint64(0xC2B2AE3D)))
    u1 = ((h >> np.uint64(40)).astype(np.float64) + 0.5) / float(1 << 24)
    u2 = ((h & np.uint64(0xFFFFFF)).astype(np.float64) + 0.5) / float(1 << 24)
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


def _bspline3(t: NDArray[np.float64]) -> NDArray[np.float64]:
    a = np.abs(t)
    return np.where(a < 1, (4 - 6 * a**2 + 3 * a**3) / 6, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


def _axis_weights(
    coords_mm: NDArray[np.float64], lattice_mm: float
) -> tuple[NDArray[np.float32], int]:
    pos = coords_mm / lattice_mm
    first = int(np.floor(pos.min())) - 2
    last = int(np.ceil(pos.max())) + 2
    nodes = np.arange(first, last + 1)
    w = _bspline3(pos[:, None] - nodes[None, :])
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return w.astype(np.float32), first


def smooth_field(grid: Grid, seed: int, lattice_mm: float) -> NDArray[np.float32]:
    """Unit-variance smooth random field (z, y, x) on ``grid``, correlation length ~``lattice_mm``."""
    z, y, x = (a.ravel().astype(np.float64) for a in grid.axes_mm())
    wz, fz = _axis_weights(z, lattice_mm)
    wy, fy = _axis_weights(y, lattice_mm)
    wx, fx = _axis_weights(x, lattice_mm)
    iz = np.arange(wz.shape[1])[:, None, None] + fz
    iy = np.arange(wy.shape[1])[None, :, None] + fy
    ix = np.arange(wx.shape[1])[None, None, :] + fx
    values = lattice_normal(seed, iz, iy, ix)
    if np.prod(grid.shape_zyx) > 2_000_000:  # whole chests: BLAS contractions
        out = np.tensordot(values, wx, axes=([2], [1]))  # (Lz, Ly, X)
        out = np.einsum("yl,zlx->zyx", wy, out, optimize=True)  # (Lz, Y, X)
        out = np.tensordot(wz, out, axes=([1], [0]))  # (Z, Y, X)
    else:  # crops: plain einsum loops; multi-threaded BLAS made these small products ~5x slower
        out = np.einsum("zyl,xl->zyx", values, wx)
        out = np.einsum("yl,zlx->zyx", wy, out)
        out = np.einsum("zl,lyx->zyx", wz, out)
    return np.ascontiguousarray(out, dtype=np.float32)
