"""Keep Lightning's output to what a user needs: no advertisement lines on every run."""

from __future__ import annotations

import logging


class _NoAdvertisements(logging.Filter):
    """Drops Lightning's "Tip: try installing ..." lines (printed on every Trainer start)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: " not in str(record.getMessage())


def quiet_lightning_tips() -> None:
    """Install :class:`_NoAdvertisements` on Lightning's rank-zero logger (once)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvertisements) for f in logger.filters):
        logger.addFilter(_NoAdvertisements())
