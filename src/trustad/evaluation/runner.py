"""The evaluation grid: categories x shots x seeds x conditions (PROTOCOL sections 2-6).

The runner only orders the work. Features are the cost, so each test image's clean
features are computed once per category, each distinct support image's (rotated) views
once, and the adversarial features of an attack that does not depend on the memory bank
(noise, fgsm, pgd) once per seed and eps, then reused across shots. Score attacks depend on
the bank and are computed per shots and seed. Rows come from ``rows``, persistence from
``store``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
from .progress import Progress
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
)
from .settings import CLEAN, EvaluationSettings
from .store import ResultStore
from .units import WorkUnit, run_units

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
        progress: bool = True,
    ) -> None:
        self.s = settings
        self.runtime = BackboneRuntime(
            backbone,
            resolution=settings.resolution,
            batch_size=settings.batch_size,
            features_bf16=settings.bf16,
            gradients_bf16=settings.attack_bf16,
        )
        self.store = ResultStore(out, settings)
        source = getattr(backbone, "weights_source", None)  # set by load_backbone
        if source is not None:
            self.store.record_weights(source.to_dict())
        self.log = Progress(progress)
        self.calibration_options = CalibrationOptions(
            {name: settings.calibrator_options(name) for name in ("platt",)},
            settings.flag_rate,
            settings.conformal_alpha,
        )

    @property
    def backbone_images(self) -> int:
        """Images passed through the backbone without gradient so far."""
        return self.runtime.images_seen

    def run(self, units: Sequence[WorkUnit] | None = None) -> list[dict[str, Any]]:
        """Run the work units (category, seed) the settings ask for (those of their shard),
        or only ``units``; returns every result row of the store."""
        s = self.s
        if units is None:
            units = run_units(s, list_categories(s.dataset, s.root, s.categories))
        seeds_of: dict[str, list[int]] = {}
        for category, seed in units:
            seeds_of.setdefault(category, []).append(seed)
        t0 = time.time()
        self.failures: dict[str, str] = {}
        for category, seeds in seeds_of.items():
            # A broken category (unreadable image, bad mask) must not cost the others.
            try:
                self._run_category(category, seeds)
            except (ValueError, FileNotFoundError, OSError) as exc:
                self.failures[category] = str(exc)
                self.log(f"[{category}] failed, skipped: {exc}")
        self.log(
            f"done in {time.time() - t0:.0f} s; {self.backbone_images} backbone passes "
            "without gradient"
        )
        return self.store.rows

    # -- planning -----------------------------------------------------------------------
    def _pending(
        self, data: CategoryData, seeds: Sequence[int]
    ) -> list[tuple[int, str, float, list[int]]]:
        """Units (seed, condition, eps, shots still to do) of this category. Shot counts for
        which the category has too few training images are skipped (and said so)."""
        possible = {}
        for seed in seeds:
            for k in self.s.shots:
                try:
                    select_support(data.train, k, seed)
                    possible[seed, k] = True
                except ValueError as exc:
                    possible[seed, k] = False
                    self.log(f"[{data.category}] skipped {k} shots, seed {seed}: {exc}")
        out = []
        for seed in seeds:
            for cond, eps in self.s.conditions():
                shots = [
                    k
                    for k in self.s.shots
                    if possible[seed, k]
                    and not self.store.done(self.s.dataset, data.category, k, seed, cond, eps)
                ]
                if shots:
                    out.append((seed, cond, eps, shots))
        return out

    # -- per category -------------------------------------------------------------------
    def _run_category(self, category: str, seeds: Sequence[int]) -> None:
        data = load_category(self.s.dataset, self.s.root, category)
        pending = self._pending(data, seeds)
        if not pending:
            self.log(f"[{category}] already complete, skipped")
            return
        st = self._load(data)
        det = self._detector(category)
        st.clean_features = self._features(st, st.images, "clean features")
        st.clean_foreground = det.foreground(st.clean_features)
        for seed, cond, eps, shots in pending:
            split = calibration_split(st.labels, self.s.calibration_fraction, seed)
            if cond == CLEAN:
                per_shot = {k: (st.clean_features, st.clean_foreground, None) for k in shots}
            else:
                per_shot = self._adversarial(st, det, cond, eps, seed, shots, split)
            results, scores = [], []
            for k in shots:
                unit = Unit(self.s.dataset, category, k, seed, cond, eps)
                row, unit_scores = self._unit(st, det, unit, per_shot[k], split)
                results.append(row)
                scores.extend(unit_scores)
            self.store.add(results, scores)

    def _detector(self, category: str) -> AnomalyDINO:
        """The detector for a category: the table's defaults unless the settings override."""
        defaults = category_defaults(self.s.dataset, category, self.s.preprocessing)
        return AnomalyDINO(
            self.runtime,
            rotate=defaults.rotate if self.s.rotate is None else self.s.rotate,
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
        for i, sample in enumerate(data.test):
            self.log(f"[{category}] preprocessing", i, len(data.test))
            images.extend(self.runtime.preprocess([sample.path])[0])
            sizes.append(image_size(sample.path))
        labels = np.array([s.label for s in data.test])
        masks = None
        if data.has_masks:
            masks = [load_mask(s, size) for s, size in zip(data.test, sizes)]
        return CategoryState(data, images, sizes, labels, masks)

    def _features(self, st: CategoryState, images: list[Tensor], what: str) -> list[Tensor]:
        out: list[Tensor] = []
        for start, batch in batches(images, self.s.batch_size):
            self.log(f"[{st.category}] {what}", start, len(images))
            out.extend(self.runtime.features(list(batch)))
        self.log(f"[{st.category}] {what}", len(out), len(images))
        return out

    def _fit(self, det: AnomalyDINO, st: CategoryState, shots: int, seed: int) -> None:
        paths = select_support(st.data.train, shots, seed)
        missing = [p for p in paths if p not in st.support_features]
        for i, path in enumerate(missing):
            self.log(f"[{st.category}] support features", i, len(missing))
            st.support_features[path] = self.runtime.features(det.support_views(path))
        if missing:
            self.log(f"[{st.category}] support features", len(missing), len(missing))
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
            maps = [anomaly_map(d, size) for d, size in zip(dists, st.sizes)]
            row.update(pixel_columns(st.masks, maps))
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
            probe, history = train_probe(
                feats[None, None].to(device), targets[None, None].to(device), settings
            )
            st.probes[seed] = probe
            if st.masks is None:
                self.log(f"[{st.category}] {IMAGE_LABEL_PROBE}")
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
        out: list[Tensor] = []
        for start, batch in batches(st.images, self.s.batch_size):
            self.log(what, start, len(st.images))
            adv = run_attack(
                batch.to(device),
                attack,
                objective=objective_for(list(range(start, start + len(batch)))),
                generator=gen,
                autocast=self.runtime.gradients_bf16,
            )
            out.extend(adv.detach().cpu())
        self.log(what, len(out), len(out))
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
            self.log(
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
