"""Reports of a run folder: Markdown, CSV and LaTeX tables in the paper's layout, the
paper's figures, and one self-contained HTML page."""

from .figures import calibrated_scores, study_figures, write_figures
from .html import SECTIONS, write_study_report
from .tables import Table, aggregate, all_tables, read_results, write_tables
from .text import (
    calibration_table,
    detection_table,
    entropy_table,
    markdown_report,
    report_tables,
    summary,
    write_report,
)

__all__ = [
    "SECTIONS",
    "Table",
    "aggregate",
    "all_tables",
    "calibrated_scores",
    "calibration_table",
    "detection_table",
    "entropy_table",
    "markdown_report",
    "read_results",
    "report_tables",
    "study_figures",
    "summary",
    "write_figures",
    "write_report",
    "write_study_report",
    "write_tables",
]
