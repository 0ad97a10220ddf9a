"""The attacked inputs of a run: the surrogate probe per (category, seed) and the attacked
versions of a category's test images, with progress and timing (PROTOCOL section 5)."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable

import torch
from torch import Tensor

from ..attacks import AttackSettings, run_attack, train_probe
from ..backbone.runtime import BackboneRuntime, batches
from ..corruptions import parse_corruption
from .category import CategoryState, probe_labels
from .plan import gradient_steps
from .progress import Progress, Stopwatch
from .rows import IMAGE_LABEL_PROBE, Split
from .settings import EvaluationSettings


class Attacker:
    """Trains probes and attacks images for a run, timed under the run's "attack" clock."""

    def __init__(
        self,
        settings: EvaluationSettings,
        runtime: BackboneRuntime,
        log: Progress,
        clock: Stopwatch,
    ) -> None:
        self.s = settings
        self.runtime = runtime
        self.log = log
        self.clock = clock

    def probe(self, st: CategoryState, seed: int, split: Split) -> torch.nn.Linear:
        """The seed's linear probe on the category's clean features (trained once)."""
        if seed not in st.probes:
            settings = self.s.probe(seed)
            train = range(len(st.images)) if settings.train_on == "test" else split.calibration
            if len(train) == 0:
                raise ValueError(
                    f"{st.category}, seed {seed}: the probe is to be trained on the "
                    "calibration split (probe_train_on='calibration'), but this category has "
                    "none (see the clean rows' note); use probe_train_on='test'"
                )
            labels = probe_labels(st, self.s.resolution)
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

    def images(
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

    def corrupted(self, st: CategoryState, condition: str, seed: int) -> list[Tensor]:
        """The test images under the benign corruption ``condition`` ("NAME:LEVEL"), one
        random draw per seed."""
        corruption = parse_corruption(condition)
        generator = torch.Generator().manual_seed(seed)
        with self.clock("attack"):
            return [corruption.apply(x, generator) for x in st.images]
