"""The options the verbs share, their help, `predict --format csv` and the model file's
mode."""

from __future__ import annotations

import argparse
import csv
import json
import os

import pytest
from model_helpers import RES, TINY_NAME, make_part_folders, register_tiny_backbone

from trustad.cli import build_parser, main
from trustad.cli.records import CSV_COLUMNS
from trustad.evaluation.arguments import SETTINGS_FIELDS, field_default
from trustad.model import FittedDetector


def verb_parsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("verb", ["fit", "predict", "serve", "evaluate"])
def test_every_option_has_help_and_says_its_default(verb):
    for action in verb_parsers()[verb]._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        name = action.option_strings[-1]
        assert action.help, f"{verb} {name} has no help"
        if verb == "evaluate" or action.required or action.nargs == 0:
            continue  # evaluate's defaults come from a preset; flags need none
        assert "default" in action.help, f"{verb} {name}: help does not say its default"


def test_shared_options_are_evaluates():
    """One source: the same flag, help, parser and default as `evaluate` for every setting
    the verbs share, and the device is `auto` everywhere."""
    parsers = verb_parsers()
    evaluate = {a.dest: a for a in parsers["evaluate"]._actions}
    shared = {"fit": ["resolution", "knn", "backbone", "weights", "batch_size"]}
    shared |= {"predict": ["weights", "batch_size"], "serve": ["weights"]}
    for verb, names in shared.items():
        actions = {a.dest: a for a in parsers[verb]._actions}
        assert actions["device"].default == evaluate["device"].default == "auto"
        assert actions["device"].help == evaluate["device"].help
        for name in names:
            mine, theirs = actions[name], evaluate[name]
            assert mine.option_strings == theirs.option_strings, (verb, name)
            assert (mine.help, mine.type) == (theirs.help, theirs.type), (verb, name)
            assert mine.default == field_default(SETTINGS_FIELDS[name]), (verb, name)


@pytest.fixture
def fitted(tmp_path, monkeypatch):
    weights = register_tiny_backbone(monkeypatch, tmp_path)
    images = make_part_folders(tmp_path / "data")
    model = tmp_path / "m.safetensors"
    cal = images["cal_good"][0].parent.parent
    common = ["--resolution", str(RES), "--backbone", TINY_NAME, "--weights", str(weights)]
    args = ["fit", "--normal", str(images["good"][0].parent), "--out", str(model), *common]
    assert main([*args, "--calibration", str(cal), "--conformal-alpha", "0.5"]) == 0
    return model, weights, images, tmp_path


def test_predict_csv_equals_jsonl_and_resumes(fitted, capsys):
    model, weights, images, tmp = fitted
    test = images["test"][0].parent
    (test / "broken.png").write_bytes(b"not a png")
    base = ["predict", str(model), str(test), "--weights", str(weights), "--quiet"]
    assert main([*base, "--out", str(tmp / "r.jsonl")]) == 1
    assert main([*base, "--out", str(tmp / "r.csv")]) == 1  # csv from the suffix
    lines = [json.loads(x) for x in (tmp / "r.jsonl").read_text().splitlines()]
    with open(tmp / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == len(lines) == 5
    for line, row in zip(lines, rows):
        assert row["path"] == line["path"]
        if "error" in line:
            assert row["error"] == line["error"] and row["score"] == ""
            continue
        assert float(row["score"]) == line["score"]  # full precision
        assert float(row["probability"]) == line["probability"]
        assert row["decision"] == json.dumps(line["decision"])  # true/false as in JSON
        assert row["flag"] == json.dumps(line["flag"]) and row["error"] == ""
        low, high = line["probability_interval"]  # the default calibrator gives one
        assert (
            float(row["probability_interval_low"]),
            float(row["probability_interval_high"]),
        ) == (
            low,
            high,
        )
    # a rerun keeps the good rows once, drops the failed one and tries it again
    (test / "broken.png").unlink()
    capsys.readouterr()
    assert main([*base, "--out", str(tmp / "r.csv")]) == 0
    assert "4 skipped" in capsys.readouterr().err
    with open(tmp / "r.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert again == [r for r in rows if not r["error"]]
    # standard output, asked for by name
    capsys.readouterr()
    assert main([*base, "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ",".join(CSV_COLUMNS) and len(out) == 5


def test_predict_refuses_to_resume_a_file_of_another_format(fitted, capsys):
    model, weights, images, tmp = fitted
    out = tmp / "r.txt"
    out.write_text("path,score\nx.png,1\n")
    args = ["predict", str(model), str(images["test"][0]), "--weights", str(weights)]
    assert main([*args, "--out", str(out)]) == 2
    assert "is not a JSON-lines file" in capsys.readouterr().err
    assert main([*args, "--out", str(out), "--format", "csv"]) == 2
    assert "first line is not the header" in capsys.readouterr().err
    assert out.read_text() == "path,score\nx.png,1\n"  # left as it was


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_model_file_has_the_umasks_mode(fitted, umask):
    model, weights, _, tmp = fitted
    det = FittedDetector.load(model, weights=weights)
    old = os.umask(umask)
    try:
        path = det.save(tmp / f"again-{umask:o}.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
