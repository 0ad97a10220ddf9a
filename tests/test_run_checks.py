"""Checks made before any work: the output folder and the device; one-line errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from trustad.cli import main
from trustad.evaluation.runlog import check_output_folder


@pytest.fixture
def no_backbone(monkeypatch):
    """Loading the backbone fails the test: every check must come before it."""
    import trustad.backbone as backbone_module

    def load(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the checks")

    monkeypatch.setattr(backbone_module, "load_backbone", load)


def _evaluate(out, *extra: str) -> list[str]:
    # The dataset is never read: the checks come first.
    return ["evaluate", "--dataset", "folder", "--root", ".", "--out", str(out), *extra]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("trustad evaluate: error: ")
    return err[0]


def test_out_that_is_a_file(tmp_path, capsys, no_backbone):
    out = tmp_path / "results"
    out.write_text("not a folder")
    assert main(_evaluate(out)) == 2
    assert "is a file, not a folder" in _one_line_error(capsys)
    assert out.read_text() == "not a folder"


def test_out_under_a_file(tmp_path, capsys, no_backbone):
    parent = tmp_path / "file"
    parent.write_text("x")
    assert main(_evaluate(parent / "sub" / "out")) == 2
    assert f"{parent} is a file" in _one_line_error(capsys)


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in: a read-only one, or for root (whom
    permission bits do not stop) /proc, where no file can be created."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return folder
    if os.path.isdir("/proc"):
        try:
            with tempfile.TemporaryFile(dir="/proc"):
                pass
        except OSError:
            return Path("/proc")
    pytest.skip("no folder this process cannot write in (root, no /proc)")


def test_out_that_is_not_writable(tmp_path, capsys, no_backbone):
    folder = _unwritable_folder(tmp_path)
    out = folder / "trustad-out"
    assert main(_evaluate(out)) == 2
    assert "is not writable" in _one_line_error(capsys)
    assert not out.exists()
    with pytest.raises(ValueError, match="not writable"):
        check_output_folder(folder)


def test_plan_checks_the_output_folder_too(tmp_path, capsys, no_backbone):
    out = tmp_path / "results"
    out.write_text("x")
    assert main(_evaluate(out, "--plan")) == 2
    assert "is a file" in _one_line_error(capsys)


def test_writable_folder_passes_and_is_not_created(tmp_path):
    out = tmp_path / "a" / "b"
    assert check_output_folder(out) == out
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it(tmp_path, capsys, no_backbone):
    out = tmp_path / "out"
    assert main(_evaluate(out, "--device", "cuda")) == 2
    assert "no CUDA device" in _one_line_error(capsys)
    assert not out.exists()  # nothing written: no run.json, no run.log


def test_traceback_without_a_run_log_goes_to_a_temporary_file():
    from trustad.evaluation.runlog import crash_log

    try:
        raise KeyError("internal")
    except KeyError as exc:
        path = crash_log(exc)
    try:
        text = path.read_text()
        assert "Traceback" in text and "KeyError: 'internal'" in text
    finally:
        path.unlink()
