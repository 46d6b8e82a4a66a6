"""DataLoaders shared by every LungVLM DataModule (one copy, not one per data set)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from lungvlm.types import LungBatch, collate_samples


class LungBatchLoadersMixin:
    """Train/val/test DataLoaders of :class:`~lungvlm.types.LungBatch` for a DataModule.

    The DataModule provides ``self.datasets`` (split name -> Dataset), ``setup()`` and the
    hyper-parameters ``batch_size``, ``seed``, ``num_workers`` and ``persistent_workers``.
    Training batches are shuffled with a generator seeded by ``seed``.
    """

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        hp = self.hparams
        return DataLoader(
            self.datasets[split],
            batch_size=hp.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(int(hp.seed)) if shuffle else None,
            num_workers=hp.num_workers,
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
            collate_fn=collate_samples,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of :class:`~lungvlm.types.LungBatch`."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches (fixed order)."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches (fixed order)."""
        return self._loader("test", shuffle=False)

    def transfer_batch_to_device(
        self, batch: LungBatch, device: torch.device, dataloader_idx: int
    ) -> LungBatch:
        """Move a :class:`~lungvlm.types.LungBatch` with its own ``to``."""
        return batch.to(device)
