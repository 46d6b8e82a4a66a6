"""Scoring of whole-exam reports against phantom truth (``lungvlm evaluate-reports``).

Pure functions over plain JSON-ready dicts, so a resumed run re-scores stored cases without
re-running the model; the loop that produces the rows is CLI wiring
(:mod:`lungvlm.commands.evaluate_reports`, the only part that imports ``data_modules``).

Conventions (project choices, documented here):

- **Detection** follows LUNA16 (``reference/luna16.md``) as in :mod:`lungvlm.evaluation.detection`:
  a reported nodule hits a reference nodule when its centre (LPS mm) lies strictly within half
  the reference mean diameter. A reference nodule is detected when any reported nodule hits it;
  a reported nodule that hits nothing is a false positive; one that only hits nodules already
  taken by a closer reported nodule is a duplicate, neither true nor false positive. For the
  per-nodule scores (category, concepts, growth, VDT) hits are paired one to one, closest
  first (:func:`match_detections`). Size strata: sensitivity over reference nodules whose mean
  diameter (rounded to 0.1 mm, as Lung-RADS reports it) is >= the bound; false positives over
  reported nodules whose measured mean diameter is >= the bound.
- **Exam Lung-RADS**: exact accuracy, a confusion table and accuracy within one ordinal step of
  1 < 2 < 3 < 4A < 4B < 4X ("0" counts only when exact).
- **Concept F1**: :class:`lungvlm.metrics.report.ClinicalConceptF1` rules (TP / FP / FN per
  stated field, sizes within 1 mm) on fields read by :mod:`lungvlm.text.parser`: each reported
  nodule's generated sentences (the model's own words) against the reference report's sentences
  about its paired nodule; a missed reference nodule counts its fields as FN and a false positive
  its fields as FP (duplicates are left out). The exam fields are the report's Lung-RADS
  category and emphysema grade against the reference's. ``matched`` scores only the paired
  nodules and the exam fields, separating description quality from detection.
- **Growth**: status accuracy over paired nodules whose reference has a change status (a
  reported nodule without a comparison counts as wrong, status "none"). **VDT error** over
  paired nodules with a finite reference VDT (days): median absolute error and median absolute
  relative error over those whose report states a VDT; the others are counted as unmeasured.
- **Attenuation and size** over paired nodules: attenuation accuracy (solid / part_solid /
  ground_glass), and the median absolute error of the reported mean diameter (mm) for all
  paired nodules and for those whose reference is part-solid.
- **Cascade**: when rows hold a full-pass detection, the cascade (the report's segmentation) and
  the full pass are compared (segmentation seconds include resampling, as in the report
  timings); the cascade is kept only if it saves time and sensitivity (all sizes) drops by
  less than :data:`CASCADE_MAX_SENSITIVITY_DROP_PP` percentage points (issue 7).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

from lungvlm.clinical.lungrads import round_diameter_mm
from lungvlm.labels import LUNGRADS_CATEGORIES
from lungvlm.metrics.report import DEFAULT_EXAM_FIELDS, DEFAULT_NODULE_FIELDS, ClinicalConceptF1
from lungvlm.text.parser import parse_nodule_text, parse_report

#: Lower bounds (mm) of the detection size strata; 0 is every nodule.
SIZE_STRATA_MM: tuple[float, ...] = (0.0, 4.0, 6.0)
#: Lung-RADS categories in ordinal order of suspicion ("0", incomplete, stands apart).
ORDINAL_CATEGORIES: tuple[str, ...] = ("1", "2", "3", "4A", "4B", "4X")
#: Keep the cascade only if it loses less sensitivity than this (percentage points, issue 7).
CASCADE_MAX_SENSITIVITY_DROP_PP: float = 1.0
#: Report steps timed per case, in pipeline order ("prior" only with a prior scan).
TIMED_STEPS: tuple[str, ...] = (
    "read", "lung_mask", "emphysema", "segmentation", "nodule_heads", "generation", "prior",
    "export",
)  # fmt: skip
CONCEPT_FIELDS: tuple[str, ...] = DEFAULT_NODULE_FIELDS + DEFAULT_EXAM_FIELDS


@dataclass
class DetectionMatch:
    """Hits of reported nodules on reference nodules (module docstring).

    Attributes:
        reference_detected: per reference nodule, whether any reported nodule hits it.
        reference_match: per reference nodule, the paired reported nodule's position or None.
        candidate_kinds: per reported nodule, "tp" (paired), "duplicate" or "fp".
    """

    reference_detected: list[bool]
    reference_match: list[int | None]
    candidate_kinds: list[str]

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


def _centres(name: str, value: ArrayLike) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64).reshape(-1, 3) if len(value) else np.zeros((0, 3))
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must hold finite (x, y, z) centres in mm; got {value!r}")
    return array


def match_detections(
    reference_centres_mm: Sequence[Sequence[float]],
    reference_diameters_mm: Sequence[float],
    candidate_centres_mm: Sequence[Sequence[float]],
) -> DetectionMatch:
    """LUNA16 hits and a closest-first one-to-one pairing of reported to reference nodules.

    Args:
        reference_centres_mm: (N, 3) reference centres, LPS (x, y, z) mm.
        reference_diameters_mm: N reference mean diameters (mm); the hit radius is half of each.
        candidate_centres_mm: (M, 3) reported centres, LPS (x, y, z) mm.

    Raises:
        ValueError: centres and diameters disagree in number, or a diameter is not positive.
    """
    refs = _centres("reference_centres_mm", reference_centres_mm)
    cands = _centres("candidate_centres_mm", candidate_centres_mm)
    radius = np.asarray(reference_diameters_mm, dtype=np.float64).reshape(-1) / 2.0
    if len(radius) != len(refs):
        raise ValueError(
            f"got {len(refs)} reference centres but {len(radius)} reference_diameters_mm"
        )
    if (radius <= 0).any() or not np.isfinite(radius).all():
        raise ValueError(f"reference_diameters_mm={list(reference_diameters_mm)} must be > 0 mm")
    dist = np.sqrt(((cands[:, None, :] - refs[None, :, :]) ** 2).sum(-1))  # (M, N) mm
    hits = dist < radius[None, :]
    match: list[int | None] = [None] * len(refs)
    taken: set[int] = set()
    for flat in np.argsort(np.where(hits, dist, np.inf), axis=None, kind="stable"):
        c, r = np.unravel_index(flat, hits.shape)
        if not hits[c, r]:
            break
        if match[r] is None and int(c) not in taken:
            match[r] = int(c)
            taken.add(int(c))
    kinds = [
        "tp" if c in taken else ("duplicate" if hits[c].any() else "fp") for c in range(len(cands))
    ]
    return DetectionMatch(hits.any(axis=0).tolist(), match, kinds)


def detection_summary(detections: Sequence[Mapping], min_diameter_mm: float = 0.0) -> dict:
    """Sensitivity and false positives per scan over cases (module docstring, size strata).

    Args:
        detections: per case ``reference_diameters_mm``, ``reference_detected``,
            ``candidate_diameters_mm`` and ``candidate_kinds``.
        min_diameter_mm: lower bound of the stratum (mm).
    """
    n_ref = n_found = n_fp = n_dup = 0
    for d in detections:
        for diameter, found in zip(d["reference_diameters_mm"], d["reference_detected"],
                                   strict=True):  # fmt: skip
            if round_diameter_mm(diameter) >= min_diameter_mm:
                n_ref, n_found = n_ref + 1, n_found + bool(found)
        for diameter, kind in zip(d["candidate_diameters_mm"], d["candidate_kinds"], strict=True):
            if round_diameter_mm(diameter) >= min_diameter_mm:
                n_fp, n_dup = n_fp + (kind == "fp"), n_dup + (kind == "duplicate")
    n_scans = len(detections)
    return {
        "min_diameter_mm": float(min_diameter_mm),
        "n_scans": n_scans,
        "n_reference": n_ref,
        "n_detected": n_found,
        "sensitivity": n_found / n_ref if n_ref else None,
        "n_false_positives": n_fp,
        "fps_per_scan": n_fp / n_scans if n_scans else None,
        "n_duplicates": n_dup,
    }


def _ordinal_distance(a: str, b: str) -> int | None:
    if a == b:
        return 0
    if a in ORDINAL_CATEGORIES and b in ORDINAL_CATEGORIES:
        return abs(ORDINAL_CATEGORIES.index(a) - ORDINAL_CATEGORIES.index(b))
    return None


def category_summary(pairs: Sequence[tuple[str, str]]) -> dict:
    """Accuracy, within-one-step accuracy and confusion of (reference, predicted) categories.

    Raises:
        ValueError: a value that is not a Lung-RADS category.
    """
    confusion = {ref: dict.fromkeys(LUNGRADS_CATEGORIES, 0) for ref in LUNGRADS_CATEGORIES}
    exact = near = 0
    for ref, pred in pairs:
        for name, value in (("reference", ref), ("predicted", pred)):
            if value not in LUNGRADS_CATEGORIES:
                raise ValueError(f"{name} category {value!r} is not one of {LUNGRADS_CATEGORIES}")
        confusion[ref][pred] += 1
        distance = _ordinal_distance(ref, pred)
        exact, near = exact + (distance == 0), near + (distance is not None and distance <= 1)
    n = len(pairs)
    return {
        "n": n,
        "accuracy": exact / n if n else None,
        "within_one_step": near / n if n else None,
        "confusion": {
            r: {p: k for p, k in row.items() if k}
            for r, row in confusion.items()
            if any(row.values())
        },  # fmt: skip
    }


def nodule_concepts(text: str) -> dict:
    """Stated concept fields of one nodule's text (the same reading as the report assembly)."""
    nodules = parse_report(text).nodules
    parsed = nodules[0] if nodules else parse_nodule_text(text)
    values = parsed.field_values()
    return {f: values[f] for f in DEFAULT_NODULE_FIELDS if values.get(f) is not None}


def reference_concepts(findings_text: str, n_nodules: int) -> list[dict] | None:
    """Stated concept fields per nodule of a reference report, or None when the parser does
    not find exactly ``n_nodules`` nodules (the caller then reads each nodule separately)."""
    nodules = parse_report(findings_text).nodules
    if len(nodules) != n_nodules:
        return None
    out = []
    for nodule in nodules:
        values = nodule.field_values()
        out.append({f: values[f] for f in DEFAULT_NODULE_FIELDS if values.get(f) is not None})
    return out


def concept_pairs(
    match: DetectionMatch | Mapping,
    generated: Sequence[Mapping],
    reference: Sequence[Mapping],
    exam_generated: Mapping,
    exam_reference: Mapping,
) -> list[dict]:
    """(generated, reference) field dicts to score, each with its kind (module docstring).

    Kinds: "matched" (paired nodules), "missed" (reference nodule without a pair), "false_positive"
    (reported nodule hitting nothing) and "exam" (category and emphysema).
    """
    m = match.to_dict() if isinstance(match, DetectionMatch) else match
    pairs = []
    for r, c in enumerate(m["reference_match"]):
        kind, gen = ("missed", {}) if c is None else ("matched", dict(generated[c]))
        pairs.append({"kind": kind, "generated": gen, "reference": dict(reference[r])})
    for c, kind in enumerate(m["candidate_kinds"]):
        if kind == "fp":
            pairs.append({"kind": "false_positive", "generated": dict(generated[c]),
                          "reference": {}})  # fmt: skip
    exam = [{k: v for k, v in d.items() if v is not None} for d in (exam_generated, exam_reference)]
    pairs.append({"kind": "exam", "generated": exam[0], "reference": exam[1]})
    return pairs


def concept_f1(pairs: Iterable[Mapping]) -> dict:
    """Micro and per-field precision / recall / F1 of (generated, reference) field dicts.

    Uses :class:`ClinicalConceptF1` (its TP / FP / FN rules and size tolerance) on
    :data:`CONCEPT_FIELDS`; ``support`` is the number of reference statements of a field.
    """
    metric = ClinicalConceptF1(parse_fn=json.loads, fields=CONCEPT_FIELDS)
    pairs = list(pairs)
    if pairs:
        metric.update([json.dumps(p["generated"]) for p in pairs],
                      [json.dumps(p["reference"]) for p in pairs])  # fmt: skip
    scores = {k: float(v) for k, v in metric.compute().items()}
    support = (metric.tp + metric.fn).tolist()
    return {
        "n_pairs": len(pairs),
        "micro_precision": scores["micro_precision"],
        "micro_recall": scores["micro_recall"],
        "micro_f1": scores["micro_f1"],
        "per_field": {
            f: {"precision": scores[f"{f}/precision"], "recall": scores[f"{f}/recall"],
                "f1": scores[f"{f}/f1"], "support": int(support[i])}
            for i, f in enumerate(CONCEPT_FIELDS)
        },
    }  # fmt: skip


def status_summary(pairs: Sequence[tuple[str, str | None]]) -> dict:
    """Accuracy and confusion of (reference, reported) change statuses; None reads "none"."""
    confusion: dict[str, dict[str, int]] = {}
    correct = 0
    for ref, pred in pairs:
        pred = pred or "none"
        row = confusion.setdefault(ref, {})
        row[pred] = row.get(pred, 0) + 1
        correct += ref == pred
    n = len(pairs)
    return {"n": n, "accuracy": correct / n if n else None, "confusion": confusion}


def vdt_summary(pairs: Sequence[tuple[float | None, float | None]]) -> dict:
    """Volume doubling time error over (reference, reported) VDTs in days.

    None (or an infinite value) means no finite VDT. Pairs with no finite reference are skipped;
    those with no reported VDT are counted as unmeasured and left out of the medians.
    """

    def finite(v):
        return v is not None and math.isfinite(v)

    scored = [(float(r), p) for r, p in pairs if finite(r)]
    measured = [(r, float(p)) for r, p in scored if finite(p)]
    abs_err = [abs(p - r) for r, p in measured]
    rel_err = [abs(p - r) / abs(r) for r, p in measured]
    return {
        "n_finite_reference": len(scored),
        "n_measured": len(measured),
        "n_unmeasured": len(scored) - len(measured),
        "median_abs_error_days": float(np.median(abs_err)) if abs_err else None,
        "median_abs_relative_error": float(np.median(rel_err)) if rel_err else None,
    }


def attenuation_summary(pairs: Sequence[tuple[str, str | None]]) -> dict:
    """Accuracy and confusion of (reference, reported) attenuations over paired nodules whose
    reference states one; a reported None reads "none" (wrong)."""
    return status_summary(pairs)


def diameter_error_summary(pairs: Sequence[tuple[Mapping, Mapping]]) -> dict:
    """Median absolute error (mm) of the reported mean diameter over (reference, reported)
    nodule pairs, for all pairs and for those whose reference ``attenuation`` is part-solid."""
    errors = [abs(float(rep["mean_diameter_mm"]) - float(ref["mean_diameter_mm"]))
              for ref, rep in pairs]  # fmt: skip
    part = [e for e, (ref, _) in zip(errors, pairs, strict=True)
            if ref.get("attenuation") == "part_solid"]  # fmt: skip
    return {
        "n": len(errors),
        "median_abs_error_mm": float(np.median(errors)) if errors else None,
        "n_part_solid": len(part),
        "median_abs_error_part_solid_mm": float(np.median(part)) if part else None,
    }


def timing_summary(timings: Sequence[Mapping[str, float]]) -> dict:
    """Mean and median seconds per step (:data:`TIMED_STEPS` first) and of their total."""
    steps = [s for s in TIMED_STEPS if any(s in t for t in timings)]
    steps += sorted({k for t in timings for k in t} - set(steps))
    out = {}
    for step in steps:
        values = [float(t[step]) for t in timings if step in t]
        out[step] = {"n": len(values), "mean_s": float(np.mean(values)),
                     "median_s": float(np.median(values))}  # fmt: skip
    totals = [sum(float(t.get(s, 0.0)) for s in steps) for t in timings]
    if totals:
        out["total"] = {"n": len(totals), "mean_s": float(np.mean(totals)),
                        "median_s": float(np.median(totals))}  # fmt: skip
    return out


def detection_record(reference_nodules: Sequence[Mapping], candidates: Sequence[Mapping]) -> dict:
    """:func:`match_detections` of nodule dicts (``centre_lps_mm``, ``mean_diameter_mm``), with
    the diameters that :func:`detection_summary` stratifies by."""
    match = match_detections(
        [n["centre_lps_mm"] for n in reference_nodules],
        [n["mean_diameter_mm"] for n in reference_nodules],
        [c["centre_lps_mm"] for c in candidates],
    )
    return {
        "reference_diameters_mm": [float(n["mean_diameter_mm"]) for n in reference_nodules],
        "candidate_diameters_mm": [float(c["mean_diameter_mm"]) for c in candidates],
        **match.to_dict(),
    }


def score_case(reference: Mapping, report: Mapping) -> dict:
    """Detection and concept pairs of one case.

    Args:
        reference: ``nodules`` (each ``centre_lps_mm``, ``mean_diameter_mm``, ``concepts``),
            ``exam_category`` and ``emphysema``.
        report: the same keys for the reported nodules (from ``report.json``).
    """
    detection = detection_record(reference["nodules"], report["nodules"])
    pairs = concept_pairs(
        detection,
        [n["concepts"] for n in report["nodules"]],
        [n["concepts"] for n in reference["nodules"]],
        {"category": report["exam_category"], "emphysema": report["emphysema"]},
        {"category": reference["exam_category"], "emphysema": reference["emphysema"]},
    )
    return {"detection": detection, "concepts": pairs}


def paired_nodules(row: Mapping) -> Iterable[tuple[Mapping, Mapping]]:
    """(reference nodule, reported nodule) pairs of a scored case row."""
    for r, c in enumerate(row["detection"]["reference_match"]):
        if c is not None:
            yield row["reference"]["nodules"][r], row["report"]["nodules"][c]


def cascade_summary(rows: Sequence[Mapping]) -> dict | None:
    """Cascade (the report's segmentation) against the full pass, on rows that ran both."""
    rows = [r for r in rows if r.get("full_pass")]
    if not rows:
        return None
    out: dict = {"n_scans": len(rows)}
    for name, detections, seconds in (
        ("cascade", [r["detection"] for r in rows],
         [r["timings_s"]["segmentation"] for r in rows]),
        ("full", [r["full_pass"]["detection"] for r in rows],
         [r["full_pass"]["segmentation_s"] for r in rows]),
    ):  # fmt: skip
        out[name] = {
            "segmentation_mean_s": float(np.mean(seconds)),
            "segmentation_median_s": float(np.median(seconds)),
            "detection": {f">={t:g}mm": detection_summary(detections, t) for t in SIZE_STRATA_MM},
        }
    sens = [out[k]["detection"][">=0mm"]["sensitivity"] for k in ("cascade", "full")]
    full_s = out["full"]["segmentation_mean_s"]
    out["time_saved_fraction"] = (
        1.0 - out["cascade"]["segmentation_mean_s"] / full_s if full_s > 0 else None
    )
    drop = None if None in sens else 100.0 * (sens[1] - sens[0])
    saved = out["time_saved_fraction"]
    out["sensitivity_drop_pp"] = drop
    out["keep_cascade"] = (
        None if drop is None or saved is None
        else bool(drop < CASCADE_MAX_SENSITIVITY_DROP_PP and saved > 0)
    )  # fmt: skip
    out["rule"] = (
        f"keep the cascade if it saves time and sensitivity drops by < "
        f"{CASCADE_MAX_SENSITIVITY_DROP_PP:g} percentage point(s) against the full pass (issue 7)"
    )
    return out


def summarize(rows: Sequence[Mapping]) -> dict:
    """Every summary number over scored case rows (module docstring for the conventions).

    Each row holds ``reference`` and ``report`` (as for :func:`score_case`, nodules with
    ``lungrads_category``, ``status`` and ``vdt_days``), the ``detection`` and ``concepts`` of
    :func:`score_case`, ``timings_s`` and optionally ``full_pass`` (``detection``,
    ``segmentation_s``).
    """
    detections = [r["detection"] for r in rows]
    pairs = [p for r in rows for p in r["concepts"]]
    paired = [pair for r in rows for pair in paired_nodules(r)]
    growth = [(ref["status"], rep.get("status")) for ref, rep in paired if ref.get("status")]
    summary = {
        "n_cases": len(rows),
        "n_reference_nodules": sum(len(r["reference"]["nodules"]) for r in rows),
        "n_reported_nodules": sum(len(r["report"]["nodules"]) for r in rows),
        "detection": {f">={t:g}mm": detection_summary(detections, t) for t in SIZE_STRATA_MM},
        "exam_lungrads": category_summary(
            [(r["reference"]["exam_category"], r["report"]["exam_category"]) for r in rows]
        ),
        "nodule_lungrads": category_summary(
            [(ref["lungrads_category"], rep["lungrads_category"]) for ref, rep in paired]
        ),
        "concept_f1": concept_f1(pairs),
        "concept_f1_matched": concept_f1(p for p in pairs if p["kind"] in ("matched", "exam")),
        "attenuation": attenuation_summary(
            [
                (ref["attenuation"], rep.get("attenuation"))
                for ref, rep in paired
                if ref.get("attenuation")
            ]
        ),  # fmt: skip
        "diameter_error": diameter_error_summary(paired),
        "growth_status": status_summary(growth) if growth else None,
        "vdt": vdt_summary(
            [(ref.get("vdt_days"), rep.get("vdt_days")) for ref, rep in paired if ref.get("status")]
        )
        if growth
        else None,  # fmt: skip
        "timings_s": timing_summary([r["timings_s"] for r in rows]),
        "cascade_vs_full": cascade_summary(rows),
    }
    return summary
