"""What the settings of a model file must hold: required keys, types and ranges, checked on
load so that an edited or foreign file is refused with a message naming the field, rather
than failing later with a Python error or, worse, loading with nonsense in it.

A spec is a type (``str``, ``bool``, ``dict``, ``list``), a ``Number``/``Integer`` range,
a ``OneOf`` set of values, a dict of specs (an object with exactly these required keys, plus
the ``OPTIONAL`` ones), or ``Nullable(spec)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

# Model file format versions this code reads; "format_version" must be one of them.
KNOWN_FORMAT_VERSIONS = (1,)
# The tensors of a model file.
BANK = "memory_bank"
CONFORMAL_SCORES = "conformal.calibration_scores"


@dataclass(frozen=True)
class Number:
    low: float = -math.inf
    high: float = math.inf
    finite: bool = True  # thresholds may be infinite (nothing is flagged / decided)

    def problem(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {_kind(value)}"
        if math.isnan(value) or (self.finite and math.isinf(value)):
            return f"expected a finite number, got {value}"
        if not self.low <= value <= self.high:
            return f"expected a number in [{self.low:g}, {self.high:g}], got {value}"
        return ""


@dataclass(frozen=True)
class Integer:
    low: int
    high: int

    def problem(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {_kind(value)}"
        if not self.low <= value <= self.high:
            return f"expected an integer in [{self.low}, {self.high}], got {value}"
        return ""


@dataclass(frozen=True)
class OneOf:
    values: tuple

    def problem(self, value: Any) -> str:
        return "" if value in self.values else f"expected one of {self.values}, got {value!r}"


@dataclass(frozen=True)
class Nullable:
    spec: Any


# Keys an object may lack (older files, or optional provenance).
OPTIONAL = {"notes", "images", "origin", "format_version", "pixel_threshold"}
PROBABILITY = Number(0.0, 1.0)
THRESHOLD = Number(finite=False)
CALIBRATOR = {"name": str, "options": dict, "params": dict}
REQUESTED_KEYS = (
    "calibrator",
    "calibrator_options",
    "conformal_alpha",
    "flag",
    "flag_options",
    "leave_one_out",
    "benign_envelope",
)

SETTINGS = {
    "trustad_version": str,
    "created": str,
    "backbone": {
        "name": Nullable(str),
        "embed_dim": Integer(1, 1 << 16),
        "weights": Nullable({"sha256": str, "label": str, "origin": str}),
    },
    "preprocessing": {
        "resolution": Integer(14, 8192),
        "rotate": bool,
        "mask_test": bool,
        "mask_support": bool,
        "mask_morphology": OneOf(("grid", "flat")),
        "knn": Integer(1, 1 << 16),
        "bf16": bool,
    },
    "memory_bank": {"patches": Integer(1, 1 << 40), "dtype": str},
    "support": list,
    "calibration": dict,
    "calibrator": Nullable(CALIBRATOR),
    "conformal": Nullable(
        {"alpha": Number(0.0, 1.0), "n": Integer(0, 1 << 40), "threshold": THRESHOLD}
    ),
    "flag": Nullable({"name": str, "false_flag_rate": PROBABILITY, "threshold": THRESHOLD}),
    "decision_rule": Nullable(OneOf(("conformal", "probability"))),
    "requested": dict,
    "map_range": Nullable(list),
    "pixel_threshold": Nullable(Number()),
}


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def spec_problem(value: Any, spec: Any, where: str) -> str:
    """'' if ``value`` fits ``spec``, else a message naming the field ``where``."""
    if isinstance(spec, Nullable):
        return "" if value is None else spec_problem(value, spec.spec, where)
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{where}: expected an object, got {_kind(value)}"
        for key, sub in spec.items():
            if key not in value:
                if key in OPTIONAL:
                    continue
                return f"{where}.{key}: required, missing"
            found = spec_problem(value[key], sub, f"{where}.{key}")
            if found:
                return found
        return ""
    if isinstance(spec, type):
        if isinstance(value, spec) and not (spec is not bool and isinstance(value, bool)):
            return ""
        return f"{where}: expected {spec.__name__}, got {_kind(value)}"
    found = spec.problem(value)
    return f"{where}: {found}" if found else ""


def settings_problem(settings: Any, tensors: dict[str, Tensor]) -> str:
    """'' if a model file's settings (and the memory bank and conformal scores they
    describe) are whole and within range, else what is wrong, naming the field."""
    bank, scores = BANK, CONFORMAL_SCORES
    found = spec_problem(settings, SETTINGS, "settings")
    if found:
        return found
    for name, spec in (("conformal_alpha", Nullable(PROBABILITY)), ("flag", Nullable(str))):
        found = spec_problem(settings["requested"].get(name), spec, f"settings.requested.{name}")
        if found:
            return found
    unknown = sorted(set(settings["requested"]) - set(REQUESTED_KEYS))
    if unknown:
        return f"settings.requested: unknown key(s) {', '.join(unknown)}"
    cal = settings["calibrator"]
    if cal is not None:
        for key, value in cal["params"].items():
            if not key.endswith("_") or not isinstance(value, (int, float, bool, list)):
                return f"settings.calibrator.params.{key}: not a fitted parameter"
    map_range = settings["map_range"]
    if map_range is not None and (
        len(map_range) != 2 or any(spec_problem(v, Number(), "") for v in map_range)
    ):
        return f"settings.map_range: expected two finite numbers, got {map_range!r}"
    memory_bank = tensors.get(bank)
    if memory_bank is None:
        return f"tensor {bank!r}: required, missing"
    if memory_bank.ndim != 2 or not memory_bank.is_floating_point():
        return f"tensor {bank!r}: expected a 2-D float tensor, got {tuple(memory_bank.shape)}"
    embed_dim = settings["backbone"]["embed_dim"]
    expected = (settings["memory_bank"]["patches"], embed_dim)
    if tuple(memory_bank.shape) != expected:
        return (
            f"tensor {bank!r}: shape {tuple(memory_bank.shape)}, but settings.memory_bank."
            f"patches and settings.backbone.embed_dim say {expected}"
        )
    conformal = settings["conformal"]
    if conformal is not None:
        values = tensors.get(scores)
        if values is None or values.ndim != 1 or len(values) != conformal["n"]:
            shape = None if values is None else tuple(values.shape)
            return (
                f"tensor {scores!r}: expected {conformal['n']} scores (settings.conformal.n), "
                f"got {'none' if shape is None else shape}"
            )
    return ""
