"""Named protocols: the paper's study (PROTOCOL sections 3-6) and a quick version of it.

A preset gives values to some settings; every other setting keeps its default, which is the
protocol's (PROTOCOL.md documents each default). Options given on the command line override
a preset's values.
"""

from __future__ import annotations

from typing import Any

from ..attacks import DEFAULT_EPS

# The grid and conditions the paper reports: every category, k in {1,2,4,8,16}, seeds 0-2,
# clean and probe FGSM at 8/255, agnostic preprocessing (Platt scaling and the other
# calibrators are fitted in every run). Two example pictures per category and condition
# feed the report's Figure 1b.
PAPER: dict[str, Any] = {
    "categories": None,
    "shots": [1, 2, 4, 8, 16],
    "seeds": 3,
    "attacks": ["fgsm"],
    "eps": [DEFAULT_EPS],
    "preprocessing": "agnostic",
    "platt_c": None,
    "platt_smooth": False,
    "save_examples": 2,
}

# The same study, smaller: k in {1, 2} and seed 0 only; everything else as PAPER.
QUICK: dict[str, Any] = {**PAPER, "shots": [1, 2], "seeds": 1}

PRESETS: dict[str, dict[str, Any]] = {"paper": PAPER, "quick": QUICK}


def preset(name: str) -> dict[str, Any]:
    """A copy of the named preset's values."""
    if name not in PRESETS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {sorted(PRESETS)}")
    return {k: list(v) if isinstance(v, list) else v for k, v in PRESETS[name].items()}
