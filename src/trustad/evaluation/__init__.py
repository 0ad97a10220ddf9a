"""The evaluation protocol: settings, the resumable result store, result rows, the runner."""

from .rows import IMAGE_LABEL_PROBE
from .runner import Evaluation
from .settings import CLEAN, EvaluationSettings, parse_eps
from .store import KEY_COLUMNS, SCORE_COLUMNS, ResultStore, result_columns, result_key, unique_rows

__all__ = [
    "CLEAN",
    "IMAGE_LABEL_PROBE",
    "KEY_COLUMNS",
    "SCORE_COLUMNS",
    "Evaluation",
    "EvaluationSettings",
    "ResultStore",
    "parse_eps",
    "result_columns",
    "unique_rows",
    "result_key",
]
