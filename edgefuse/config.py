"""Typed configuration from YAML with errors that name the file, the line, the key and what
was expected.

Configuration classes are frozen dataclasses; :func:`build` fills one from plain YAML data,
checking unknown keys (with a "did you mean"), missing keys and types, so a typo in a
pipeline file fails before any process starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from edgefuse.errors import ConfigError

T = TypeVar("T")
KeyPath = tuple[str | int, ...]


@dataclass(slots=True)
class Source:
    """Where configuration data came from: the file and the line of every key path in it."""

    file: str = "<config>"
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def where(self, path: KeyPath) -> str:
        """``file:line: a.b.c`` for error messages (the nearest known line)."""
        p = path
        while p and p not in self.lines:
            p = p[:-1]
        line = self.lines.get(p)
        key = ".".join(str(k) for k in path) or "(top level)"
        return f"{self.file}:{line}: {key}" if line else f"{self.file}: {key}"


def load_yaml(path: str | Path) -> tuple[Any, Source]:
    """Parse a YAML file, keeping the line of every key, for precise error messages."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return parse_yaml(text, file=str(p))


def parse_yaml(text: str, *, file: str = "<config>") -> tuple[Any, Source]:
    """Parse YAML text (safe loader only), keeping the line of every key."""
    src = Source(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{file}{at}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if node is None:
        return {}, src
    constructor = yaml.SafeLoader("")

    def convert(n: yaml.Node, path: KeyPath) -> Any:
        src.lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for k, v in n.value:
                key = constructor.construct_object(k, deep=True)
                src.lines[(*path, key)] = k.start_mark.line + 1
                out[key] = convert(v, (*path, key))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [convert(v, (*path, i)) for i, v in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    try:
        return convert(node, ()), src
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: KeyPath, src: Source) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{src.where(path)}: expected one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        alternatives = [a for a in args if a is not type(None)]
        if len(alternatives) == 1:
            # ``X | None``: X's own error (e.g. a typo deep inside a nested dataclass) is the
            # useful one.
            return _convert(alternatives[0], value, path, src)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, path, src)
            except ConfigError as exc:
                errors.append(str(exc))
        expected = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{src.where(path)}: expected {expected}, got {value!r}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, value, src=src, path=path)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{src.where(path)}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(
                    f"{src.where(path)}: expected a list of {len(args)} items, got {len(value)}"
                )
            return tuple(
                _convert(a, v, (*path, i), src)
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        items = [_convert(item, v, (*path, i), src) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src.where(path)}: expected a mapping, got {value!r}")
        args = get_args(tp) or (Any, Any)
        return {
            _convert(args[0], k, (*path, k), src): _convert(args[1], v, (*path, k), src)
            for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(
        f"{src.where(path)}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )


def build(cls: type[T], data: Any, *, src: Source | None = None, path: KeyPath = ()) -> T:
    """Build dataclass ``cls`` from YAML ``data``; raise ``ConfigError`` on any mismatch.

    Unknown keys are errors (with the closest known key suggested), missing keys without a
    default are errors, and every value is checked against its field's type.
    """
    src = src or Source()
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{src.where(path)}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(
                f"{src.where((*path, key))}: unknown key{hint}; expected one of: {known}"
            )
        kwargs[key] = _convert(hints[key], value, (*path, key), src)
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and (f.default_factory is dataclasses.MISSING)
        ):
            raise ConfigError(f"{src.where((*path, name))}: missing required key")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{src.where(path)}: {exc}") from None
    return obj
