"""Patient identifiers in the outputs: pseudonymous case ids, withheld paths, the prior check.

PACS exports often name a series folder (or a NIfTI/MetaImage file) after the patient, and DICOM
headers carry PatientName and PatientID. By default a report never shows any of them: its case id
is :func:`case_pseudonym`, ``case-`` and the first :data:`PSEUDONYM_HEX_DIGITS` hex digits of a
SHA-256 digest of

- the DICOM SeriesInstanceUID, for DICOM input: the same series always gets the same case id,
  whatever folder it sits in, and another series another one;
- the image content (voxel values as float32 HU, shape, spacing, origin and direction) for NIfTI,
  MetaImage and in-memory volumes, which have no UID of their own (a LUNA16 file name is a series
  UID, but a file name is a path component, so it is never used).

A digest cannot be turned back into the UID or the image; someone who holds the series can
recompute the pseudonym (that is what makes it stable), so it links, it does not anonymise.
Paths, file names and patient attributes never enter the digest.

``--keep-identifiers`` (``keep_identifiers=True``) restores the scan's file or folder name as the
case id and records the input path; :data:`KEPT` / :data:`WITHHELD` name the two modes in
``report.json`` (``source.identifiers``). The DICOM SEG and SR are not touched by any of this:
they copy the patient module of the source series (:mod:`lungvlm.export.dicom_seg`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from lungvlm.export.schema import IDENTIFIER_MODES, Source

#: Every pseudonym starts with this.
PSEUDONYM_PREFIX = "case-"
#: Hex digits of the digest kept (48 bits: collisions are unlikely below ~10^6 series).
PSEUDONYM_HEX_DIGITS = 12
#: Digest inputs are tagged so that a UID and an image can never give the same pseudonym.
_SERIES_TAG = b"lungvlm-series-uid\x00"
_CONTENT_TAG = b"lungvlm-image-content\x00"


#: ``source.identifiers`` of a report: the input path and name were withheld / kept.
WITHHELD, KEPT = IDENTIFIER_MODES


def _pseudonym(digest) -> str:
    return PSEUDONYM_PREFIX + digest.hexdigest()[:PSEUDONYM_HEX_DIGITS]


def series_pseudonym(series_uid: str) -> str:
    """The pseudonym of a DICOM series: ``case-`` + a SHA-256 prefix of its SeriesInstanceUID.

    Raises:
        ValueError: ``series_uid`` is empty.
    """
    uid = str(series_uid).strip().rstrip("\x00")  # UI values may be padded with a NUL byte
    if not uid:
        raise ValueError("series_uid is empty; expected a DICOM SeriesInstanceUID")
    return _pseudonym(hashlib.sha256(_SERIES_TAG + uid.encode("ascii", "replace")))


def content_pseudonym(volume: Any) -> str:
    """The pseudonym of an image without a UID: a SHA-256 prefix of its voxels and geometry.

    Args:
        volume: CTVolume-like (``array_hu`` (z, y, x), ``spacing_mm``, ``origin_lps_mm``,
            optional ``direction``).
    """
    array = np.ascontiguousarray(np.asarray(volume.array_hu, dtype=np.float32))
    direction = getattr(volume, "direction", None)
    geometry = np.concatenate(
        [
            np.asarray(array.shape, dtype=np.float64),
            np.asarray(volume.spacing_mm, dtype=np.float64),
            np.asarray(volume.origin_lps_mm, dtype=np.float64),
            np.asarray(np.eye(3) if direction is None else direction, dtype=np.float64).ravel(),
        ]
    )
    digest = hashlib.sha256(_CONTENT_TAG + geometry.astype("<f8").tobytes())
    digest.update(array.astype("<f4", copy=False).data)
    return _pseudonym(digest)


def case_pseudonym(volume: Any, source_format: str) -> str:
    """The default case id of a scan (module docstring).

    Args:
        volume: CTVolume-like; ``metadata["series_instance_uid"]`` is used for DICOM input.
        source_format: "dicom" uses the series UID when there is one; anything else (and a DICOM
            volume without one) the image content.
    """
    metadata = getattr(volume, "metadata", None)
    uid = metadata.get("series_instance_uid") if isinstance(metadata, Mapping) else None
    if source_format == "dicom" and uid and str(uid).strip():
        return series_pseudonym(str(uid))
    return content_pseudonym(volume)


def is_pseudonym(name: str) -> bool:
    """Whether ``name`` has the form of a pseudonym (``case-`` + 12 lowercase hex digits)."""
    hex_part = name[len(PSEUDONYM_PREFIX) :]
    return (
        name.startswith(PSEUDONYM_PREFIX)
        and len(hex_part) == PSEUDONYM_HEX_DIGITS
        and all(c in "0123456789abcdef" for c in hex_part)
    )


def report_source(
    path: str | PathLike[str] | None,
    source_format: str,
    series_uid: str | None,
    keep_identifiers: bool = False,
) -> Source:
    """The report's ``source``: the input path only with ``keep_identifiers``.

    Without it the path is null and the series UID is kept for DICOM only: a MetaImage's
    "series UID" is its file name (LUNA16 names its files so), a path component.
    """
    if keep_identifiers:
        shown = str(path) if path is not None else "<in-memory volume>"
        return Source(shown, source_format, series_uid, identifiers=KEPT)
    uid = series_uid if source_format == "dicom" else None
    return Source(None, source_format, uid, identifiers=WITHHELD)


def prior_mismatch_message(
    current_patient_id: str | None, prior_patient_id: str | None, keep_identifiers: bool = False
) -> str:
    """The warning for a prior scan of another patient; names the PatientIDs only when kept."""
    if keep_identifiers:
        return (
            f"prior scan belongs to patient {prior_patient_id!r}, the current scan to "
            f"{current_patient_id!r}: comparison skipped"
        )
    return (
        "prior scan belongs to another patient (its PatientID differs from the current scan's; "
        "--keep-identifiers shows both): comparison skipped"
    )


def withhold_path(text: str, path: str | PathLike[str], label: str) -> str:
    """``text`` with every spelling of ``path`` (as given, absolute, resolved) replaced by ``label``.

    Used for error messages that name the scan (e.g. ``scan #3`` in ``lungvlm predict``'s
    summary); a file under ``path`` keeps only its part below ``path``.
    """
    given = Path(path)
    spellings = {str(given), str(given.absolute())}
    try:
        spellings.add(str(given.resolve()))
    except (OSError, RuntimeError):
        pass
    for spelling in sorted(spellings, key=len, reverse=True):  # longest first: no partial hits
        if spelling and spelling != ".":
            text = text.replace(spelling, label)
    return text
