"""The grid's work units (category, seed) as Ray tasks, on a local or remote Ray cluster.

Each task runs an ordinary ``Evaluation`` of its one unit into its own scratch folder
(``<out>/parts/<category>-seed<seed>`` on the node that runs it), seeded with the rows the
driver already holds for that unit, and returns its rows; the driver is the only writer of
the run folder, so there are no concurrent appends. A task whose worker dies is retried
(``max_retries``) and resumes from its scratch folder; a rerun of the driver submits only
the units that still miss rows. The backbone is loaded once per worker process (a cache in
this module) and tasks ask for one GPU each when the cluster has GPUs. Ray is imported only
here, and only when this executor is used.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import list_categories
from .merge import copy_examples, folder_rows
from .progress import Progress
from .settings import EvaluationSettings
from .store import KEY_COLUMNS, ResultStore, row_key
from .units import WorkItem, run_work_items, training_images, unit_keys

BackboneFactory = Callable[..., torch.nn.Module]  # called as factory(device=...)
_BACKBONES: dict[str, torch.nn.Module] = {}  # per worker process: the last backbone loaded


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(
            "the Ray executor needs Ray: pip install 'trustad[ray]' (or pip install ray)"
        ) from exc
    return ray


def cached_backbone(factory: BackboneFactory, key: str, device: str) -> torch.nn.Module:
    """The backbone ``key`` of this worker process, loaded on first use only."""
    from ..backbone.runtime import resolve_device

    if key not in _BACKBONES:
        _BACKBONES.clear()  # one model per worker: free the previous one's memory first
        _BACKBONES[key] = factory(device=resolve_device(device))
    return _BACKBONES[key]


def run_unit(
    settings: dict[str, Any],
    unit: WorkItem,
    known: tuple[list[dict], list[dict]],
    scratch: str,
    factory: BackboneFactory,
    key: str,
    device: str,
) -> dict[str, Any]:
    """One work unit in a worker: rows the driver already has (``known``) are written to the
    scratch folder first, so that only the missing ones are computed."""
    from .runner import Evaluation

    s = EvaluationSettings.from_dict(settings)
    folder = Path(scratch)
    store = ResultStore(folder, s)
    results, scores = known
    for r in results:
        if not store.done(*(r[c] for c in KEY_COLUMNS)):
            store.add([r], [x for x in scores if row_key(x) == row_key(r)])
    backbone = cached_backbone(factory, key, device)
    run = Evaluation(s, backbone, folder, progress=False)
    run.run(units=[unit])
    results, grouped = folder_rows(folder)
    examples = {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.glob("examples/*/*")
        if p.is_file()
    }
    source = getattr(backbone, "weights_source", None)
    return {
        "results": results,
        "scores": [r for rows in grouped.values() for r in rows],
        "examples": examples,
        "failures": run.failures,
        "weights": source.to_dict() if source is not None else None,
    }


class RayEvaluation:
    """Runs the grid's work units as Ray tasks into one run folder (``Evaluation``'s
    interface: ``store``, ``run()``, ``failures``)."""

    def __init__(
        self,
        settings: EvaluationSettings,
        out: str | Path,
        device: str = "auto",
        address: str | None = None,
        progress: bool | Progress = True,
        backbone_factory: BackboneFactory | None = None,
        backbone_key: str | None = None,
        max_retries: int = 3,
        cpus_per_task: float = 1.0,
    ) -> None:
        self.s = settings
        self.store = ResultStore(out, settings)
        self.device = device
        self.address = address
        self.factory = backbone_factory or functools.partial(
            _load_backbone, settings.backbone, settings.weights
        )
        self.key = backbone_key or f"{settings.backbone}|{settings.weights}"
        self.max_retries = max_retries
        self.cpus_per_task = cpus_per_task
        self.log = progress if isinstance(progress, Progress) else Progress(progress)
        self.failures: dict[str, str] = {}
        # What the closing summary reports, as ``Evaluation`` has them.
        self.skipped: list[str] = []
        self.impossible: list[str] = []
        self.computed = 0  # result rows added by this run
        self.already_done = len(self.store.rows)

    def pending(self, units: Sequence[WorkItem]) -> list[WorkItem]:
        """Units with at least one result row still missing."""
        done = {row_key(r) for r in self.store.rows}
        trains: dict[str, Any] = {}
        out = []
        for category, seed in units:
            if category not in trains:
                trains[category] = training_images(self.s, category)
            if unit_keys(self.s, category, seed, trains[category]) - done:
                out.append((category, seed))
        return out

    def run(self, units: Sequence[WorkItem] | None = None) -> list[dict[str, Any]]:
        ray = import_ray()
        s = self.s
        if units is None:
            units = run_work_items(s, list_categories(s.dataset, s.root, s.categories))
        todo = self.pending(units)
        self.failures = {}
        if not todo:
            self.log("all units already complete")
            return self.store.rows
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level="ERROR")
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        task = ray.remote(
            num_cpus=self.cpus_per_task,
            num_gpus=gpus,
            max_retries=self.max_retries,
            max_calls=0,  # keep the worker (and its cached backbone) between GPU tasks too
        )(run_unit)
        results, scores = folder_rows(self.store.out)
        flat_scores = [r for rows in scores.values() for r in rows]
        refs = {}
        t0 = time.time()
        for category, seed in todo:
            known = (
                [r for r in results if (r["category"], int(r["seed"])) == (category, seed)],
                [r for r in flat_scores if (r["category"], int(r["seed"])) == (category, seed)],
            )
            scratch = self.store.out / "parts" / f"{category}-seed{seed}"
            ref = task.remote(
                s.to_dict(), (category, seed), known, str(scratch), self.factory, self.key,
                self.device,
            )  # fmt: skip
            refs[ref] = (category, seed, scratch)
        self.log(f"{len(refs)} work units submitted as Ray tasks ({gpus} GPU each)")
        remaining = list(refs)
        with self.log.bar("work units", len(refs), "unit") as bar:
            while remaining:
                ready, remaining = ray.wait(remaining, num_returns=1)
                category, seed, scratch = refs[ready[0]]
                name = f"{category} seed {seed}"
                bar.update()
                try:
                    out = ray.get(ready[0])
                except Exception as exc:  # a task failed after its retries: the others go on
                    self.failures[name] = str(exc).splitlines()[0] if str(exc) else repr(exc)
                    self.log(f"[{name}] failed: {self.failures[name]}")
                    continue
                self._absorb(out, scratch)
                for category_name, message in out["failures"].items():
                    self.failures[f"{category_name} seed {seed}"] = message
                self.log(f"[{name}] done")
        parts = self.store.out / "parts"
        if parts.is_dir() and not any(parts.iterdir()):
            parts.rmdir()
        self.log(f"done in {time.time() - t0:.0f} s")
        return self.store.rows

    def _absorb(self, out: dict[str, Any], scratch: Path) -> None:
        """A finished task's rows into the run folder, then its scratch folder removed."""
        if out["weights"]:
            self.store.record_weights(out["weights"])
        by_key: dict[tuple, list[dict]] = {}
        for r in out["scores"]:
            by_key.setdefault(row_key(r), []).append(r)
        for r in out["results"]:
            if not self.store.done(*(r[c] for c in KEY_COLUMNS)):
                self.store.add([r], by_key.get(row_key(r), []))
                self.computed += 1
        if out["examples"]:
            for name, data in out["examples"].items():  # the scratch may be on another node
                (scratch / name).parent.mkdir(parents=True, exist_ok=True)
                (scratch / name).write_bytes(data)
            copy_examples(scratch, self.store.out)
        shutil.rmtree(scratch, ignore_errors=True)


def _load_backbone(name: str, weights: str | None, device: Any) -> torch.nn.Module:
    from ..backbone import load_backbone

    return load_backbone(name, weights, device=device)
