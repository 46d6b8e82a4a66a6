"""Find the cases of an LIDC-IDRI, LUNA16 or DICOM tree, and say what was not used and why.

:func:`discover` returns the cases to preprocess together with

- ``problems``: files or folders that should have given a case but cannot (an unreadable XML,
  an XML whose series is absent, a CT series without XML, one series in two LUNA16 subsets);
  :mod:`data_modules.preprocess` lists them in ``failures.json`` like failed cases;
- ``warnings``: counted, logged notes about data that is not used (CSV rows of series that are
  not under the root, ``.mhd`` files outside ``subset0..9``, non-CT folders, a second XML of a
  series).

:func:`no_case_message` words the error for a tree that gives no case at all: what was searched
for, where, what was found, and the nearest miss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from data_modules.io import (
    DataError,
    TreeProblem,
    fold_of_subset_folder,
    list_series,
    read_annotations_csv,
    read_candidates_csv,
    scan_lidc_tree,
)
from data_modules.io.lidc_tree import nearest

FORMATS = ("lidc", "luna16", "dicom")
_EXAMPLES = 3  # paths quoted in a warning


@dataclass(frozen=True)
class CaseTask:
    """One case to preprocess (picklable, sent to worker processes).

    Attributes:
        case_id: cache folder name (the SeriesInstanceUID).
        format: one of :data:`FORMATS`.
        source: the series folder (LIDC, DICOM) or the ``.mhd`` file (LUNA16).
        xml_path: the LIDC read message; ``ignored_xml`` lists further XML files of the series.
        annotations: LUNA16 rows (x, y, z, diameter) in world mm.
        annotation_rows: (csv path, 1-based line) of each of ``annotations``, for errors.
        candidates: LUNA16 candidate rows (x, y, z, class).
        fold: LUNA16 subset index, None elsewhere.
    """

    case_id: str
    format: str
    source: str
    xml_path: str | None = None
    ignored_xml: tuple[str, ...] = ()
    annotations: tuple[tuple[float, float, float, float], ...] = ()
    annotation_rows: tuple[tuple[str, int], ...] = ()
    candidates: tuple[tuple[float, float, float, int], ...] = ()
    fold: int | None = None


@dataclass
class Discovery:
    """Cases of a source tree plus what was left out (module docstring).

    Attributes:
        tasks: the cases, sorted by case id.
        problems: files or folders that give no case, each naming the file and the reason.
        warnings: counted notes on unused data, one line each.
        searched: what was looked for (for the "no case found" message).
        found: what was seen instead (counts).
    """

    tasks: list[CaseTask] = field(default_factory=list)
    problems: list[TreeProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    searched: str = ""
    found: str = ""
    misses: list[str] = field(default_factory=list)


def _examples(paths: list) -> str:
    shown = ", ".join(str(p) for p in paths[:_EXAMPLES])
    return shown + (f" and {len(paths) - _EXAMPLES} more" if len(paths) > _EXAMPLES else "")


def discover(fmt: str, src: str | PathLike[str]) -> Discovery:
    """List the cases of a source tree and what could not be used.

    Args:
        fmt: "lidc" (series folders paired with their XML by SeriesInstanceUID), "luna16"
            (``subset*/<uid>.mhd`` with ``annotations.csv`` / ``candidates_V2.csv`` found
            anywhere under ``src``) or "dicom" (every series in every folder).
        src: the data root.

    Raises:
        ValueError: an unknown format or a missing ``src``.
        CSVFormatError: a LUNA16 CSV with a missing column or a bad row (names file and row).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"source folder {src} does not exist or is not a folder")
    if fmt == "lidc":
        return _discover_lidc(src)
    if fmt == "dicom":
        return _discover_dicom(src)
    return _discover_luna16(src)


def discover_cases(fmt: str, src: str | PathLike[str]) -> list[CaseTask]:
    """The cases of :func:`discover`, sorted by case id (problems and warnings dropped)."""
    return discover(fmt, src).tasks


def no_case_message(fmt: str, src: str | PathLike[str], found: Discovery) -> str:
    """The error for a tree without a single case: what, where, what instead, nearest miss."""
    misses = [p.error for p in found.problems] + found.misses
    miss = f"; nearest miss: {misses[0]}" if misses else ""
    more = f" (and {len(misses) - 1} more problem(s))" if len(misses) > 1 else ""
    return (
        f"no {fmt} case found under {src}: searched for {found.searched}; {found.found}{miss}{more}"
    )


def _discover_lidc(src: Path) -> Discovery:
    tree = scan_lidc_tree(src)
    out = Discovery(problems=list(tree.problems))
    out.searched = (
        "CT series folders (DICOM, Modality CT) paired by SeriesInstanceUid with an LIDC "
        "read-message XML (*.xml)"
    )
    out.found = f"found {tree.n_xml} *.xml file(s) and {len(tree.ct_folders)} CT series folder(s)"
    if tree.non_ct_folders:
        out.warnings.append(
            f"skipped {len(tree.non_ct_folders)} non-CT series folder(s) and "
            f"{len(tree.non_ct_xml)} XML file(s) of them: {_examples(tree.non_ct_folders)}"
        )
        out.misses += [f"{f}: its series is not CT" for f in tree.non_ct_folders]
    by_uid: dict[str, list[tuple[Path, Path]]] = {}
    for folder, xml in tree.pairs:
        uid = next(u for u, f in tree.ct_folders.items() if f == folder)
        by_uid.setdefault(uid, []).append((folder, xml))
    for uid, pairs in sorted(by_uid.items()):
        # A series with several XML files (a resubmitted read): the first by path is used and
        # the others are recorded in case.json (project choice; the files do not say which wins).
        folder, xml = pairs[0]
        ignored = tuple(str(x) for _, x in pairs[1:])
        if ignored:
            out.warnings.append(f"series {uid}: using {xml}, ignoring {_examples(list(ignored))}")
        out.tasks.append(CaseTask(uid, "lidc", str(folder), str(xml), ignored))
    return out


def _discover_dicom(src: Path) -> Discovery:
    out = Discovery(searched="DICOM series (files with the DICM marker) in any folder")
    folders = sorted({p.parent for p in src.rglob("*") if p.is_file()})
    for folder in folders:
        try:
            uids = list_series(folder)
        except DataError as err:
            if any(p.suffix.lower() == ".dcm" for p in folder.iterdir()):
                out.problems.append(
                    TreeProblem(folder, str(folder), f"{type(err).__name__}: {err}")
                )
            continue  # a folder without DICOM images
        out.tasks.extend(CaseTask(uid, "dicom", str(folder)) for uid in uids)
    out.tasks.sort(key=lambda t: t.case_id)
    out.found = f"found {len(folders)} folder(s) holding files, none with a DICOM series"
    return out


def _read_rows(
    src: Path, name: str, reader, where=None
) -> tuple[dict[str, list[tuple]], dict, int]:
    """Rows of every ``name`` CSV under ``src`` by series; exact repeats across files dropped.

    ``where``, when given, collects (path, line) per series in the order of the rows.
    """
    rows: dict[str, list[tuple]] = {}
    first_at: dict[str, str] = {}
    seen: set[tuple] = set()
    repeats = 0
    for path in sorted(src.rglob(name)):
        for row in reader(path):
            value = (*row.xyz_mm, getattr(row, "diameter_mm", getattr(row, "label", None)))
            key = (row.seriesuid, *value)
            if key in seen:
                repeats += 1  # the same row in a second copy of the file
                continue
            seen.add(key)
            rows.setdefault(row.seriesuid, []).append(value)
            if where is not None:
                where.setdefault(row.seriesuid, []).append((str(path), row.row_number))
            first_at.setdefault(row.seriesuid, f"{path} row {row.row_number}")
    return rows, first_at, repeats


def _discover_luna16(src: Path) -> Discovery:
    out = Discovery(searched="subset0..subset9/<seriesuid>.mhd")
    rows_at: dict[str, list[tuple[str, int]]] = {}
    annotations, ann_at, ann_repeats = _read_rows(
        src, "annotations.csv", read_annotations_csv, rows_at
    )
    candidates, cand_at, cand_repeats = _read_rows(src, "candidates_V2.csv", read_candidates_csv)
    outside, by_uid = [], {}
    mhds = sorted(src.rglob("*.mhd"))
    for mhd in mhds:
        try:
            fold: int | None = fold_of_subset_folder(mhd.parent)
        except ValueError as err:
            outside.append(mhd)  # e.g. seg-lungs-LUNA16 masks
            out.misses.append(f"{mhd}: {err}")
            continue
        by_uid.setdefault(mhd.stem, []).append((mhd, fold))
    for uid, found in sorted(by_uid.items()):
        if len(found) > 1:
            where = ", ".join(str(m) for m, _ in found)
            error = f"DataError: series {uid} appears {len(found)} times: {where}"
            out.problems.append(TreeProblem(found[0][0], uid, error))
            continue
        mhd, fold = found[0]
        out.tasks.append(
            CaseTask(
                uid,
                "luna16",
                str(mhd),
                annotations=tuple(annotations.get(uid, [])),  # type: ignore[arg-type]
                annotation_rows=tuple(rows_at.get(uid, [])),
                candidates=tuple(candidates.get(uid, [])),  # type: ignore[arg-type]
                fold=fold,
            )
        )
    out.found = f"found {len(mhds)} .mhd file(s), {len(outside)} outside a subsetN folder"
    _luna16_warnings(out, src, outside, by_uid, annotations, ann_at, ann_repeats + cand_repeats)
    unmatched = sorted(set(candidates) - set(by_uid))
    if unmatched:
        out.warnings.append(
            f"{sum(len(candidates[u]) for u in unmatched)} candidates_V2.csv row(s) of "
            f"{len(unmatched)} series without a scan under {src} were not used "
            f"(first: {cand_at[unmatched[0]]})"
        )
    return out


def _luna16_warnings(out, src, outside, by_uid, annotations, ann_at, repeats) -> None:
    if outside and out.tasks:
        out.warnings.append(
            f"{len(outside)} .mhd file(s) outside subset0..subset9 were not read (e.g. "
            f"seg-lungs-LUNA16 masks): {_examples(outside)}"
        )
    if not ann_at and out.tasks:
        out.warnings.append(
            f"no annotations.csv under {src}: every LUNA16 case gets an empty nodule list"
        )
    unmatched = sorted(set(annotations) - set(by_uid))
    if unmatched:
        hint = nearest(unmatched[0], list(by_uid))
        out.warnings.append(
            f"{sum(len(annotations[u]) for u in unmatched)} annotations.csv row(s) of "
            f"{len(unmatched)} series without a scan under {src} were not used (first: "
            f"{ann_at[unmatched[0]]}, series {unmatched[0]}"
            + (f"; nearest scan: {hint})" if hint else ")")
        )
    if repeats:
        out.warnings.append(
            f"{repeats} CSV row(s) repeated in a second copy of a file were ignored"
        )
