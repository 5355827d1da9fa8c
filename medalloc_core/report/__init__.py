"""One self-contained HTML page per run (``medalloc report``): scenario, accuracy, privacy, rounds, refusals, plans."""

from medalloc_core.report.page import REPORT_FILE, ReportError, build_report, per_hospital_privacy, write_report

__all__ = ["REPORT_FILE", "ReportError", "build_report", "per_hospital_privacy", "write_report"]
