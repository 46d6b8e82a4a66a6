"""Several DataModules' data as one: the centralised baseline of a federation.

``lungvlm federate --centralised`` trains on the sites' pooled data
(:func:`lungvlm.federated.simulation.train_centralised`), the upper bound a federation is
compared with.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import ConcatDataset

from data_modules.loaders import LungBatchLoadersMixin


class PooledDataModule(LungBatchLoadersMixin, L.LightningDataModule):
    """The sites' data in one place: the centralised baseline of a federation.

    Each split is the concatenation of the sites' splits; batches come from the shared
    loaders with the first site's ``batch_size``, ``num_workers`` and ``seed``.

    Args:
        sites: the sites' data modules (each with ``datasets`` after ``setup``).
    """

    def __init__(self, sites: list[L.LightningDataModule]) -> None:
        super().__init__()
        if not sites:
            raise ValueError("PooledDataModule needs at least one site")
        self.sites = list(sites)
        first = self.sites[0].hparams
        self.save_hyperparameters(
            {
                "batch_size": int(first.batch_size),
                "seed": int(first.seed),
                "num_workers": int(first.num_workers),
                "persistent_workers": bool(first.get("persistent_workers", False)),
                "n_sites": len(self.sites),
            }
        )
        self.datasets: dict[str, ConcatDataset] = {}
        self.normalization = getattr(self.sites[0], "normalization", None)

    def setup(self, stage: str | None = None) -> None:
        """Set up every site and join their splits."""
        for dm in self.sites:
            dm.setup(stage)
        for split in ("train", "val", "test"):
            parts = [dm.datasets[split] for dm in self.sites if split in dm.datasets]
            if parts:
                self.datasets[split] = ConcatDataset(parts)

    def set_epoch(self, epoch: int) -> None:
        """Advance every site's training augmentation (as a single site's does)."""
        for dm in self.sites:
            if hasattr(dm, "set_epoch"):
                dm.set_epoch(epoch)
