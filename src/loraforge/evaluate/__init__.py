"""The eval gate: golden set + probes, base vs adapter (vs a shipped adapter) per slice, a verdict."""

from loraforge.evaluate.checks import CHECK_TYPES, REFUSAL_PHRASES, is_refusal, run_checks, validate_checks
from loraforge.evaluate.gate import Decision, GateReport, decide, mcnemar_p
from loraforge.evaluate.probes import load_probes
from loraforge.evaluate.report import write_reports
from loraforge.evaluate.runner import run_gate
from loraforge.evaluate.scoring import Case, RowResult, SliceScore, cases_from_records

__all__ = [
    "CHECK_TYPES",
    "REFUSAL_PHRASES",
    "Case",
    "Decision",
    "GateReport",
    "RowResult",
    "SliceScore",
    "cases_from_records",
    "decide",
    "is_refusal",
    "load_probes",
    "mcnemar_p",
    "run_checks",
    "run_gate",
    "validate_checks",
    "write_reports",
]
