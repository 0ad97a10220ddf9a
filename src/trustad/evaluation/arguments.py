"""The command line of ``evaluate`` and ``demo``, built from the settings' fields: one
option per field with its default, choices and help, ``--protocol`` presets, and the
settings back from the parsed arguments. The options other verbs share with ``evaluate``
(backbone, weights, resolution, rotation, masking, knn, batch size) come from here too
(``add_setting_options``)."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, Field, fields
from typing import Any

from .presets import PRESETS, preset
from .settings import EvaluationSettings, parse_on_off

SETTINGS_FIELDS = {f.name: f for f in fields(EvaluationSettings)}


def base_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, is a list) of a field annotation such as ``list[int] | None``."""
    hint = annotation
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    return hint, False


def add_arguments(parser: argparse.ArgumentParser, exclude: Iterable[str] = ()) -> None:
    """One option per settings field, in argument groups, and ``--protocol``; ``exclude``
    leaves fields out (their defaults apply). An option not given is absent from the parsed
    namespace (``argparse.SUPPRESS``), so that ``from_arguments`` can tell what the user
    asked for from the defaults and lay it over a protocol preset."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    groups["grid"] = parser.add_argument_group("grid")
    groups["grid"].add_argument(
        "--protocol",
        choices=tuple(PRESETS),
        default=argparse.SUPPRESS,
        help="a named set of settings: paper (the paper's study: shots 1 2 4 8 16, 3 seeds, "
        "clean and FGSM 8/255) or quick (shots 1 2, 1 seed); other options override it",
    )
    for f in fields(EvaluationSettings):
        if f.name in exclude:
            continue
        group = groups.setdefault(
            f.metadata["group"], parser.add_argument_group(f.metadata["group"])
        )
        flag, kwargs = option_for(f.name, field_default(f))
        if f.default is MISSING and f.default_factory is MISSING:
            kwargs["required"] = True
        group.add_argument(flag, **kwargs, dest=f.name, default=argparse.SUPPRESS)


def field_default(f: Field) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


def option_for(name: str, default: Any, help: str | None = None) -> tuple[str, dict[str, Any]]:
    """The flag and ``add_argument`` options (but dest and default) of settings field
    ``name``, its help saying ``default``; ``help`` replaces the field's help text."""
    f = SETTINGS_FIELDS[name]
    meta = f.metadata
    hint = typing.get_type_hints(EvaluationSettings)[name]
    kind, many = base_type(hint)
    flag = "--" + (meta.get("flag") or name).replace("_", "-")
    help_text = (help or meta["help"]).replace("%", "%%")  # argparse formats help with %
    if kind is bool and hint is bool and default is False:
        return flag, dict(action="store_true", help=help_text)
    if kind is bool and hint is bool:  # on by default: offer --no-NAME
        return "--no-" + flag[2:], dict(
            action="store_false", help=f"turn off (on by default): {help_text}"
        )
    kwargs: dict[str, Any] = dict(help=help_text)
    if kind is bool:  # bool | None: None keeps the category table's default
        kwargs.update(type=parse_on_off, metavar="on|off")
    else:
        kwargs["type"] = meta.get("parse") or kind
    if default is not None:
        values = default if isinstance(default, list) else [default]
        shown = " ".join(show(v) for v in values)
        kwargs["help"] = f"{help_text} (default {shown})"
    if many:
        kwargs["nargs"] = "+"
    if meta.get("choices") is not None:
        kwargs["choices"] = tuple(meta["choices"])
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    return flag, kwargs


def show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def add_setting_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Iterable[str],
    defaults: Mapping[str, Any] | None = None,
    helps: Mapping[str, str] | None = None,
) -> None:
    """Options for the settings fields ``names`` as ``evaluate`` offers them, for another
    verb: argparse fills in their defaults (the field's, or ``defaults[name]``); ``helps``
    replaces a field's help where the verb means it differently."""
    defaults, helps = defaults or {}, helps or {}
    for name in names:
        default = defaults.get(name, field_default(SETTINGS_FIELDS[name]))
        flag, kwargs = option_for(name, default, helps.get(name))
        parser.add_argument(flag, **kwargs, dest=name, default=default)


def given_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave explicitly (options absent from ``args`` were not)."""
    return {
        f.name: getattr(args, f.name) for f in fields(EvaluationSettings) if hasattr(args, f.name)
    }


def from_arguments(
    args: argparse.Namespace, protocol: str | None = None, **fixed: Any
) -> EvaluationSettings:
    """Settings from parsed arguments: the defaults, then the protocol preset (``--protocol``
    or ``protocol``), then the options given, then ``fixed`` (fields the parser did not
    offer). Repeated list values (shots, attacks, eps) are dropped, keeping their order."""
    protocol = getattr(args, "protocol", None) or protocol
    values = preset(protocol) if protocol else {}
    values.update(given_arguments(args))
    values.update(fixed)
    for name in ("shots", "attacks", "eps"):
        if name in values:
            values[name] = list(dict.fromkeys(values[name]))
    if "shots" in values:
        values["shots"] = sorted(values["shots"])
    return EvaluationSettings(**values)
