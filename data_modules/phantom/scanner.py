"""Scanner profiles: acquisition parameters drawn per phantom and applied as blur, slice
thickness averaging and noise.

The numbers are phantom conventions chosen to span what LIDC-IDRI holds (pixel spacing
0.461-0.977 mm, slice thickness 0.6-5.0 mm, ``reference/lidc-idri.md``); they are not a
physical scanner model. Noise falls with dose as ``1 / sqrt(mAs)`` and with slice thickness as
``1 / sqrt(thickness)``; a sharp (lung, edge-enhancing) kernel has less blur, edge overshoot and
noise of higher frequency and amplitude than a soft (standard) kernel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

#: Manufacturer strings as they appear in DICOM (0008,0070), with a model name and the vendor's
#: names of a soft and a sharp reconstruction kernel (DICOM ConvolutionKernel).
VENDORS: dict[str, tuple[str, str, str]] = {
    "SIEMENS": ("SOMATOM Definition AS", "B30f", "B70f"),
    "GE MEDICAL SYSTEMS": ("LightSpeed VCT", "STANDARD", "LUNG"),
    "Philips": ("Brilliance 64", "B", "L"),
    "TOSHIBA": ("Aquilion ONE", "FC13", "FC52"),
}
KERNELS: tuple[str, ...] = ("soft", "sharp")

#: Noise sd (HU) of a soft-kernel 1 mm slice at 100 mAs and 120 kVp (phantom convention).
NOISE_SD_REF_HU: float = 14.0
#: Gaussian PSF sigma (mm) in-plane per kernel (phantom convention).
PSF_SIGMA_MM: dict[str, float] = {"soft": 0.75, "sharp": 0.45}
#: Sharp kernel: unsharp-mask edge enhancement amount and its sigma (mm).
SHARP_ENHANCE: tuple[float, float] = (0.5, 1.2)
#: Noise amplitude factor of the sharp kernel relative to the soft one.
SHARP_NOISE_FACTOR: float = 2.2


@dataclass(frozen=True)
class ScannerProfile:
    """Acquisition parameters of one phantom scan.

    Attributes:
        manufacturer: DICOM Manufacturer string.
        model_name: DICOM ManufacturerModelName.
        kernel: "soft" or "sharp".
        convolution_kernel: the vendor's kernel name (DICOM ConvolutionKernel).
        kvp: tube voltage (kV).
        exposure_mas: tube current-time product (mAs); low-dose screening is at the low end.
        pixel_spacing_mm: in-plane spacing of the 512 x 512 reconstruction (mm).
        slice_thickness_mm: nominal reconstructed slice thickness (mm).
        slice_spacing_mm: distance between slice centres (mm), <= thickness.
        noise_sd_hu: standard deviation of the added image noise (HU).
    """

    manufacturer: str
    model_name: str
    kernel: str
    convolution_kernel: str
    kvp: float
    exposure_mas: float
    pixel_spacing_mm: float
    slice_thickness_mm: float
    slice_spacing_mm: float
    noise_sd_hu: float

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON dictionary of the profile."""
        return asdict(self)


def noise_sd_hu(kernel: str, exposure_mas: float, kvp: float, slice_thickness_mm: float) -> float:
    """Image noise sd (HU) of a scan (phantom convention, see the module docstring)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r} is not a kernel; expected one of {KERNELS}")
    if exposure_mas <= 0 or kvp <= 0 or slice_thickness_mm <= 0:
        raise ValueError(
            f"exposure_mas={exposure_mas!r}, kvp={kvp!r} and slice_thickness_mm="
            f"{slice_thickness_mm!r} must all be positive"
        )
    sd = NOISE_SD_REF_HU * np.sqrt(100.0 / exposure_mas) * (120.0 / kvp) ** 1.5
    sd /= np.sqrt(slice_thickness_mm)
    return float(sd * (SHARP_NOISE_FACTOR if kernel == "sharp" else 1.0))


@dataclass(frozen=True)
class PhantomSite:
    """What the scans and nodules of one (simulated) institution are drawn from.

    The defaults are the phantom generator's own ranges: ``PhantomSite()`` draws exactly the
    cases it always drew (same random stream, same values). A site narrows them the way real
    sites differ: the vendors it owns, how often it reconstructs with a sharp kernel, its dose
    and slice thickness, and its nodule mix (screening: many small benign nodules; referral:
    larger, more often malignant ones). It never widens them past what the generator renders.

    Attributes:
        vendors: DICOM Manufacturer strings the site scans with (keys of :data:`VENDORS`).
        sharp_kernel_prob: probability of a sharp (lung) reconstruction kernel.
        exposure_mas: (low, high) tube current-time product, mAs (log-uniform between them).
        slice_thickness_mm: (low, high) reconstructed slice thickness, mm (uniform).
        malignancy_beta: (a, b) of the Beta distribution of a procedural nodule's latent
            malignancy score, which drives its size, margin and malignancy label (default
            (1.3, 2.2); a larger ``b`` gives a screening-like mix of small benign nodules).
            LIDC-shaped nodules (``shape_source="lidc"``) keep their own sizes.
    """

    vendors: tuple[str, ...] = tuple(VENDORS)
    sharp_kernel_prob: float = 0.4
    exposure_mas: tuple[float, float] = (20.0, 200.0)
    slice_thickness_mm: tuple[float, float] = (0.6, 3.0)
    malignancy_beta: tuple[float, float] = (1.3, 2.2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "vendors", tuple(self.vendors))
        for name in ("exposure_mas", "slice_thickness_mm", "malignancy_beta"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        unknown = [v for v in self.vendors if v not in VENDORS]
        if not self.vendors or unknown:
            raise ValueError(
                f"vendors={self.vendors!r}: expected a non-empty subset of {tuple(VENDORS)}"
            )
        if not 0.0 <= self.sharp_kernel_prob <= 1.0:
            raise ValueError(f"sharp_kernel_prob={self.sharp_kernel_prob!r} must be in [0, 1]")
        lo, hi = self.exposure_mas
        if not 20.0 <= lo <= hi <= 200.0:
            raise ValueError(
                f"exposure_mas={self.exposure_mas!r} must be (low, high) within 20-200 mAs"
            )
        lo, hi = self.slice_thickness_mm
        if not 0.6 <= lo <= hi <= 3.0:
            raise ValueError(
                f"slice_thickness_mm={self.slice_thickness_mm!r} must be (low, high) within "
                "0.6-3.0 mm"
            )
        a, b = self.malignancy_beta
        if len(self.malignancy_beta) != 2 or not (a > 0 and b > 0):
            raise ValueError(f"malignancy_beta={self.malignancy_beta!r} must be two values > 0")

    @property
    def is_default(self) -> bool:
        """True when this site draws exactly what the generator draws without one."""
        return self == PhantomSite()

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON dictionary of the site (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


DEFAULT_SITE = PhantomSite()


def draw_profile(
    rng: np.random.Generator, fov_mm: float | None = None, site: PhantomSite = DEFAULT_SITE
) -> ScannerProfile:
    """Draw a scanner profile (vendor, kernel, dose, kVp, spacing, thickness).

    Args:
        rng: random generator.
        fov_mm: reconstruction field of view; the pixel spacing is ``fov_mm / 512`` (clipped
            to 0.5-0.98 mm) when given, uniform in 0.5-0.98 mm otherwise.
        site: the ranges to draw from (default: the generator's own, :class:`PhantomSite`).
            The number and order of draws does not depend on it.
    """
    manufacturer = site.vendors[int(rng.integers(len(site.vendors)))]
    model, soft_name, sharp_name = VENDORS[manufacturer]
    kernel = KERNELS[int(rng.random() < site.sharp_kernel_prob)]
    kvp = float(rng.choice([100.0, 120.0, 120.0, 140.0]))
    lo, hi = site.exposure_mas
    exposure = float(np.round(np.exp(rng.uniform(np.log(lo), np.log(hi))), 1))
    pixel = float(np.round(rng.uniform(0.5, 0.98), 3))
    if fov_mm is not None:
        pixel = float(np.round(np.clip(fov_mm / 512.0, 0.5, 0.98), 3))
    thickness = float(np.round(rng.uniform(*site.slice_thickness_mm), 2))
    spacing = float(np.round(max(0.6, thickness * rng.uniform(0.5, 1.0)), 2))
    return ScannerProfile(
        manufacturer=manufacturer,
        model_name=model,
        kernel=kernel,
        convolution_kernel=sharp_name if kernel == "sharp" else soft_name,
        kvp=kvp,
        exposure_mas=exposure,
        pixel_spacing_mm=pixel,
        slice_thickness_mm=thickness,
        slice_spacing_mm=spacing,
        noise_sd_hu=noise_sd_hu(kernel, exposure, kvp, thickness),
    )


def _thickness_weights(thickness_mm: float, spacing_z_mm: float) -> NDArray[np.float64]:
    """Box profile of width ``thickness_mm`` sampled on the z grid, fractional end weights."""
    width = thickness_mm / spacing_z_mm
    half = width / 2.0
    n = int(np.ceil(half - 0.5))
    offsets = np.arange(-n, n + 1, dtype=np.float64)
    weights = np.clip(np.minimum(offsets + 0.5, half) - np.maximum(offsets - 0.5, -half), 0, 1)
    return weights / weights.sum()


def correlated_noise(
    shape_zyx: tuple[int, ...],
    spacing_mm: tuple[float, float, float],
    kernel: str,
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """Unit-sd noise with the in-plane texture of ``kernel`` (smooth: soft; grainy: sharp)."""
    white = rng.standard_normal(shape_zyx, dtype=np.float32)
    sigma_vox = [0.0, 0.6 / spacing_mm[1] + 0.35, 0.6 / spacing_mm[2] + 0.35]
    smooth = ndimage.gaussian_filter(white, sigma_vox, mode="wrap")
    noise = smooth if kernel == "soft" else white - 0.7 * smooth
    sub = noise.ravel()[:: max(1, noise.size // 200_000)]
    return (noise / max(float(sub.std()), 1e-6)).astype(np.float32)


def apply_profile(
    image_hu: NDArray[np.floating],
    spacing_mm: tuple[float, float, float],
    profile: ScannerProfile,
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """Image an ideal phantom with a scanner: PSF blur, slice thickness averaging, noise.

    Args:
        image_hu: ideal (noise-free) volume (z, y, x) in HU.
        spacing_mm: grid spacing (z, y, x) in mm.
        profile: the scanner.
        rng: random generator for the noise.

    Returns:
        The scanned volume in HU, float32.
    """
    image = np.asarray(image_hu, dtype=np.float32)
    psf = PSF_SIGMA_MM[profile.kernel]
    # At least half a voxel: the ideal phantom has hard edges that a real scan would
    # partial-volume average.
    sigma_vox = [0.0, max(psf / spacing_mm[1], 0.5), max(psf / spacing_mm[2], 0.5)]
    out = ndimage.gaussian_filter(image, sigma_vox, truncate=3.0) if max(sigma_vox) > 0.2 else image
    if profile.kernel == "sharp":
        amount, sigma_mm = SHARP_ENHANCE
        wide = ndimage.gaussian_filter(
            out, [0.0, sigma_mm / spacing_mm[1], sigma_mm / spacing_mm[2]]
        )
        out = out + amount * (out - wide)
    if profile.slice_thickness_mm > spacing_mm[0] * 1.05:
        weights = _thickness_weights(profile.slice_thickness_mm, spacing_mm[0])
        out = ndimage.convolve1d(out, weights, axis=0, mode="nearest")
    noise = correlated_noise(out.shape, spacing_mm, profile.kernel, rng)
    return (out + profile.noise_sd_hu * noise).astype(np.float32)
