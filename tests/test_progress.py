"""Progress lines, run.log, the closing summary and per-unit timings of `trustad evaluate`."""

from __future__ import annotations

import csv
import logging
import re
from types import SimpleNamespace

import pytest
from conftest import make_tiny_vit, small_synthetic

from trustad.cli import main
from trustad.evaluation import progress as P
from trustad.evaluation.store import TIMING_COLUMNS


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _logger(name: str) -> tuple[logging.Logger, ListHandler]:
    logger = logging.getLogger(f"trustad-test.{name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = ListHandler()
    logger.handlers = [handler]
    return logger, handler


def test_plain_lines_are_bounded_by_the_interval():
    now = [0.0]
    logger, handler = _logger("bounded")
    progress = P.Progress(tty=False, interval=100.0, clock=lambda: now[0], logger=logger)
    with progress.bar("work", 1000, "img") as bar:
        for _ in range(1000):
            now[0] += 1.0  # one second per image: 1000 s in all
            bar.update()
    lines = [r.getMessage() for r in handler.records]
    # A start line, one line per 100 s (the last one is the end line), an end line.
    assert len(lines) == 1 + 9 + 1
    assert lines[0].startswith("work: 0/1000 img")
    assert lines[-1].startswith("work: 1000/1000 img")
    assert all("\r" not in line and "\n" not in line for line in lines)
    # Each line has the rate and the time left.
    assert lines[5] == "work: 500/1000 img [08:20<08:20, 1.00img/s]"
    assert all(P.is_progress(r) for r in handler.records)


def test_quiet_draws_no_bar_but_keeps_the_records():
    logger, handler = _logger("quiet")
    progress = P.Progress(False, tty=True, logger=logger)
    with progress.bar("work", 3) as bar:
        assert bar.tqdm is None
        bar.update(3)
    assert [r.getMessage().split(" ")[1] for r in handler.records] == ["0/3", "3/3"]


def test_a_terminal_with_bars_gets_no_progress_records(capsys):
    handler = P.ConsoleHandler(bars=True)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger, _ = _logger("console")
    logger.handlers = [handler]
    logger.info("a message")
    logger.info("a bar line", extra={P.PROGRESS: True})
    assert capsys.readouterr().err == "a message\n"


def test_stopwatch_takes_what_was_spent():
    watch = P.Stopwatch()
    with watch("features"):
        pass
    with watch("features"):
        pass
    taken = watch.take()
    assert set(taken) == {"features"} and taken["features"] >= 0
    assert watch.take() == {}


# -- through the command line -----------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_synthetic(tmp_path_factory, ("brick",), 3, 3)


@pytest.fixture
def tiny_backbone(monkeypatch):
    """``load_backbone`` gives a tiny random ViT with a made-up provenance record."""
    import trustad.backbone as backbone_module

    def load(name, weights=None, device=None):
        model = make_tiny_vit()
        info = {"label": "tiny random ViT", "path": "-", "sha256": "0" * 64}
        model.weights_source = SimpleNamespace(**info, to_dict=lambda: dict(info))
        return model

    monkeypatch.setattr(backbone_module, "load_backbone", load)


def evaluate_args(root, out, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--dataset",
        "folder",
        "--root",
        str(root),
        "--out",
        str(out),
        "--resolution",
        "56",
        "--batch-size",
        "4",
        "--probe-steps",
        "5",
        "--seeds",
        "1",
        "--shots",
        "1",
        *extra,
    ]


def test_evaluate_without_a_terminal_writes_lines_a_log_and_timings(
    dataset, tmp_path, tiny_backbone, capsys, monkeypatch
):
    monkeypatch.setattr(P, "LINE_INTERVAL", 1e9)  # only start and end lines
    out = tmp_path / "run"
    assert main(evaluate_args(dataset, out, "--attack", "pgd", "--pgd-steps", "2")) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    bars = [line for line in lines if re.search(r": \d+/\d+ \S+ \[", line)]
    starts = [line for line in bars if re.search(r": 0/\d+ ", line)]
    assert starts and len(bars) == 2 * len(starts)  # nothing between start and end
    assert any(line.startswith("[brick] pgd eps=0.03137 seed 0: 0/12 img-step") for line in bars)
    assert any(line.startswith("results: 2/2 row") for line in bars)
    assert lines[-1].startswith("summary: 2 results computed, 0 already done, 0 skipped")
    log = (out / "run.log").read_text()
    assert '"resolution": 56' in log  # the settings
    assert "tiny random ViT" in log  # the weights' provenance
    assert re.search(r"unit shots=1 seed=0 pgd eps=0.0313725: seconds_features", log)
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row in rows:
        assert all(float(row[c]) >= 0 for c in TIMING_COLUMNS)
    assert float(rows[1]["seconds_attack"]) > 0 and float(rows[0]["seconds_attack"]) == 0


def test_quiet_keeps_skip_reasons_in_the_log_and_the_summary(
    dataset, tmp_path, tiny_backbone, capsys
):
    out = tmp_path / "run"
    args = evaluate_args(dataset, out, "--quiet")
    args[args.index("--shots") + 1 : args.index("--shots") + 2] = ["1", "8"]
    assert main(args) == 0
    err = capsys.readouterr().err
    # Nothing but the closing summary on the terminal, with the reason.
    assert err.startswith("summary: 1 results computed, 0 already done, 1 skipped")
    assert "skipped: brick, 8 shots, seed 0" in err
    assert len(err.splitlines()) == 2
    log = (out / "run.log").read_text()
    assert "WARNING skipped brick, 8 shots, seed 0" in log
    assert "summary: 1 results computed" in log


def test_unexpected_error_names_the_log_with_the_traceback(
    dataset, tmp_path, tiny_backbone, capsys, monkeypatch
):
    from trustad.evaluation import Evaluation

    def broken(self):
        raise KeyError("something internal")

    monkeypatch.setattr(Evaluation, "run", broken)
    out = tmp_path / "run"
    assert main(evaluate_args(dataset, out, "--quiet")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unexpected error: KeyError" in err[0]
    assert err[0].endswith(str(out / "run.log"))
    assert "Traceback" in (out / "run.log").read_text()
