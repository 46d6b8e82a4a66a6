"""LightningDataModule of LIDC-IDRI nodule crops read from a preprocessed cache.

Build the cache once with ``lungvlm preprocess lidc --src <LIDC-IDRI> --dst <cache>``
(:mod:`data_modules.preprocess`). Splits are by patient (LIDC holds a few patients with two CT
series, ``reference/lidc-idri.md``): seeded, a patient's series all in one split. Samples are
:class:`~lungvlm.types.NoduleSample` like the phantom DataModule's, with segmentation,
malignancy and concept labels; Lung-RADS, growth and report text are absent (masked).
"""

from __future__ import annotations

from data_modules.cached_dataset import CachedDataModuleBase


class LIDCDataModule(CachedDataModuleBase):
    """LIDC-IDRI nodule crops with four-reader consensus masks and ratings.

    Args:
        data_root: cache folder written by ``lungvlm preprocess lidc``.
        crop_size_vox: edge of the cubic fine crop (voxels at the cache spacing).
        context_scale: the context crop covers this many times the fine crop's field of view.
        positive_fraction: fraction of samples centred on a nodule (the rest on nodule-free lung).
        val_fraction: fraction of patients in the validation split.
        test_fraction: fraction of patients in the test split.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        persistent_workers: keep workers alive between epochs (needs num_workers > 0).
        seed: seed of the patient split, crop sampling and augmentation.
        augment: apply the torchio augmentation to training samples.
        label_fraction: fraction of training samples whose labels are present (semi-supervised).
        jitter_mm: maximum offset of a positive crop's centre from its nodule, per axis (mm).
        malignancy_rule: how reader malignancy ratings become a binary label ("mean_gt3",
            "mean_le2_ge4" or "median_high").
    """

    data_format = "lidc"

    def __init__(
        self,
        data_root: str = "data/cache/lidc",
        crop_size_vox: int = 32,
        context_scale: float = 2.0,
        positive_fraction: float = 0.8,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 8,
        num_workers: int = 0,
        persistent_workers: bool = False,
        seed: int = 0,
        augment: bool = True,
        label_fraction: float = 1.0,
        jitter_mm: float = 3.0,
        malignancy_rule: str = "mean_gt3",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_args()
