"""The trust engine of each (category, shots, seed) in a run.

The engine (``trustad.model.TrustEngine``) is fitted by the category's fitted detector on
the clean calibration images, exactly as `trustad fit` calibrates, and applied to every
condition of the same detector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from ..data import support_paths
from ..detector import AnomalyDINO
from ..model import MODEL_SUFFIX, Assessment, FlagReference, TrustEngine
from .category import CategoryState
from .flagging import FlagInputCache, ScoredSet
from .rows import Split


def fit_trust(
    st: CategoryState,
    det: AnomalyDINO,
    key: tuple[int, int],
    split: Split,
    clean_dists: list[Tensor],
    save_models: str | None,
) -> TrustEngine:
    """The trust engine of (shots, seed) = ``key``, fitted by the category's detector
    (``det`` is its AnomalyDINO, fitted for ``key``) on the clean calibration images:
    calibrators on all of them, the conformal threshold on the normal ones pooled with the
    support images scored leave-one-out, flags on the normal ones and their benign
    variants. Written to ``save_models`` as a model file when given."""
    model, cal, labels = st.model, split.calibration, st.labels
    scores = det.scores_from_distances(clean_dists)
    normal = cal[labels[cal] == 0]
    reference, left_out = [], None
    if len(normal) and model.trust_options.flags:
        clean = ScoredSet(clean_dists, st.clean_features, st.images)
        try:
            inputs = st.flag_inputs.inputs(clean).subset(normal)
            reference = [FlagReference(inputs, scores[normal], seed=key[1])]
        except ValueError as exc:  # test images of several sizes form no batch
            left_out = f"flags left out: {exc}"
    paths = support_paths(st.data.train, *key)
    loo = det.leave_one_out_distances([st.support_features[p] for p in paths])
    model.calibrate(
        scores[cal],
        labels[cal],
        reference=reference,
        leave_one_out_scores=det.scores_from_distances(loo),
        normal_distances=[clean_dists[i] for i in normal] + loo,
    )
    if left_out:
        model.trust_.notes_.append(left_out)
    if save_models:
        shots, seed = key
        model.save(Path(save_models) / f"{st.category}-{shots}shot-seed{seed}{MODEL_SUFFIX}")
    return model.trust_


def assess(
    trust: TrustEngine, scores: np.ndarray, scored: ScoredSet, cache: FlagInputCache
) -> Assessment:
    """The trust engine's fields for a scored image set (no flags when its images do not
    form one batch: the engine then has none either)."""
    values = trust.flag_values(scores, cache.inputs(scored)) if trust.flags_ else {}
    return trust.assess(scores, values)
