"""The command line of ``evaluate`` and ``demo``, built from the settings' fields: one
option per field with its default, choices and help, ``--protocol`` presets, and the
settings back from the parsed arguments."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from dataclasses import MISSING, fields
from typing import Any

from .presets import PRESETS, preset
from .settings import EvaluationSettings, parse_on_off


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
    hints = typing.get_type_hints(EvaluationSettings)
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
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        default = f.default if f.default is not MISSING else None
        if f.default_factory is not MISSING:
            default = f.default_factory()
        kind, many = base_type(hints[f.name])
        flag = "--" + (meta.get("flag") or f.name).replace("_", "-")
        help_text = meta["help"].replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = dict(dest=f.name, help=help_text, default=argparse.SUPPRESS)
        if f.default is MISSING and f.default_factory is MISSING:
            kwargs["required"] = True
        if kind is bool and hints[f.name] is bool and default is False:
            group.add_argument(flag, action="store_true", **kwargs)
            continue
        if kind is bool and hints[f.name] is bool:  # on by default: offer --no-NAME
            flag = "--no-" + flag[2:]
            kwargs["help"] = f"turn off (on by default): {help_text}"
            group.add_argument(flag, action="store_false", **kwargs)
            continue
        if kind is bool:  # bool | None: None keeps the category table's default
            kwargs.update(type=parse_on_off, metavar="on|off")
        else:
            kwargs["type"] = meta.get("parse") or kind
        if default is not None:
            values = default if isinstance(default, list) else [default]
            shown = " ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values)
            kwargs["help"] = f"{help_text} (default {shown})"
        if many:
            kwargs["nargs"] = "+"
        if meta.get("choices") is not None:
            kwargs["choices"] = tuple(meta["choices"])
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        group.add_argument(flag, **kwargs)


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
