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
from ..model import MODEL_SUFFIX, Assessment, TrustEngine
from ..model.scored import ScoredImages, grouped_flag_values, shape_groups
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
    reference = []
    if model.trust_options.flags:
        normal_images = ScoredImages(
            [clean_dists[i] for i in normal],
            [st.clean_features[i] for i in normal],
            [st.images[i] for i in normal],
            scores[normal],
        )
        reference = normal_images.references(seed=key[1])
    paths = support_paths(st.data.train, *key)
    loo = det.leave_one_out_distances([st.support_features[p] for p in paths])
    model.calibrate(
        scores[cal],
        labels[cal],
        reference=reference,
        leave_one_out_scores=det.scores_from_distances(loo),
        normal_distances=[clean_dists[i] for i in normal] + loo,
    )
    if save_models:
        shots, seed = key
        model.save(Path(save_models) / f"{st.category}-{shots}shot-seed{seed}{MODEL_SUFFIX}")
    return model.trust_


def assess(
    trust: TrustEngine, scores: np.ndarray, scored: ScoredSet, cache: FlagInputCache
) -> Assessment:
    """The trust engine's fields for a scored image set; images of one size share one batch
    (and the noise level of a set is computed once), images of several sizes are flagged
    one batch per size."""
    values = {}
    if trust.flags_:
        if len(shape_groups(scored.distances, scored.images)) == 1:
            values = trust.flag_values(scores, cache.inputs(scored))
        else:
            values = grouped_flag_values(trust, scores, *scored)
    return trust.assess(scores, values)
