"""Synthetic chest CT phantoms with nodules, labels and reports (the built-in data set).

Public API:

- :class:`PhantomConfig`, :class:`PhantomCase`, :func:`generate_case`,
  :func:`generate_follow_up` (whole chests, :mod:`.generator`);
- :func:`make_nodule_sample` (fast nodule-centred crops, :mod:`.patch`);
- :class:`ScannerProfile` and :class:`PhantomSite` (a site's scanners and nodule mix, :mod:`.scanner`), :class:`NoduleSpec` (:mod:`.nodules`),
  :class:`NoduleLabels` (:mod:`.labels`), :class:`LidcShapeBank` (:mod:`.lidc_shapes`).
"""

from data_modules.phantom.generator import (
    PhantomCase,
    PhantomConfig,
    generate_case,
    generate_follow_up,
)
from data_modules.phantom.labels import NoduleLabels
from data_modules.phantom.lidc_shapes import LidcShapeBank
from data_modules.phantom.nodules import NoduleSpec
from data_modules.phantom.patch import make_nodule_sample
from data_modules.phantom.scanner import PhantomSite, ScannerProfile

__all__ = [
    "LidcShapeBank",
    "NoduleLabels",
    "NoduleSpec",
    "PhantomCase",
    "PhantomConfig",
    "PhantomSite",
    "ScannerProfile",
    "generate_case",
    "generate_follow_up",
    "make_nodule_sample",
]
