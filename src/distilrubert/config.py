"""Typed configuration shared by every verb: dataclass fields = CLI flags = recipe keys.

Each verb declares one dataclass whose fields are built with :func:`option`. The CLI turns the
fields into ``--kebab-case`` flags (:func:`add_arguments`), and :func:`resolve` merges, in increasing
priority, the dataclass defaults, an optional YAML recipe (``--config RECIPE.yaml``) and the flags
given on the command line. Validation lives in each dataclass's ``__post_init__`` and raises
``ValueError`` naming the flag.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo:
    ...     size: int = option(5000, "Vocabulary size.")
    >>> resolve(Demo, {"size": 300}).size
    300
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = ["ConfigError", "add_arguments", "load_recipe", "option", "resolve", "to_dict"]


class ConfigError(ValueError):
    """A configuration value or recipe key is invalid; the message names the flag or key."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, metavar: str | None = None) -> Any:
    """Declare a configuration field with its one-line help.

    Args:
        default: Default value; omit for a required option. Lists are copied per instance.
        help: One line for ``--help``.
        metavar: Optional placeholder shown in ``--help``.
    """
    metadata = {"help": help, "metavar": metavar}
    if isinstance(default, list | dict | set):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field_name: str) -> str:
    """``max_length`` -> ``--max-length``."""
    return "--" + field_name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _scalar_parser(tp: Any, name: str):
    """A callable that converts one string (from the CLI) or value (from YAML) to ``tp``."""
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)

        def parse_choice(value: Any) -> Any:
            for choice in choices:
                if value == choice or str(value) == str(choice):
                    return choice
            raise ConfigError(f"{flag_name(name)}: {value!r} is not one of {', '.join(map(str, choices))}")

        return parse_choice
    if tp is bool:

        def parse_bool(value: Any) -> bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{flag_name(name)}: {value!r} is not a boolean")

        return parse_bool
    if tp in (int, float, str, Path):

        def parse_plain(value: Any) -> Any:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{flag_name(name)}: {value!r} is not an integer")
            try:
                return tp(value)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{flag_name(name)}: {value!r} is not a valid {tp.__name__}") from err

        return parse_plain
    raise TypeError(f"unsupported config type for field {name!r}: {tp!r}")


def _field_converter(field: dataclasses.Field, tp: Any):
    """Return ``convert(value) -> typed value`` for a field, handling Optional and list types."""
    tp, optional = _unwrap_optional(tp)
    if typing.get_origin(tp) is list:
        (item_tp,) = typing.get_args(tp)
        parse_item = _scalar_parser(item_tp, field.name)

        def convert_list(value: Any) -> Any:
            if value is None and optional:
                return None
            items = value if isinstance(value, list | tuple) else [value]
            out = []
            for item in items:
                # "2000,5000" on the command line and [2000, 5000] in YAML mean the same.
                parts = str(item).split(",") if isinstance(item, str) and item_tp is not str else [item]
                out.extend(parse_item(p) for p in parts if str(p).strip() != "")
            return out

        return convert_list
    parse = _scalar_parser(tp, field.name)

    def convert(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, str) and optional and value.lower() in ("none", "null"):
            return None
        return parse(value)

    return convert


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per dataclass field of ``cls`` to ``parser``.

    Flags carry no argparse default (``SUPPRESS``), so :func:`resolve` can tell a flag given on the
    command line from a default and let a recipe fill the rest.
    """
    for field, tp in _fields(cls):
        inner, _ = _unwrap_optional(tp)
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        default = None if required else (
            field.default if field.default is not dataclasses.MISSING else field.default_factory()
        )
        help_text = field.metadata.get("help", "")
        if required:
            help_text += " (required)"
        elif default not in (None, [], ""):
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            help_text += f" (default: {shown})"
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
        if field.metadata.get("metavar"):
            kwargs["metavar"] = field.metadata["metavar"]
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(inner) is list:
            kwargs["nargs"] = "+"
        elif typing.get_origin(inner) is Literal:
            kwargs["choices"] = [str(c) for c in typing.get_args(inner)]
        parser.add_argument(flag_name(field.name), **kwargs)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe: a mapping of option names (``max_length`` or ``max-length``) to values."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"--config: cannot read recipe {path}: {err.strerror or err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--config: {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of options, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve(cls: type, values: dict[str, Any], recipe: dict[str, Any] | None = None,
            recipe_name: str = "recipe") -> Any:
    """Build ``cls`` from defaults < ``recipe`` < ``values`` (CLI flags), converting types.

    Raises:
        ConfigError: an unknown recipe key, a value of the wrong type, or a missing required option.
    """
    fields = {f.name: (f, tp) for f, tp in _fields(cls)}
    merged: dict[str, Any] = {}
    for source_name, source in ((recipe_name, recipe or {}), ("command line", values)):
        for key, value in source.items():
            key = key.replace("-", "_")
            if key not in fields:
                known = ", ".join(sorted(fields))
                raise ConfigError(f"{source_name}: unknown option {key!r} (known: {known})")
            field, tp = fields[key]
            merged[key] = _field_converter(field, tp)(value)
    missing = [
        flag_name(name)
        for name, (f, _) in fields.items()
        if name not in merged and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required option(s): {', '.join(missing)}")
    return cls(**merged)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/YAML-friendly dict of a config dataclass (paths as strings)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
