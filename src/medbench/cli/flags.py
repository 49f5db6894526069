"""`medbench train`'s config flags, generated from RunConfig's field metadata (:mod:`medbench.config.setting`).

Each field becomes one flag in its argument group, with its help and its default shown. Every flag defaults to None
in argparse, so a flag left out keeps the config file's or the recipe's value. The value type follows the field's
type: a choice for a Literal, ``int`` / ``float`` for numbers (the config checks their ranges), a const True for a
boolean, and comma-separated lists for list fields.
"""
from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic.fields import FieldInfo

from medbench.cli.types import names, number_or_numbers, numbers
from medbench.config import GROUPS, RunConfig, meta


@dataclass(frozen=True)
class TrainFlag:
    field: str  # the RunConfig field (the argparse dest)
    flag: str  # its spelling, --field-name unless the field says otherwise
    group: str  # a key of medbench.config.GROUPS
    kwargs: dict[str, Any]  # type / choices / action, metavar and help for add_argument


def _value_form(annotation: Any) -> dict[str, Any]:
    """argparse keywords that read a value of ``annotation`` (None left out of a union)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    args = tuple(a for a in args if a is not type(None))
    if len(args) == 1 and typing.get_origin(args[0]) is Literal:
        return {"choices": list(typing.get_args(args[0]))}
    if args == (bool,):
        return {"action": "store_const", "const": True}
    if args in ((int,), (float,)):
        return {"type": args[0]}
    if args == (list[str],):
        return {"type": names}
    if args == (list[float],):
        return {"type": numbers}
    if args == (float, list[float]):
        return {"type": number_or_numbers}
    if str in args:  # text, or text standing for a richer config value (augment: 'a,b')
        return {}
    raise TypeError(f"no command-line form for {annotation!r}: give the field cli=False")


def _shown(info: FieldInfo, extra: dict[str, Any]) -> str | None:
    """The default as --help shows it."""
    if "shown_default" in extra:
        return extra["shown_default"]
    if info.is_required():
        return None
    v = info.default
    if isinstance(v, bool):
        return "on" if v else "off"
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return str(v)


def _help(info: FieldInfo, extra: dict[str, Any]) -> str:
    shown = _shown(info, extra)
    text = info.description + (" (required: here or in --config)" if shown is None else f" (default: {shown})")
    return text.replace("%", "%%")  # argparse formats help with %


def _train_flag(name: str, info: FieldInfo) -> TrainFlag | None:
    extra = meta(info)
    if not extra.get("cli", True):
        return None
    kwargs = {**_value_form(info.annotation), "help": _help(info, extra)}
    if "metavar" in extra:
        kwargs["metavar"] = extra["metavar"]
    return TrainFlag(name, extra.get("flag") or "--" + name.replace("_", "-"), extra["group"], kwargs)


TRAIN_FLAGS: list[TrainFlag] = [f for name, info in RunConfig.model_fields.items()
                                if (f := _train_flag(name, info)) is not None]
# fields with no flag on purpose (`--set KEY=VALUE` and config files still reach them)
CONFIG_ONLY: tuple[str, ...] = tuple(name for name, info in RunConfig.model_fields.items()
                                     if not meta(info).get("cli", True))


def add_train_flags(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Add one argument group per config group (in :data:`medbench.config.GROUPS` order) holding its fields'
    flags; returns the groups by key, so a command can add its own flags to one."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for f in TRAIN_FLAGS:
        groups[f.group].add_argument(f.flag, dest=f.field, default=None, **f.kwargs)
    return groups


def given_flags(args: argparse.Namespace) -> list[TrainFlag]:
    """The config flags given on the command line."""
    return [f for f in TRAIN_FLAGS if getattr(args, f.field) is not None]


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The config settings the given flags set (flags left out are absent, so they keep lower layers' values)."""
    return {f.field: getattr(args, f.field) for f in given_flags(args)}
