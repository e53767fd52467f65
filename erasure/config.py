"""Method configs: a dataclass holds the paper's defaults, YAML overrides it, the CLI
overrides the YAML. Unknown keys and wrong types are errors, never silently ignored."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ErasureError

# Installed wheels carry the configs inside the package; a source checkout keeps them at the top.
_CONFIG_DIRS = (Path(__file__).parent / "configs", Path(__file__).parents[1] / "configs")


def configs_dir() -> Path:
    for directory in _CONFIG_DIRS:
        if directory.is_dir():
            return directory
    raise ErasureError("the configs/ folder is missing from this installation: reinstall erasure")


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping, read with ``safe_load``."""
    path = Path(path)
    if not path.is_file():
        raise ErasureError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ErasureError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ErasureError(f"{path} must hold a mapping of config keys, not a {type(data).__name__}")
    return data


def packaged_overrides(method: str, concept_type: str) -> dict:
    """The overrides in ``configs/<method>/<concept_type>.yaml``, if that file exists."""
    path = configs_dir() / method / f"{concept_type}.yaml"
    return read_yaml(path) if path.is_file() else {}


def build_config(config_class: type, *overrides: dict, source: str = "config"):
    """``config_class()`` with each mapping of overrides applied in turn, type-checked."""
    hints = typing.get_type_hints(config_class)
    names = [f.name for f in dataclasses.fields(config_class)]
    values: dict[str, Any] = {}
    for mapping in overrides:
        for key, value in (mapping or {}).items():
            if key not in hints or key not in names:
                raise ErasureError(
                    f"unknown {source} key {key!r} for {config_class.__name__}: valid keys are {', '.join(names)}"
                )
            values[key] = _checked(key, value, hints[key], config_class.__name__)
    return config_class(**values)


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def _checked(key: str, value: Any, hint: Any, owner: str) -> Any:
    takes_float = hint is float or (typing.get_origin(hint) in (typing.Union, types.UnionType) and float in typing.get_args(hint))
    if takes_float and isinstance(value, str):
        value = _yaml_1_1_float(value)
    if not _matches(value, hint):
        raise ErasureError(f"{owner}.{key} must be {_describe(hint)}, got {value!r}")
    if takes_float:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
    return value


def _yaml_1_1_float(text: str) -> Any:
    """``1e-3`` as a float: YAML 1.1 (PyYAML) reads exponents without a dot as strings."""
    try:
        return float(text) if text.strip().lower().lstrip("+-")[:1].isdigit() else text
    except ValueError:
        return text


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line, the value read as YAML (``lam=0.1``, ``preserve=[a, b]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ErasureError(f"--set {text!r}: write key=value, e.g. --set lam=0.1")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ErasureError(f"--set {text!r}: the value is not valid YAML") from None
