"""Every setting of an evaluation run, in one place: default, choices, help and CLI flag.

``EvaluationSettings`` is written to run.json and checked on resume. The command line is
built from its fields (``add_arguments`` / ``from_arguments``), so a new option is added
once, here. Defaults that belong to a library object (the probe's steps, the batch size,
the resolution) are read from that object, not written again.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..attacks import ATTACKS, DEFAULT_EPS, PROBE_TRAIN_ON, AttackSettings, ProbeSettings
from ..backbone.preprocess import DEFAULT_RESOLUTION
from ..backbone.runtime import DEFAULT_BATCH_SIZE
from ..backbone.weights import DEFAULT_BACKBONE
from ..calibration import CALIBRATORS, DEFAULT_CALIBRATION_FRACTION
from ..corruptions import parse_corruption
from ..data import DATASETS, PREPROCESSING, category_defaults
from ..detector import MASK_MORPHOLOGY
from ..flags import (
    DEFAULT_FALSE_FLAG_RATE,
    DEFAULT_FLAG,
    DEFAULT_LAMBDA,
    FLAG_COSTS,
    FLAGS,
    ZERO_COST_FLAGS,
    CombinedFlag,
)
from ..model import (
    DEFAULT_CALIBRATOR,
    DEFAULT_CONFORMAL_ALPHA,
    SAVABLE_CALIBRATORS,
    TrustOptions,
)

CLEAN = "clean"
MAX_RESOLUTION = 4480  # 320 x 320 patches: beyond this one image's features do not fit


def parse_eps(text: str) -> float:
    """An eps given as a fraction of 255 ("8/255") or as a plain number in [0, 1]."""
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(
            f"eps must be a number or a fraction like 8/255, got {text!r}"
        ) from exc


def parse_shard(text: str) -> str:
    """A shard "I/N" (1 <= I <= N), returned in its normal form."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"shard must look like I/N, e.g. 1/4, got {text!r}"
        ) from exc
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"shard I/N needs 1 <= I <= N, got {text!r}")
    return f"{i}/{n}"


def parse_corruption_label(text: str) -> str:
    """A benign corruption "NAME:LEVEL" in its normal form (``trustad.corruptions``)."""
    try:
        return parse_corruption(text).label
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def is_corruption(condition: str) -> bool:
    """Whether a condition is a benign corruption ("NAME:LEVEL"), not clean or an attack."""
    return ":" in condition


def shard_parts(shard: str | None) -> tuple[int, int]:
    """(I, N) of a shard; (1, 1) when there is none."""
    if shard is None:
        return 1, 1
    i, n = parse_shard(shard).split("/")
    return int(i), int(n)


def parse_on_off(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off, got {text!r}")


def option(
    default: Any,
    help: str,
    *,
    group: str,
    choices: Iterable[Any] | None = None,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
) -> Any:
    """A settings field with what the command line needs to offer it."""
    meta = dict(help=help, group=group, choices=choices, flag=flag, parse=parse, metavar=metavar)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def required(help: str, *, group: str, choices: Iterable[Any] | None = None) -> Any:
    return field(metadata=dict(help=help, group=group, choices=choices))


@dataclass
class EvaluationSettings:
    """Everything that defines a run (PROTOCOL sections 1-6)."""

    dataset: str = required("dataset layout", group="data", choices=DATASETS)
    root: str = required("dataset folder (a folder of categories, or one category)", group="data")
    categories: list[str] | None = option(
        None, "subset of categories (default: all found)", group="data"
    )
    shots: list[int] = option([1, 2, 4, 8, 16], "few-shot sizes k", group="grid")
    seeds: int = option(3, "number of seeds 0..N-1", group="grid")
    shard: str | None = option(
        None,
        "run only part I of N of the (category, seed) work units, e.g. 1/4; each shard into "
        "its own --out folder, combined by `trustad merge`",
        group="grid",
        parse=parse_shard,
        metavar="I/N",
    )
    resolution: int = option(DEFAULT_RESOLUTION, "smaller image edge in pixels", group="detector")
    backbone: str = option(DEFAULT_BACKBONE, "DINOv2 variant", group="detector")
    weights: str | None = option(
        None,
        "weights file (.pth or .safetensors); default: see `trustad weights show`",
        group="detector",
    )
    preprocessing: str = option(
        "agnostic", "per-category defaults", group="detector", choices=PREPROCESSING
    )
    mask_test: bool | None = option(
        None, "override the category table's background masking of test images", group="detector"
    )
    rotate: bool | None = option(
        None,
        "override the category table's rotation augmentation of support images",
        group="detector",
    )
    mask_support: bool = option(
        False, "also mask the background of support images", group="detector"
    )
    mask_morphology: str = option(
        "grid",
        "grid: 3x3 on the patch grid (protocol); flat: along the token order like the public "
        "reference code",
        group="detector",
        choices=MASK_MORPHOLOGY,
    )
    knn: int = option(1, "nearest bank patches averaged per test patch", group="detector")
    batch_size: int = option(DEFAULT_BATCH_SIZE, "images per backbone batch", group="runtime")
    bf16: bool = option(False, "bfloat16 autocast for feature extraction", group="runtime")
    tf32: bool = option(
        False,
        "allow TF32 for float32 matrix products and convolutions on CUDA: their inputs are "
        "rounded to 10 mantissa bits (about 3 significant digits), faster on Ampere and later "
        "GPUs, but features and scores no longer match the CPU's to float32 precision; "
        "off: float32 throughout; no effect on other devices",
        group="runtime",
    )
    attacks: list[str] = option(
        ["none"], "conditions besides clean", group="attack", choices=ATTACKS, flag="attack"
    )
    corruptions: list[str] = option(
        [],
        "benign conditions NAME:LEVEL (gaussian-noise:GREY_LEVELS, jpeg:QUALITY, blur:SIGMA_PX, "
        "brightness:PERCENT, contrast:PERCENT, shift:PX): ordinary camera variation, scored "
        "with every metric and the share each flag fires on (flag_rate_<flag>)",
        group="attack",
        flag="corruption",
        parse=parse_corruption_label,
        metavar="NAME:LEVEL",
    )
    eps: list[float] = option(
        [DEFAULT_EPS],
        "L-inf budgets, e.g. 8/255 (several: a sweep)",
        group="attack",
        parse=parse_eps,
    )
    pgd_steps: int = option(AttackSettings.steps, "PGD steps", group="attack")
    pgd_step_size: float | None = option(
        None, "PGD step (default 2.5*eps/steps)", group="attack", parse=parse_eps
    )
    random_start: bool = option(True, "PGD starts at a random point of the ball", group="attack")
    round_8bit: bool = option(
        False, "round adversarial images to 8 bits before scoring", group="attack"
    )
    adaptive_flag: str = option(
        DEFAULT_FLAG,
        "the flag the 'adaptive' attack keeps down while it pushes scores the wrong way (it "
        "knows the flag and its statistics on clean calibration images)",
        group="attack",
        choices=FLAGS,
    )
    adaptive_lambda: float = option(
        DEFAULT_LAMBDA,
        "weight of the 'adaptive' attack's flag term (both terms in units of their spread "
        "on clean calibration images)",
        group="attack",
    )
    adaptive_coarse: int = option(
        8,
        "the 'adaptive' attack searches a perturbation on a grid this many pixels apart, "
        "upsampled bilinearly: smooth, to evade the noise-level flag (1: per pixel)",
        group="attack",
    )
    attack_bf16: bool = option(
        False, "bfloat16 autocast for attack gradients (faster, approximate)", group="runtime"
    )
    probe_steps: int = option(ProbeSettings.steps, "probe training steps", group="attack")
    probe_lr: float = option(ProbeSettings.lr, "probe learning rate", group="attack")
    probe_train_on: str = option(
        ProbeSettings.train_on,
        "images the probe is trained on",
        group="attack",
        choices=PROBE_TRAIN_ON,
    )
    calibration_fraction: float = option(
        DEFAULT_CALIBRATION_FRACTION,
        "share of each category's test images used to fit calibrators",
        group="calibration",
    )
    platt_c: float | None = option(
        None,
        "L2 regularisation of Platt scaling in scikit-learn's C units (default: none)",
        group="calibration",
    )
    platt_smooth: bool = option(
        False,
        "fit Platt scaling to Platt's smoothed targets (N+1)/(N+2) and 1/(N+2) instead of "
        "0/1: less overconfident on small or separable calibration sets",
        group="calibration",
    )
    calibrator: str = option(
        DEFAULT_CALIBRATOR,
        "the calibrator of the prediction fields (scores.csv's probability, decision and "
        "gated_probability; --save-models), as `trustad fit --calibrator`; every calibrator's "
        "metrics are measured either way",
        group="calibration",
        choices=SAVABLE_CALIBRATORS,
    )
    flag_rate: float = option(
        DEFAULT_FALSE_FLAG_RATE,
        "false-flag rate of the attack flags' thresholds on clean calibration images",
        group="calibration",
    )
    # The flags that need no extra backbone pass; stability (3 passes per image, the most
    # expensive part of a run with it) is asked for by name.
    flags: list[str] = option(
        [*ZERO_COST_FLAGS, CombinedFlag.name],
        "attack flags measured on attacked conditions besides the entropy; stability costs "
        f"{FLAG_COSTS['stability']} extra backbone passes per image; 'none' for none",
        group="calibration",
        choices=(*FLAGS, "none"),
    )
    gate_flag: str = option(
        DEFAULT_FLAG,
        "flag whose firing sets a test image's probability to the anomaly rate of the "
        "calibration images (gated_* columns; scores.csv's gated); 'none' for no gate",
        group="calibration",
        choices=(*FLAGS, "none"),
    )
    conformal_alpha: float = option(
        DEFAULT_CONFORMAL_ALPHA,
        "target false-alarm rate of the conformal threshold",
        group="calibration",
    )
    leave_one_out: bool = option(
        True,
        "pool the support images' leave-one-out scores with the normal calibration scores "
        "for the conformal threshold, as `trustad fit` does",
        group="calibration",
    )
    benign_envelope: bool = option(
        True,
        "raise pixel-only flag thresholds over benign variants of the normal calibration "
        "images (camera noise <= 3 grey levels, JPEG >= 50, blur <= 1 px, lighting +-10 %, "
        "shifts <= 2 px), as `trustad fit` does",
        group="calibration",
    )
    pixel_metrics: bool = option(True, "pixel AUROC and AUPRO", group="output")
    save_models: str | None = option(
        None,
        "write each (category, shots, seed)'s fitted detector, as `trustad fit` would, to "
        "DIR/<category>-<shots>shot-seed<seed>.safetensors: `trustad predict` with it gives "
        "scores.csv's fields",
        group="output",
        metavar="DIR",
    )
    save_examples: int = option(
        0,
        "save N test images (from 2 on, one of them normal) with their maps per category and "
        "condition, at the first shots and seed 0 (the report's Figure 1b)",
        group="output",
        metavar="N",
    )

    def __post_init__(self) -> None:
        # Everything is checked here, before any feature is computed: a bad value found
        # mid-run would be recorded in run.json and then block the corrected rerun.
        unknown_flags = [f for f in (*self.flags, self.gate_flag) if f not in (*FLAGS, "none")]
        if unknown_flags:
            raise ValueError(f"unknown flag(s) {unknown_flags}; expected some of {list(FLAGS)}")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown}; expected some of {list(ATTACKS)}")
        if not self.shots or any(k < 1 for k in self.shots):
            raise ValueError(f"shots must be positive integers, got {self.shots}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if any(not 0 <= e <= 1 for e in self.eps):
            raise ValueError(f"eps must lie in [0, 1] (pixel units), got {self.eps}")
        if self.resolution % 14 or not 14 <= self.resolution <= MAX_RESOLUTION:
            raise ValueError(
                f"resolution must be a multiple of 14 in [14, {MAX_RESOLUTION}], "
                f"got {self.resolution}"
            )
        if not 0 < self.calibration_fraction < 1:
            raise ValueError(
                f"calibration fraction must lie in (0, 1), got {self.calibration_fraction}"
            )
        if not 0 < self.conformal_alpha < 1:
            raise ValueError(f"conformal alpha must lie in (0, 1), got {self.conformal_alpha}")
        if self.adaptive_flag not in FLAGS or self.adaptive_lambda < 0 or self.adaptive_coarse < 1:
            raise ValueError(
                f"adaptive attack: flag must be one of {list(FLAGS)}, weight >= 0, grid >= 1 "
                f"pixel; got {self.adaptive_flag!r}, {self.adaptive_lambda}, "
                f"{self.adaptive_coarse}"
            )
        if not 0 <= self.flag_rate <= 1:
            raise ValueError(f"flag rate must lie in [0, 1], got {self.flag_rate}")
        if self.knn < 1 or self.batch_size < 1:
            raise ValueError(f"knn and batch size must be >= 1, got {self.knn}, {self.batch_size}")
        if self.platt_c is not None and not self.platt_c > 0:
            raise ValueError(f"platt_c must be positive, got {self.platt_c}")
        if self.save_examples < 0:
            raise ValueError(f"save_examples must be >= 0, got {self.save_examples}")
        if self.mask_morphology not in MASK_MORPHOLOGY:
            raise ValueError(
                f"mask morphology must be one of {MASK_MORPHOLOGY}, got {self.mask_morphology!r}"
            )
        try:
            shard_parts(self.shard)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from exc
        category_defaults(self.dataset, "", self.preprocessing)  # checks both names
        self.probe(0)
        for name, eps in self.conditions()[1:]:  # parses the corruptions too
            if not is_corruption(name):
                self.attack(name, eps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluationSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def conditions(self) -> list[tuple[str, float]]:
        """(condition name, eps) in run order: clean first, then the attacks, then the benign
        corruptions (eps 0)."""
        out = [(CLEAN, 0.0)]
        for attack in self.attacks:
            if attack != "none":
                out += [(attack, float(e)) for e in self.eps]
        return out + [(parse_corruption(c).label, 0.0) for c in self.corruptions]

    def calibrator_options(self, name: str) -> dict[str, Any]:
        """Constructor options of calibrator ``name`` under these settings."""
        if name != "platt":
            return {}
        return {"c": self.platt_c, "smooth_targets": self.platt_smooth}

    def flag_names(self) -> list[str]:
        return [f for f in self.flags if f != "none"]

    def trust(self) -> TrustOptions:
        """What each (category, shots, seed)'s trust engine fits: every calibrator (the
        prediction's first), the conformal threshold, and the gate flag (first) with the
        measured flags and the flag the adaptive attacker keeps down."""
        calibrators = (self.calibrator, *(c for c in CALIBRATORS if c != self.calibrator))
        attacker = [self.adaptive_flag] if "adaptive" in self.attacks else []
        return TrustOptions(
            calibrators=calibrators,
            calibrator_options={c: self.calibrator_options(c) for c in calibrators},
            conformal_alpha=self.conformal_alpha,
            flag=self.gate(),
            other_flags=tuple(dict.fromkeys([*self.flag_names(), *attacker])),
            false_flag_rate=self.flag_rate,
            leave_one_out=self.leave_one_out,
            benign_envelope=self.benign_envelope,
        )

    def gate(self) -> str | None:
        return None if self.gate_flag == "none" else self.gate_flag

    def attack(self, name: str, eps: float) -> AttackSettings:
        return AttackSettings(
            name=name,
            eps=eps,
            steps=self.pgd_steps,
            step_size=self.pgd_step_size,
            random_start=self.random_start,
            round_8bit=self.round_8bit,
            coarse=self.adaptive_coarse if name == "adaptive" else 1,
        )

    def probe(self, seed: int) -> ProbeSettings:
        return ProbeSettings(
            steps=self.probe_steps, lr=self.probe_lr, seed=seed, train_on=self.probe_train_on
        )


# Settings that may differ when a run is resumed: they do not change any result.
RESUME_FREE = frozenset(
    {
        "categories",
        "batch_size",
        "save_examples",
        "save_models",
        "attacks",
        "corruptions",
        "eps",
        "shots",
        "seeds",
        "flags",
    }
)
# Settings that may differ between the folders merged into one run: how the work was split
# and run, never what was computed.
MERGE_FREE = frozenset({"shard", "batch_size", "save_examples", "save_models"})
