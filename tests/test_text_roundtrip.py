"""Property test: render random findings with random seeds, parse them back, compare fields.

Every field the renderer states (it emits one span per stated field) must parse back exactly;
every field it leaves out must parse as None and equal its documented omission default.
"""

from __future__ import annotations

import numpy as np
import pytest

from lungvlm.text.parser import ParsedReport, parse_report
from lungvlm.text.renderer import render_report
from lungvlm.text.sampling import (
    MANAGEMENT_BY_CATEGORY,
    random_exam_findings,
    random_nodule,
)
from lungvlm.text.schema import ExamFindings
from lungvlm.text.vocabulary import (
    EXAM_SPAN_FIELDS,
    NODULE_SPAN_FIELDS,
    NODULE_VALUE_FIELDS,
    OMISSION_DEFAULTS,
)

NUM_EXAMS = 5000


def _exam_values(report: ExamFindings | ParsedReport) -> dict[str, object]:
    if isinstance(report, ExamFindings):
        category, management = report.impression.category, report.impression.management
    else:
        category, management = report.category, report.management
    return {
        "emphysema": report.emphysema,
        "laa950_percent": report.laa950_percent,
        "other_findings": report.other_findings,
        "category": category,
        "management": management,
    }


def _compare(findings: ExamFindings, seed: int) -> tuple[int, int, list[str]]:
    """(fields checked, fields correct, error descriptions) for one rendered report."""
    report = render_report(findings, seed=seed)
    parsed = parse_report(report.text)
    if len(parsed.nodules) != len(findings.nodules):
        return 1, 0, [f"seed {seed}: {len(parsed.nodules)} nodules parsed\n{report.text}"]
    checked = correct = 0
    errors: list[str] = []
    stated: dict[int, set[str]] = {}
    for span in report.spans:
        names = (NODULE_SPAN_FIELDS | EXAM_SPAN_FIELDS)[span.field]
        stated.setdefault(span.nodule_index, set()).update(names)
    for index in range(-1, len(findings.nodules)):
        if index < 0:
            truth, read = _exam_values(findings), _exam_values(parsed)
            names = [n for field in EXAM_SPAN_FIELDS.values() for n in field]
        else:
            truth = findings.nodules[index].field_values()
            read = parsed.nodules[index].field_values()
            names = list(NODULE_VALUE_FIELDS)
        for name in names:
            if name in stated.get(index, set()):
                expected = truth[name]
            elif name in OMISSION_DEFAULTS and truth[name] == OMISSION_DEFAULTS[name]:
                expected = None  # left out because it is the default
            elif truth[name] in (None, []):
                expected = truth[name]  # nothing to state
            else:
                errors.append(f"seed {seed}: {name}={truth[name]!r} was not stated")
                checked += 1
                continue
            checked += 1
            if read[name] == expected:
                correct += 1
            else:
                errors.append(f"seed {seed}, nodule {index}: {name} {read[name]!r} != {expected!r}")
    return checked, correct, errors


def test_round_trip_field_rate():
    checked = correct = 0
    errors: list[str] = []
    for seed in range(NUM_EXAMS):
        findings = random_exam_findings(np.random.default_rng(seed))
        exam_checked, exam_correct, exam_errors = _compare(findings, seed)
        checked, correct = checked + exam_checked, correct + exam_correct
        errors += exam_errors
    rate = correct / checked
    print(
        f"\nround trip: {correct}/{checked} fields exact over {NUM_EXAMS} reports, rate={rate:.5f}"
    )
    assert checked > 30 * NUM_EXAMS  # on average 2 nodules x 15 fields + 5 exam fields
    assert rate >= 0.999, "\n".join(errors[:10])


def test_sampler_is_seeded_and_covers_the_schema():
    first = [random_exam_findings(np.random.default_rng(s)) for s in range(300)]
    again = [random_exam_findings(np.random.default_rng(s)) for s in range(300)]
    assert first == again
    nodules = [n for exam in first for n in exam.nodules]
    assert {len(exam.nodules) for exam in first} == {0, 1, 2, 3, 4}
    assert {n.attenuation for n in nodules} == {"solid", "part_solid", "ground_glass"}
    assert {n.change.status for n in nodules if n.change} == {"new", "stable", "growing", "smaller"}
    assert {n.lobe for n in nodules if n.side == "left"} == {"upper", "lower"}
    for exam in first:
        category = exam.impression.category
        assert exam.impression.management == MANAGEMENT_BY_CATEGORY[category]
    assert random_nodule(np.random.default_rng(1)) == random_nodule(np.random.default_rng(1))
    with pytest.raises(ValueError, match=r"max_nodules=-1 must be >= 0"):
        random_exam_findings(np.random.default_rng(0), max_nodules=-1)
