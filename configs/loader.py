"""One strict loader for every entry point: YAML -> frozen dataclasses.

The schema is a (frozen) dataclass whose fields carry every default. A YAML file and
command-line overrides (``a.b=value``) are merged over those defaults, then checked:

* a key the schema does not know is an error with a did-you-mean hint;
* each value must match the field's annotation (int, float, str, bool, ``X | None``,
  ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, ``Literal[...]`` or a nested dataclass);
* range checks live in the dataclass's ``__post_init__`` and run once, here, at load time.

Override values are parsed with ``yaml.safe_load`` (never eval): ``lr=3.0e-4``, ``classes=[person,car]``,
``weights=null``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

import yaml

from configs.common import did_you_mean

T = TypeVar("T")

__all__ = ["ConfigError", "check_range", "load_config", "from_dict", "to_dict", "save_config", "parse_overrides"]


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    """Range check for a dataclass's ``__post_init__``: ValueError naming the key, the range and the value."""
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"'{name}' must be in {rng}, got {value!r}")


def _unknown_key_hint(key: str, choices: Sequence[str]) -> str:
    return f"{did_you_mean(key, choices)} Valid keys: {sorted(choices)}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in canonical form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, _prefix=where + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass  # try the next member of the union
        raise ConfigError(f"{where}: {value!r} does not fit {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}.{did_you_mean(value, args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (write floats as 1.0e-4: YAML reads 1e-4 as a string)" if isinstance(value, str) else ""
            raise ConfigError(f"{where}: expected a number, got {value!r}{hint}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {tp!r} in the config schema")


def _onto_default(f: dataclasses.Field, tp: Any, value: Any) -> Any:
    """A partial mapping for a config section is merged onto that field's own default, so a section whose default
    differs from its class's (``kernel: KernelDeblurConfig(refine=RefineConfig(iters=0))``) keeps the rest of it
    when one key is overridden."""
    section = _section(tp)
    if section is None or not isinstance(value, dict):
        return value
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = f.default if f.default is not dataclasses.MISSING else None
    return _merge(to_dict(default), value, section) if isinstance(default, section) else value


def from_dict(schema: type[T], data: dict, _prefix: str = "") -> T:
    """Build ``schema`` from a plain mapping, strictly (unknown keys and wrong types are errors)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(f"Unknown config key '{_prefix}{key}'.{_unknown_key_hint(str(key), list(fields))}")
    kwargs = {k: _coerce(_onto_default(fields[k], hints[k], v), hints[k], f"{_prefix}{k}") for k, v in data.items()}
    try:
        return schema(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{_prefix.rstrip('.') or schema.__name__}: {e}") from e


def to_dict(cfg: Any) -> dict:
    """Dataclass -> plain YAML-friendly dict (tuples become lists)."""

    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["a.b=1", "c=[x,y]"]`` -> ``{"a": {"b": 1}, "c": ["x", "y"]}`` (values via yaml.safe_load)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} is not of the form key=value (e.g. model.g_name=fpn_mobilenet_v2)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"Override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"Override {item!r}: cannot parse value {raw!r}: {e}") from e
        node = tree
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = _Whole(value) if isinstance(value, dict) else value
    return tree


class _Whole(dict):
    """A mapping written whole in an override (``key={a: 1}``), as opposed to one built from dotted keys."""


def _section(tp: Any) -> type | None:
    """The dataclass behind a field annotation (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def _merge(base: dict, extra: dict, schema: type | None = None) -> dict:
    """``extra`` over ``base``, key by key. One exception: a mapping written whole in an override
    replaces a mapping-valued setting instead of merging into it, so ``model.content_loss={l1: 1.0}``
    means exactly L1 (the YAML's other terms are dropped), while ``model.content_loss.fft=0.2`` changes
    one weight and keeps the rest. Config sections (nested dataclasses) always merge."""
    hints = typing.get_type_hints(schema) if schema is not None and dataclasses.is_dataclass(schema) else {}
    out = dict(base)
    for k, v in extra.items():
        sub = _section(hints.get(k))
        whole = isinstance(v, _Whole) and sub is None and k in hints
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not whole:
            out[k] = _merge(out[k], v, sub)
        else:
            out[k] = dict(v) if isinstance(v, _Whole) else v
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}. Pass an existing YAML file with --config.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    data: dict | None = None,
) -> T:
    """Defaults from ``schema``, then the YAML file at ``path``, then ``data``, then ``overrides``."""
    merged: dict = {}
    if path is not None:
        try:
            merged = _read_yaml(Path(path))
        except ConfigError as e:
            raise ConfigError(str(e)) from e
    if data:
        merged = _merge(merged, data, schema)
    if overrides:
        merged = _merge(merged, parse_overrides(overrides), schema)
    where = f" (from {path})" if path is not None else ""
    try:
        return from_dict(schema, merged)
    except ConfigError as e:
        raise ConfigError(f"{e}{where}") from e


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
