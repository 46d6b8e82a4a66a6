"""Bad-input corpus for annotation inputs (issue 16, parts 2 and 6): LIDC XML trees, LUNA16
CSVs and trees, config files, CLI arguments of ``preprocess`` / ``fit``, stale temp folders.

Each case builds a small broken input, runs ``lungvlm`` in-process and asserts the exit code,
that the output names the file and the problem, that nothing raised (no traceback), and that
nothing half-written is left (no ``dst`` after an error; no ``.tmp-*`` and only complete case
folders after a run).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from data_modules.cache import CASE_FILES
from data_modules.phantom.generator import PhantomConfig, generate_case
from data_modules.phantom.writers import write_lidc_tree, write_luna16_tree
from tests.cli_helpers import assert_clear_error, run_cli

TINY = PhantomConfig.tiny(shape_zyx=(24, 40, 40), z_extent_mm=160.0, with_report=False)
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """One good LIDC tree (two series) and one good LUNA16 tree (one scan), copied per case."""
    root = tmp_path_factory.mktemp("pristine")
    for seed in (0, 1):
        write_lidc_tree(generate_case(seed, TINY), root / "lidc")
    write_luna16_tree(generate_case(0, TINY), root / "luna16", subset=0)
    return {"lidc": root / "lidc", "luna16": root / "luna16"}


@dataclass
class Case:
    """A corpus entry: ``build(tmp, trees)`` makes the input and returns (argv, file named)."""

    name: str
    build: Callable[[Path, dict[str, Path]], tuple[list[str], str]]
    code: int
    problem: str  # regex the output must match


def _copy(trees: dict[str, Path], fmt: str, tmp: Path) -> Path:
    return Path(shutil.copytree(trees[fmt], tmp / fmt))


def _xmls(src: Path) -> list[Path]:
    return sorted(src.rglob("*.xml"))


def _pre(fmt: str, src: Path, tmp: Path, *extra: str) -> list[str]:
    return ["preprocess", fmt, "--src", str(src), "--dst", str(tmp / "cache"), "--spacing", "4",
            "--no-progress", *extra]  # fmt: skip


def _edit(path: Path, pattern: str, repl: str, count: int = 0) -> None:
    text, n = re.subn(pattern, repl, path.read_text(), count=count)
    assert n, f"{pattern} not in {path}"
    path.write_text(text)


def _reader1(path: Path, pattern: str, repl: str) -> None:
    """Apply an edit inside the first readingSession only."""
    head, sep, rest = path.read_text().partition("<readingSession>")
    first, sep2, tail = rest.partition("</readingSession>")
    first, n = re.subn(pattern, repl, first)
    assert n, pattern
    path.write_text(head + sep + first + sep2 + tail)


# ------------------------------------------------------------------ LIDC builders
def lidc_one_xml_unparsable(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    bad = _xmls(src)[1]
    bad.write_text("<LidcReadMessage><ResponseHeader>")
    return _pre("lidc", src, tmp), str(bad)


def lidc_only_xml_unparsable(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    for x in _xmls(src):
        x.write_text("<broken")
    return _pre("lidc", src, tmp), str(_xmls(src)[0])


def lidc_xml_empty(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    for x in _xmls(src):
        x.write_bytes(b"")
    return _pre("lidc", src, tmp), str(_xmls(src)[0])


def lidc_xml_not_read_message(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    for x in _xmls(src):
        x.write_text("<html><body>download failed</body></html>")
    return _pre("lidc", src, tmp), str(_xmls(src)[0])


def lidc_xml_without_series_uid(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    for x in _xmls(src):
        _edit(x, r"<SeriesInstanceUid>[^<]*</SeriesInstanceUid>", "")
    return _pre("lidc", src, tmp), str(_xmls(src)[0])


def lidc_xml_unknown_series(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    for x in _xmls(src):
        _edit(x, r"<SeriesInstanceUid>([^<]*)</SeriesInstanceUid>", r"<SeriesInstanceUid>\g<1>9</SeriesInstanceUid>")  # fmt: skip
    return _pre("lidc", src, tmp), str(_xmls(src)[0])


def lidc_series_without_xml(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    folders = [x.parent for x in _xmls(src)]
    _xmls(src)[0].unlink()
    return _pre("lidc", src, tmp), str(folders[0])


def lidc_roi_matches_no_slice(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    xml = _xmls(src)[0]
    _reader1(xml, r"<imageSOP_UID>[^<]*</imageSOP_UID>", "<imageSOP_UID>9.9.9</imageSOP_UID>")
    _reader1(xml, r"<imageZposition>[^<]*</imageZposition>", "<imageZposition>5000</imageZposition>")  # fmt: skip
    return _pre("lidc", src, tmp), str(xml)


def lidc_roi_unknown_sop_placed_by_z(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    xml = _xmls(src)[0]
    _reader1(xml, r"<imageSOP_UID>[^<]*</imageSOP_UID>", "<imageSOP_UID>9.9.9</imageSOP_UID>")
    return _pre("lidc", src, tmp), str(xml)


def lidc_incomplete_ratings(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    xml = _xmls(src)[0]
    _reader1(xml, r"<malignancy>\d</malignancy>", "")
    return _pre("lidc", src, tmp), str(xml)


def lidc_malignancy_out_of_range(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    xml = _xmls(src)[0]
    _reader1(xml, r"<malignancy>\d</malignancy>", "<malignancy>9</malignancy>")
    return _pre("lidc", src, tmp), str(xml)


def lidc_non_numeric_coordinate(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    xml = _xmls(src)[0]
    _edit(xml, r"<xCoord>\d+</xCoord>", "<xCoord>abc</xCoord>", count=1)
    return _pre("lidc", src, tmp), str(xml)


def lidc_unreadable_dicom_folder(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    folder = _xmls(src)[0].parent
    for dcm in folder.glob("*.dcm"):
        dcm.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 20)  # marker, then garbage
    return _pre("lidc", src, tmp), str(folder)


def lidc_src_missing(tmp, trees):
    return _pre("lidc", tmp / "nowhere", tmp), str(tmp / "nowhere")


def lidc_src_is_a_file(tmp, trees):
    (tmp / "file.xml").write_text("<x/>")
    return _pre("lidc", tmp / "file.xml", tmp), str(tmp / "file.xml")


# ------------------------------------------------------------------ LUNA16 builders
def _csv(src: Path, name: str = "annotations.csv") -> Path:
    return src / name


def luna_no_subset_folder(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    (src / "subset0").rename(src / "scans")
    return _pre("luna16", src, tmp), str(next((src / "scans").glob("*.mhd")))


def luna_mhd_spacing_50_mm(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    mhd = next((src / "subset0").glob("*.mhd"))
    _edit(mhd, r"ElementSpacing = (\S+) (\S+) \S+", r"ElementSpacing = \1 \2 50", count=1)
    return _pre("luna16", src, tmp), mhd.name


def luna_subset10(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    (src / "subset0").rename(src / "subset10")
    return _pre("luna16", src, tmp), str(next((src / "subset10").glob("*.mhd")))


def luna_csv_missing_column(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    _edit(_csv(src), "diameter_mm", "diameter", count=1)
    return _pre("luna16", src, tmp), str(_csv(src))


def luna_csv_bad_number(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    lines = _csv(src).read_text().splitlines()
    lines[1] = ",".join(lines[1].split(",")[:1] + ["12,5mm"] + lines[1].split(",")[2:])
    _csv(src).write_text("\n".join(lines) + "\n")
    return _pre("luna16", src, tmp), str(_csv(src))


def luna_csv_gzipped(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    _csv(src).write_bytes(gzip.compress(_csv(src).read_bytes()))  # a .csv.gz renamed .csv
    return _pre("luna16", src, tmp), str(_csv(src))


def luna_csv_not_utf8(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    _csv(src).write_bytes(_csv(src).read_bytes() + "1.2.3.caf\u00e9,1,2,3,4\n".encode("latin-1"))
    return _pre("luna16", src, tmp), str(_csv(src))


def luna_csv_negative_diameter(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    _edit(_csv(src), r",([0-9.]+)\n", r",-\g<1>\n", count=1)
    return _pre("luna16", src, tmp), str(_csv(src))


def luna_csv_empty_seriesuid(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    with open(_csv(src), "a") as fh:
        fh.write(",1,2,3,4\n")
    return _pre("luna16", src, tmp), str(_csv(src))


def luna_annotation_of_missing_series(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    with open(_csv(src), "a") as fh:
        fh.write("1.2.3.404,1,2,3,4\n")
    return _pre("luna16", src, tmp), str(_csv(src))


def luna_point_outside_image(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    uid = next((src / "subset0").glob("*.mhd")).stem
    with open(_csv(src), "a") as fh:
        fh.write(f"{uid},9000,2,3,4\n")
    return _pre("luna16", src, tmp), str(_csv(src))


def luna_raw_truncated(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    raw = next((src / "subset0").glob("*.raw"))
    raw.write_bytes(raw.read_bytes()[:1000])
    return _pre("luna16", src, tmp), str(raw)


def luna_series_in_two_subsets(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    shutil.copytree(src / "subset0", src / "subset3")
    return _pre("luna16", src, tmp), str(next((src / "subset0").glob("*.mhd")))


def luna_without_annotations_csv(tmp, trees):
    src = _copy(trees, "luna16", tmp)
    _csv(src).unlink()
    return _pre("luna16", src, tmp), str(src)


# ------------------------------------------------------------------ CLI / configs / temp
def cli_workers_zero(tmp, trees):
    return _pre("lidc", trees["lidc"], tmp, "--workers", "0"), "--workers"


def cli_spacing_negative(tmp, trees):
    return _pre("lidc", trees["lidc"], tmp, "--spacing", "-1"), "--spacing"


def cli_unknown_format(tmp, trees):
    return _pre("nifti", trees["lidc"], tmp), "format"


def cli_cache_built_with_other_settings(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    for x in _xmls(src)[1:]:
        x.unlink()
    (tmp / "cache").mkdir()
    (tmp / "cache" / "cache.json").write_text(json.dumps({"spacing_mm": 2.0}))
    return _pre("lidc", src, tmp), str(tmp / "cache")


def fit_config_missing(tmp, trees):
    return ["fit", "--config", str(tmp / "missing.yaml")], str(tmp / "missing.yaml")


def fit_config_malformed(tmp, trees):
    bad = tmp / "broken.yaml"
    bad.write_text("trainer: [1, 2\n")
    return ["fit", "--config", str(EXPERIMENTS / "base.yaml"), "--config", str(bad)], str(bad)


def fit_ckpt_corrupt(tmp, trees):
    bad = tmp / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    args = ["fit", "--config", str(EXPERIMENTS / "base.yaml"), f"--ckpt_path={bad}"]
    return args, str(bad)


def stale_temp_of_dead_writer(tmp, trees):
    src = _copy(trees, "lidc", tmp)
    for x in _xmls(src)[1:]:
        x.unlink()
        shutil.rmtree(x.parent)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp / "cache" / f".tmp-somecase-{dead.pid}"
    stale.mkdir(parents=True)
    (stale / "image.npy").write_bytes(b"half")
    return _pre("lidc", src, tmp), str(stale)


CORPUS = [
    Case("lidc_one_xml_unparsable", lidc_one_xml_unparsable, 1, r"cannot parse LIDC XML"),
    Case(
        "lidc_only_xml_unparsable", lidc_only_xml_unparsable, 2, r"no lidc case found.*cannot parse"
    ),  # fmt: skip
    Case("lidc_xml_empty", lidc_xml_empty, 2, r"no element found"),
    Case(
        "lidc_xml_not_read_message",
        lidc_xml_not_read_message,
        2,
        r"root <html>.*not an LIDC read message",
    ),  # fmt: skip
    Case(
        "lidc_xml_without_series_uid", lidc_xml_without_series_uid, 2, r"has no SeriesInstanceUid"
    ),  # fmt: skip
    Case(
        "lidc_xml_unknown_series",
        lidc_xml_unknown_series,
        2,
        r"which no DICOM series folder.*nearest CT series",
    ),  # fmt: skip
    Case("lidc_series_without_xml", lidc_series_without_xml, 1, r"has no LIDC XML"),
    Case(
        "lidc_roi_matches_no_slice",
        lidc_roi_matches_no_slice,
        1,
        r"9\.9\.9 at z 5000.* matches no slice",
    ),  # fmt: skip
    Case(
        "lidc_roi_unknown_sop_placed_by_z",
        lidc_roi_unknown_sop_placed_by_z,
        0,
        r"SOPInstanceUID not in the series.*'9\.9\.9'.*imageZposition",
    ),  # fmt: skip
    Case(
        "lidc_incomplete_ratings",
        lidc_incomplete_ratings,
        0,
        r"reader 1 nodule .* incomplete ratings",
    ),  # fmt: skip
    Case(
        "lidc_malignancy_out_of_range",
        lidc_malignancy_out_of_range,
        1,
        r"malignancy 9 is outside 1\.\.5",
    ),  # fmt: skip
    Case(
        "lidc_non_numeric_coordinate",
        lidc_non_numeric_coordinate,
        1,
        r"<xCoord> is 'abc', expected a number",
    ),  # fmt: skip
    Case(
        "lidc_unreadable_dicom_folder",
        lidc_unreadable_dicom_folder,
        1,
        r"no SeriesInstanceUID",
    ),  # fmt: skip
    Case("lidc_src_missing", lidc_src_missing, 2, r"does not exist or is not a folder"),
    Case("lidc_src_is_a_file", lidc_src_is_a_file, 2, r"does not exist or is not a folder"),
    Case(
        "luna_no_subset_folder",
        luna_no_subset_folder,
        2,
        r"no luna16 case.*subset0\.\.subset9/<seriesuid>\.mhd.*got 'scans'",
    ),  # fmt: skip
    Case("luna_subset10", luna_subset10, 2, r"got 'subset10'"),
    Case(
        "luna_csv_missing_column",
        luna_csv_missing_column,
        2,
        r"lacks column\(s\) \['diameter_mm'\]",
    ),  # fmt: skip
    Case("luna_csv_bad_number", luna_csv_bad_number, 2, r"row 2: cannot parse"),
    Case("luna_csv_gzipped", luna_csv_gzipped, 2, r"is not UTF-8 text"),
    Case("luna_csv_not_utf8", luna_csv_not_utf8, 2, r"is not UTF-8 text"),
    Case(
        "luna_csv_negative_diameter",
        luna_csv_negative_diameter,
        2,
        r"row 2: diameter_mm -[0-9.]+ must be > 0",
    ),  # fmt: skip
    Case("luna_csv_empty_seriesuid", luna_csv_empty_seriesuid, 2, r"row \d+: empty seriesuid"),
    Case(
        "luna_annotation_of_missing_series",
        luna_annotation_of_missing_series,
        0,
        r"1 annotations.csv row\(s\) of 1 series without a scan.*row \d+, series 1\.2\.3\.404",
    ),  # fmt: skip
    Case(
        "luna_point_outside_image",
        luna_point_outside_image,
        1,
        r"row \d+: series .* outside the image",
    ),  # fmt: skip
    Case("luna_raw_truncated", luna_raw_truncated, 1, r"holds 1000 bytes .* truncated"),
    Case("luna_series_in_two_subsets", luna_series_in_two_subsets, 2, r"appears 2 times"),
    Case(
        "luna_without_annotations_csv",
        luna_without_annotations_csv,
        0,
        r"no annotations.csv under .*empty nodule list",
    ),  # fmt: skip
    Case(
        "cli_workers_zero",
        cli_workers_zero,
        2,
        r"argument --workers: expected an integer >= 1, got 0",
    ),  # fmt: skip
    Case(
        "cli_spacing_negative",
        cli_spacing_negative,
        2,
        r"argument --spacing: expected a finite size in mm > 0",
    ),  # fmt: skip
    Case(
        "luna_mhd_spacing_50_mm",
        luna_mhd_spacing_50_mm,
        1,
        r"z spacing 50 mm is outside the plausible CT range 0.1-20 mm",
    ),  # fmt: skip
    Case("cli_unknown_format", cli_unknown_format, 2, r"invalid choice: 'nifti'"),
    Case(
        "cli_cache_built_with_other_settings",
        cli_cache_built_with_other_settings,
        2,
        r"was built with",
    ),  # fmt: skip
    Case("fit_config_missing", fit_config_missing, 2, r"--config .*: the file does not exist"),
    Case("fit_config_malformed", fit_config_malformed, 2, r"not valid YAML \(line 2, column 1\)"),
    Case("fit_ckpt_corrupt", fit_ckpt_corrupt, 2, r"--ckpt_path: checkpoint .* is not readable"),
    Case(
        "stale_temp_of_dead_writer",
        stale_temp_of_dead_writer,
        0,
        r"removed .*\.tmp-somecase-\d+, left by a killed run",
    ),  # fmt: skip
]


def first_message_line(text: str) -> str:
    """The first line that says something (skips argparse usage lines)."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("usage", " "))]
    return lines[0] if lines else ""


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_bad_input_corpus(case: Case, pristine, tmp_path: Path, capsys):
    argv, named = case.build(tmp_path, pristine)
    code, output = run_cli(argv, capsys)
    assert_clear_error(code, output, case.code, named, case.problem)
    dst = tmp_path / "cache"
    if argv[0] == "preprocess" and dst.is_dir():
        leftovers = [p.name for p in dst.iterdir() if p.name.startswith(".tmp-")]
        assert leftovers == []
        for folder in (p for p in dst.iterdir() if p.is_dir()):
            assert all((folder / f).is_file() for f in CASE_FILES), folder
        if code == 1:  # every failure is listed, naming its file
            failures = json.loads((dst / "failures.json").read_text())
            assert failures and all(f["source"] and f["error"] for f in failures)
    elif (
        argv[0] == "preprocess" and code == 2 and case.name != "cli_cache_built_with_other_settings"
    ):
        assert not dst.exists()  # an error before any case: nothing created
    print(f"| {case.name} | {code} | {first_message_line(output)[:150]} |", file=sys.__stdout__)


def test_one_unreadable_xml_keeps_the_other_case_and_lists_both_problems(
    pristine, tmp_path: Path, capsys
):
    """The issue's case: '1 written, 0 failed' with a case gone becomes 1 written, 2 failed."""
    argv, bad = lidc_one_xml_unparsable(tmp_path, pristine)
    code, output = run_cli(argv, capsys)
    assert code == 1 and "1 written, 0 already cached, 2 failed" in output
    failures = json.loads((tmp_path / "cache" / "failures.json").read_text())
    by_source = {f["source"]: f["error"] for f in failures}
    assert sorted(by_source) == [str(Path(bad).parent), bad]
    assert "cannot parse LIDC XML" in by_source[bad]
    assert (
        "has no LIDC XML" in by_source[str(Path(bad).parent)]
        and bad in by_source[str(Path(bad).parent)]
    )


def test_counted_reading_problems_land_in_case_json(pristine, tmp_path: Path, capsys):
    argv, xml = lidc_incomplete_ratings(tmp_path, pristine)
    text = Path(xml).read_text()
    later_readers = text.split("<readingSession>")[2:]  # readers 2..4 keep their ratings
    n_rois = sum(session.count("<roi>") for session in later_readers)
    _edit(Path(xml), r"<imageSOP_UID>[^<]*</imageSOP_UID>", "<imageSOP_UID>1.2</imageSOP_UID>")
    code, output = run_cli(argv, capsys)
    assert code == 0 and "2 warning(s)" in output
    cases = [p for p in (tmp_path / "cache").iterdir() if (p / "case.json").is_file()]
    infos = [json.loads((p / "case.json").read_text()) for p in cases]
    edited = next(i for i in infos if xml in i["source_files"])
    assert edited["lidc"]["incomplete_ratings"] == 1
    assert edited["lidc"]["annotations_ge3mm"] == 3  # 4 readers, 1 without malignancy
    assert n_rois > 0 and edited["lidc"]["rois_placed_by_z"] == n_rois
    assert len(edited["warnings"]) == 2 and len(edited["nodules"]) == 1
    other = next(i for i in infos if i is not edited)
    assert other["lidc"]["incomplete_ratings"] == other["lidc"]["rois_placed_by_z"] == 0
