"""The Ray executor on a local Ray instance: the same results as a plain run, a task whose
worker dies is retried, and a rerun computes only what is missing."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
from conftest import small_synthetic
from test_study import SRC, assert_same_run, quick
from tiny_trustad import crash_once_backbone, tiny_backbone

from trustad.evaluation import Evaluation

ray = pytest.importorskip("ray", reason="the Ray executor's tests need ray (trustad[ray])")


@pytest.fixture(scope="module")
def local_ray():
    # Workers import trustad and the test helpers from the same places as this process.
    tests = str(Path(__file__).parent)
    path = os.pathsep.join([str(SRC), tests, os.environ.get("PYTHONPATH", "")])
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", path)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
    mp.undo()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_synthetic(tmp_path_factory)


def test_ray_executor_equals_the_plain_run(local_ray, dataset, tmp_path):
    from trustad.evaluation.distributed import RayEvaluation

    settings = quick(dataset, save_examples=1)
    plain = Evaluation(settings, tiny_backbone(), tmp_path / "plain", progress=False)
    plain.run()

    marker = tmp_path / "crashed"
    run = RayEvaluation(
        settings,
        tmp_path / "ray",
        device="cpu",
        progress=False,
        backbone_factory=functools.partial(crash_once_backbone, str(marker)),
        backbone_key="tiny",
        max_retries=2,
    )
    rows = run.run()
    assert marker.exists()  # one worker died loading the backbone: its task was retried
    assert not run.failures and len(rows) == 2 * 2 * 2 * 2
    assert_same_run(tmp_path / "plain", tmp_path / "ray")
    assert not (tmp_path / "ray" / "parts").exists()  # scratch folders absorbed and removed
    examples = {p.name for p in (tmp_path / "ray" / "examples" / "brick").iterdir()}
    assert examples == {p.name for p in (tmp_path / "plain" / "examples" / "brick").iterdir()}

    # Lose the last two units: a rerun submits only their (category, seed).
    results = tmp_path / "ray" / "results.csv"
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:-2]) + "\n")
    lost = {tuple(line.split(",")[1:4:2]) for line in lines[-2:]}
    again = RayEvaluation(
        settings, tmp_path / "ray", device="cpu", progress=False,
        backbone_factory=tiny_backbone, backbone_key="tiny",
    )  # fmt: skip
    pending = again.pending([(c, s) for c in ("brick", "gravel") for s in (0, 1)])
    assert {(c, str(s)) for c, s in pending} == lost
    again.run()
    assert_same_run(tmp_path / "plain", tmp_path / "ray")


def test_ray_refuses_other_weights(local_ray, dataset, tmp_path):
    from trustad.evaluation.distributed import RayEvaluation

    settings = quick(dataset, categories=["brick"], seeds=1, shots=[1], attacks=["none"])
    model = tiny_backbone()
    model.weights_source = model.weights_source.__class__(
        "tiny", Path("other"), "test", "tiny", "f" * 64
    )
    Evaluation(settings, model, tmp_path, progress=False).run()
    (tmp_path / "results.csv").write_text((tmp_path / "results.csv").read_text().split("\n")[0])
    run = RayEvaluation(
        settings, tmp_path, device="cpu", progress=False, backbone_factory=tiny_backbone,
        backbone_key="tiny",
    )  # fmt: skip
    with pytest.raises(ValueError, match="other weights"):
        run.run()
