"""Walk an LIDC-IDRI download: pair CT series folders with their XML, and say what did not pair.

Folders are paired with XML files by SeriesInstanceUID only (``reference/lidc-idri.md``, "Folder
layout": never parse folder names). Everything that does not pair is reported, so no case
vanishes without a word:

- an XML that cannot be parsed, or is not a read message (no ``SeriesInstanceUid``);
- an XML whose series is in no folder under the root;
- a CT series folder that no XML names;
- a folder of ``.dcm`` files none of which can be read.

Non-CT series (the chest radiographs of some LIDC patients) and their XML files are counted,
not reported: they are not CT cases.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from data_modules.io.dicom_series import read_first_header
from data_modules.io.errors import AnnotationError, DataError
from data_modules.io.lidc_xml import read_header_uids


@dataclass(frozen=True)
class TreeProblem:
    """One file or folder of a source tree that yields no case, and why.

    Attributes:
        path: the file or folder at fault.
        case: the series UID when known, else the path relative to the root.
        error: ``"<ErrorType>: <message naming the file and the problem>"``.
    """

    path: Path
    case: str
    error: str


@dataclass
class LIDCTree:
    """What :func:`scan_lidc_tree` found.

    Attributes:
        pairs: (series_folder, xml_path) pairs, sorted by folder then XML path.
        problems: files and folders that yield no case (module docstring).
        n_xml: ``*.xml`` files seen.
        ct_folders: series UID -> CT series folder, for every CT folder seen.
        non_ct_folders: folders whose first DICOM is not CT (e.g. radiographs).
        non_ct_xml: XML files naming a non-CT series.
        unreadable_xml: XML files that cannot be parsed or are not read messages.
    """

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    problems: list[TreeProblem] = field(default_factory=list)
    n_xml: int = 0
    ct_folders: dict[str, Path] = field(default_factory=dict)
    non_ct_folders: list[Path] = field(default_factory=list)
    non_ct_xml: list[Path] = field(default_factory=list)
    unreadable_xml: list[Path] = field(default_factory=list)


def nearest(name: str, candidates: list[str]) -> str | None:
    """The candidate most similar to ``name`` (difflib ratio), or None when there is none."""
    if not candidates:
        return None
    return max(candidates, key=lambda c: difflib.SequenceMatcher(None, name, c).ratio())


def scan_lidc_tree(root: str | PathLike[str]) -> LIDCTree:
    """Pair the CT series folders under ``root`` with their LIDC XML, listing what did not pair.

    The series UID of a folder comes from its first readable DICOM file (by name), as pylidc
    does; that of an XML from its ``ResponseHeader``. A series with two XML files (a
    resubmitted read) appears in two pairs.

    Raises:
        DataError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"LIDC root {root} does not exist or is not a folder", root)
    tree = LIDCTree()
    xml_by_uid: dict[str, list[Path]] = {}
    for xml_path in sorted(p for p in root.rglob("*.xml") if p.is_file()):
        tree.n_xml += 1
        try:
            uid, _ = read_header_uids(xml_path)
        except AnnotationError as err:
            tree.problems.append(_problem(root, xml_path, None, err))
            tree.unreadable_xml.append(xml_path)
            continue
        xml_by_uid.setdefault(uid, []).append(xml_path)
    non_ct_uids: set[str] = set()
    for folder in sorted({p.parent for p in root.rglob("*") if p.is_file()}):
        header = read_first_header(folder)
        if header is None:
            n_dcm = sum(1 for p in folder.iterdir() if p.suffix.lower() == ".dcm")
            if n_dcm:
                err = DataError(f"{folder}: none of its {n_dcm} .dcm files can be read", folder)
                tree.problems.append(_problem(root, folder, None, err))
            continue
        uid = str(header.get("SeriesInstanceUID", "") or "")
        if not uid:  # pydicom reads garbage after the DICM marker leniently
            err = DataError(
                f"{folder}: its first DICOM file has no SeriesInstanceUID (corrupt or truncated?)",
                folder,
            )
            tree.problems.append(_problem(root, folder, None, err))
            continue
        if str(header.get("Modality", "")).upper() != "CT":
            tree.non_ct_folders.append(folder)
            non_ct_uids.add(uid)
            continue
        tree.ct_folders.setdefault(uid, folder)
        tree.pairs.extend((folder, xml) for xml in xml_by_uid.get(uid, []))
    _unpaired(root, tree, xml_by_uid, non_ct_uids)
    tree.pairs.sort()
    # XML problems first: an unreadable XML is usually why a CT folder has none.
    tree.problems.sort(key=lambda p: (p.path.suffix.lower() != ".xml", str(p.path)))
    return tree


def _unpaired(root: Path, tree: LIDCTree, xml_by_uid: dict[str, list[Path]], non_ct: set[str]):
    """Add a problem for every XML without a folder and every CT folder without an XML."""
    unpaired_folders = [uid for uid in tree.ct_folders if uid not in xml_by_uid]
    for uid, paths in xml_by_uid.items():
        if uid in tree.ct_folders:
            continue
        if uid in non_ct:
            tree.non_ct_xml.extend(paths)
            continue
        miss = nearest(uid, unpaired_folders)
        hint = (
            f"; nearest CT series: {miss} in {tree.ct_folders[miss]}"
            if miss
            else "; no CT series folder is left unpaired"
        )
        for path in paths:
            err = AnnotationError(
                f"{path}: names SeriesInstanceUid {uid}, which no DICOM series folder under "
                f"{root} holds{hint}",
                path,
            )
            tree.problems.append(_problem(root, path, uid, err))
    orphan_xml = [uid for uid in xml_by_uid if uid not in tree.ct_folders and uid not in non_ct]
    for uid in unpaired_folders:
        folder = tree.ct_folders[uid]
        miss = nearest(uid, orphan_xml)
        hint = (
            f"; nearest XML series: {miss} in {xml_by_uid[miss][0]}"
            if miss
            else f"; {tree.n_xml} *.xml file(s) searched"
        )
        if tree.unreadable_xml:
            hint += (
                f"; {len(tree.unreadable_xml)} *.xml file(s) cannot be read (first: "
                f"{tree.unreadable_xml[0]})"
            )
        err = AnnotationError(
            f"{folder}: CT series {uid} has no LIDC XML under {root} (read messages are "
            f"paired by SeriesInstanceUid){hint}",
            folder,
        )
        tree.problems.append(_problem(root, folder, uid, err))


def _problem(root: Path, path: Path, uid: str | None, err: DataError) -> TreeProblem:
    try:
        name = str(path.relative_to(root))
    except ValueError:
        name = str(path)
    return TreeProblem(path, uid or name, f"{type(err).__name__}: {err}")


def find_lidc_series(root: str | PathLike[str]) -> list[tuple[Path, Path]]:
    """The (series_folder, xml_path) pairs of :func:`scan_lidc_tree` (its problems dropped).

    Callers that must not lose a case silently use :func:`scan_lidc_tree` and report its
    ``problems``; this shorthand is for trees known to be complete (tests, phantoms).
    """
    return scan_lidc_tree(root).pairs
