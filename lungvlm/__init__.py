"""LungVLM: explainable lung-nodule segmentation, risk and grounded reports from chest CT.

The Python API is :class:`LungVLM` (``from lungvlm import LungVLM``; see :mod:`lungvlm.api`).
It is imported on first use, so ``import lungvlm`` (and ``lungvlm --help``) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LungVLM", "__version__"]

if TYPE_CHECKING:
    from lungvlm.api import LungVLM


def __getattr__(name: str) -> Any:
    if name == "LungVLM":
        from lungvlm.api import LungVLM

        return LungVLM
    raise AttributeError(f"module 'lungvlm' has no attribute {name!r}")
