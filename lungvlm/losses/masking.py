"""Block masking and masked-voxel reconstruction loss for stage-1 self-supervised pretraining.

Masks are bool with ``True`` = masked (hidden from the encoder, reconstructed by the head).
Volumes are (D, H, W) = (z, y, x); batches are (B, 1, D, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lungvlm.models.blocks import check_option

RECONSTRUCTION_LOSSES = ("mse", "l1")


def _check_shape(name: str, shape: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(shape)
    if len(values) != 3 or not all(isinstance(n, int) and n >= 1 for n in values):
        raise ValueError(f"{name} must be three positive ints (z, y, x); got {shape!r}")
    return values  # type: ignore[return-value]


def block_mask(
    shape_dhw: Sequence[int],
    block_size_vox: Sequence[int] = (4, 4, 4),
    mask_ratio: float = 0.6,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mask whole cubic blocks of a volume until at least ``mask_ratio`` of it is covered.

    The volume is tiled by a grid of ``block_size_vox`` blocks whose origin is shifted by a
    random offset in ``[0, block)`` per axis (so block borders vary between calls; blocks at the
    volume's edges are clipped). Blocks are drawn in random order until the masked fraction
    reaches ``mask_ratio``; it therefore lies in ``[mask_ratio, mask_ratio + one block)``.

    Args:
        shape_dhw: volume size (D, H, W) in voxels.
        block_size_vox: block size (z, y, x) in voxels.
        mask_ratio: target masked fraction in [0, 1].
        generator: random generator for reproducible masks (on the CPU).
        device: device of the returned mask.

    Returns:
        Bool tensor (D, H, W), ``True`` where masked.
    """
    shape = _check_shape("shape_dhw", shape_dhw)
    block = _check_shape("block_size_vox", block_size_vox)
    if not 0.0 <= float(mask_ratio) <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1]; got {mask_ratio}")
    offsets = [int(torch.randint(0, b, (1,), generator=generator)) for b in block]
    # Block index of every voxel along each axis, and the number of blocks per axis.
    cell_index = [(torch.arange(n) + o) // b for n, o, b in zip(shape, offsets, block, strict=True)]
    n_cells = [int(idx[-1]) + 1 for idx in cell_index]
    # Voxels per block = product of the per-axis counts (edge blocks are clipped).
    counts = [torch.bincount(idx, minlength=m) for idx, m in zip(cell_index, n_cells, strict=True)]
    cell_voxels = counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]
    target_voxels = math.ceil(float(mask_ratio) * math.prod(shape))
    order = torch.randperm(cell_voxels.numel(), generator=generator)
    covered = torch.cumsum(cell_voxels.flatten()[order], 0)
    n_masked = int(torch.searchsorted(covered, torch.tensor(target_voxels))) + 1
    n_masked = 0 if target_voxels == 0 else n_masked
    cell_mask = torch.zeros(cell_voxels.numel(), dtype=torch.bool)
    cell_mask[order[:n_masked]] = True
    cell_mask = cell_mask.view(*n_cells)
    z, y, x = cell_index
    return cell_mask[z[:, None, None], y[None, :, None], x[None, None, :]].to(device)


def batch_block_mask(
    batch_size: int,
    shape_dhw: Sequence[int],
    block_size_vox: Sequence[int] = (4, 4, 4),
    mask_ratio: float = 0.6,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw an independent :func:`block_mask` per sample.

    Args:
        batch_size: number of samples B.
        shape_dhw: volume size (D, H, W) in voxels.
        block_size_vox: block size (z, y, x) in voxels.
        mask_ratio: target masked fraction per sample.
        generator: random generator (on the CPU).
        device: device of the returned mask.

    Returns:
        Bool tensor (B, 1, D, H, W), ``True`` where masked.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    masks = [
        block_mask(shape_dhw, block_size_vox, mask_ratio, generator) for _ in range(batch_size)
    ]
    return torch.stack(masks)[:, None].to(device)


def apply_mask(image: torch.Tensor, mask: torch.Tensor, fill_value: float = 0.0) -> torch.Tensor:
    """Replace masked voxels of ``image`` (B, C, D, H, W) by ``fill_value``.

    Args:
        image: input volume, HU-normalised.
        mask: bool, broadcastable to ``image``; ``True`` = hide.
        fill_value: value written into masked voxels (in normalised units).

    Returns:
        A new tensor; ``image`` is not modified.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor; got {mask.dtype}")
    return image.masked_fill(mask, fill_value)


def masked_reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str = "mse"
) -> torch.Tensor:
    """Mean reconstruction error over masked voxels only.

    Args:
        pred: predicted intensities (B, C, D, H, W).
        target: original intensities, same shape.
        mask: bool, broadcastable to ``pred``; ``True`` = counted.
        kind: ``"mse"`` (squared error) or ``"l1"`` (absolute error).

    Returns:
        Scalar mean error over the masked voxels (per channel); zero, still attached to the
        graph, when nothing is masked.
    """
    check_option("kind", kind, RECONSTRUCTION_LOSSES)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape; got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor; got {mask.dtype}")
    mask = mask.expand_as(pred)
    error = F.mse_loss if kind == "mse" else F.l1_loss
    per_voxel = error(pred.float(), target.float(), reduction="none")
    n_masked = mask.sum()
    if int(n_masked) == 0:
        return (pred * 0.0).sum()
    # where(), not a product, so NaN/inf predictions in unmasked voxels cannot leak in.
    return torch.where(mask, per_voxel, 0.0).sum() / n_masked
