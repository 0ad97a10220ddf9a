"""Support images of a category: their rotated views prepared ahead in worker threads,
their features computed once, and the units whose support set cannot be read."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
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
    """The pending units with their support sets drawn from the readable training images:
    an unreadable image is left out of the draw (said so, naming it) and the next readable
    one takes its place, as for unreadable test images. A (shots, seed) for which too few
    readable images remain is skipped, naming every unreadable file. Every support image's
    features are computed here, its views prepared ahead in worker threads."""
    wanted = sorted({(seed, k) for seed, _, _, shots in pending for k in shots})
    train, failed = list(st.data.train), {}
    while True:  # each round reads the images the current draw adds
        drawn = {key: _draw(train, key) for key in wanted}
        every = dict.fromkeys(p for paths in drawn.values() if paths for p in paths)
        missing = [p for p in every if p not in st.support_features and p not in failed]
        if not missing:
            break
        with log.bar(f"[{st.category}] support features", len(missing)) as bar:
            for path, views in prefetched(det.support_views, missing):
                if isinstance(views, ImageReadError):
                    failed[path] = views
                else:
                    st.support_features[path] = runtime.features(views)
                bar.update()
        train = [p for p in train if p not in failed]
    if failed:
        reasons = "; ".join(f"support {failed[p]}" for p in failed)
        skip(f"[{st.category}] left out of the support draws: {reasons}")
        st.data = replace(st.data, train=tuple(train))
    out = []
    for seed, cond, eps, shots in pending:
        kept = [k for k in shots if drawn[seed, k] is not None]
        if kept:
            out.append(ConditionGroup(seed, cond, eps, kept))
    for (seed, k), paths in drawn.items():
        if paths is None:
            skip(
                f"[{st.category}] {k} shots, seed {seed} skipped: {len(train)} readable "
                f"training images are too few for it ({len(failed)} unreadable)"
            )
    return out


def _draw(train: list[Path], key: tuple[int, int]) -> list[Path] | None:
    """The support set of (seed, shots) from ``train``; None when it is too small."""
    seed, shots = key
    try:
        return support_paths(train, shots, seed)
    except ValueError:
        return None
