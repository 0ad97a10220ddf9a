"""The grid's work items and how they are split into shards.

A work item is one (category, seed): inside it the category's clean features, its support
features and the probe of that seed are shared by every shots and condition, so it is the
smallest piece of work that wastes nothing when it runs alone. The units of a run are
ordered category by category, seed by seed; shard I of N is the I-th of N contiguous,
nearly equal blocks of that order (contiguous, so that the seeds of a category stay together
and its clean features are computed in as few shards as possible).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..data import list_categories, load_category, support_paths
from .settings import EvaluationSettings, shard_parts
from .store import result_key

WorkItem = tuple[str, int]  # (category, seed)


def all_work_items(categories: Sequence[str], seeds: int) -> list[WorkItem]:
    return [(c, s) for c in categories for s in range(seeds)]


def shard_work_items(units: Sequence[WorkItem], index: int, count: int) -> list[WorkItem]:
    """Block ``index`` (1-based) of ``count`` contiguous, nearly equal blocks of ``units``."""
    if not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: expected 1 <= I <= N")
    n = len(units)
    return list(units[(index - 1) * n // count : index * n // count])


def run_work_items(settings: EvaluationSettings, categories: Sequence[str]) -> list[WorkItem]:
    """The work units these settings ask for: all of them, or those of the shard."""
    return shard_work_items(
        all_work_items(categories, settings.seeds), *shard_parts(settings.shard)
    )


@dataclass
class Expected:
    """The result rows a run's settings ask for, and how that list was found."""

    keys: set[tuple]
    note: str | None = None  # why the list may be approximate


def expected_keys(settings: EvaluationSettings, seen_categories: Sequence[str] = ()) -> Expected:
    """Every result-row key the settings ask for. Shot counts a category has too few
    training images for are left out when the data can be read; without the data, the
    categories are those given in the settings or else those ``seen_categories``."""
    s = settings
    note = None
    try:
        categories = list_categories(s.dataset, s.root, s.categories)
        readable = True
    except (ValueError, FileNotFoundError, OSError) as exc:
        categories = list(s.categories or dict.fromkeys(seen_categories))
        readable = False
        note = f"the data folder could not be read ({exc}); expected units are approximate"
    keys = set()
    trains: dict[str, Sequence | None] = {}
    for category, seed in run_work_items(s, categories):
        if category not in trains:
            trains[category] = training_images(s, category) if readable else None
        keys |= unit_keys(s, category, seed, trains[category])
    return Expected(keys, note)


def training_images(settings: EvaluationSettings, category: str) -> Sequence | None:
    """The category's training images, or None when they cannot be listed."""
    try:
        return load_category(settings.dataset, settings.root, category).train
    except (ValueError, FileNotFoundError, OSError):
        return None


def unit_keys(
    settings: EvaluationSettings, category: str, seed: int, train: Sequence | None
) -> set[tuple]:
    """The result-row keys of one work unit; shot counts ``train`` has too few images for
    are left out (the runner skips them too), none when ``train`` is None."""
    keys = set()
    for k in settings.shots:
        if train is not None:
            try:
                support_paths(train, k, seed)
            except ValueError:
                continue
        for cond, eps in settings.conditions():
            keys.add(result_key(settings.dataset, category, k, seed, cond, eps))
    return keys
