"""`trustad evaluate --plan`: the units to do, the passes they need, and nothing written."""

from __future__ import annotations

import csv
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import make_tiny_vit, small_synthetic

from trustad.backbone.runtime import BackboneRuntime
from trustad.cli import main
from trustad.evaluation import Evaluation, EvaluationSettings, ResultStore
from trustad.evaluation.plan import done_in, make_plan, time_backbone
from trustad.evaluation.store import TIMING_COLUMNS, done_results, result_columns


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_synthetic(tmp_path_factory, n_test_good=2, n_test_defect=3)


def _settings(root, **kw) -> EvaluationSettings:
    base = dict(
        dataset="folder",
        root=str(root),
        shots=[1],
        seeds=1,
        resolution=56,
        probe_steps=5,
        batch_size=4,
        pgd_steps=2,
    )
    base.update(kw)
    return EvaluationSettings(**base)


@pytest.fixture
def tiny_backbone(monkeypatch):
    import trustad.backbone as backbone_module

    def load(name, weights=None, device=None):
        model = make_tiny_vit()
        info = {"label": "tiny random ViT", "path": "-", "sha256": "0" * 64}
        model.weights_source = SimpleNamespace(**info, to_dict=lambda: dict(info))
        return model

    monkeypatch.setattr(backbone_module, "load_backbone", load)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_plan_of_a_partly_finished_run_lists_exactly_the_missing_units(
    dataset, tmp_path, tiny_backbone, capsys
):
    first = _settings(dataset, attacks=["noise"])
    Evaluation(first, make_tiny_vit(), tmp_path, progress=False).run()  # 2 categories x 2 units
    before = _snapshot(tmp_path)
    args = [
        "evaluate",
        "--dataset",
        "folder",
        "--root",
        str(dataset),
        "--out",
        str(tmp_path),
        "--resolution",
        "56",
        "--shots",
        "1",
        "2",
        "8",  # 4 training images: 8 shots cannot be done
        "--seeds",
        "2",
        "--attack",
        "noise",
        "--batch-size",
        "4",
        "--probe-steps",
        "5",
        "--pgd-steps",
        "2",
        "--plan",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert _snapshot(tmp_path) == before  # nothing written, nothing rewritten
    listed = set(re.findall(r"to do: (\w+) shots=(\d) seed=(\d) (\w+)", text))
    expected = {
        (c, str(k), str(seed), cond)
        for c in ("brick", "gravel")
        for k in (1, 2)
        for seed in (0, 1)
        for cond in ("clean", "noise")
        if (k, seed) != (1, 0)
    }
    assert listed == expected
    assert "2 categories; units: 12 to do, 4 done, 8 cannot be done" in text
    assert "cannot be done: brick, 8 shots, seed 0" in text
    assert re.search(r"estimated time: .+ for the backbone and the search", text)


@pytest.mark.parametrize("attacks", [["fgsm", "score-pgd"], ["noise", "pgd"]])
def test_planned_passes_are_the_passes_the_run_makes(dataset, tmp_path, attacks):
    settings = _settings(
        dataset, shots=[1, 2], seeds=2, attacks=attacks, categories=["brick"], flags=["none"]
    )
    plan = make_plan(settings, done_in(set()))
    flagged = _settings(
        dataset, shots=[1, 2], seeds=2, attacks=attacks, categories=["brick"], flags=["stability"]
    )
    # stability: 3 passes on each clean and attacked image of every attacked unit, at most
    n_test = len(list((dataset / "brick" / "test").rglob("*.png")))
    attacked_units = 2 * 2 * len(attacks)
    extra = make_plan(flagged, done_in(set())).forward - plan.forward
    assert extra == 3 * 2 * n_test * attacked_units
    run = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False)
    calls = []
    backbone = run.runtime.backbone
    real = backbone.patch_features

    def counting(x):
        if torch.is_grad_enabled():
            calls.append(len(x))
        return real(x)

    backbone.patch_features = counting
    rows = run.run()
    assert len(rows) == len(plan.pending) == 2 * 2 * (1 + len(attacks))
    assert run.backbone_images == plan.forward
    # Differentiable forward passes: one per attack step and image.
    assert sum(calls) == plan.gradient > 0


def test_plan_reads_the_folder_without_writing(dataset, tmp_path):
    settings = _settings(dataset)
    store = ResultStore(tmp_path, settings)
    assert done_results(tmp_path, settings) == set()
    with pytest.raises(ValueError, match="other settings"):
        done_results(tmp_path, _settings(dataset, resolution=112))
    assert done_results(tmp_path / "absent", settings) == set()
    assert store.rows == []


def test_rows_written_before_the_timing_columns_still_resume(dataset, tmp_path):
    settings = _settings(dataset, categories=["brick"])
    Evaluation(settings, make_tiny_vit(), tmp_path, progress=False).run()
    path = tmp_path / "results.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    old = [c for c in result_columns() if c not in TIMING_COLUMNS]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, old, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    assert len(done_results(tmp_path, settings)) == 1
    run = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False)
    run.run()
    assert run.computed == 0 and run.already_done == 1


def test_backbone_timing_does_not_count_as_passes():
    runtime = BackboneRuntime(make_tiny_vit(), resolution=56, batch_size=2)
    timing = time_backbone(runtime, 2)
    assert timing.forward > 0 and timing.gradient > 0 and timing.search > 0
    assert timing.batch == 2
    assert runtime.images_seen == 0


def test_plan_times_the_runtime_the_run_uses(dataset, tmp_path, tiny_backbone, monkeypatch):
    """`--plan` and the run build their backbone runtime from the same settings, precision
    options included."""
    import trustad.evaluation.plan as plan_module
    import trustad.evaluation.runner as runner_module

    built: list[BackboneRuntime] = []
    real = plan_module.run_runtime

    def record(settings, backbone):
        built.append(real(settings, backbone))
        return built[-1]

    monkeypatch.setattr(plan_module, "run_runtime", record)
    monkeypatch.setattr(runner_module, "run_runtime", record)
    options = ["--dataset", "folder", "--root", str(dataset), "--resolution", "56"]
    options += ["--shots", "1", "--seeds", "1", "--batch-size", "3", "--bf16", "--tf32"]
    assert main(["evaluate", "--out", str(tmp_path / "plan"), *options, "--plan"]) == 0
    Evaluation(
        _settings(dataset, batch_size=3, bf16=True, tf32=True), make_tiny_vit(), tmp_path / "run"
    )

    def described(r):
        return (r.resolution, r.batch_size, r.features_bf16, r.gradients_bf16, r.tf32)

    assert len(built) == 2 and described(built[0]) == described(built[1])
    assert described(built[0]) == (56, 3, True, False, True)
