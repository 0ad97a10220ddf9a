"""The command line is built from the settings: defaults, choices and checks in one place."""

from __future__ import annotations

import pytest

from trustad.cli import build_parser
from trustad.cli.demo import DEMO_PROTOCOL
from trustad.evaluation.arguments import from_arguments
from trustad.evaluation.presets import PAPER, QUICK, preset
from trustad.evaluation.settings import EvaluationSettings


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_evaluate_defaults_are_the_settings_defaults():
    args = _parse("evaluate", "--dataset", "folder", "--root", "data", "--out", "o")
    assert from_arguments(args) == EvaluationSettings(dataset="folder", root="data")
    assert args.device == "auto"


def test_every_setting_has_an_option():
    parser = build_parser()
    evaluate = parser._subparsers._group_actions[0].choices["evaluate"]
    dests = {a.dest for a in evaluate._actions}
    assert set(EvaluationSettings.__dataclass_fields__) <= dests
    # Options not given stay out of the namespace: a preset can tell them from defaults.
    args = _parse("evaluate", "--dataset", "folder", "--root", "data", "--out", "o")
    assert not hasattr(args, "shots") and not hasattr(args, "protocol")


def test_demo_runs_the_quick_protocol():
    args = _parse("demo")
    settings = from_arguments(args, protocol=DEMO_PROTOCOL, dataset="folder", root="data")
    assert settings == EvaluationSettings(dataset="folder", root="data", **QUICK)


def test_paper_protocol_is_the_documented_study():
    args = _parse(
        "evaluate", "--protocol", "paper", "--dataset", "mvtec", "--root", "r", "--out", "o"
    )
    s = from_arguments(args)
    assert s.shots == [1, 2, 4, 8, 16] and s.seeds == 3 and s.categories is None
    assert s.conditions() == [("clean", 0.0), ("fgsm", pytest.approx(8 / 255))]
    assert s.preprocessing == "agnostic" and s.platt_c is None and not s.platt_smooth
    assert s.save_examples > 0
    # Everything the preset does not name is the documented default (PROTOCOL.md).
    defaults = EvaluationSettings(dataset="mvtec", root="r").to_dict()
    assert {k: v for k, v in s.to_dict().items() if k not in PAPER} == {
        k: v for k, v in defaults.items() if k not in PAPER
    }
    assert QUICK == {**PAPER, "shots": [1, 2], "seeds": 1}


def test_explicit_options_override_the_preset():
    args = _parse(
        *("evaluate", "--protocol", "paper", "--dataset", "visa", "--root", "r", "--out", "o"),
        *("--seeds", "1", "--shots", "4", "--no-pixel-metrics", "--save-examples", "0"),
    )
    s = from_arguments(args)
    assert (s.seeds, s.shots, s.pixel_metrics, s.save_examples) == (1, [4], False, 0)
    assert s.attacks == ["fgsm"]  # from the preset
    # An option given with the default's value still wins over the preset.
    args = _parse("evaluate", "--protocol", "quick", "--dataset", "visa", "--root", "r",
                  "--out", "o", "--seeds", "3")  # fmt: skip
    assert from_arguments(args).seeds == 3
    assert preset("quick") is not QUICK and preset("quick") == QUICK


def test_shard_option():
    base = ("evaluate", "--dataset", "folder", "--root", "r", "--out", "o", "--shard")
    assert from_arguments(_parse(*base, "2/3")).shard == "2/3"
    for bad in ("0/2", "3/2", "x"):
        with pytest.raises(SystemExit):
            _parse(*base, bad)
    with pytest.raises(ValueError, match="shard"):
        EvaluationSettings(dataset="folder", root="r", shard="4/3")


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
