"""PNG overlays of one nodule: axial, coronal and sagittal slices through its centre.

Each panel shows the CT in the lung window (centre -600 HU, width 1500 HU, i.e. -1350 to
150 HU), the nodule mask's contour and, if given, the grounding heatmap as a semi-transparent
colour layer. Panels are drawn in millimetres (``extent`` from ``spacing_mm``) with equal axis
scaling, so anisotropic voxels keep their true aspect ratio. Display convention (project
choice): axial panels have row 0 at the top (anterior up for a standard DICOM series);
coronal and sagittal panels put slice index 0 at the bottom, which is the feet for a series
sorted along +z (head) as ``read_dicom_series`` returns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402

LUNG_WINDOW_CENTER_HU = -600.0
LUNG_WINDOW_WIDTH_HU = 1500.0
#: Heatmap values below this fraction of the volume maximum are not drawn.
HEATMAP_FLOOR_FRACTION = 0.05
HEATMAP_ALPHA = 0.45


def _checked_inputs(image_hu, spacing_mm, mask, centroid_zyx, heatmap):
    image = np.asarray(image_hu, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image_hu must be a 3-D (z, y, x) array, got shape {image.shape}")
    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be 3 positive (z, y, x) sizes in mm, got {spacing_mm}")
    mask_arr = np.asarray(mask).astype(bool)
    if mask_arr.shape != image.shape:
        raise ValueError(f"mask has shape {mask_arr.shape}; expected image shape {image.shape}")
    centre = np.asarray(centroid_zyx, dtype=np.float64).reshape(-1)
    if centre.shape != (3,) or not np.all(np.isfinite(centre)):
        raise ValueError(f"centroid_zyx must be 3 finite (z, y, x) indices, got {centroid_zyx}")
    index = np.rint(centre).astype(int)
    if np.any(index < 0) or np.any(index >= np.asarray(image.shape)):
        raise ValueError(f"centroid_zyx={centre.tolist()} lies outside the volume {image.shape}")
    heat = None
    if heatmap is not None:
        heat = np.asarray(heatmap, dtype=np.float32)
        if heat.shape != image.shape:
            raise ValueError(f"heatmap has shape {heat.shape}; expected {image.shape}")
        peak = float(np.nanmax(heat)) if heat.size else 0.0
        heat = np.nan_to_num(heat / peak) if peak > 0 else None
    return image, spacing, mask_arr, index, heat


def _panels(image, mask, heat, index, spacing, full_index):
    """(name, image2d, mask2d, heat2d, (extent), origin) for the three orthogonal planes.

    ``index`` picks the slices of the (possibly cropped) arrays; ``full_index`` is the same
    point in the uncropped volume, used in the panel names.
    """
    k, j, i = index
    fk, fj, fi = full_index
    dz, dy, dx = spacing
    nz, ny, nx = image.shape
    pick = [
        ("Axial", np.s_[k, :, :], (0, nx * dx, ny * dy, 0), "upper", f"z={fk}"),
        ("Coronal", np.s_[:, j, :], (0, nx * dx, 0, nz * dz), "lower", f"y={fj}"),
        ("Sagittal", np.s_[:, :, i], (0, ny * dy, 0, nz * dz), "lower", f"x={fi}"),
    ]
    for name, sl, extent, origin, where in pick:
        yield (
            f"{name} ({where})",
            image[sl],
            mask[sl],
            None if heat is None else heat[sl],
            extent,
            origin,
        )


def nodule_overlay_png(
    image_hu: ArrayLike,
    spacing_mm: Sequence[float],
    mask: ArrayLike,
    centroid_zyx: Sequence[float],
    heatmap: ArrayLike | None,
    path: str | PathLike[str],
    title: str = "",
    field_of_view_mm: float | None = 80.0,
    panel_size_in: float = 4.0,
    dpi: int = 100,
) -> Path:
    """Write a 3-panel PNG (axial, coronal, sagittal) through the nodule centre.

    The figure is ``3 * panel_size_in`` by ``panel_size_in + 0.6`` inches at ``dpi``, so the
    PNG is exactly ``(round((panel_size_in + 0.6) * dpi), 3 * panel_size_in * dpi)`` pixels
    (height, width); it is not cropped.

    Args:
        image_hu: CT in HU, (z, y, x).
        spacing_mm: voxel size (z, y, x) in mm.
        mask: nodule mask, (z, y, x); non-zero is nodule. Its contour is drawn in lime.
        centroid_zyx: voxel (z, y, x) index of the nodule centre; rounded to pick the slices.
        heatmap: optional non-negative (z, y, x) grounding map, drawn after scaling by its
            maximum; values below :data:`HEATMAP_FLOOR_FRACTION` are transparent.
        path: PNG file to write (parent folders are created).
        title: figure title, e.g. "Nodule 1: solid, 7.3 mm".
        field_of_view_mm: side of the cube (mm) around the centre that the panels show,
            clipped to the volume; None shows whole slices.
        panel_size_in: height of the image area (and width of one panel) in inches.
        dpi: dots per inch.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: on shape mismatches, bad spacing, or a centre outside the volume.
    """
    image, spacing, mask_arr, index, heat = _checked_inputs(
        image_hu, spacing_mm, mask, centroid_zyx, heatmap
    )
    full_index = index
    if field_of_view_mm is not None:
        if not np.isfinite(field_of_view_mm) or field_of_view_mm <= 0:
            raise ValueError(f"field_of_view_mm={field_of_view_mm!r} must be > 0 mm or None")
        half = np.ceil(field_of_view_mm / 2.0 / spacing).astype(int)
        lo = np.maximum(index - half, 0)
        hi = np.minimum(index + half + 1, image.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        image, mask_arr = image[box], mask_arr[box]
        heat = None if heat is None else heat[box]
        index = index - lo
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    low = LUNG_WINDOW_CENTER_HU - LUNG_WINDOW_WIDTH_HU / 2.0
    high = LUNG_WINDOW_CENTER_HU + LUNG_WINDOW_WIDTH_HU / 2.0
    fig, axes = plt.subplots(1, 3, figsize=(3 * panel_size_in, panel_size_in + 0.6), dpi=dpi)
    try:
        fig.patch.set_facecolor("black")
        for ax, (name, img, msk, hmap, extent, origin) in zip(
            axes, _panels(image, mask_arr, heat, index, spacing, full_index), strict=True
        ):
            ax.imshow(img, cmap="gray", vmin=low, vmax=high, extent=extent, origin=origin,
                      interpolation="nearest", aspect="equal")  # fmt: skip
            if hmap is not None:
                shown = np.ma.masked_less(hmap, HEATMAP_FLOOR_FRACTION)
                ax.imshow(shown, cmap="inferno", vmin=0.0, vmax=1.0, alpha=HEATMAP_ALPHA,
                          extent=extent, origin=origin, interpolation="bilinear", aspect="equal")  # fmt: skip
            if msk.any() and not msk.all():
                ax.contour(msk.astype(np.float32), levels=[0.5], colors="lime", linewidths=1.0,
                           extent=extent, origin=origin)  # fmt: skip
            ax.set_title(name, color="white", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        if title:
            fig.suptitle(title, color="white", fontsize=11)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86, wspace=0.04)
        fig.savefig(path, dpi=dpi, facecolor=fig.get_facecolor())
    finally:
        plt.close(fig)
    return path
