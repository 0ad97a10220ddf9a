"""The evaluation grid: categories x shots x seeds x conditions (PROTOCOL sections 2-6).

Features are the cost, so each test image's clean features are computed once per category,
each distinct support image's (rotated) views once, and the adversarial features of an
attack that does not depend on the memory bank (noise, fgsm, pgd) once per seed and eps,
then reused across shots. Score attacks depend on the bank and are computed per shots and
seed.

Results are written as each unit of work (category, seed, condition, eps; all shots)
completes; a run started again with the same output folder and settings skips the units
already written.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import calibration as cal
from . import metrics
from .attacks import (
    ATTACKS,
    AttackSettings,
    ProbeSettings,
    probe_objective,
    run_attack,
    score_loss,
    train_probe,
)
from .attacks import linf as linf_distance
from .attacks import psnr as psnr_distance
from .backbone.preprocess import patch_mask, preprocess, preprocess_mask
from .data import CategoryData, image_size, list_categories, load_category, load_mask
from .data import support_paths as select_support
from .data.catalog import category_defaults
from .detector import (
    MASK_MORPHOLOGY,
    AnomalyDINO,
    _batches,
    anomaly_map,
    extract_features,
    image_scores,
)

CLEAN = "clean"
DETECTION_COLUMNS = ("auroc", "ap", "f1_max", "g_mean")
PIXEL_COLUMNS = ("pixel_auroc", "aupro")
CALIBRATION_METRICS = ("ece", "classwise_ece", "nll", "brier", "entropy")
FLAG_METRICS = ("flag_auroc", "flag_tpr")
IMAGE_LABEL_PROBE = "probe trained on image labels: no masks, every patch takes its image's label"
KEY_COLUMNS = ("dataset", "category", "shots", "seed", "condition", "eps")
SCORE_COLUMNS = (*KEY_COLUMNS, "image", "label", "split", "score")


def result_columns() -> list[str]:
    """results.csv columns: the key, counts, detection, pixel, calibration, flagging."""
    cols = [*KEY_COLUMNS, "n_images", "n_anomalous", *DETECTION_COLUMNS, *PIXEL_COLUMNS]
    cols += [f"{m}_{c}" for m in CALIBRATION_METRICS for c in cal.CALIBRATORS]
    cols += [f"{m}_{c}" for m in FLAG_METRICS for c in ("uncal", "platt")]
    cols += ["conformal_threshold", "conformal_far", "conformal_tpr"]
    cols += ["n_calibration", "n_evaluation", "linf", "psnr", "note"]
    return cols


@dataclass
class EvaluationSettings:
    """Everything that defines a run; written to run.json and checked on resume."""

    dataset: str
    root: str
    categories: list[str] | None = None
    shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: int = 3
    resolution: int = 448
    backbone: str = "dinov2_vits14"
    weights: str | None = None
    preprocessing: str = "agnostic"
    mask_test: bool | None = None  # None: the category table's default
    rotate: bool | None = None  # None: the category table's default
    mask_support: bool = False
    mask_morphology: str = "grid"
    knn: int = 1
    batch_size: int = 8
    bf16: bool = False
    attacks: list[str] = field(default_factory=lambda: ["none"])
    eps: list[float] = field(default_factory=lambda: [8 / 255])
    pgd_steps: int = 10
    pgd_step_size: float | None = None
    random_start: bool = True
    round_8bit: bool = False
    attack_bf16: bool = False
    probe_steps: int = 200
    probe_lr: float = 1e-3
    probe_train_on: str = "test"
    calibration_fraction: float = 0.2
    platt_c: float | None = None  # None: unregularised (PROTOCOL); sklearn's default is 1.0
    platt_smooth: bool = False  # Platt's (1999) smoothed targets instead of 0/1
    flag_rate: float = 0.05
    conformal_alpha: float = 0.1
    pixel_metrics: bool = True
    save_examples: int = 0

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown}; expected some of {list(ATTACKS)}")
        if not self.shots or any(k < 1 for k in self.shots):
            raise ValueError(f"shots must be positive integers, got {self.shots}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if any(not 0 <= e <= 1 for e in self.eps):
            raise ValueError(f"eps must lie in [0, 1] (pixel units), got {self.eps}")
        if self.resolution % 14:
            raise ValueError(f"resolution must be a multiple of 14, got {self.resolution}")
        if not 0 < self.calibration_fraction < 1:
            raise ValueError(
                f"calibration fraction must lie in (0, 1), got {self.calibration_fraction}"
            )
        # Everything else is checked here too, before any feature is computed: a bad value
        # found mid-run would be recorded in run.json and then block the corrected rerun.
        if not 0 < self.conformal_alpha < 1:
            raise ValueError(f"conformal alpha must lie in (0, 1), got {self.conformal_alpha}")
        if not 0 <= self.flag_rate <= 1:
            raise ValueError(f"flag rate must lie in [0, 1], got {self.flag_rate}")
        if self.knn < 1 or self.batch_size < 1:
            raise ValueError(f"knn and batch size must be >= 1, got {self.knn}, {self.batch_size}")
        if self.platt_c is not None and not self.platt_c > 0:
            raise ValueError(f"platt_c must be positive, got {self.platt_c}")
        if self.mask_morphology not in MASK_MORPHOLOGY:
            raise ValueError(
                f"mask morphology must be one of {MASK_MORPHOLOGY}, got {self.mask_morphology!r}"
            )
        category_defaults(self.dataset, "", self.preprocessing)  # checks both names
        ProbeSettings(self.probe_steps, self.probe_lr, 0, self.probe_train_on)
        for name, eps in self.conditions()[1:]:
            self.attack(name, eps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluationSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def conditions(self) -> list[tuple[str, float]]:
        """(condition name, eps) in run order: clean first."""
        out = [(CLEAN, 0.0)]
        for attack in self.attacks:
            if attack != "none":
                out += [(attack, float(e)) for e in self.eps]
        return out

    def calibrator_options(self, name: str) -> dict[str, Any]:
        """Constructor options of calibrator ``name`` under these settings."""
        if name != "platt":
            return {}
        return {"c": self.platt_c, "smooth_targets": self.platt_smooth}

    def attack(self, name: str, eps: float) -> AttackSettings:
        return AttackSettings(
            name=name,
            eps=eps,
            steps=self.pgd_steps,
            step_size=self.pgd_step_size,
            random_start=self.random_start,
            round_8bit=self.round_8bit,
        )


# Settings that may differ when a run is resumed: they do not change any result.
_RESUME_FREE = {"categories", "batch_size", "save_examples", "attacks", "eps", "shots", "seeds"}


class Progress:
    """Minimal progress lines on stderr; rewrites one line on a terminal."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None:
        if not self.enabled:
            return
        if done is not None and total:
            message = f"{message} {done}/{total}"
        partial = done is not None and done < (total or 0)
        if self.tty:
            print(f"\r{message}\033[K", end="" if partial else "\n", file=sys.stderr, flush=True)
        elif not partial:  # logs get one line per finished step
            print(message, file=sys.stderr, flush=True)


def _fmt(value: Any) -> Any:
    # Floats in full (repr round-trips): eps keys must match on resume, and calibrators
    # fitted on clean scores read back must see the scores a fresh run sees.
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(float(value))  # not "np.float64(...)"
    return "" if value is None else value


def _key(row: dict[str, Any]) -> tuple:
    return unit_key(
        row["dataset"], row["category"], row["shots"], row["seed"], row["condition"], row["eps"]
    )


def unit_key(dataset: Any, category: Any, shots: Any, seed: Any, cond: Any, eps: Any) -> tuple:
    """The identity of one result row, the same whether its values come from a CSV file
    (strings) or from a running evaluation. eps is compared to 6 significant digits, which
    also matches folders written when eps was stored with 6 digits."""
    eps = float(f"{float(eps):.6g}")
    return (str(dataset), str(category), int(shots), int(seed), str(cond), eps)


def unique_rows(rows: Iterable[dict[str, Any]], extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows without repeats of the same unit key (plus ``extra`` columns); the first stays."""
    seen: set[tuple] = set()
    out = []
    for r in rows:
        key = (*_key(r), *(str(r[c]) for c in extra))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


class ResultStore:
    """results.csv, scores.csv and run.json in one folder; appends, resumes."""

    def __init__(self, out: str | Path, settings: EvaluationSettings) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results_path = self.out / "results.csv"
        self.scores_path = self.out / "scores.csv"
        self.settings_path = self.out / "run.json"
        self._check_settings(settings)
        self.rows = unique_rows(self._read(self.results_path))
        done = {_key(r) for r in self.rows}
        # Score rows without their results rows belong to an interrupted unit: drop them.
        scores = [r for r in self._read(self.scores_path) if _key(r) in done]
        scores = unique_rows(scores, extra=("image",))
        self.scores = scores
        self._rewrite(self.scores_path, SCORE_COLUMNS, scores)
        self._rewrite(self.results_path, result_columns(), self.rows)

    def _run_file(self) -> dict[str, Any]:
        if not self.settings_path.exists():
            return {}
        try:
            data = json.loads(self.settings_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.settings_path} is not a trustad run file: {exc}") from exc
        if not isinstance(data, dict) or "settings" not in data:
            raise ValueError(f"{self.settings_path} is not a trustad run file: no settings")
        return data

    def _write_run_file(self, data: dict[str, Any]) -> None:
        self.settings_path.write_text(json.dumps(data, indent=2, default=str))

    def _check_settings(self, settings: EvaluationSettings) -> None:
        new = settings.to_dict()
        data = self._run_file()
        if data:
            old = data["settings"]
            changed = sorted(
                k for k in new if k not in _RESUME_FREE and old.get(k, new[k]) != new[k]
            )
            if changed:
                raise ValueError(
                    f"{self.out} holds a run with other settings ({', '.join(changed)}); "
                    "use another --out folder or the same settings to resume"
                )
        data["settings"] = new  # keeps what else the file records (the weights)
        self._write_run_file(data)

    def record_weights(self, source: dict[str, Any]) -> None:
        """Record the weights' provenance; refuse to add results computed with other weights
        (the same settings can resolve to another file, e.g. once a download succeeds)."""
        data = self._run_file()
        old = data.get("weights")
        if old and old.get("sha256") != source.get("sha256"):
            raise ValueError(
                f"{self.out} holds results computed with other weights: {old.get('label')} "
                f"({old.get('path')}, sha256 {str(old.get('sha256'))[:12]}); this run would use "
                f"{source.get('label')} ({source.get('path')}, sha256 "
                f"{str(source.get('sha256'))[:12]}). Pass --weights with the earlier file to "
                "resume, or use another --out folder"
            )
        data["weights"] = source
        self._write_run_file(data)

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))

    @staticmethod
    def _rewrite(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)
        tmp.replace(path)

    @staticmethod
    def _append(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, columns, extrasaction="ignore")
            writer.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)

    def done(
        self, dataset: str, category: str, shots: int, seed: int, cond: str, eps: float
    ) -> bool:
        return unit_key(dataset, category, shots, seed, cond, eps) in {_key(r) for r in self.rows}

    def add(self, results: list[dict[str, Any]], scores: list[dict[str, Any]]) -> None:
        """Write one unit: its scores first, then its results (which mark it done)."""
        self._append(self.scores_path, SCORE_COLUMNS, scores)
        self._append(self.results_path, result_columns(), results)
        self.scores.extend(scores)
        self.rows.extend(results)

    def clean_scores(self, dataset: str, category: str, shots: int, seed: int) -> dict[str, float]:
        return {
            r["image"]: float(r["score"])
            for r in self.scores
            if _key(r) == unit_key(dataset, category, shots, seed, CLEAN, 0.0)
        }


@dataclass
class CategoryState:
    """What is computed once per category and shared by every unit of work."""

    data: CategoryData
    images: list[Tensor]  # preprocessed test images (3, H, W) in [0, 1]
    sizes: list[tuple[int, int]]  # original (width, height)
    labels: np.ndarray
    masks: list[np.ndarray] | None  # ground-truth masks at the original size
    clean_features: list[Tensor] | None = None
    support_features: dict[Path, list[Tensor]] = field(default_factory=dict)
    probe_labels: list[Tensor] | None = None
    probes: dict[int, torch.nn.Linear] = field(default_factory=dict)


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
        self.backbone = backbone
        self.store = ResultStore(out, settings)
        source = getattr(backbone, "weights_source", None)  # set by load_backbone
        if source is not None:
            self.store.record_weights(source.to_dict())
        self.log = Progress(progress)
        self.backbone_images = 0  # images passed through the backbone without gradient

    # -- features ---------------------------------------------------------------------
    def _features(self, images: Sequence[Tensor]) -> list[Tensor]:
        self.backbone_images += len(images)
        return extract_features(self.backbone, images, self.s.batch_size, self.s.bf16)

    def _detector(self, category: str) -> AnomalyDINO:
        """The detector for a category: the table's defaults unless the settings override."""
        defaults = category_defaults(self.s.dataset, category, self.s.preprocessing)
        return AnomalyDINO(
            self.backbone,
            resolution=self.s.resolution,
            rotate=defaults.rotate if self.s.rotate is None else self.s.rotate,
            mask_test=defaults.mask_test if self.s.mask_test is None else self.s.mask_test,
            mask_support=self.s.mask_support,
            mask_morphology=self.s.mask_morphology,
            knn=self.s.knn,
            batch_size=self.s.batch_size,
            bf16=self.s.attack_bf16,
        )

    def _support_features(self, st: CategoryState, det: AnomalyDINO, paths: list[Path]) -> None:
        missing = [p for p in paths if p not in st.support_features]
        for i, path in enumerate(missing):
            self.log(f"[{st.data.category}] support features", i, len(missing))
            st.support_features[path] = self._features(det.support_views(path))
        if missing:
            self.log(f"[{st.data.category}] support features", len(missing), len(missing))

    # -- per category -----------------------------------------------------------------
    def _load(self, data: CategoryData) -> CategoryState:
        category = data.category
        self.log(
            f"[{category}] {len(data.test)} test images, {len(data.train)} normal training images"
        )
        images, sizes = [], []
        for i, sample in enumerate(data.test):
            self.log(f"[{category}] preprocessing", i, len(data.test))
            images.append(preprocess(sample.path, self.s.resolution))
            sizes.append(image_size(sample.path))
        labels = np.array([s.label for s in data.test])
        masks = None
        if data.has_masks:
            masks = [load_mask(s, size) for s, size in zip(data.test, sizes)]
        return CategoryState(data, images, sizes, labels, masks)

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

    def _probe(self, st: CategoryState, seed: int, cal_idx: np.ndarray) -> torch.nn.Linear:
        if seed not in st.probes:
            train = range(len(st.images)) if self.s.probe_train_on == "test" else cal_idx
            if len(train) == 0:
                raise ValueError(
                    f"{st.data.category}, seed {seed}: the probe is to be trained on the "
                    "calibration split (probe_train_on='calibration'), but this category has "
                    "none (see the clean rows' note); use probe_train_on='test'"
                )
            labels = self._probe_labels(st)
            feats = torch.cat(
                [st.clean_features[i].reshape(-1, st.clean_features[i].shape[-1]) for i in train]
            )
            targets = torch.cat([labels[i].reshape(-1) for i in train])
            settings = ProbeSettings(
                steps=self.s.probe_steps,
                lr=self.s.probe_lr,
                seed=seed,
                train_on=self.s.probe_train_on,
            )
            device = next(self.backbone.parameters()).device
            probe, history = train_probe(
                feats[None, None].to(device), targets[None, None].to(device), settings
            )
            st.probes[seed] = probe
            if st.masks is None:
                self.log(f"[{st.data.category}] {IMAGE_LABEL_PROBE}")
            self.log(
                f"[{st.data.category}] probe seed {seed}: BCE {history[0]:.4f} -> {history[-1]:.4f}"
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
        device = next(self.backbone.parameters()).device
        gen = torch.Generator(device=device)
        gen.manual_seed(
            zlib.crc32(f"{st.data.category}/{attack.name}/{attack.eps}/{seed}".encode())
        )
        out: list[Tensor] = []
        for start, batch in _batches(st.images, self.s.batch_size):
            idx = list(range(start, start + len(batch)))
            self.log(
                f"[{st.data.category}] {attack.name} eps={attack.eps:.4g} seed {seed}",
                start,
                len(st.images),
            )
            adv = run_attack(
                batch.to(device),
                attack,
                objective=objective_for(idx),
                generator=gen,
                autocast=self.s.attack_bf16,
            )
            out.extend(adv.detach().cpu())
        self.log(
            f"[{st.data.category}] {attack.name} eps={attack.eps:.4g} seed {seed}",
            len(out),
            len(out),
        )
        return out

    def run(self) -> list[dict[str, Any]]:
        s = self.s
        categories = list_categories(s.dataset, s.root, s.categories)
        t0 = time.time()
        self.failures: dict[str, str] = {}
        for category in categories:
            # A broken category (unreadable image, bad mask) must not cost the others.
            try:
                self._run_category(category)
            except (ValueError, FileNotFoundError, OSError) as exc:
                self.failures[category] = str(exc)
                self.log(f"[{category}] failed, skipped: {exc}")
        self.log(
            f"done in {time.time() - t0:.0f} s; {self.backbone_images} backbone passes without gradient"
        )
        return self.store.rows

    def _pending(self, data: CategoryData) -> list[tuple[int, str, float, list[int]]]:
        """Units (seed, condition, eps, shots still to do) of this category. Shot counts for
        which the category has too few training images are skipped (and said so)."""
        possible = {}
        for seed in range(self.s.seeds):
            for k in self.s.shots:
                try:
                    select_support(data.train, k, seed)
                    possible[seed, k] = True
                except ValueError as exc:
                    possible[seed, k] = False
                    self.log(f"[{data.category}] skipped {k} shots, seed {seed}: {exc}")
        out = []
        for seed in range(self.s.seeds):
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

    def _run_category(self, category: str) -> None:
        s = self.s
        data = load_category(s.dataset, s.root, category)
        pending = self._pending(data)
        if not pending:
            self.log(f"[{category}] already complete, skipped")
            return
        st = self._load(data)
        det = self._detector(category)
        st.clean_features = self._features_logged(st, st.images, "clean features")
        clean_fg = det.foreground(st.clean_features)
        for seed, cond, eps, shots in pending:
            split = self._split(st, seed)
            if cond == CLEAN:
                per_shot = {k: (st.clean_features, clean_fg, None) for k in shots}
            else:
                per_shot = self._adversarial(st, det, cond, eps, seed, shots, split[0])
            results, scores = [], []
            for k in shots:
                feats, fg, adv_images = per_shot[k]
                self._fit(det, st, k, seed)
                dists = det.distances_from_features(feats, fg)
                image_sc = det.scores_from_distances(dists)
                row, score_rows = self._unit_rows(
                    st, k, seed, cond, eps, image_sc, dists, split, adv_images
                )
                results.append(row)
                scores.extend(score_rows)
                if s.save_examples and k == shots[0] and seed == 0:
                    self._save_examples(st, cond, eps, adv_images or st.images, dists)
            self.store.add(results, scores)

    def _features_logged(self, st: CategoryState, images: list[Tensor], what: str) -> list[Tensor]:
        out: list[Tensor] = []
        for start, batch in _batches(images, self.s.batch_size):
            self.log(f"[{st.data.category}] {what}", start, len(images))
            out.extend(self._features(list(batch)))
        self.log(f"[{st.data.category}] {what}", len(out), len(images))
        return out

    def _fit(self, det: AnomalyDINO, st: CategoryState, shots: int, seed: int) -> None:
        paths = select_support(st.data.train, shots, seed)
        self._support_features(st, det, paths)
        det.fit_features([f for p in paths for f in st.support_features[p]])

    def _split(self, st: CategoryState, seed: int) -> tuple[np.ndarray, np.ndarray, str | None]:
        try:
            c, e = cal.calibration_split(st.labels, self.s.calibration_fraction, seed)
            return c, e, None
        except cal.CalibrationSplitError as exc:
            note = f"no calibration split ({exc}); calibration metrics use the uncalibrated scores"
            return np.array([], dtype=int), np.arange(len(st.labels)), note

    def _adversarial(
        self,
        st: CategoryState,
        det: AnomalyDINO,
        cond: str,
        eps: float,
        seed: int,
        shots: list[int],
        cal_idx: np.ndarray,
    ) -> dict[int, tuple[list[Tensor], list[Tensor] | None, list[Tensor]]]:
        attack = self.s.attack(cond, eps)
        if attack.targets_score:
            self.log(
                f"[{st.data.category}] {cond} depends on the memory bank: computed per shots and seed"
            )
            out = {}
            for k in shots:
                self._fit(det, st, k, seed)
                labels = torch.as_tensor(st.labels, dtype=torch.float32)

                def objective(
                    idx: list[int], labels: Tensor = labels
                ) -> Callable[[Tensor], Tensor]:
                    return score_loss(det, labels[idx].to(det.device))

                adv = self._attack_images(st, attack, objective, seed)
                feats = self._features_logged(st, adv, f"{cond} features")
                out[k] = (feats, det.foreground(feats), adv)
            return out
        objective_for: Callable[[list[int]], Callable[[Tensor], Tensor] | None]
        if attack.needs_objective:
            probe = self._probe(st, seed, cal_idx)
            labels = self._probe_labels(st)
            device = next(self.backbone.parameters()).device

            def objective_for(idx: list[int]) -> Callable[[Tensor], Tensor]:
                m = torch.stack([labels[i] for i in idx]).to(device)
                return probe_objective(self.backbone, probe, m)
        else:

            def objective_for(idx: list[int]) -> None:
                return None

        adv = self._attack_images(st, attack, objective_for, seed)
        feats = self._features_logged(st, adv, f"{cond} features")
        return {k: (feats, det.foreground(feats), adv) for k in shots}

    # -- metrics ----------------------------------------------------------------------
    def _unit_rows(
        self,
        st: CategoryState,
        shots: int,
        seed: int,
        cond: str,
        eps: float,
        scores: np.ndarray,
        dists: list[Tensor],
        split: tuple[np.ndarray, np.ndarray, str | None],
        adv_images: list[Tensor] | None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        s, data = self.s, st.data
        key = dict(
            dataset=s.dataset,
            category=data.category,
            shots=shots,
            seed=seed,
            condition=cond,
            eps=eps,
        )
        cal_idx, eval_idx, split_note = split
        in_cal = np.zeros(len(scores), dtype=bool)
        in_cal[cal_idx] = True
        score_rows = [
            dict(
                key,
                image=sample.image_id,
                label=int(st.labels[i]),
                split="calibration" if in_cal[i] else "evaluation",
                score=float(scores[i]),
            )
            for i, sample in enumerate(data.test)
        ]
        row: dict[str, Any] = dict(key, n_images=len(scores), n_anomalous=int(st.labels.sum()))
        row.update(metrics.image_metrics(st.labels, scores))
        if s.pixel_metrics and st.masks is not None:
            maps = [anomaly_map(d, size) for d, size in zip(dists, st.sizes)]
            row["pixel_auroc"] = metrics.pixel_auroc(st.masks, maps)
            row["aupro"] = metrics.aupro(st.masks, maps)
        notes = [split_note] if split_note else []
        attack = None if cond == CLEAN else self.s.attack(cond, eps)
        if attack and attack.needs_objective and not attack.targets_score and st.masks is None:
            notes.append(IMAGE_LABEL_PROBE)
        row.update(self._calibration(st, shots, seed, cond, scores, cal_idx, eval_idx, notes))
        if adv_images is not None:
            pairs = [(a[None], b[None]) for a, b in zip(st.images, adv_images)]
            row["linf"] = float(np.mean([float(linf_distance(a, b)[0]) for a, b in pairs]))
            row["psnr"] = float(np.mean([float(psnr_distance(a, b)[0]) for a, b in pairs]))
        row["n_calibration"], row["n_evaluation"] = len(cal_idx), len(eval_idx)
        row["note"] = "; ".join(dict.fromkeys(notes))
        return row, score_rows

    def _calibration(
        self,
        st: CategoryState,
        shots: int,
        seed: int,
        cond: str,
        scores: np.ndarray,
        cal_idx: np.ndarray,
        eval_idx: np.ndarray,
        notes: list[str],
    ) -> dict[str, float]:
        """Calibrators fitted on the clean calibration scores of this (category, shots, seed);
        metrics on this condition's evaluation part; flagging against clean evaluation."""
        data = st.data
        clean = self.store.clean_scores(self.s.dataset, data.category, shots, seed)
        if cond == CLEAN:
            clean_scores = scores
        else:
            clean_scores = np.array([clean[t.image_id] for t in data.test])
        y = st.labels
        out: dict[str, float] = {}
        for name in cal.CALIBRATORS:
            if len(cal_idx):
                calibrator, note = cal.fit_calibrator_safely(
                    name, clean_scores[cal_idx], y[cal_idx], **self.s.calibrator_options(name)
                )
            else:
                calibrator, note = cal.make_calibrator("uncal"), None
            if note:
                notes.append(note)  # names the calibrator already
            p = calibrator.predict_proba(scores[eval_idx])
            yy = y[eval_idx]
            out[f"ece_{name}"] = cal.ece(p, yy)
            out[f"classwise_ece_{name}"] = cal.classwise_ece(p, yy)
            out[f"nll_{name}"] = cal.nll(p, yy)
            out[f"brier_{name}"] = cal.brier(p, yy)
            out[f"entropy_{name}"] = float(np.mean(cal.entropy(p)))
            if cond != CLEAN and name in ("uncal", "platt"):
                h_clean = cal.entropy(calibrator.predict_proba(clean_scores[eval_idx]))
                h_adv = cal.entropy(p)
                out[f"flag_auroc_{name}"] = cal.flagging_auroc(h_clean, h_adv)
                out[f"flag_tpr_{name}"] = cal.tpr_at_fpr(h_clean, h_adv, self.s.flag_rate)
        out.update(
            self._conformal(
                clean_scores[cal_idx][y[cal_idx] == 0], scores[eval_idx], y[eval_idx], notes
            )
        )
        return out

    def _conformal(
        self, normal_cal: np.ndarray, scores: np.ndarray, labels: np.ndarray, notes: list[str]
    ) -> dict[str, float]:
        """The conformal threshold on normal calibration scores; its false-alarm rate and
        true-positive rate on this condition's evaluation part."""
        if len(normal_cal) == 0:
            notes.append("conformal: no normal calibration image")
            return {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            conformal = cal.ConformalThreshold(self.s.conformal_alpha).fit(normal_cal)
        notes += [f"conformal: {w.message}" for w in caught]
        flagged = conformal.predict(scores).astype(bool)
        out = {"conformal_threshold": conformal.threshold_}
        if (labels == 0).any():
            out["conformal_far"] = float(flagged[labels == 0].mean())
        if (labels == 1).any():
            out["conformal_tpr"] = float(flagged[labels == 1].mean())
        return out

    def _save_examples(
        self, st: CategoryState, cond: str, eps: float, inputs: list[Tensor], dists: list[Tensor]
    ) -> None:
        """For the first few anomalous test images: the scored input as a PNG, and a panel
        of input, ground truth and anomaly map."""
        from PIL import Image

        from .report import example_figure

        folder = self.store.out / "examples" / st.data.category
        folder.mkdir(parents=True, exist_ok=True)
        order = np.argsort(-st.labels, kind="stable")[: self.s.save_examples]
        for i in order:
            stem = Path(st.data.test[i].image_id).with_suffix("").as_posix().replace("/", "_")
            tag = f"{stem}_{cond}" + (f"_eps{eps * 255:.3g}" if cond != CLEAN else "")
            img = (inputs[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(img).save(folder / f"{tag}_input.png")
            truth = st.masks[i] if st.masks is not None else None
            title = f"{st.data.test[i].image_id} ({cond}, score {float(image_scores(dists[i][None])[0]):.3f})"
            example_figure(
                folder / f"{tag}.png", img, truth, anomaly_map(dists[i], st.sizes[i]), title
            )
