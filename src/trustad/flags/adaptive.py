"""The adaptive attacker: a score attack that also keeps a flag's statistic down.

It knows the detector, the flag and the flag's clean statistics, and maximises
``sign * score / score_scale - lam * flag / flag_scale`` (anomalous images pushed down,
normal images up, as in :func:`trustad.attacks.score_loss`), both terms standardised by
their spread on clean calibration images. Run it with PGD, e.g.
``run_attack(x, AttackSettings("score-pgd", eps), objective=flag_aware_score_loss(...))``.
Flags whose statistic is piecewise constant are attacked through their ``surrogate``;
transforms that cannot be differentiated (JPEG) are passed straight through.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..detector import image_scores
from .base import BaseFlag, FlagInputs

DEFAULT_LAMBDA = 1.0


def flag_aware_score_loss(
    detector,
    labels: Tensor,
    flag: BaseFlag,
    score_scale: float,
    lam: float = DEFAULT_LAMBDA,
) -> Callable[[Tensor], Tensor]:
    """Per-image loss (B,) to maximise; ``flag`` must be fitted (its clean spread scales
    the flag term) and ``score_scale`` > 0 is the spread of clean calibration scores."""
    if not score_scale > 0:
        raise ValueError(f"score_scale must be > 0, got {score_scale}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if not hasattr(flag, "clean_scale_"):
        raise RuntimeError(f"flag {flag.name!r} must be fitted before it can be attacked")
    sign = 1.0 - 2.0 * labels.detach().reshape(-1).float()

    def loss(x: Tensor) -> Tensor:
        feats, dist = detector.pixel_distances(x)
        scores = image_scores(dist)
        stat = flag.surrogate(FlagInputs(dist, feats, x)).float()
        s = sign.to(scores.device)
        return s * scores / score_scale - lam * stat.to(scores.device) / flag.clean_scale_

    return loss
