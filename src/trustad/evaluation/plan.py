"""What a run will do, before it starts: the units still to compute, the backbone passes
they need, and a time estimate from a short timing of the backbone on this device.

``pending_groups`` is also what the runner uses to choose its work, so the plan and the
run cannot disagree. Passes are counted as the runner computes features: each category's
clean test images once, each distinct support image's views once, the attacked features
of noise/fgsm/pgd once per (seed, eps) and of score attacks once per (shots, seed, eps).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from typing import NamedTuple

import torch

from ..attacks import AttackSettings
from ..backbone.runtime import BackboneRuntime
from ..data import CategoryData, list_categories, load_category
from ..data import support_paths as select_support
from ..data.catalog import category_defaults
from ..detector import ROTATION_ANGLES
from ..flags import FLAG_COSTS
from .rows import ResultKey
from .runlog import format_seconds
from .settings import CLEAN, EvaluationSettings, is_corruption
from .store import result_key

SEARCH_BANK_IMAGES = 8  # support images in the bank the search is timed on
SEARCH_BACKWARD = 3  # a score attack's step searches forward and back: about 3 searches


def run_runtime(settings: EvaluationSettings, backbone: torch.nn.Module) -> BackboneRuntime:
    """The backbone runtime of a run with ``settings``: the run and ``--plan``'s timing
    both build it here, so that the plan times what the run does."""
    return BackboneRuntime(
        backbone,
        resolution=settings.resolution,
        batch_size=settings.batch_size,
        features_bf16=settings.bf16,
        gradients_bf16=settings.attack_bf16,
        tf32=settings.tf32,
    )


class ConditionGroup(NamedTuple):
    """Units of one category that share their attacked features: one seed, condition and
    eps, several shot counts."""

    seed: int
    condition: str
    eps: float
    shots: list[int]


def rotates_support(settings: EvaluationSettings, category: str) -> bool:
    """Whether support images are augmented with rotations: the settings, else the table."""
    if settings.rotate is not None:
        return settings.rotate
    return category_defaults(settings.dataset, category, settings.preprocessing).rotate


def gradient_steps(attack: AttackSettings) -> int:
    """Forward+backward passes per image of an attack."""
    if not attack.needs_objective:
        return 0
    return 1 if attack.name.endswith("fgsm") else attack.steps


def pending_groups(
    settings: EvaluationSettings, data: CategoryData, done: Callable[[ResultKey], bool]
) -> tuple[list[ConditionGroup], list[str]]:
    """The units of ``data``'s category still to do, grouped, and why some cannot be done
    (shot counts larger than the training set, seeds that cannot be drawn)."""
    s = settings
    possible, skipped = {}, []
    for seed in range(s.seeds):
        for k in s.shots:
            try:
                select_support(data.train, k, seed)
                possible[seed, k] = True
            except ValueError as exc:
                possible[seed, k] = False
                skipped.append(f"{data.category}, {k} shots, seed {seed}: {exc}")
    groups = []
    for seed in range(s.seeds):
        for cond, eps in s.conditions():
            shots = [
                k
                for k in s.shots
                if possible[seed, k]
                and not done(ResultKey(s.dataset, data.category, k, seed, cond, eps))
            ]
            if shots:
                groups.append(ConditionGroup(seed, cond, eps, shots))
    return groups, skipped


@dataclass
class CategoryPlan:
    category: str
    groups: list[ConditionGroup]
    skipped: list[str]
    done: int  # units found done
    forward: int = 0  # images through the backbone without gradient
    gradient: int = 0  # image forward+backward passes (attack steps)
    search: int = 0  # (test image, support view) pairs of the nearest-neighbour search

    def units(self, dataset: str) -> list[ResultKey]:
        return [
            ResultKey(dataset, self.category, k, g.seed, g.condition, g.eps)
            for g in self.groups
            for k in g.shots
        ]


def flag_passes(settings: EvaluationSettings) -> int:
    """Extra backbone passes per image of the attack flags the settings measure, and of
    the gate flag."""
    gate = [settings.gate()] if settings.gate() else []
    return sum(FLAG_COSTS[f] for f in {*settings.flag_names(), *gate})


def category_plan(
    settings: EvaluationSettings, data: CategoryData, done: Callable[[ResultKey], bool]
) -> CategoryPlan:
    groups, skipped = pending_groups(settings, data, done)
    total = sum(1 for _ in settings.conditions()) * settings.seeds * len(settings.shots)
    n_skipped = len(skipped) * len(settings.conditions())
    pending = sum(len(g.shots) for g in groups)
    plan = CategoryPlan(data.category, groups, skipped, total - n_skipped - pending)
    if not groups:
        return plan
    n = len(data.test)
    views = len(ROTATION_ANGLES) if rotates_support(settings, data.category) else 1
    support = {p for g in groups for k in g.shots for p in select_support(data.train, k, g.seed)}
    plan.forward = n + views * len(support)
    for g in groups:
        plan.search += n * views * sum(g.shots)  # every unit scores its test images
        if g.condition == CLEAN:
            continue
        if is_corruption(g.condition):  # one pass per test image, shared by the shots
            plan.forward += n + flag_passes(settings) * 2 * n * len(g.shots)
            continue
        attack = settings.attack(g.condition, g.eps)
        copies = len(g.shots) if attack.targets_score else 1
        plan.forward += copies * n
        # Flags that re-run the backbone do so on the clean and the attacked images of
        # every unit (an upper bound: clean statistics are shared once computed).
        plan.forward += flag_passes(settings) * 2 * n * len(g.shots)
        # The adaptive attack differentiates through the flag's own backbone passes too.
        passes = 1 + (FLAG_COSTS[settings.adaptive_flag] if attack.name == "adaptive" else 0)
        plan.gradient += copies * n * gradient_steps(attack) * passes
        if attack.targets_score:  # each step searches the bank, forward and backward
            plan.search += SEARCH_BACKWARD * n * views * sum(g.shots) * gradient_steps(attack)
    return plan


@dataclass
class BackboneTiming:
    forward: float  # seconds per image, no gradient
    gradient: float  # seconds per image, forward and backward
    search: float  # seconds per (test image, support image) pair of nearest-neighbour search
    batch: int
    device: str


@dataclass
class Plan:
    settings: EvaluationSettings
    categories: list[CategoryPlan]
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def pending(self) -> list[ResultKey]:
        return [u for c in self.categories for u in c.units(self.settings.dataset)]

    @property
    def forward(self) -> int:
        return sum(c.forward for c in self.categories)

    @property
    def gradient(self) -> int:
        return sum(c.gradient for c in self.categories)

    @property
    def search(self) -> int:
        return sum(c.search for c in self.categories)

    def estimate(self, timing: BackboneTiming) -> float:
        """Seconds of backbone work and nearest-neighbour search (the bulk of a run)."""
        return (
            self.forward * timing.forward
            + self.gradient * timing.gradient
            + self.search * timing.search
        )

    def text(self, timing: BackboneTiming | None = None) -> str:
        s = self.settings
        pending = self.pending
        done = sum(c.done for c in self.categories)
        skipped = [m for c in self.categories for m in c.skipped]
        lines = [
            f"{len(self.categories)} categories; units: {len(pending)} to do, {done} done, "
            f"{len(skipped) * len(s.conditions())} cannot be done "
            f"({len(s.shots)} shots x {s.seeds} seeds x {len(s.conditions())} conditions "
            "per category)"
        ]
        for u in pending:
            lines.append(
                f"  to do: {u.category} shots={u.shots} seed={u.seed} {u.condition}"
                + (f" eps={u.eps:.6g}" if u.condition != CLEAN else "")
            )
        lines += [f"  cannot be done: {m}" for m in skipped]
        lines += [f"  category failed: {c}: {m}" for c, m in self.failed.items()]
        lines.append(
            f"backbone passes: {self.forward} images without gradient, {self.gradient} image "
            f"forward+backward passes (attack steps); nearest-neighbour search: {self.search} "
            "test-support image pairs"
        )
        if timing is not None:
            lines.append(
                f"timing on {timing.device} at {s.resolution} px (batch of {timing.batch}): "
                f"{timing.forward:.3g} s per image forward, {timing.gradient:.3g} s per image "
                f"forward+backward, {timing.search:.3g} s per image pair searched"
            )
            lines.append(
                f"estimated time: {format_seconds(self.estimate(timing))} for the backbone and "
                "the search (reading images, calibration and pixel metrics come on top)"
            )
        return "\n".join(lines)


def done_in(keys: set[tuple]) -> Callable[[ResultKey], bool]:
    """Whether a unit is among the unit keys ``keys`` (``store.done_results``)."""
    return lambda unit: result_key(*astuple(unit)) in keys


def make_plan(settings: EvaluationSettings, is_done: Callable[[ResultKey], bool]) -> Plan:
    """The plan for ``settings``; ``is_done`` tells the units already computed."""
    plan = Plan(settings, [])
    for category in list_categories(settings.dataset, settings.root, settings.categories):
        try:
            data = load_category(settings.dataset, settings.root, category)
        except (ValueError, OSError) as exc:
            plan.failed[category] = str(exc)
            continue
        plan.categories.append(category_plan(settings, data, is_done))
    return plan


def _median_seconds(fn: Callable[[], object], least: float) -> float:
    """Median time of ``fn``: at least 2 calls, more (up to 5) until ``least`` seconds have
    passed; one call alone is at the mercy of a busy machine."""
    times: list[float] = []
    while len(times) < 2 or (sum(times) < least and len(times) < 5):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_backbone(runtime: BackboneRuntime, batch: int, least: float = 2.0) -> BackboneTiming:
    """Seconds per image of a forward batch and of a forward+backward batch of ``batch``
    random square images at the runtime's resolution (medians, see ``_median_seconds``),
    after a warm-up batch (first calls of a shape allocate and pick kernels)."""
    res = runtime.resolution
    device = runtime.device
    gen = torch.Generator().manual_seed(0)
    images = list(torch.rand(batch, 3, res, res, generator=gen))
    seen = runtime.images_seen
    feats = runtime.features(images)
    forward = _median_seconds(lambda: runtime.features(images), least) / batch
    runtime.images_seen = seen  # a timing is not a pass of the run
    x = torch.stack(images).to(device)

    def forward_backward() -> None:
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            runtime.patch_features(xg).sum().backward()

    gradient = _median_seconds(forward_backward, least) / batch
    # The search is a (query patches x bank patches) product and a maximum per row.
    query = feats[0].reshape(-1, feats[0].shape[-1]).to(device)
    bank = torch.rand(SEARCH_BANK_IMAGES * len(query), query.shape[1], generator=gen)
    bank = bank.to(device)
    pair = _median_seconds(lambda: (query @ bank.T).argmax(dim=1).cpu(), least / 4)
    return BackboneTiming(forward, gradient, pair / SEARCH_BANK_IMAGES, batch, str(device))
