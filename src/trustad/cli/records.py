"""The records ``trustad predict`` writes, one per image, as JSON lines or CSV, and the
images a results file already holds (so that a rerun skips them).

A record has the image's ``path`` and either the prediction's fields (and ``map``, the
overlay's path, with ``--maps``, and ``mask``, with ``--masks``) or ``error``. In CSV every record has every column
(``CSV_COLUMNS``): an interval ``[low, high]`` is two columns ``<name>_low`` and
``<name>_high``, an absent value is empty, booleans are ``true``/``false`` as in JSON, and
non-finite numbers are ``inf``/``-inf``/``nan``.
"""

from __future__ import annotations

import csv
import io
import json
import typing
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TextIO

from ..model import Prediction, json_safe

FORMATS = ("jsonl", "csv")
PREDICTION_FIELDS = [f.name for f in fields(Prediction) if f.name != "anomaly_map"]
# Fields holding a [low, high] pair: two CSV columns each.
INTERVALS = [
    name
    for name in PREDICTION_FIELDS
    if typing.get_type_hints(Prediction)[name] == list[float] | None
]
CSV_COLUMNS = [
    "path",
    *(c for n in PREDICTION_FIELDS for c in ([f"{n}_low", f"{n}_high"] if n in INTERVALS else [n])),
    "map",
    "mask",
    "error",
]


def format_for(out: Path | None, asked: str | None) -> str:
    """The format asked for, else csv for an ``--out`` ending in .csv, else jsonl."""
    if asked is not None:
        return asked
    return "csv" if out is not None and out.suffix.lower() == ".csv" else "jsonl"


def flat(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with each interval as its ``_low`` and ``_high`` values."""
    out = dict(record)
    for name in INTERVALS:
        pair = out.pop(name, None)
        if pair is not None:
            out[f"{name}_low"], out[f"{name}_high"] = pair
    return out


def csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class RecordWriter:
    """Writes records to ``sink`` in ``fmt``; ``header``: start a CSV with its column row."""

    def __init__(self, sink: TextIO, fmt: str, header: bool = True) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; expected one of {FORMATS}")
        self.sink, self.fmt = sink, fmt
        self.csv = csv.writer(sink, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None and header:
            self.csv.writerow(CSV_COLUMNS)

    def write(self, record: dict[str, Any]) -> None:
        if self.csv is None:
            self.sink.write(json.dumps(json_safe(record)) + "\n")
        else:
            row = flat(record)
            self.csv.writerow([csv_value(row.get(column)) for column in CSV_COLUMNS])

    def flush(self) -> None:
        self.sink.flush()


def written_records(text: str, fmt: str, name: str) -> list[dict[str, Any]]:
    """The complete records of a results file; a last record cut short by an interruption
    is left out. ``name`` is the file, for the error of a file in another format."""
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        if rows and rows[0] != CSV_COLUMNS:
            raise ValueError(
                f"{name} is not a CSV file of `trustad predict`: its first line is not the "
                f"header {','.join(CSV_COLUMNS)}"
            )
        return [
            {k: v for k, v in zip(CSV_COLUMNS, row) if v != ""}
            for row in rows[1:]
            if len(row) == len(CSV_COLUMNS)
        ]
    records = []
    for i, line in enumerate(text.splitlines()):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == 0:
                raise ValueError(
                    f"{name} is not a JSON-lines file of `trustad predict` (its first line "
                    "is not JSON); use another --out, or --format csv for a CSV file"
                ) from None
    return records


def resume(out: Path, fmt: str, key: Callable[[str], str] = str) -> set[str]:
    """``key`` of the paths already predicted in ``out``; the records of failed images are
    removed from the file so that those images are tried again."""
    if not out.is_file():
        return set()
    kept = [
        rec
        for rec in written_records(out.read_text(), fmt, str(out))
        if "error" not in rec and "path" in rec
    ]
    with open(out, "w", newline="") as sink:
        writer = RecordWriter(sink, fmt)
        for rec in kept:
            writer.write(rec)
    return {key(rec["path"]) for rec in kept}
