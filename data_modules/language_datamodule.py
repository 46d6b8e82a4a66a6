"""LightningDataModule of findings texts for the language stage (no images).

The texts are crop-style FINDINGS sections rendered from random one-nodule (or nodule-free)
exams by :func:`lungvlm.text.corpus.crop_findings_corpus`, the same texts stage 3's inline
language pretraining uses. A seeded permutation holds out ``val_fraction`` of them for
validation; they are never trained on. Batches are :class:`~lungvlm.types.TextBatch`; the
model tokenises them (the tokenizer is the model's, fitted in its ``setup``).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from lungvlm.text.corpus import crop_findings_corpus
from lungvlm.types import TextBatch


def collate_texts(texts: list[str]) -> TextBatch:
    """Wrap a list of texts as a :class:`~lungvlm.types.TextBatch`."""
    return TextBatch(texts=list(texts))


class LanguageDataModule(L.LightningDataModule):
    """Rendered findings texts, split into train and validation.

    Args:
        n_texts: findings sections rendered (train + validation).
        seed: seed of the rendered texts, of the split and of the training shuffle.
        val_fraction: fraction of the texts held out for validation, in [0, 1).
        batch_size: texts per batch.
        num_workers: DataLoader worker processes (0: load in the main process; the texts are
            in memory, so workers rarely help).
    """

    def __init__(
        self,
        n_texts: int = 4000,
        seed: int = 0,
        val_fraction: float = 0.1,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if n_texts < 1:
            raise ValueError(f"n_texts must be >= 1; got {n_texts}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0; got {num_workers}")
        self.save_hyperparameters()
        self.texts: dict[str, list[str]] = {}

    def setup(self, stage: str | None = None) -> None:
        """Render the texts and split them (seeded); idempotent."""
        if self.texts:
            return
        hp = self.hparams
        texts = crop_findings_corpus(hp.n_texts, hp.seed)
        order = np.random.default_rng(hp.seed).permutation(len(texts))
        n_val = int(round(hp.val_fraction * len(texts)))
        self.texts = {
            "train": [texts[i] for i in order[n_val:]],
            "val": [texts[i] for i in order[:n_val]],
        }

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        hp = self.hparams
        return DataLoader(
            self.texts[split],
            batch_size=hp.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(int(hp.seed)) if shuffle else None,
            num_workers=hp.num_workers,
            collate_fn=collate_texts,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of :class:`~lungvlm.types.TextBatch`."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches (fixed order)."""
        return self._loader("val", shuffle=False)
