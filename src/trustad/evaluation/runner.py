"""The evaluation grid: categories x shots x seeds x conditions (PROTOCOL sections 2-6).

The runner only orders the work. Features are the cost, so each test image's clean
features are computed once per category, each distinct support image's (rotated) views
once, and the adversarial features of an attack that does not depend on the memory bank
(noise, fgsm, pgd) once per seed and eps, then reused across shots. Score attacks depend on
the bank and are computed per shots and seed. Rows come from ``rows``, persistence from
``store``.
"""

from __future__ import annotations

import functools
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..attacks import AttackSettings, probe_objective, run_attack, score_loss, train_probe
from ..backbone.preprocess import patch_mask, preprocess_mask
from ..backbone.runtime import BackboneRuntime, batches
from ..data import CategoryData, image_size, list_categories, load_category, load_mask
from ..data import support_paths as select_support
from ..data.catalog import category_defaults
from ..detector import AnomalyDINO, anomaly_map
from .examples import save_examples
from .plan import Group, gradient_steps, make_plan, pending_groups, rotates_support
from .progress import Progress, Stopwatch
from .rows import (
    IMAGE_LABEL_PROBE,
    CalibrationOptions,
    Split,
    Unit,
    calibration_split,
    perturbation_columns,
    pixel_columns,
    result_row,
    score_rows,
    share_seconds,
    timing_columns,
)
from .settings import CLEAN, EvaluationSettings
from .store import TIMING_COLUMNS, ResultStore

# What a unit is scored on: features, foreground masks, and the attacked inputs (None: clean).
Scored = tuple[list[Tensor], list[Tensor] | None, list[Tensor] | None]


@dataclass
class CategoryState:
    """What is computed once per category and shared by every unit of work."""

    data: CategoryData
    images: list[Tensor]  # preprocessed test images (3, H, W) in [0, 1]
    sizes: list[tuple[int, int]]  # original (width, height)
    labels: np.ndarray
    masks: list[np.ndarray] | None  # ground-truth masks at the original size
    clean_features: list[Tensor] = field(default_factory=list)
    clean_foreground: list[Tensor] | None = None
    clean_scores: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    support_features: dict[Path, list[Tensor]] = field(default_factory=dict)
    probe_labels: list[Tensor] | None = None
    probes: dict[int, torch.nn.Linear] = field(default_factory=dict)

    @property
    def category(self) -> str:
        return self.data.category


class Evaluation:
    """Runs the grid for one ``EvaluationSettings`` into a ``ResultStore``."""

    def __init__(
        self,
        settings: EvaluationSettings,
        backbone: torch.nn.Module,
        out: str | Path,
        progress: bool | Progress = True,
    ) -> None:
        self.s = settings
        self.runtime = BackboneRuntime(
            backbone,
            resolution=settings.resolution,
            batch_size=settings.batch_size,
            features_bf16=settings.bf16,
            gradients_bf16=settings.attack_bf16,
        )
        self.log = progress if isinstance(progress, Progress) else Progress(progress)
        self.log.debug("settings: " + json.dumps(settings.to_dict()))
        self.store = ResultStore(out, settings)
        source = getattr(backbone, "weights_source", None)  # set by load_backbone
        if source is not None:
            self.log.debug("weights: " + json.dumps(source.to_dict(), default=str))
            self.store.record_weights(source.to_dict())
        self.clock = Stopwatch()
        self.failures: dict[str, str] = {}
        self.skipped: list[str] = []  # units that cannot be done, with why
        self.computed = 0  # units computed by this run
        self.already_done = 0  # units found done in the output folder
        self.calibration_options = CalibrationOptions(
            {name: settings.calibrator_options(name) for name in ("platt",)},
            settings.flag_rate,
            settings.conformal_alpha,
        )

    @property
    def backbone_images(self) -> int:
        """Images passed through the backbone without gradient so far."""
        return self.runtime.images_seen

    def run(self) -> list[dict[str, Any]]:
        s = self.s
        categories = list_categories(s.dataset, s.root, s.categories)
        t0 = time.time()
        plan = make_plan(s, self._is_done)
        self.already_done = sum(c.done for c in plan.categories)
        self.log(
            f"{len(plan.pending)} units to do, {self.already_done} already done; "
            f"{plan.forward} backbone passes and {plan.gradient} gradient passes planned"
        )
        with self.log.bar("units", len(plan.pending), "unit") as self.units_bar:
            for category in categories:
                # A broken category (unreadable image, bad mask) must not cost the others.
                try:
                    self._run_category(category)
                except (ValueError, FileNotFoundError, OSError) as exc:
                    self.failures[category] = str(exc)
                    self.log.logger.warning(f"[{category}] failed, skipped: {exc}")
        self.log(
            f"done in {time.time() - t0:.0f} s; {self.backbone_images} backbone passes "
            "without gradient"
        )
        return self.store.rows

    def _is_done(self, unit: Unit) -> bool:
        return self.store.done(*astuple(unit))

    # -- planning -----------------------------------------------------------------------
    def _pending(self, data: CategoryData) -> list[Group]:
        """Units (seed, condition, eps, shots still to do) of this category. Shot counts for
        which the category has too few training images are skipped (and said so)."""
        groups, skipped = pending_groups(self.s, data, self._is_done)
        for message in skipped:
            self.log.logger.warning(f"skipped {message}")
        self.skipped += skipped
        return groups

    # -- per category -------------------------------------------------------------------
    def _run_category(self, category: str) -> None:
        data = load_category(self.s.dataset, self.s.root, category)
        pending = self._pending(data)
        if not pending:
            self.log(f"[{category}] already complete, skipped")
            return
        self.clock.take()
        with self.clock("features"):
            st = self._load(data)
        det = self._detector(category)
        st.clean_features = self._features(st, st.images, "clean features")
        with self.clock("features"):
            st.clean_foreground = det.foreground(st.clean_features)
        # Work shared by several units is shared out evenly among them.
        shared = share_seconds(self.clock.take(), sum(len(g.shots) for g in pending))
        self.shot_seconds: dict[int, dict[str, float]] = {}
        for seed, cond, eps, shots in pending:
            split = calibration_split(st.labels, self.s.calibration_fraction, seed)
            if cond == CLEAN:
                per_shot = {k: (st.clean_features, st.clean_foreground, None) for k in shots}
            else:
                per_shot = self._adversarial(st, det, cond, eps, seed, shots, split)
            group = share_seconds(self.clock.take(), len(shots))
            results, scores = [], []
            for k in shots:
                unit = Unit(self.s.dataset, category, k, seed, cond, eps)
                t0 = time.perf_counter()
                row, unit_scores = self._unit(st, det, unit, per_shot[k], split)
                own = self.clock.take()
                own["metrics"] = time.perf_counter() - t0 - sum(own.values())
                seconds = [shared, group, self.shot_seconds.pop(k, {}), own]
                row.update(timing_columns(seconds))
                self.log.debug(
                    f"[{category}] unit shots={k} seed={seed} {cond} eps={eps:.6g}: "
                    + ", ".join(f"{c} {row[c]:.2f}" for c in TIMING_COLUMNS)
                )
                results.append(row)
                scores.extend(unit_scores)
            self.store.add(results, scores)
            self.computed += len(results)
            self.units_bar.update(len(results))

    def _detector(self, category: str) -> AnomalyDINO:
        """The detector for a category: the table's defaults unless the settings override."""
        defaults = category_defaults(self.s.dataset, category, self.s.preprocessing)
        return AnomalyDINO(
            self.runtime,
            rotate=rotates_support(self.s, category),
            mask_test=defaults.mask_test if self.s.mask_test is None else self.s.mask_test,
            mask_support=self.s.mask_support,
            mask_morphology=self.s.mask_morphology,
            knn=self.s.knn,
        )

    def _load(self, data: CategoryData) -> CategoryState:
        category = data.category
        self.log(
            f"[{category}] {len(data.test)} test images, {len(data.train)} normal training images"
        )
        images, sizes = [], []
        with self.log.bar(f"[{category}] reading test images", len(data.test)) as bar:
            for sample in data.test:
                images.extend(self.runtime.preprocess([sample.path])[0])
                sizes.append(image_size(sample.path))
                bar.update()
        labels = np.array([s.label for s in data.test])
        masks = None
        if data.has_masks:
            masks = [load_mask(s, size) for s, size in zip(data.test, sizes)]
        return CategoryState(data, images, sizes, labels, masks)

    def _features(self, st: CategoryState, images: list[Tensor], what: str) -> list[Tensor]:
        out: list[Tensor] = []
        with self.clock("features"), self.log.bar(f"[{st.category}] {what}", len(images)) as bar:
            for _, batch in batches(images, self.s.batch_size):
                out.extend(self.runtime.features(list(batch)))
                bar.update(len(batch))
        return out

    def _fit(self, det: AnomalyDINO, st: CategoryState, shots: int, seed: int) -> None:
        paths = select_support(st.data.train, shots, seed)
        missing = [p for p in paths if p not in st.support_features]
        if missing:
            desc = f"[{st.category}] support features"
            with self.clock("features"), self.log.bar(desc, len(missing)) as bar:
                for path in missing:
                    st.support_features[path] = self.runtime.features(det.support_views(path))
                    bar.update()
        det.fit_features([f for p in paths for f in st.support_features[p]])

    # -- one unit -----------------------------------------------------------------------
    def _unit(
        self,
        st: CategoryState,
        det: AnomalyDINO,
        unit: Unit,
        scored: Scored,
        split: Split,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        features, foreground, attacked = scored
        self._fit(det, st, unit.shots, unit.seed)
        dists = det.distances_from_features(features, foreground)
        scores = det.scores_from_distances(dists)
        if attacked is None:
            st.clean_scores[unit.shots, unit.seed] = scores
        clean = self._clean_scores(st, det, unit.shots, unit.seed)
        notes = []
        attack = None if attacked is None else self.s.attack(unit.condition, unit.eps)
        if attack and attack.needs_objective and not attack.targets_score and st.masks is None:
            notes.append(IMAGE_LABEL_PROBE)
        row, probs = result_row(
            unit, st.labels, scores, clean, split, self.calibration_options, notes
        )
        if self.s.pixel_metrics and st.masks is not None:
            desc = f"[{st.category}] pixel metrics"
            with self.log.bar(desc, len(dists) + 1, "step") as bar:
                maps = []
                for d, size in zip(dists, st.sizes):
                    maps.append(anomaly_map(d, size))
                    bar.update()
                row.update(pixel_columns(st.masks, maps))
                bar.update()
        if attacked is not None:
            row.update(perturbation_columns(st.images, attacked))
        image_ids = [t.image_id for t in st.data.test]
        per_image = score_rows(unit, image_ids, st.labels, split, scores, probs)
        if self.s.save_examples and unit.shots == self.s.shots[0] and unit.seed == 0:
            save_examples(
                self.store.out / "examples" / st.category,
                st.data.test,
                st.labels,
                attacked or st.images,
                st.masks,
                st.sizes,
                dists,
                unit,
                self.s.save_examples,
            )
        return row, per_image

    def _clean_scores(
        self, st: CategoryState, det: AnomalyDINO, shots: int, seed: int
    ) -> np.ndarray:
        """Clean scores at (shots, seed); ``det`` must be fitted for them. Kept in memory
        for the category; computed from the clean features when a resumed run needs them."""
        if (shots, seed) not in st.clean_scores:
            dists = det.distances_from_features(st.clean_features, st.clean_foreground)
            st.clean_scores[shots, seed] = det.scores_from_distances(dists)
        return st.clean_scores[shots, seed]

    # -- attacks ------------------------------------------------------------------------
    def _probe_labels(self, st: CategoryState) -> list[Tensor]:
        """Patch labels for the probe: max-pooled masks, or the image label everywhere."""
        if st.probe_labels is None:
            st.probe_labels = []
            for i, x in enumerate(st.images):
                if st.masks is not None:
                    m = patch_mask(preprocess_mask(st.masks[i], self.s.resolution))
                else:
                    m = torch.full((x.shape[1] // 14, x.shape[2] // 14), bool(st.labels[i]))
                st.probe_labels.append(m.float())
        return st.probe_labels

    def _probe(self, st: CategoryState, seed: int, split: Split) -> torch.nn.Linear:
        if seed not in st.probes:
            settings = self.s.probe(seed)
            train = range(len(st.images)) if settings.train_on == "test" else split.calibration
            if len(train) == 0:
                raise ValueError(
                    f"{st.category}, seed {seed}: the probe is to be trained on the "
                    "calibration split (probe_train_on='calibration'), but this category has "
                    "none (see the clean rows' note); use probe_train_on='test'"
                )
            labels = self._probe_labels(st)
            feats = torch.cat(
                [st.clean_features[i].reshape(-1, st.clean_features[i].shape[-1]) for i in train]
            )
            targets = torch.cat([labels[i].reshape(-1) for i in train])
            device = self.runtime.device
            desc = f"[{st.category}] probe seed {seed}"
            with self.clock("attack"), self.log.bar(desc, settings.steps, "step") as bar:
                probe, history = train_probe(
                    feats[None, None].to(device),
                    targets[None, None].to(device),
                    settings,
                    on_step=bar.update,
                )
            st.probes[seed] = probe
            if st.masks is None:
                self.log.debug(f"[{st.category}] {IMAGE_LABEL_PROBE}")
            self.log(
                f"[{st.category}] probe seed {seed}: BCE {history[0]:.4f} -> {history[-1]:.4f}"
            )
        return st.probes[seed]

    def _attack_images(
        self,
        st: CategoryState,
        attack: AttackSettings,
        objective_for: Callable[[list[int]], Callable[[Tensor], Tensor] | None],
        seed: int,
    ) -> list[Tensor]:
        """Attacked versions of every test image, batch by batch."""
        device = self.runtime.device
        gen = torch.Generator(device=device)
        gen.manual_seed(zlib.crc32(f"{st.category}/{attack.name}/{attack.eps}/{seed}".encode()))
        what = f"[{st.category}] {attack.name} eps={attack.eps:.4g} seed {seed}"
        steps = max(gradient_steps(attack), 1)  # PGD: one bar step per image and PGD step
        out: list[Tensor] = []
        unit = "img-step" if steps > 1 else "img"
        with self.clock("attack"), self.log.bar(what, steps * len(st.images), unit) as bar:
            for start, batch in batches(st.images, self.s.batch_size):
                adv = run_attack(
                    batch.to(device),
                    attack,
                    objective=objective_for(list(range(start, start + len(batch)))),
                    generator=gen,
                    autocast=self.runtime.gradients_bf16,
                    on_step=functools.partial(bar.update, len(batch)) if steps > 1 else None,
                )
                if steps == 1:
                    bar.update(len(batch))
                out.extend(adv.detach().cpu())
        return out

    def _adversarial(
        self,
        st: CategoryState,
        det: AnomalyDINO,
        cond: str,
        eps: float,
        seed: int,
        shots: list[int],
        split: Split,
    ) -> dict[int, Scored]:
        attack = self.s.attack(cond, eps)
        if attack.targets_score:
            self.log.debug(
                f"[{st.category}] {cond} depends on the memory bank: computed per shots and seed"
            )
            labels = torch.as_tensor(st.labels, dtype=torch.float32)
            out = {}
            for k in shots:
                self._fit(det, st, k, seed)

                def score_objective(idx: list[int]) -> Callable[[Tensor], Tensor]:
                    return score_loss(det, labels[idx].to(det.device))

                adv = self._attack_images(st, attack, score_objective, seed)
                feats = self._features(st, adv, f"{cond} features")
                out[k] = (feats, det.foreground(feats), adv)
                self.shot_seconds[k] = self.clock.take()
            return out
        objective_for: Callable[[list[int]], Callable[[Tensor], Tensor] | None]
        if attack.needs_objective:
            probe = self._probe(st, seed, split)
            patch_labels = self._probe_labels(st)
            device = self.runtime.device

            def objective_for(idx: list[int]) -> Callable[[Tensor], Tensor]:
                m = torch.stack([patch_labels[i] for i in idx]).to(device)
                return probe_objective(self.runtime.backbone, probe, m)
        else:

            def objective_for(idx: list[int]) -> None:
                return None

        adv = self._attack_images(st, attack, objective_for, seed)
        feats = self._features(st, adv, f"{cond} features")
        return {k: (feats, det.foreground(feats), adv) for k in shots}
