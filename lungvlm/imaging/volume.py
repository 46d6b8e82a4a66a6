"""The CT volume every reader returns: HU voxels in (z, y, x) plus ITK-style LPS geometry.

Geometry follows ITK/SimpleITK (luna16.md, "World <-> voxel"):
``world_xyz = origin + D @ diag(sx, sy, sz) @ (i, j, k)`` where (i, j, k) = (x, y, z) index
(column, row, slice). ``direction`` D holds, in its columns, the world (LPS) unit vectors of the
index axes x, y and z. For a DICOM series that is the row cosines, the column cosines and the
slice normal (dicom-ct.md, "Sorting slices" step 5). The array itself is indexed ``[k, j, i]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray


def _as_triplet(value: ArrayLike, name: str) -> tuple[float, float, float]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be 3 finite numbers, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def affine_lps(
    spacing_mm: ArrayLike,
    origin_lps_mm: ArrayLike = (0.0, 0.0, 0.0),
    direction: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """The 4x4 matrix taking a homogeneous **(z, y, x, 1)** index to **(x, y, z, 1)** LPS mm.

    Args:
        spacing_mm: voxel size (z, y, x) in mm.
        origin_lps_mm: world (x, y, z) position of voxel (0, 0, 0) in mm.
        direction: (3, 3) ITK direction (columns = LPS unit vectors of index axes x, y, z);
            None is the identity.

    The index is in array order (k, j, i), the output in world order (x, y, z): this is the ITK
    matrix ``D @ diag(spacing)`` with its columns reversed to match the array order.
    """
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = d[:, ::-1] * np.asarray(spacing_mm, dtype=np.float64)[None, :]
    affine[:3, 3] = np.asarray(origin_lps_mm, dtype=np.float64)
    return affine


@dataclass(eq=False)
class CTVolume:
    """A CT volume in Hounsfield units with its patient-space (LPS) geometry.

    Attributes:
        array_hu: HU values, shape (z, y, x), float32. float32 holds every integer HU value
            exactly (up to 2**24) and cannot overflow when slope/intercept are applied, which is
            why it is used instead of int16 (dicom-ct.md: "cast ... first to avoid overflow").
        spacing_mm: voxel size (z, y, x) in mm; z is the distance between slice centres.
        origin_lps_mm: world (x, y, z) LPS position in mm of the centre of voxel (0, 0, 0).
        direction: (3, 3) float64; column c is the LPS unit vector of index axis c, with the
            columns in ITK order (x, y, z), i.e. NOT in the array's (z, y, x) order.
        metadata: free-form facts about the source (see each reader for its keys).
    """

    array_hu: NDArray[np.float32]
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    direction: NDArray[np.float64] = field(default_factory=lambda: np.eye(3))
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array_hu)
        if arr.ndim != 3 or min(arr.shape) < 1:
            raise ValueError(f"array_hu must be a non-empty 3-D (z, y, x) array, got {arr.shape}")
        self.array_hu = arr.astype(np.float32, copy=False)
        self.spacing_mm = _as_triplet(self.spacing_mm, "spacing_mm")
        if min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be positive (z, y, x) in mm, got {self.spacing_mm}")
        self.origin_lps_mm = _as_triplet(self.origin_lps_mm, "origin_lps_mm")
        d = np.asarray(self.direction, dtype=np.float64)
        if d.shape == (9,):
            d = d.reshape(3, 3)
        if d.shape != (3, 3) or not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ValueError(f"direction must be an orthonormal 3x3 matrix, got {d.tolist()}")
        self.direction = d

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x) in voxels."""
        return tuple(int(s) for s in self.array_hu.shape)  # type: ignore[return-value]

    def affine_lps(self) -> NDArray[np.float64]:
        """The 4x4 matrix taking a homogeneous **(z, y, x, 1)** index to **(x, y, z, 1)** LPS mm.

        The index is in array order (k, j, i) so ``affine_lps() @ [k, j, i, 1]`` is the world
        position of ``array_hu[k, j, i]``; the output is in world order (x, y, z). This is the
        ITK matrix ``D @ diag(spacing)`` with its columns reversed to match the array order.
        """
        return affine_lps(self.spacing_mm, self.origin_lps_mm, self.direction)

    def voxel_to_world(self, zyx: ArrayLike) -> NDArray[np.float64]:
        """Continuous (z, y, x) voxel indices, shape (..., 3) -> LPS world (x, y, z) in mm."""
        idx = np.asarray(zyx, dtype=np.float64)
        if idx.shape[-1:] != (3,):
            raise ValueError(f"zyx must have a last axis of size 3, got shape {idx.shape}")
        a = self.affine_lps()
        return idx @ a[:3, :3].T + a[:3, 3]

    def world_to_voxel(self, xyz: ArrayLike) -> NDArray[np.float64]:
        """LPS world (x, y, z) in mm, shape (..., 3) -> continuous (z, y, x) voxel indices.

        Not rounded: voxel (k, j, i) covers indices within +-0.5 of its integer position.
        """
        pts = np.asarray(xyz, dtype=np.float64)
        if pts.shape[-1:] != (3,):
            raise ValueError(f"xyz must have a last axis of size 3, got shape {pts.shape}")
        a = self.affine_lps()
        return np.linalg.solve(a[:3, :3], (pts - a[:3, 3]).reshape(-1, 3).T).T.reshape(pts.shape)

    def contains_index(self, zyx: ArrayLike) -> NDArray[np.bool_]:
        """Whether continuous (z, y, x) indices (..., 3) fall inside the volume's voxels."""
        idx = np.asarray(zyx, dtype=np.float64)
        upper = np.asarray(self.shape, dtype=np.float64) - 0.5
        return np.all((idx >= -0.5) & (idx <= upper), axis=-1)

    def to_sitk(self) -> sitk.Image:
        """The volume as a float32 SimpleITK image with the same spacing, origin and direction."""
        image = sitk.GetImageFromArray(self.array_hu)
        image.SetSpacing(self.spacing_mm[::-1])
        image.SetOrigin(self.origin_lps_mm)
        image.SetDirection(tuple(self.direction.reshape(-1)))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, metadata: dict[str, Any] | None = None) -> CTVolume:
        """Build a volume from a 3-D scalar SimpleITK image; voxel values are cast to float32.

        Args:
            image: 3-D single-component image; its values are taken to be HU.
            metadata: stored as ``metadata`` (copied).

        Raises:
            ValueError: if the image is not 3-D or has several components per voxel.
        """
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(
                f"image must be 3-D scalar, got dimension {image.GetDimension()} with "
                f"{image.GetNumberOfComponentsPerPixel()} components"
            )
        return cls(
            array_hu=sitk.GetArrayFromImage(image).astype(np.float32, copy=False),
            spacing_mm=image.GetSpacing()[::-1],
            origin_lps_mm=image.GetOrigin(),
            direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
            metadata=dict(metadata or {}),
        )
