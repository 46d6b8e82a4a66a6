"""LightningDataModule of LUNA16 nodule crops read from a preprocessed cache.

Build the cache once with ``lungvlm preprocess luna16 --src <LUNA16> --dst <cache>``. The ten
``subset0..9`` folders are the folds (``reference/luna16.md``): ``fold`` is held out for
validation, ``test_fold`` for testing (default: the same subset, as in 10-fold
cross-validation), the other subsets train. LUNA16 files carry no patient id, so the cache uses
the series UID; a patient whose series fall in several subsets (possible only with a real
patient map) goes wholly to the held-out split of any of its series. Labels: nodule centres and
diameters only; a segmentation target is present only when the cache was built with
``--luna16-mask sphere``; malignancy, concepts, Lung-RADS and growth are absent (masked).
"""

from __future__ import annotations

from typing import Any

from data_modules.cached_dataset import CachedDataModuleBase
from data_modules.io import LUNA16_SUBSETS


class LUNA16DataModule(CachedDataModuleBase):
    """LUNA16 nodule crops with subset-based folds.

    Args:
        data_root: cache folder written by ``lungvlm preprocess luna16``.
        fold: LUNA16 subset (0-9) held out for validation.
        test_fold: subset held out for testing; None uses ``fold``.
        crop_size_vox: edge of the cubic fine crop (voxels at the cache spacing).
        context_scale: the context crop covers this many times the fine crop's field of view.
        positive_fraction: fraction of samples centred on a nodule (the rest on nodule-free lung).
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        persistent_workers: keep workers alive between epochs (needs num_workers > 0).
        seed: seed of the crop sampling and augmentation.
        augment: apply the torchio augmentation to training samples.
        label_fraction: fraction of training samples whose labels are present (semi-supervised).
        jitter_mm: maximum offset of a positive crop's centre from its nodule, per axis (mm).
        malignancy_rule: rule for reader ratings (unused by LUNA16 caches, kept for symmetry).
    """

    data_format = "luna16"

    def __init__(
        self,
        data_root: str = "data/cache/luna16",
        fold: int = 0,
        test_fold: int | None = None,
        crop_size_vox: int = 32,
        context_scale: float = 2.0,
        positive_fraction: float = 0.8,
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
        for name, value in (("fold", fold), ("test_fold", test_fold)):
            if value is not None and not 0 <= value < LUNA16_SUBSETS:
                raise ValueError(f"{name}={value} must be a LUNA16 subset 0..{LUNA16_SUBSETS - 1}")
        self.save_hyperparameters()
        self._check_args()

    def split_cases(self, cases: list[dict[str, Any]]) -> dict[str, list[int]]:
        """Indices per split from each case's subset (``case["fold"]``), kept patient-disjoint."""
        hp = self.hparams
        test_fold = hp.fold if hp.test_fold is None else hp.test_fold
        held: dict[str, str] = {}  # patient -> held-out split; test first, then val
        for split, fold in (("test", test_fold), ("val", hp.fold)):
            for case in cases:
                if case["fold"] == fold and not (split == "test" and fold == hp.fold):
                    held.setdefault(str(case["patient_id"]), split)
        out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for index, case in enumerate(cases):
            split = held.get(str(case["patient_id"]), "train")
            out[split].append(index)
            if split == "val" and test_fold == hp.fold:
                out["test"].append(index)  # cross-validation: evaluate on the held-out fold
        return out
