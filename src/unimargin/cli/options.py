"""Training flags generated from :class:`unimargin.train.TrainConfig` field metadata, so
``train``, ``compare`` and ``sweep`` accept the same options (docs/cli.md).

Each field ``name`` becomes ``--name-with-dashes`` (help, choices from
``field.metadata``; a field with ``metadata["cli"] is False`` gets no flag):

- ``bool`` fields: ``--name`` / ``--no-name``;
- ``int`` / ``float`` / ``str`` fields: one value (``1e-3`` is a float);
- ``list`` fields: comma-separated (``list[int]`` items are integers, others stay strings,
  e.g. class names);
- ``dict`` fields (``head_params``): ``--head-param NAME=VALUE``, repeatable, values through
  :func:`unimargin.train.config.parse_value` (the same normalisation as YAML configs).

Every flag defaults to None = "not given", so the precedence is defaults < ``--config``
YAML < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Iterable

__all__ = ["training_fields", "add_training_options", "training_options", "flag_name", "csv_list"]


def csv_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _base_type(annotation) -> tuple[type, tuple]:
    """(bool|int|float|str|list|dict, type args) of a field annotation, ``X | None`` unwrapped."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, dict):
        return origin, typing.get_args(annotation)
    return annotation, ()


def training_fields(exclude: Iterable[str] = ()) -> list[tuple[dataclasses.Field, type, tuple]]:
    """(field, base type, type args) of every TrainConfig field that gets a flag."""
    from unimargin.train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    skip = set(exclude)
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        kind, args = _base_type(hints[f.name])
        out.append((f, kind, args))
    return out


def flag_name(field_name: str, kind: type) -> str:
    """``--feat-dim`` for feat_dim; dict fields take the singular: ``--head-param``."""
    flag = "--" + field_name.replace("_", "-")
    return flag[:-1] if kind is dict and flag.endswith("s") else flag


def _help(f: dataclasses.Field) -> str:
    text = f.metadata.get("help") or ""
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is not None and "default" not in text:
        text = f"{text} (default {default})" if text else f"default {default}"
    return text.replace("%", "%%")


def add_training_options(parser: argparse.ArgumentParser, exclude: Iterable[str] = ()) -> None:
    """Add one flag per TrainConfig field (except ``exclude``), grouped by metadata group."""
    groups: dict[str, Any] = {}
    for f, kind, args in training_fields(exclude):
        group_name = f.metadata.get("group") or "training"
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(f"{group_name} options")
        group = groups[group_name]
        kwargs: dict[str, Any] = dict(dest=f.name, default=None, help=_help(f))
        choices = f.metadata.get("choices")
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs.update(action="append", metavar="NAME=VALUE")
        elif kind is list:
            kwargs.update(type=_int_list if args == (int,) else csv_list, metavar="A,B")
        else:
            kwargs["type"] = kind if kind in (int, float) else str
            if choices:
                kwargs["choices"] = list(choices)
        group.add_argument(flag_name(f.name, kind), **kwargs)


def training_options(args: argparse.Namespace, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The training flags given on the command line (None = not given), dict fields parsed
    with :func:`unimargin.train.config.parse_assignments`."""
    from unimargin.train.config import parse_assignments

    out: dict[str, Any] = {}
    for f, kind, _ in training_fields(exclude):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if kind is dict:
            value = parse_assignments(value, option=flag_name(f.name, kind))
        out[f.name] = value
    return out
