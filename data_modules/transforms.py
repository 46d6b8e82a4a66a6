"""torchio augmentation of a (fine crop, context crop, mask) triple, applied consistently.

Both crops are centred at the same world point; each becomes a torchio image whose affine has
its own spacing and puts its centre at the origin, so one spatial transform (flip, small
rotation/scale/translation about the centre) moves both views and the mask together. The mask
is a ``LabelMap`` (nearest-neighbour resampling). Intensity transforms act on normalised
intensities in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torchio as tio
from torch import Tensor


def train_augmentation(
    *,
    max_rotation_deg: float = 10.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    max_translation_mm: float = 2.0,
    noise_std: float = 0.02,
    blur_std_mm: float = 0.5,
    log_gamma: float = 0.2,
) -> tio.Compose:
    """The training augmentation: RandomFlip, RandomAffine, RandomGamma, RandomBlur, RandomNoise.

    The Compose deep-copies the subject once and its transforms work on that copy
    (``copy=False``): torchio's default deep-copies it, history included, before each of the
    five, up to a quarter of a sample's augmentation time, for the same values.
    """
    return tio.Compose(
        [
            tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5, copy=False),
            tio.RandomAffine(
                scales=scale_range,
                degrees=max_rotation_deg,
                translation=max_translation_mm,
                default_pad_value="minimum",
                copy=False,
            ),
            # Gamma first: it needs non-negative intensities, which noise would break.
            tio.RandomGamma(log_gamma=(-log_gamma, log_gamma), copy=False),
            tio.RandomBlur(std=(0.0, blur_std_mm), copy=False),
            tio.RandomNoise(std=(0.0, noise_std), copy=False),
        ],
        copy=True,
    )


def _affine(spacing_mm: tuple[float, float, float], shape: tuple[int, ...]) -> np.ndarray:
    a = np.diag([*spacing_mm, 1.0])
    a[:3, 3] = -(np.asarray(shape[-3:]) - 1) / 2.0 * np.asarray(spacing_mm)
    return a


def augment(
    transform: tio.Transform,
    image: Tensor,
    context: Tensor,
    mask: Tensor,
    spacing_mm: tuple[float, float, float],
    context_spacing_mm: tuple[float, float, float],
) -> tuple[Tensor, Tensor, Tensor]:
    """Apply ``transform`` to (1, D, H, W) tensors of one sample; returns them transformed.

    The (z, y, x) arrays are handed to torchio as its (x, y, z) axes with matching spacing;
    every transform used here treats the three axes alike, so the order does not matter.
    """
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=image.float(), affine=_affine(spacing_mm, image.shape)),
        context=tio.ScalarImage(
            tensor=context.float(), affine=_affine(context_spacing_mm, context.shape)
        ),
        mask=tio.LabelMap(
            tensor=(mask > 0.5).to(torch.uint8), affine=_affine(spacing_mm, mask.shape)
        ),
    )
    out = transform(subject)
    image_out = out["image"].data.float().clamp(0.0, 1.0)
    context_out = out["context"].data.float().clamp(0.0, 1.0)
    return image_out, context_out, out["mask"].data.float()
