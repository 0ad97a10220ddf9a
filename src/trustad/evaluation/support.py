"""Support images of a category: their rotated views prepared ahead in worker threads,
their features computed once, and the units whose support set cannot be read."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from torch import Tensor

from ..backbone.runtime import BackboneRuntime
from ..data import support_paths
from ..detector import AnomalyDINO
from ..images import ImageReadError
from .category import DECODE_THREADS, CategoryState
from .plan import ConditionGroup
from .progress import Progress

T = TypeVar("T")
R = TypeVar("R")


def prefetched(
    fn: Callable[[T], R], items: Sequence[T], workers: int = DECODE_THREADS
) -> Iterator[tuple[T, R | ImageReadError]]:
    """(item, fn(item)) in order, computed ahead in worker threads, at most ``workers``
    items ahead of the consumer (memory stays bounded); an unreadable image gives its
    ``ImageReadError`` instead of a result. Decoding, rotation and Pillow's resize release
    the GIL, so the consumer's backbone passes run meanwhile."""

    def safe(item: T) -> R | ImageReadError:
        try:
            return fn(item)
        except ImageReadError as exc:
            return exc

    with ThreadPoolExecutor(workers) as pool:
        queue: deque = deque()
        rest = iter(items)
        for item in itertools.islice(rest, workers):
            queue.append((item, pool.submit(safe, item)))
        while queue:
            item, future = queue.popleft()
            result = future.result()
            for nxt in itertools.islice(rest, 1):
                queue.append((nxt, pool.submit(safe, nxt)))
            yield item, result


def support_features(
    st: CategoryState,
    det: AnomalyDINO,
    runtime: BackboneRuntime,
    log: Progress,
    shots: int,
    seed: int,
) -> list[Tensor]:
    """The features of every view of the (shots, seed) support set, in bank order; those
    not computed yet (``readable_support`` computes them all ahead) are computed now."""
    paths = support_paths(st.data.train, shots, seed)
    missing = [p for p in paths if p not in st.support_features]
    if missing:
        with log.bar(f"[{st.category}] support features", len(missing)) as bar:
            for path in missing:
                st.support_features[path] = runtime.features(det.support_views(path))
                bar.update()
    return [f for p in paths for f in st.support_features[p]]


def readable_support(
    st: CategoryState,
    det: AnomalyDINO,
    runtime: BackboneRuntime,
    log: Progress,
    skip: Callable[[str], None],
    pending: list[ConditionGroup],
) -> list[ConditionGroup]:
    """The pending units whose support images can all be read; the others are skipped
    and said so (naming every unreadable file of the drawn support set). Every support image's
    features are computed here, its views prepared ahead in worker threads."""
    drawn = {
        (seed, k): support_paths(st.data.train, k, seed)
        for seed, k in sorted({(seed, k) for seed, _, _, shots in pending for k in shots})
    }
    every = dict.fromkeys(p for paths in drawn.values() for p in paths)
    missing = [p for p in every if p not in st.support_features]
    failed: dict[Path, ImageReadError] = {}
    with log.bar(f"[{st.category}] support features", len(missing)) as bar:
        for path, views in prefetched(det.support_views, missing):
            if isinstance(views, ImageReadError):
                failed[path] = views
            else:
                st.support_features[path] = runtime.features(views)
            bar.update()
    unreadable = set()
    for (seed, k), paths in drawn.items():
        bad = [p for p in paths if p in failed]
        if bad:  # every unreadable image of the drawn set, so that one fix is enough
            unreadable.add((seed, k))
            reasons = "; ".join(f"support {failed[p]}" for p in bad)
            skip(f"[{st.category}] {k} shots, seed {seed} skipped: {reasons}")
    out = []
    for seed, cond, eps, shots in pending:
        kept = [k for k in shots if (seed, k) not in unreadable]
        if kept:
            out.append(ConditionGroup(seed, cond, eps, kept))
    return out
