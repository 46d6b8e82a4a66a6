"""Voxel grids in DICOM patient coordinates (LPS, mm) for the phantom renderer.

Every phantom structure is defined analytically in world millimetres, so the same scene can be
rendered on a whole-chest grid or on a small nodule-centred patch. A :class:`Grid` maps voxel
indices (z, y, x) to LPS world coordinates with an identity direction: +x toward the patient's
left, +y posterior, +z toward the head (``reference/dicom-ct.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid.

    Attributes:
        shape_zyx: number of voxels (z, y, x).
        spacing_mm: voxel spacing (z, y, x) in mm.
        origin_lps_mm: world position (x, y, z) in mm of the centre of voxel (0, 0, 0).
    """

    shape_zyx: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.shape_zyx) != 3 or min(self.shape_zyx) < 1:
            raise ValueError(f"shape_zyx={self.shape_zyx!r} must be three positive integers")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm={self.spacing_mm!r} must be three positive mm values")

    @classmethod
    def centred(
        cls,
        centre_lps_mm: tuple[float, float, float] | NDArray[np.floating],
        shape_zyx: tuple[int, int, int],
        spacing_mm: tuple[float, float, float],
    ) -> Grid:
        """A grid whose geometric centre lies at ``centre_lps_mm`` (x, y, z)."""
        cx, cy, cz = (float(v) for v in centre_lps_mm)
        nz, ny, nx = shape_zyx
        sz, sy, sx = spacing_mm
        origin = (cx - (nx - 1) / 2 * sx, cy - (ny - 1) / 2 * sy, cz - (nz - 1) / 2 * sz)
        return cls(tuple(int(n) for n in shape_zyx), tuple(float(s) for s in spacing_mm), origin)

    def axes_mm(self) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """World coordinates of voxel centres as broadcastable arrays.

        Returns:
            ``(z, y, x)`` in mm with shapes (Z, 1, 1), (1, Y, 1) and (1, 1, X).
        """
        nz, ny, nx = self.shape_zyx
        sz, sy, sx = self.spacing_mm
        ox, oy, oz = self.origin_lps_mm
        z = (oz + sz * np.arange(nz, dtype=np.float64)).astype(np.float32)
        y = (oy + sy * np.arange(ny, dtype=np.float64)).astype(np.float32)
        x = (ox + sx * np.arange(nx, dtype=np.float64)).astype(np.float32)
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def index_to_world(self, index_zyx: NDArray[np.floating]) -> NDArray[np.float64]:
        """Map voxel indices (..., 3) in (z, y, x) order to world points (..., 3) in (x, y, z)."""
        idx = np.asarray(index_zyx, dtype=np.float64)
        spacing = np.asarray(self.spacing_mm[::-1])
        return np.asarray(self.origin_lps_mm) + idx[..., ::-1] * spacing

    def world_to_index(self, point_lps_mm: NDArray[np.floating]) -> NDArray[np.float64]:
        """Map world points (..., 3) in (x, y, z) to fractional voxel indices (..., 3) (z, y, x)."""
        p = np.asarray(point_lps_mm, dtype=np.float64)
        spacing = np.asarray(self.spacing_mm[::-1])
        return ((p - np.asarray(self.origin_lps_mm)) / spacing)[..., ::-1]

    @property
    def extent_lps_mm(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """World (x, y, z) of the first and last voxel centres."""
        last = np.asarray(self.shape_zyx, dtype=np.float64) - 1
        return self.index_to_world(np.zeros(3)), self.index_to_world(last)
