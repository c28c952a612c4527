"""Typed configuration: YAML files validated into dataclasses, with `key=value` overrides.

Every error is one line that names the file and the dotted key, e.g.
`configs/x.yaml: train.lr: expected a number, got "1e-5x"`.
"""

from __future__ import annotations

import dataclasses
import os
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from erase.errors import EraseError

T = TypeVar("T")


_ECHO = reprlib.Repr()
_ECHO.maxstring = _ECHO.maxother = 80
_ECHO.maxlevel, _ECHO.maxlist, _ECHO.maxdict = 2, 4, 4
MAX_YAML_NODES = 100_000  # nodes after alias expansion; far above any real config
MAX_ECHO = 200  # characters of user input repeated in an error message


def _describe(value: Any) -> str:
    """The user's value for an error message, bounded however large or deeply nested it is."""
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= MAX_ECHO else f'"{value[:MAX_ECHO]}..." ({len(value)} characters)'
    return _ECHO.repr(value)


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses documents whose aliases expand past MAX_YAML_NODES nodes
    ("billion laughs": a few lines of nested aliases that become 10^9 values once expanded)."""

    def compose_document(self):
        node = super().compose_document()
        sizes: dict[int, int] = {}

        def size(n) -> int:  # nodes after expansion; shared (aliased) nodes counted once per use
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a recursive alias counts as small here; construction handles it
                children = n.value if isinstance(n, yaml.SequenceNode) else \
                    [x for kv in n.value for x in kv] if isinstance(n, yaml.MappingNode) else []
                sizes[id(n)] = min(1 + sum(size(c) for c in children), MAX_YAML_NODES + 1)
            return sizes[id(n)]

        if node is not None and size(node) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"aliases expand to more than {MAX_YAML_NODES} values (nested anchors and aliases); refusing")
        return node


def safe_load(text: str) -> Any:
    """yaml.safe_load with bounded alias expansion (see _BoundedLoader)."""
    return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass: no Python objects


def _type_name(tp: Any) -> str:
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (list, tuple):
        return "a list"
    if get_origin(tp) is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where YAML is ambiguous."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except EraseError as err:
                errors.append(str(err))
        raise EraseError(errors[0] if len(errors) == 1 else f"{where}: expected {_type_name(args[0])}, got {_describe(value)}")
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise EraseError(f"{where}: expected one of {', '.join(map(str, get_args(tp)))}, got {_describe(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise EraseError(f"{where}: expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise EraseError(f"{where}: expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise EraseError(f"{where}: expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise EraseError(f"{where}: expected a string, got {_describe(value)}")
    if origin in (list, tuple):
        if isinstance(value, str) and origin is list:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise EraseError(f"{where}: expected a list, got {_describe(value)}")
        (item_tp,) = get_args(tp)[:1] or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise EraseError(f"{where}: expected a mapping, got {_describe(value)}")
        _key_tp, val_tp = get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and missing required ones.

    `where` prefixes every error (a file name, then dotted keys). After construction,
    `__post_init__` may raise `ValueError("key: message")`, reported against `where`.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EraseError(f"{where}: expected a mapping, got {_describe(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    sep = ": " if where.endswith((".yaml", ".yml", ".json", ">")) else "."
    for key in data:
        if key not in fields:
            close = [k for k in fields if k.replace("_", "") == str(key).replace("_", "").replace("-", "")]
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(fields))})"
            raise EraseError(f"{where}{sep}{key}: unknown key{hint}")
    kwargs = {}
    for name, field in fields.items():
        key_where = f"{where}{sep}{name}"
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key_where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise EraseError(f"{key_where}: required key is missing")
    try:
        return cls(**kwargs)
    except ValueError as err:
        msg = str(err)
        key, _, rest = msg.partition(": ")
        if rest and key in fields:
            raise EraseError(f"{where}{sep}{key}: {rest}") from None
        raise EraseError(f"{where}: {msg}") from None


def to_dict(obj: Any) -> Any:
    """A plain dict/list tree of a config, fit for YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-5` -> (["train", "lr"], 1e-5). The value is read as YAML."""
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise EraseError(f"override {text!r}: expected key=value, e.g. train.lr=1e-5")
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise EraseError(f"override {text!r}: {k} is not a mapping")
            node = child
        node[keys[-1]] = value
    return data


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EraseError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise EraseError(f"{path}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise EraseError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the config as UTF-8") from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise EraseError(f"{path}: {at}invalid YAML ({problem[:MAX_ECHO]})") from None
    except RecursionError:
        raise EraseError(f"{path}: invalid YAML (nested too deeply)") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EraseError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: list[str] | None = None) -> T:
    """Read YAML `path` (or nothing), apply `key=value` overrides, validate into `cls`."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    return from_dict(cls, data, str(path) if path is not None else "<config>")


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


# Re-exported so that config modules need one import.
__all__ = ["apply_overrides", "dump_yaml", "from_dict", "load_config", "read_yaml", "to_dict", "typing"]
