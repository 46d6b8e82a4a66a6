"""Report language: findings schema, seeded report renderer, rule-based report parser.

The tokenizer lives in its own module of this package and is not re-exported here.
"""

from lungvlm.text.parser import ParsedNodule, ParsedReport, parse_findings_fields, parse_report
from lungvlm.text.renderer import RenderedReport, RenderStyle, render_report
from lungvlm.text.schema import (
    ExamFindings,
    Impression,
    NoduleChange,
    NoduleFinding,
)
from lungvlm.types import ReportSpan

__all__ = [
    "ExamFindings",
    "Impression",
    "NoduleChange",
    "NoduleFinding",
    "ParsedNodule",
    "ParsedReport",
    "RenderStyle",
    "RenderedReport",
    "ReportSpan",
    "parse_findings_fields",
    "parse_report",
    "render_report",
]
