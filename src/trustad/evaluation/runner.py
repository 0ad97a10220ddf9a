"""The evaluation grid: categories x shots x seeds x conditions (PROTOCOL sections 2-6).

The runner only orders the work. Features are the cost, so each test image's clean
features are computed once per category, each distinct support image's (rotated) views
once, and the adversarial features of an attack that does not depend on the memory bank
(noise, fgsm, pgd) once per seed and eps, then reused across shots. Score attacks depend on
the bank and are computed per shots and seed. Rows come from ``rows``, persistence from
``store``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..attacks import probe_objective, score_loss
from ..backbone.runtime import batches
from ..data import CategoryData, list_categories, load_category
from ..data import support_paths as select_support
from ..data.catalog import category_defaults
from ..detector import AnomalyDINO
from ..flags import flag_aware_score_loss
from ..maps import anomaly_maps_grouped
from ..metrics import pooled_truth
from ..model import Assessment, FittedDetector, TrustEngine
from ..pixel_metrics import aupro_torch, pixel_auroc_torch, pixel_targets
from .adversarial import Attacker
from .category import CategoryState, load_state, probe_labels
from .examples import save_examples
from .flagging import FlagInputCache, ScoredSet, flag_columns, flag_rate_columns
from .plan import ConditionGroup, make_plan, pending_groups, rotates_support, run_runtime
from .progress import Progress, Stopwatch
from .rows import (
    IMAGE_LABEL_PROBE,
    ResultKey,
    Split,
    calibration_split,
    gated_columns,
    perturbation_columns,
    pixel_columns,
    result_row,
    score_rows,
    share_seconds,
    timing_columns,
)
from .settings import CLEAN, EvaluationSettings, is_corruption
from .store import TIMING_COLUMNS, ResultStore
from .support import readable_support, support_features
from .trust import assess, fit_trust
from .units import WorkItem, run_work_items


class Scored(NamedTuple):
    """What a result is scored on: the test images' features, their foreground masks, and
    the attacked inputs (None: the clean images)."""

    features: list[Tensor]
    foreground: list[Tensor] | None
    attacked: list[Tensor] | None


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
        self.runtime = run_runtime(settings, backbone)
        self.log = progress if isinstance(progress, Progress) else Progress(progress)
        self.log.debug("settings: " + json.dumps(settings.to_dict()))
        self.store = ResultStore(out, settings)
        source = getattr(backbone, "weights_source", None)  # set by load_backbone
        if source is not None:
            self.log.debug("weights: " + json.dumps(source.to_dict(), default=str))
            self.store.record_weights(source.to_dict())
        self.clock = Stopwatch()
        self.attacker = Attacker(settings, self.runtime, self.log, self.clock)
        self.failures: dict[str, str] = {}
        self.skipped: list[str] = []  # files and units left out, with the reason
        self.impossible: list[str] = []  # shot counts and seeds that cannot be drawn, with why
        self.computed = 0  # result rows computed by this run
        self.already_done = 0  # units found done in the output folder

    @property
    def backbone_images(self) -> int:
        """Images passed through the backbone without gradient so far."""
        return self.runtime.images_seen

    def run(self, units: Sequence[WorkItem] | None = None) -> list[dict[str, Any]]:
        """Run the (category, seed) units of the settings (of their shard), or ``units``."""
        s = self.s
        units = units or run_work_items(s, list_categories(s.dataset, s.root, s.categories))
        self.selected, categories = set(units), list(dict.fromkeys(c for c, _ in units))
        t0 = time.time()
        plan = make_plan(s, self._is_done)
        self.already_done = sum(c.done for c in plan.categories)
        self.log(
            f"{len(plan.pending)} results to do, {self.already_done} already done; "
            f"{plan.forward} backbone passes and {plan.gradient} gradient passes planned"
        )
        with self.log.bar("results", len(plan.pending), "row") as self.results_bar:
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

    def _is_done(self, unit: ResultKey) -> bool:
        # Units outside the selection (another shard's) count as done: nothing plans them.
        return (unit.category, unit.seed) not in self.selected or self.store.done(*astuple(unit))

    # -- planning -----------------------------------------------------------------------
    def _pending(self, data: CategoryData) -> list[ConditionGroup]:
        """Units (seed, condition, eps, shots still to do) of this category. Shot counts for
        which the category has too few training images are skipped (and said so)."""
        groups, skipped = pending_groups(self.s, data, self._is_done)
        for message in skipped:
            self.log.logger.warning(f"skipped {message}")
        self.impossible += skipped
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
            st = load_state(data, self.runtime, self.log, self._skip)
            st.model = self._model(category)
            st.flag_inputs = FlagInputCache()
            det = st.model.detector
            pending = readable_support(st, det, self.runtime, self.log, self._skip, pending)
        st.clean_features = self._features(st, st.images, "clean features")
        with self.clock("features"):
            st.clean_foreground = det.foreground(st.clean_features)
        # Work shared by several units is shared out evenly among them.
        shared = share_seconds(self.clock.take(), sum(len(g.shots) for g in pending))
        self.shot_seconds: dict[int, dict[str, float]] = {}
        for seed, cond, eps, shots in pending:
            split = calibration_split(st.labels, self.s.calibration_fraction, seed)
            if cond == CLEAN:
                per_shot = {k: Scored(st.clean_features, st.clean_foreground, None) for k in shots}
            elif is_corruption(cond):
                per_shot = self._corrupted(st, det, cond, seed, shots)
            else:
                per_shot = self._adversarial(st, det, cond, eps, seed, shots, split)
            group = share_seconds(self.clock.take(), len(shots))
            results, scores = [], []
            for k in shots:
                unit = ResultKey(self.s.dataset, category, k, seed, cond, eps)
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
            if cond != CLEAN:  # its features are scored by no other unit
                st.nearest.forget((cond, eps, seed))
                st.perturbations.clear()
            self.computed += len(results)
            self.results_bar.update(len(results))

    def _model(self, category: str) -> FittedDetector:
        """The detector ``trustad fit`` builds, for a category: the table's defaults unless
        the settings override; its trust engine fits every calibrator and every flag of the
        study (``EvaluationSettings.trust``), once per (shots, seed)."""
        defaults = category_defaults(self.s.dataset, category, self.s.preprocessing)
        return FittedDetector(
            self.runtime,
            rotate=rotates_support(self.s, category),
            mask_test=defaults.mask_test if self.s.mask_test is None else self.s.mask_test,
            mask_support=self.s.mask_support,
            mask_morphology=self.s.mask_morphology,
            knn=self.s.knn,
            trust=self.s.trust(),
        )

    def _skip(self, message: str) -> None:
        """Something left out of the run: said now, listed in run.json and at the end."""
        self.skipped.append(message)
        self.store.record("skipped", self.skipped)
        self.log.logger.warning(message)

    def _features(self, st: CategoryState, images: list[Tensor], what: str) -> list[Tensor]:
        out: list[Tensor] = []
        with self.clock("features"), self.log.bar(f"[{st.category}] {what}", len(images)) as bar:
            for _, batch in batches(images, self.s.batch_size):
                out.extend(self.runtime.features(list(batch)))
                bar.update(len(batch))
        return out

    def _fit(self, det: AnomalyDINO, st: CategoryState, shots: int, seed: int) -> None:
        with self.clock("features"):
            feats = support_features(st, det, self.runtime, self.log, shots, seed)
        st.model.fit_features(feats)

    # -- one unit -----------------------------------------------------------------------
    def _unit(
        self,
        st: CategoryState,
        det: AnomalyDINO,
        unit: ResultKey,
        scored: Scored,
        split: Split,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        features, foreground, attacked = scored
        self._fit(det, st, unit.shots, unit.seed)
        dists = self._distances(st, det, unit, features, foreground)
        scores = det.scores_from_distances(dists)
        key = (unit.shots, unit.seed)
        if attacked is None:
            st.clean_distances[key] = dists
        notes = list(st.notes)
        if len(split.calibration) == 0:
            if self.s.flag_names():
                notes.append("flags: no calibration images to set their thresholds")
            if self.s.gate() is not None:
                notes.append("gate: no calibration images to set its threshold")
        trust = self._trust(st, det, key, split)
        clean = self._clean_fields(st, det, key)
        fields = clean
        flag_cols = {}
        if attacked is not None:
            if not is_corruption(unit.condition):
                attack = self.s.attack(unit.condition, unit.eps)
                if attack.needs_objective and not attack.targets_score and st.masks is None:
                    notes.append(IMAGE_LABEL_PROBE)
            fields = assess(trust, scores, ScoredSet(dists, features, attacked), st.flag_inputs)
            flag_cols = flag_columns(self.s.flag_names(), trust, clean, fields, split)
        row = result_row(unit, st.labels, fields, clean, trust, split, self.s.flag_rate, notes)
        row.update(flag_cols)
        row.update(flag_rate_columns(fields, split))
        if fields.flag is not None:
            row.update(gated_columns(fields, st.labels, split, trust))
        if self.s.pixel_metrics and st.masks is not None:
            desc = f"[{st.category}] pixel metrics"
            with self.log.bar(desc, 1, "step") as bar:
                row.update(self._pixel_columns(st, dists))
                bar.update()
        if attacked is not None:
            test_set = self._test_set(unit)  # the same inputs for every shot count: once
            if test_set is None or test_set not in st.perturbations:
                st.perturbations[test_set] = perturbation_columns(st.images, attacked)
            row.update(st.perturbations[test_set])
        image_ids = [t.image_id for t in st.data.test]
        per_image = score_rows(unit, image_ids, st.labels, split, fields)
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

    def _trust(
        self, st: CategoryState, det: AnomalyDINO, key: tuple[int, int], split: Split
    ) -> TrustEngine:
        """The trust engine of (shots, seed) = ``key`` (``det`` fitted for it), once."""
        if key not in st.trust:
            clean_dists = self._clean_distances(st, det, *key)
            st.trust[key] = fit_trust(st, det, key, split, clean_dists, self.s.save_models)
        return st.trust[key]

    def _clean_fields(
        self, st: CategoryState, det: AnomalyDINO, key: tuple[int, int]
    ) -> Assessment:
        """What the trust engine of ``key`` gives every clean test image (once per key)."""
        if key not in st.clean_fields:
            dists = self._clean_distances(st, det, *key)
            scored = ScoredSet(dists, st.clean_features, st.images)
            scores = det.scores_from_distances(dists)
            st.clean_fields[key] = assess(st.trust[key], scores, scored, st.flag_inputs)
        return st.clean_fields[key]

    def _pixel_columns(self, st: CategoryState, dists: list[Tensor]) -> dict[str, float]:
        """Pixel AUROC and AUPRO over the images that have masks: maps batched on the
        device; metrics there on an accelerator, in numpy on the CPU (faster there)."""
        have = [i for i, m in enumerate(st.masks) if m is not None]
        device = self.runtime.device
        maps = anomaly_maps_grouped([dists[i] for i in have], [st.sizes[i] for i in have], device)
        if device.type == "cpu":
            if st.pixel_truth is None:  # the masks' regions, found once per category
                st.pixel_truth = pooled_truth([st.masks[i] for i in have])
            return pixel_columns(st.pixel_truth, [m.numpy() for m in maps])
        if st.pixel_targets is None:
            st.pixel_targets = pixel_targets([st.masks[i] for i in have], device)
        return {
            "pixel_auroc": float(pixel_auroc_torch(st.pixel_targets, maps)),
            "aupro": float(aupro_torch(st.pixel_targets, maps)),
        }

    def _clean_distances(
        self, st: CategoryState, det: AnomalyDINO, shots: int, seed: int
    ) -> list[Tensor]:
        """Clean patch distances at (shots, seed); ``det`` must be fitted for them. Kept in
        memory for the category; computed from the clean features when a resumed run
        needs them."""
        if (shots, seed) not in st.clean_distances:
            unit = ResultKey(self.s.dataset, st.category, shots, seed, CLEAN, 0.0)
            st.clean_distances[shots, seed] = self._distances(
                st, det, unit, st.clean_features, st.clean_foreground
            )
        return st.clean_distances[shots, seed]

    def _test_set(self, unit: ResultKey) -> tuple | None:
        """What identifies the features a unit scores across its category's units: clean,
        or an attack that does not depend on the bank (once per seed and eps); None for
        score attacks (computed per unit)."""
        if unit.condition == CLEAN:
            return (CLEAN,)
        if is_corruption(unit.condition):
            return (unit.condition, unit.eps, unit.seed)
        if self.s.attack(unit.condition, unit.eps).targets_score:
            return None
        return (unit.condition, unit.eps, unit.seed)

    def _distances(
        self,
        st: CategoryState,
        det: AnomalyDINO,
        unit: ResultKey,
        features: list[Tensor],
        foreground: list[Tensor] | None,
    ) -> list[Tensor]:
        """Patch distances of a unit's test features to its (fitted) bank; the 1-NN search
        goes part by part (one per support image) through the category's ``NearestParts``,
        which keeps every part searched for a test set."""
        key = self._test_set(unit)
        if key is None or det.knn != 1 or det.mask_support:  # no parts to reuse
            return det.distances_from_features(features, foreground)
        paths = select_support(st.data.train, unit.shots, unit.seed)
        sizes = [sum(v[..., 0].numel() for v in st.support_features[p]) for p in paths]
        nearest = st.nearest.indices(key, features, det.memory_bank_, paths, sizes)
        return det.distances_from_nearest(features, nearest, foreground)

    def _corrupted(
        self, st: CategoryState, det: AnomalyDINO, cond: str, seed: int, shots: list[int]
    ) -> dict[int, Scored]:
        """The test images under a benign corruption (one draw per seed), for every shots."""
        images = self.attacker.corrupted(st, cond, seed)
        feats = self._features(st, images, f"{cond} features")
        return {k: Scored(feats, det.foreground(feats), images) for k in shots}

    def _score_objective(
        self, st: CategoryState, det: AnomalyDINO, name: str, shots: int, seed: int, split: Split
    ) -> Callable[[list[int]], Callable[[Tensor], Tensor]]:
        """The objective of a score attack on the images at given indices; the adaptive one
        also keeps the flag down, which it knows with its clean calibration statistics."""
        labels = torch.as_tensor(st.labels, dtype=torch.float32).to(det.device)
        if name != "adaptive":
            return lambda idx: score_loss(det, labels[idx])
        clean_dists = self._clean_distances(st, det, shots, seed)
        flag = self._trust(st, det, (shots, seed), split).flags_.get(self.s.adaptive_flag)
        if flag is None:
            raise ValueError(
                f"the adaptive attack needs the {self.s.adaptive_flag} flag fitted on "
                "calibration images; this category has none (see the notes)"
            )
        spread = float(np.std(det.scores_from_distances(clean_dists)[split.calibration]))
        lam = self.s.adaptive_lambda
        return lambda idx: flag_aware_score_loss(det, labels[idx], flag, max(spread, 1e-6), lam)

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
            out = {}
            for k in shots:
                self._fit(det, st, k, seed)
                score_objective = self._score_objective(st, det, attack.name, k, seed, split)
                adv = self.attacker.images(st, attack, score_objective, seed)
                feats = self._features(st, adv, f"{cond} features")
                out[k] = Scored(feats, det.foreground(feats), adv)
                self.shot_seconds[k] = self.clock.take()
            return out
        objective_for: Callable[[list[int]], Callable[[Tensor], Tensor] | None]
        if attack.needs_objective:
            probe = self.attacker.probe(st, seed, split)
            patch_labels = probe_labels(st, self.s.resolution)
            device = self.runtime.device

            def objective_for(idx: list[int]) -> Callable[[Tensor], Tensor]:
                m = torch.stack([patch_labels[i] for i in idx]).to(device)
                return probe_objective(self.runtime.backbone, probe, m)
        else:

            def objective_for(idx: list[int]) -> None:
                return None

        adv = self.attacker.images(st, attack, objective_for, seed)
        feats = self._features(st, adv, f"{cond} features")
        return {k: Scored(feats, det.foreground(feats), adv) for k in shots}
