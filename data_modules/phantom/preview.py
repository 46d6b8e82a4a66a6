"""Preview montage of a phantom case: full axial and coronal views, then an axial and a coronal
crop through each nodule in lung window with the mask contour, and the report text."""

from __future__ import annotations

import textwrap
from pathlib import Path

from data_modules.phantom.generator import PhantomCase

#: Lung window (centre, width) in HU.
LUNG_WINDOW_HU: tuple[float, float] = (-600.0, 1500.0)


def _show(ax, image, mask, aspect, title):
    c, w = LUNG_WINDOW_HU
    ax.imshow(
        image, cmap="gray", vmin=c - w / 2, vmax=c + w / 2, aspect=aspect, interpolation="bilinear"
    )
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=["#ff5a36"], linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def write_preview(case: PhantomCase, path: str | Path, *, crop_mm: float = 60.0) -> Path:
    """Write the preview PNG of ``case`` to ``path`` (atomically) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sz, sy, sx = case.spacing_mm
    n = len(case.nodules)
    fig = plt.figure(figsize=(12, 4.2 * (1 + max(1, (n + 1) // 2))))
    rows = 1 + max(1, (n + 1) // 2)
    img, lab = case.image_hu, case.nodule_labels
    k0 = int(round(case.nodules[0].centroid_voxel[0])) if n else img.shape[0] // 2
    j0 = int(round(case.nodules[0].centroid_voxel[1])) if n else img.shape[1] // 2
    _show(fig.add_subplot(rows, 4, 1), img[k0], lab[k0] > 0, 1.0, f"axial slice {k0}")
    _show(
        fig.add_subplot(rows, 4, 2), img[::-1, j0], lab[::-1, j0] > 0, sz / sx, f"coronal row {j0}"
    )
    ax = fig.add_subplot(rows, 4, (3, 4))
    ax.axis("off")
    wrapped = "\n".join(textwrap.fill(line, 70) for line in case.report_text.splitlines())
    profile = case.profile
    header = f"seed {case.seed}  {profile.manufacturer} {profile.convolution_kernel} ({profile.kernel}), {profile.kvp:.0f} kVp, {profile.exposure_mas:.0f} mAs\n"
    ax.text(0, 1, header + wrapped, va="top", fontsize=7, family="monospace")
    half = [int(crop_mm / 2 / s) for s in case.spacing_mm]
    for i, nod in enumerate(case.nodules):
        k, j, c = (int(round(v)) for v in nod.centroid_voxel)
        zs = slice(max(k - half[0], 0), k + half[0])
        ys, xs = slice(max(j - half[1], 0), j + half[1]), slice(max(c - half[2], 0), c + half[2])
        mask = lab == i + 1
        title = (
            f"#{i} {nod.kind} {nod.margin} {nod.mean_diameter_mm:.1f} mm LR {nod.lungrads_category}"
        )
        _show(
            fig.add_subplot(rows, 4, 5 + 2 * i),
            img[k, ys, xs],
            mask[k, ys, xs],
            1.0,
            title + " (axial)",
        )
        _show(
            fig.add_subplot(rows, 4, 6 + 2 * i),
            img[zs, j, xs][::-1],
            mask[zs, j, xs][::-1],
            sz / sx,
            "coronal",
        )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
