"""``lungvlm evaluate-reports``: whole-exam report evaluation on phantom chests (issue 7).

This module is CLI wiring, so it may import ``data_modules``; the scores are pure functions in
:mod:`lungvlm.evaluation.reports` (conventions there). Per seed: the phantom case is rendered
in process (:func:`data_modules.phantom.generate_case`; by default, and with
``--follow-up-months M``, the follow-up scan :func:`~data_modules.phantom.generate_follow_up`
``M`` months later (default :data:`DEFAULT_FOLLOW_UP_MONTHS`; ``--no-follow-up`` reports the
baseline alone) with noise seed ``seed + 7919`` as ``lungvlm phantom --follow-up`` does,
reported with the baseline as prior, interval ``M x 30.4375`` days), written as a DICOM series
into a temporary folder and run through the steps of ``lungvlm report`` (read, lung mask,
analysis, report assembly, outputs into ``OUT/cases/<case>/``). The model is loaded once; the
default seeds are the first 20 of the test split (``lungvlm evaluate``'s). Every row carries
the scanner profile of its scan, and the summary's ``subsets`` give the issue-15 figures on all
chests, the thick-slice low-dose ones and the rest
(:mod:`lungvlm.evaluation.report_subsets`). Outputs: ``OUT/report_eval.json`` (settings,
summary, every case row) and ``OUT/report_eval.md``, written atomically.

Resume: a case whose ``OUT/cases/<case>/report.json`` and ``case_eval.json`` exist, with the same
settings (checkpoint file and modification time, cascade mode, size, follow-up), is not run
again; its stored row is re-scored.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lungvlm.commands.evaluate import add_min_thick_low_dose
from lungvlm.commands.options import add_ckpt, add_device, add_phantom_size, add_progress

if TYPE_CHECKING:
    from lungvlm.export.schema import ExamReport
    from lungvlm.inference.report_analysis import ReportModel


log = logging.getLogger(__name__)

CASCADE_MODES = ("on", "off", "compare")
#: Noise seed offset of a follow-up scan (as ``lungvlm phantom --follow-up``).
FOLLOW_UP_SEED_OFFSET = 7919
#: Follow-up interval (months) reported by default: the 12-month screening round (issue 15).
DEFAULT_FOLLOW_UP_MONTHS = 12.0
CASE_RESULT_FILE = "case_eval.json"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate-reports`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate-reports",
        help="score whole-exam reports on phantom chests (detection, Lung-RADS, concept F1)",
        description=(
            "Run `lungvlm report` on phantom DICOM series (seeds START:STOP, STOP excluded) and "
            "score detection, exam Lung-RADS, concept F1, growth and VDT, and step timings."
        ),
    )
    add_ckpt(parser)
    parser.add_argument(
        "--phantom-seeds", default=None,
        help="phantom chests START:STOP, STOP excluded (default: the first 20 test-split seeds)",
    )  # fmt: skip
    add_min_thick_low_dose(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    follow_up = parser.add_mutually_exclusive_group()
    follow_up.add_argument(
        "--follow-up-months", type=float, default=None,
        help="report the follow-up scan MONTHS later with the baseline as prior (default "
        f"{DEFAULT_FOLLOW_UP_MONTHS:g})",
    )  # fmt: skip
    follow_up.add_argument("--no-follow-up", action="store_true",
                           help="report the baseline scan alone (no prior, no growth figures)")  # fmt: skip
    parser.add_argument("--cascade", choices=CASCADE_MODES, default="off",
                        help="adaptive-resolution cascade; compare also runs the full pass")  # fmt: skip
    add_phantom_size(parser)
    add_device(parser)
    add_progress(parser)
    parser.set_defaults(func=run)
    return parser


def case_name(seed: int, follow_up_months: float | None) -> str:
    """``phantom-<seed>`` or ``phantom-<seed>-fu<M>m`` (the names of ``lungvlm phantom``)."""
    return (
        f"phantom-{seed}" if follow_up_months is None else f"phantom-{seed}-fu{follow_up_months:g}m"
    )


def reference_from_case(case) -> dict:
    """Truth of a :class:`~data_modules.phantom.PhantomCase`: nodules (centre LPS mm, mean
    diameter mm, Lung-RADS, change status, VDT days or None when infinite, concept fields), the
    exam category, emphysema grade and the reference findings text."""
    from data_modules.phantom.report import exam_findings, render
    from lungvlm.evaluation.reports import reference_concepts

    findings = exam_findings(case.nodules, case.laa950_percent)
    text = case.findings_text or render(findings, seed=case.seed).findings_text
    concepts = reference_concepts(text, len(case.nodules))
    if concepts is None:  # the parser split the report differently: read nodule by nodule
        log.warning("phantom %s: reference nodules parsed one at a time", case.seed)
        concepts = [
            reference_concepts(render(exam_findings([n], None), seed=case.seed).findings_text, 1)
            or [{}]
            for n in case.nodules
        ]
        concepts = [c[0] for c in concepts]
    return {
        "exam_category": findings.impression.category,
        "emphysema": findings.emphysema,
        "findings_text": text,
        "nodules": [
            {
                "centre_lps_mm": list(n.centroid_lps_mm),
                "mean_diameter_mm": n.mean_diameter_mm,
                "lungrads_category": n.lungrads_category,
                "attenuation": n.attenuation,
                "status": None if n.change is None else n.change["status"],
                "vdt_days": n.vdt_days if math.isfinite(n.vdt_days) else None,
                "concepts": c,
            }
            for n, c in zip(case.nodules, concepts, strict=True)
        ],
    }


def report_fields(report: ExamReport) -> dict:
    """What the written report states, in the shape :func:`score_case` reads."""
    from lungvlm.evaluation.reports import nodule_concepts

    nodules = []
    for n in report.nodules:
        text = " ".join(s.text.strip() for s in n.sentences)
        nodules.append({
            "index": n.index,
            "centre_lps_mm": list(n.centroid_world_lps_mm),
            "mean_diameter_mm": n.mean_diameter_mm,
            "lungrads_category": n.lungrads_category,
            "attenuation": n.attenuation,
            "solid_component_mm": n.solid_component_mm,
            "status": None if n.comparison is None else n.comparison.status,
            "vdt_days": None if n.comparison is None else n.comparison.vdt_days,
            "text": text,
            "concepts": nodule_concepts(text),
        })  # fmt: skip
    emphysema = report.exam.emphysema
    return {
        "exam_category": report.exam.lungrads_category,
        "emphysema": None if emphysema is None else emphysema.severity,
        "needs_review": report.exam.needs_review,
        "nodules": nodules,
    }


def _full_pass(rm: ReportModel, volume, lungs) -> dict:
    from lungvlm.inference.report_analysis import segment_volume

    _, segmentation, seconds = segment_volume(rm, volume, lungs, cascade=False)
    candidates = [
        {"centre_lps_mm": list(n.centroid_world_mm), "mean_diameter_mm": n.mean_diameter_mm}
        for n in segmentation.instances
    ]
    return {"segmentation_s": seconds, "candidates": candidates}


def evaluate_case(rm: ReportModel, seed: int, index: int, args, settings: dict) -> dict:
    """Render, write (DICOM) and report one phantom case; returns its unscored row.

    ``timings_s`` holds the report steps (seconds; with a prior, "read" and "lung_mask" include
    the prior scan, as in ``lungvlm report``); ``overhead_s`` the phantom rendering and DICOM
    writing, which are not part of a report.
    """
    from data_modules.phantom import PhantomConfig, generate_case, generate_follow_up
    from data_modules.phantom.labels import DAYS_PER_MONTH
    from data_modules.phantom.writers import write_dicom_series
    from lungvlm.commands.scan_io import read_volume
    from lungvlm.evaluation.subsets import profile_record
    from lungvlm.export.schema import Source
    from lungvlm.imaging.lung_mask import lung_mask
    from lungvlm.inference.report_pipeline import PriorScan, generate_report

    name = case_name(seed, args.follow_up_months)
    start = time.perf_counter()
    config = PhantomConfig.tiny() if args.phantom_size == "tiny" else PhantomConfig()
    case = prior_case = generate_case(seed, config)
    if args.follow_up_months is not None:
        case = generate_follow_up(prior_case, args.follow_up_months, seed + FOLLOW_UP_SEED_OFFSET)
    row = {"case_id": name, "seed": seed, "settings": settings,
           "profile": profile_record(case.profile.to_dict()),
           "reference": reference_from_case(case)}  # fmt: skip
    overhead = {"phantom": time.perf_counter() - start}
    with tempfile.TemporaryDirectory(prefix=f"lungvlm-eval-{name}-") as tmp:
        start = time.perf_counter()
        write_dicom_series(case, Path(tmp) / "current")
        if case is not prior_case:
            write_dicom_series(prior_case, Path(tmp) / "prior")
        overhead["write_dicom"] = time.perf_counter() - start
        timings = {}
        start = time.perf_counter()
        scan_file = read_volume(Path(tmp) / "current")
        volume, kind, sources = scan_file.volume, scan_file.format, scan_file.source_datasets
        prior_volume = (
            read_volume(Path(tmp) / "prior", with_headers=False).volume
            if case is not prior_case
            else None
        )
        timings["read"] = time.perf_counter() - start
        start = time.perf_counter()
        lungs = lung_mask(volume.array_hu, volume.spacing_mm)
        prior = None
        if prior_volume is not None:
            prior_lungs = lung_mask(prior_volume.array_hu, prior_volume.spacing_mm)
            prior = PriorScan(prior_volume, prior_lungs, args.follow_up_months * DAYS_PER_MONTH)
        timings["lung_mask"] = time.perf_counter() - start
        compare = args.cascade == "compare"
        # Alternate which pass runs first so warm caches favour neither on average.
        full = _full_pass(rm, volume, lungs) if compare and index % 2 == 0 else None
        source = Source(
            str(Path(tmp) / "current"), kind, volume.metadata.get("series_instance_uid")
        )
        result = generate_report(
            rm, volume, lungs, args.out / "cases" / name, source, name, sources, prior,
            cascade=args.cascade != "off", overwrite=True, timings_s=timings,
        )  # fmt: skip
        if compare and full is None:
            full = _full_pass(rm, volume, lungs)
    row.update(report=report_fields(result.report), timings_s=dict(result.report.timings_s),
               overhead_s=overhead, warnings=result.warnings)  # fmt: skip
    if full is not None:
        row["full_pass"] = full
    return row


def _score(row: dict) -> dict:
    """(Re)compute the scores of a row from its reference and report."""
    from lungvlm.evaluation.reports import detection_record, score_case

    row.update(score_case(row["reference"], row["report"]))
    if row.get("full_pass"):
        row["full_pass"]["detection"] = detection_record(
            row["reference"]["nodules"], row["full_pass"]["candidates"]
        )
    return row


def _stored_row(case_dir: Path, settings: dict) -> dict | None:
    path = case_dir / CASE_RESULT_FILE
    if not (case_dir / "report.json").is_file() or not path.is_file():
        return None
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        log.warning("%s is unreadable (%s); the case is run again", path, err)
        return None
    return row if row.get("settings") == settings else None


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


#: Rows of the subset table: (figure key, label, format).
_SUBSET_ROWS: tuple[tuple[str, str, str], ...] = (
    ("n_cases", "chests", "d"),
    ("sensitivity", "detection sensitivity", ".3f"),
    ("sensitivity_ge_6mm", "detection sensitivity >= 6 mm", ".3f"),
    ("fps_per_scan", "FPs/scan (final report)", ".2f"),
    ("exam_lungrads_accuracy", "exam Lung-RADS accuracy (exact)", ".3f"),
    ("attenuation_accuracy", "attenuation accuracy (found nodules)", ".3f"),
    ("diameter_median_abs_error_mm", "mean diameter median abs error, mm", ".2f"),
    ("diameter_median_abs_error_part_solid_mm", "  part-solid only, mm", ".2f"),
    ("growth_status_accuracy", "growth status accuracy (paired)", ".3f"),
    ("vdt_median_abs_relative_error_growing", "VDT median relative error (growing)", ".3f"),
    ("seconds_per_chest", "seconds per chest", ".1f"),
)


def subset_markdown(subsets: dict) -> list[str]:
    """Lines of the scanner-profile table: all chests, thick/low-dose, rest, difference."""
    from lungvlm.evaluation.subsets import LOW_DOSE_MAX_MAS, THICK_SLICE_MIN_MM

    diff = subsets["thick_low_dose_minus_rest"]
    lines = ["## By scanner profile", "",
             f"thick/low-dose: slice thickness >= {THICK_SLICE_MIN_MM:g} mm and <= "
             f"{LOW_DOSE_MAX_MAS:g} mAs; difference = thick/low-dose - rest, fractions in "
             "percentage points (pp), other figures in their units.", "",
             "| figure | all | thick/low-dose | rest | difference |", "|---|---|---|---|---|"]  # fmt: skip
    for key, label, spec in _SUBSET_ROWS:
        cells = [_fmt(subsets[name][key], spec) for name in ("all", "thick_low_dose", "rest")]
        d = diff.get(key, {})
        text = (f"{_fmt(d['points'], '+.1f')} pp" if "points" in d
                else _fmt(d.get("difference"), "+" + spec) if d else "")  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {text} |")
    steps = list(subsets["all"]["step_seconds"])  # pipeline order (timing_summary)
    lines += ["", "| step (mean s) | all | thick/low-dose | rest |", "|---|---|---|---|"]
    lines += [f"| {step} | " + " | ".join(_fmt(subsets[n]["step_seconds"].get(step), ".2f")
                                        for n in ("all", "thick_low_dose", "rest")) + " |"
              for step in steps]  # fmt: skip
    return lines


def format_markdown(summary: dict, rows: list[dict], settings: dict) -> str:
    """Readable tables of the summary and one line per case."""
    lines = ["# Report evaluation on phantom chests", "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), "",
             f"{summary['n_cases']} case(s), {summary['n_reference_nodules']} reference and "
             f"{summary['n_reported_nodules']} reported nodule(s).", "",
             "## Detection (LUNA16 hit rule)", "",
             "| stratum | reference | detected | sensitivity | FPs | FPs/scan | duplicates |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, d in summary["detection"].items():
        lines.append(f"| {name} | {d['n_reference']} | {d['n_detected']} | "
                     f"{_fmt(d['sensitivity'])} | {d['n_false_positives']} | "
                     f"{_fmt(d['fps_per_scan'], '.2f')} | {d['n_duplicates']} |")  # fmt: skip
    if summary.get("subsets"):
        lines += ["", *subset_markdown(summary["subsets"])]
    if summary.get("attenuation"):
        a, size = summary["attenuation"], summary["diameter_error"]
        lines += ["", "## Attenuation and size (paired nodules)", "",
                  f"attenuation accuracy {_fmt(a['accuracy'])} (n={a['n']}); confusion "
                  f"{json.dumps(a['confusion'])}", "",
                  f"mean diameter median absolute error {_fmt(size['median_abs_error_mm'], '.2f')}"
                  f" mm (n={size['n']}), part-solid "
                  f"{_fmt(size['median_abs_error_part_solid_mm'], '.2f')} mm "
                  f"(n={size['n_part_solid']})"]  # fmt: skip
    for key, title in (("exam_lungrads", "Exam Lung-RADS"),
                       ("nodule_lungrads", "Nodule Lung-RADS (paired nodules)")):  # fmt: skip
        c = summary[key]
        lines += ["", f"## {title}", "",
                  f"accuracy {_fmt(c['accuracy'])}, within one step {_fmt(c['within_one_step'])} "
                  f"(n={c['n']}); confusion (reference -> predicted counts):", ""]  # fmt: skip
        lines += [f"- {ref}: " + ", ".join(f"{p}: {k}" for p, k in row.items())
                  for ref, row in c["confusion"].items()] or ["- (none)"]  # fmt: skip
    for key, title in (("concept_f1", "Concept F1 (all nodules)"),
                       ("concept_f1_matched", "Concept F1 (paired nodules + exam)")):  # fmt: skip
        c = summary[key]
        lines += ["", f"## {title}", "",
                  f"micro P {_fmt(c['micro_precision'])}, R {_fmt(c['micro_recall'])}, "
                  f"F1 {_fmt(c['micro_f1'])}", "",
                  "| field | precision | recall | F1 | support |", "|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {f} | {_fmt(v['precision'])} | {_fmt(v['recall'])} | {_fmt(v['f1'])} | "
                  f"{v['support']} |" for f, v in c["per_field"].items()]  # fmt: skip
    if summary["growth_status"] is not None:
        g, v = summary["growth_status"], summary["vdt"]
        lines += ["", "## Growth (follow-up)", "",
                  f"status accuracy {_fmt(g['accuracy'])} (n={g['n']}); confusion "
                  f"{json.dumps(g['confusion'])}", "",
                  f"VDT: median absolute error {_fmt(v['median_abs_error_days'], '.1f')} days, "
                  f"median absolute relative error {_fmt(v['median_abs_relative_error'])} "
                  f"({v['n_measured']} measured of {v['n_finite_reference']} with a finite "
                  f"reference VDT)"]  # fmt: skip
    lines += ["", "## Seconds per step", "", "| step | mean | median |", "|---|---|---|"]
    lines += [f"| {s} | {t['mean_s']:.2f} | {t['median_s']:.2f} |"
              for s, t in summary["timings_s"].items()]  # fmt: skip
    cascade = summary["cascade_vs_full"]
    if cascade is not None:
        lines += ["", "## Cascade vs full pass", "",
                  "| pass | segmentation s | sensitivity | >=4 mm | >=6 mm | FPs/scan |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name in ("cascade", "full"):
            d = cascade[name]["detection"]
            lines.append(f"| {name} | {cascade[name]['segmentation_mean_s']:.2f} | "
                         f"{_fmt(d['>=0mm']['sensitivity'])} | {_fmt(d['>=4mm']['sensitivity'])} | "
                         f"{_fmt(d['>=6mm']['sensitivity'])} | "
                         f"{_fmt(d['>=0mm']['fps_per_scan'], '.2f')} |")  # fmt: skip
        lines += ["", f"time saved {_fmt(cascade['time_saved_fraction'], '.1%')}, sensitivity "
                  f"drop {_fmt(cascade['sensitivity_drop_pp'], '.2f')} pp -> keep cascade: "
                  f"{cascade['keep_cascade']} ({cascade['rule']})"]  # fmt: skip
    lines += ["", "## Cases", "",
              "| case | slice mm | mAs | kernel | reference | reported | detected | FPs | "
              "exam ref | exam pred | seconds |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        d, profile = r["detection"], r.get("profile") or {}
        lines.append(f"| {r['case_id']} | {_fmt(profile.get('slice_thickness_mm'), '.2f')} | "
                     f"{_fmt(profile.get('exposure_mas'), '.1f')} | {profile.get('kernel', '-')} | "
                     f"{len(d['reference_detected'])} | "
                     f"{len(d['candidate_kinds'])} | {sum(d['reference_detected'])} | "
                     f"{d['candidate_kinds'].count('fp')} | {r['reference']['exam_category']} | "
                     f"{r['report']['exam_category']} | {sum(r['timings_s'].values()):.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _settings(args) -> dict:
    ckpt = Path(args.ckpt)
    return {
        "checkpoint": str(ckpt.resolve()),
        "checkpoint_mtime_ns": ckpt.stat().st_mtime_ns,
        "cascade": args.cascade,
        "size": args.phantom_size,
        "follow_up_months": args.follow_up_months,
    }


def run(args: argparse.Namespace) -> int:
    """Execute ``lungvlm evaluate-reports``; returns the exit code."""
    from lungvlm import progress as lungvlm_progress
    from lungvlm.commands.evaluate import phantom_seed_list
    from lungvlm.commands.options import resolve_device
    from lungvlm.commands.progress import progress_bars
    from lungvlm.evaluation.report_subsets import subset_summary
    from lungvlm.evaluation.reports import summarize
    from lungvlm.export.writer import write_text_atomic
    from lungvlm.inference.report_analysis import load_report_model

    seeds = phantom_seed_list(args.phantom_seeds, args.min_thick_low_dose, args.phantom_size)
    if args.no_follow_up:
        args.follow_up_months = None
    elif args.follow_up_months is None:
        args.follow_up_months = DEFAULT_FOLLOW_UP_MONTHS
    months = args.follow_up_months
    if months is not None and not (math.isfinite(months) and months > 0):
        raise ValueError(f"--follow-up-months={months} must be a positive number of months")
    device = resolve_device(args.device)
    rm = load_report_model(args.ckpt, map_location=device)
    settings = {**_settings(args), "device": device}
    resume_settings = {k: v for k, v in settings.items() if k != "device"}
    rows = []
    with progress_bars(args.progress):
        lungvlm_progress.update("phantom reports", 0, len(seeds))
        for index, seed in enumerate(seeds):
            name = case_name(seed, months)
            case_dir = args.out / "cases" / name
            row = _stored_row(case_dir, resume_settings)
            resumed = row is not None
            if row is None:
                row = evaluate_case(rm, seed, index, args, resume_settings)
                write_text_atomic(case_dir / CASE_RESULT_FILE, json.dumps(row, indent=2))
            row = _score(row)
            row["resumed"] = resumed
            rows.append(row)
            d = row["detection"]
            log.info(
                "%s: %s; %d/%d reference nodule(s) detected, %d FP, Lung-RADS %s (reference %s), "
                "%.1f s", name, "resumed" if resumed else "reported", sum(d["reference_detected"]),
                len(d["reference_detected"]), d["candidate_kinds"].count("fp"),
                row["report"]["exam_category"], row["reference"]["exam_category"],
                sum(row["timings_s"].values()),
            )  # fmt: skip
            lungvlm_progress.update("phantom reports", index + 1, len(seeds))
    summary = summarize(rows)
    summary["subsets"] = subset_summary(rows)
    summary["n_resumed"] = sum(r["resumed"] for r in rows)
    report_eval = {"settings": settings, "summary": summary, "cases": rows}
    write_text_atomic(args.out / "report_eval.json", json.dumps(report_eval, indent=2))
    markdown = format_markdown(summary, rows, settings)
    write_text_atomic(args.out / "report_eval.md", markdown)
    print(markdown.split("\n## Cases")[0])
    print(f"wrote {args.out / 'report_eval.json'} and {args.out / 'report_eval.md'}")
    return 0
