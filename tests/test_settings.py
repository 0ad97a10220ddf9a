"""The command line is built from the settings: defaults, choices and checks in one place."""

from __future__ import annotations

import pytest

from trustad.cli import build_parser
from trustad.cli.demo import DEMO_SETTINGS
from trustad.evaluation.settings import EvaluationSettings, from_arguments


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_evaluate_defaults_are_the_settings_defaults():
    args = _parse("evaluate", "--dataset", "folder", "--root", "data", "--out", "o")
    assert from_arguments(args) == EvaluationSettings(dataset="folder", root="data")
    assert args.device == "auto"


def test_every_setting_has_an_option():
    args = _parse("evaluate", "--dataset", "folder", "--root", "data", "--out", "o")
    assert set(EvaluationSettings.__dataclass_fields__) <= set(vars(args))


def test_demo_changes_only_its_grid():
    args = _parse("demo")
    settings = from_arguments(args, dataset="folder", root="data")
    expected = EvaluationSettings(dataset="folder", root="data", **DEMO_SETTINGS)
    assert settings == expected


def test_options_parse_into_settings():
    args = _parse(
        *("evaluate", "--dataset", "mvtec", "--root", "r", "--out", "o"),
        *("--shots", "4", "1", "4", "--attack", "fgsm", "pgd", "--eps", "8/255", "0.01"),
        *("--mask-test", "off", "--no-random-start", "--no-pixel-metrics", "--platt-smooth"),
    )
    s = from_arguments(args)
    assert s.shots == [1, 4]
    assert s.attacks == ["fgsm", "pgd"]
    assert s.eps == pytest.approx([8 / 255, 0.01])
    assert s.mask_test is False and s.rotate is None
    assert not s.random_start and not s.pixel_metrics and s.platt_smooth


@pytest.mark.parametrize(
    "flag, value",
    [("--resolution", "0"), ("--resolution", "100002"), ("--calibration-fraction", "1")],
)
def test_bad_values_are_refused_before_any_work(flag, value):
    args = _parse("evaluate", "--dataset", "folder", "--root", "r", "--out", "o", flag, value)
    with pytest.raises(ValueError):
        from_arguments(args)


def test_bad_choices_are_refused_by_the_parser():
    with pytest.raises(SystemExit):
        _parse("evaluate", "--dataset", "folder", "--root", "r", "--out", "o", "--attack", "x")
