"""The study end to end: a killed run resumed, shards merged, the report; on a tiny ViT."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_tiny_vit, small_synthetic

from trustad.cli import main as cli_main
from trustad.evaluation import Evaluation, EvaluationSettings
from trustad.evaluation.merge import merge_runs
from trustad.evaluation.store import TIMING_COLUMNS
from trustad.evaluation.units import all_work_items, shard_work_items
from trustad.report import write_study_report

HELPER = Path(__file__).parent / "tiny_trustad.py"
SRC = Path(__file__).parents[1] / "src"
# The quick protocol, scaled to the tiny ViT and the small synthetic images.
TINY = dict(resolution=56, probe_steps=20, batch_size=4, seeds=2, shots=[1, 2], save_examples=0)
TINY_ARGS = ["--resolution", "56", "--probe-steps", "20", "--batch-size", "4", "--seeds", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_synthetic(tmp_path_factory, ("brick", "grass", "gravel"))


def quick(root, **kw) -> EvaluationSettings:
    from trustad.evaluation.presets import preset

    return EvaluationSettings(dataset="folder", root=str(root), **{**preset("quick"), **TINY, **kw})


def read(path: Path, extra: tuple[str, ...] = ()) -> dict[tuple, dict[str, str]]:
    key = ("dataset", "category", "shots", "seed", "condition", "eps", *extra)
    with path.open(newline="") as fh:
        return {tuple(r[c] for c in key): r for r in csv.DictReader(fh)}


def assert_same_run(a: Path, b: Path) -> None:
    """The same rows (in any order) in results.csv and scores.csv, numbers to 1e-9."""
    for name, extra in (("results.csv", ()), ("scores.csv", ("image",))):
        ra, rb = read(a / name, extra), read(b / name, extra)
        assert ra.keys() == rb.keys(), name
        assert ra, name
        for key in ra:
            for col, x in ra[key].items():
                if col in TIMING_COLUMNS:  # seconds vary from run to run
                    continue
                y = rb[key][col]
                try:
                    fx, fy = float(x or "nan"), float(y or "nan")
                except ValueError:
                    assert x == y, (name, key, col)
                    continue
                assert (math.isnan(fx) and math.isnan(fy)) or fx == pytest.approx(fy, abs=1e-9)


def tiny_cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    environ = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HELPER.parent}", **(env or {})}
    return subprocess.Popen(
        [sys.executable, str(HELPER), *args], env=environ, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, **kw,
    )  # fmt: skip


def test_killed_run_resumes_to_the_same_results(dataset, tmp_path):
    base = ["evaluate", "--protocol", "quick", "--dataset", "folder", "--root", str(dataset)]
    base += [*TINY_ARGS, "--save-examples", "0"]
    whole = tiny_cli(*base, "--out", str(tmp_path / "whole"))
    assert whole.wait(timeout=300) == 0, whole.stdout.read()

    out = tmp_path / "killed"
    proc = tiny_cli(*base, "--out", str(out), env={"TRUSTAD_TEST_UNIT_PAUSE": "1"})
    results = out / "results.csv"
    deadline = time.time() + 240
    # 8 rows per category (2 seeds x clean, fgsm x 2 shots): kill once brick is complete.
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) > 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = results.read_text().splitlines()
    assert 9 <= len(before) < 1 + 24  # header, brick's 8 rows, not everything

    resumed = tiny_cli(*base, "--out", str(out))
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert "[brick] already complete, skipped" in log
    assert results.read_text().splitlines()[: len(before)] == before  # kept, not redone
    assert_same_run(tmp_path / "whole", out)
    assert json.loads((out / "run.json").read_text())["protocol"] == "quick"
    assert (out / "report.html").is_file()


def test_shards_split_the_units_without_overlap():
    units = all_work_items(["a", "b", "c", "d", "e"], 3)
    for n in (1, 2, 4, 15, 20):
        parts = [shard_work_items(units, i, n) for i in range(1, n + 1)]
        assert [u for p in parts for u in p] == units  # in order, each unit once
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_merged_shards_equal_the_unsharded_run(dataset, tmp_path):
    Evaluation(quick(dataset), make_tiny_vit(), tmp_path / "whole", progress=False).run()
    shards = [tmp_path / f"shard{i}" for i in (1, 2, 3)]
    seen = []
    for i, folder in enumerate(shards, 1):
        rows = Evaluation(
            quick(dataset, shard=f"{i}/3"), make_tiny_vit(), folder, progress=False
        ).run()
        seen.append({(r["category"], r["seed"]) for r in rows})
        assert json.loads((folder / "run.json").read_text())["settings"]["shard"] == f"{i}/3"
    assert sum(map(len, seen)) == 6 and len(set().union(*seen)) == 6  # 3 categories x 2 seeds
    with pytest.raises(ValueError, match="other settings.*shard"):
        Evaluation(quick(dataset, shard="1/2"), make_tiny_vit(), shards[0], progress=False)

    # A partial merge reports what is missing; the merge is finished by adding a shard.
    assert cli_main(["merge", str(shards[0]), "--out", str(tmp_path / "merged")]) == 0
    page = (tmp_path / "merged" / "report.html").read_text()
    assert "Partial run" in page and "gravel, seed 1: 4 rows" in page
    assert cli_main(["report", *map(str, shards), "--out", str(tmp_path / "merged")]) == 0
    assert_same_run(tmp_path / "whole", tmp_path / "merged")
    assert "Complete: all 24 result rows" in (tmp_path / "merged" / "report.html").read_text()
    merged = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert merged["settings"]["shard"] is None and len(merged["merged_from"]) == 3


def test_merge_refuses_other_settings_and_weights(dataset, tmp_path):
    from trustad.backbone.weights import WeightsSource

    def run(folder, sha="a" * 64, **kw):
        model = make_tiny_vit()
        model.weights_source = WeightsSource("t", Path("w"), "test", "t", sha)
        s = quick(dataset, categories=["brick"], seeds=1, shots=[1], attacks=["none"], **kw)
        Evaluation(s, model, tmp_path / folder, progress=False).run()
        return tmp_path / folder

    a, b = run("a", shard="1/2"), run("b", shard="2/2", batch_size=2)
    merge_runs([a, b], tmp_path / "ok")  # shard and batch size may differ
    with pytest.raises(ValueError, match="probe_steps: 20 vs 10"):
        merge_runs([a, run("c", probe_steps=10)], tmp_path / "no1")
    with pytest.raises(ValueError, match="other weights"):
        merge_runs([a, run("d", sha="b" * 64)], tmp_path / "no2")
    with pytest.raises(FileNotFoundError, match="no run.json"):
        merge_runs([a, tmp_path], tmp_path / "no3")


def test_report_files(dataset, tmp_path):
    s = quick(dataset, categories=["brick", "grass"], seeds=2, save_examples=2)
    rows = Evaluation(s, make_tiny_vit(), tmp_path, progress=False).run()
    paths = write_study_report(tmp_path)
    names = sorted(p.name for p in paths["tables"])
    assert "table1_detection.tex" in names and "table3_entropy_per_category.csv" in names
    tex = (tmp_path / "tables" / "table1_detection.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and "F1-max" in tex
    # Table 1's clean AUROC at 1 shot: the mean over seeds of the mean over categories.
    per_seed = {}
    for r in rows:
        if r["condition"] == "clean" and int(r["shots"]) == 1:
            per_seed.setdefault(r["seed"], []).append(float(r["auroc"]))
    mean = sum(sum(v) / len(v) for v in per_seed.values()) / len(per_seed)
    with (tmp_path / "tables" / "table1_detection.csv").open() as fh:
        first = next(csv.DictReader(fh))
    assert first["shots"] == "1" and first["AUROC"].startswith(f"{mean * 100:.2f} ± ")
    assert {p.name for p in paths["figures"]} >= {
        "figure1b.png", "reliability_folder_1shot.png", "entropy_folder_1shot.png", "flags.png"
    }  # fmt: skip
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 4 and 'src="http' not in page
