"""Method configs: a dataclass holds the paper's defaults, YAML overrides it, the CLI
overrides the YAML. Unknown keys and wrong types are errors, never silently ignored.

Every value is checked where it enters: a config dataclass derives from
``MethodConfig``, whose ``__post_init__`` checks each field's type, refuses NaN and
infinities, and applies the bounds declared next to the field with ``setting``:

    lam: float = setting(0.5, above=0)          # > 0
    epochs: int = setting(1, min=1)             # >= 1
    mask_timesteps: list[int] = setting(default_factory=..., min=0, max=999)  # each element

A config may nest another (RECE's ``uce: UCEConfig``): YAML writes ``uce: {lam: 0.5}``,
the command line ``--set uce.lam=0.5``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ErasureError

# Installed wheels carry the configs inside the package; a source checkout keeps them at the top.
_CONFIG_DIRS = (Path(__file__).parent / "configs", Path(__file__).parents[1] / "configs")
SEED_BOUNDS = {"min": 0, "max": 2**63 - 1}  # what torch.Generator.manual_seed takes


def consecutive_seeds_fit(first: int, count: int) -> bool:
    """Whether seeds ``first .. first + count - 1`` (an attack and its restarts) all lie in ``SEED_BOUNDS``."""
    return SEED_BOUNDS["min"] <= first and first + count - 1 <= SEED_BOUNDS["max"]


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


BUNDLED_MODEL = "mini-sd"


def model_preset(method: str, model: str | None) -> Path | None:
    """``configs/<method>/mini-sd.yaml`` when ``model`` is the bundled mini-sd and the method
    has such a file: the settings measured on it (the paper's are for SD 1.4 and leave
    most of a shape in place on mini-sd). ``None`` otherwise.

    Args:
        method: a registered method's name.
        model: the model's name or path (``pipe.name_or_path``, ``--model``).
    """
    if model != BUNDLED_MODEL:
        return None
    path = configs_dir() / method / f"{BUNDLED_MODEL}.yaml"
    return path if path.is_file() else None


# ---- declaring and checking fields -------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """Allowed range of a number (or of each number in a list): ``min <= x <= max``,
    ``above < x < below``; ``None`` leaves that side open."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None

    def problem(self, value: float) -> str | None:
        """Why ``value`` is out of range, or ``None``."""
        if self.min is not None and value < self.min:
            return f"must be at least {self.min:g}"
        if self.max is not None and value > self.max:
            return f"must be at most {self.max:g}"
        if self.above is not None and value <= self.above:
            return f"must be greater than {self.above:g}"
        if self.below is not None and value >= self.below:
            return f"must be less than {self.below:g}"
        return None


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **bounds) -> Any:
    """A config field with bounds (``min``, ``max``, ``above``, ``below``; see ``Bounds``).

    Args:
        default: the default value.
        default_factory: or a function making it (for lists).
        **bounds: the range, checked by ``MethodConfig`` for numbers and numbers in lists.
    """
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"bounds": Bounds(**bounds)})


class ConfigValueError(ErasureError):
    """A config field's value is wrong: ``<Owner>.<field> <problem>``."""

    def __init__(self, owner: str, name: str, problem: str):
        super().__init__(f"{owner}.{name} {problem}")
        self.owner, self.name, self.problem = owner, name, problem

    def within(self, owner: str, name: str) -> "ConfigValueError":
        """The same error, named from an enclosing config (``RECEConfig.uce.lam``)."""
        return ConfigValueError(owner, f"{name}.{self.name}", self.problem)


class MethodConfig:
    """Base of the method configs (dataclasses): whichever way one is made (defaults,
    YAML, ``--set``, direct construction, ``dataclasses.replace``), its fields are
    checked: type, finite numbers, declared bounds, then the config's own ``check``."""

    def __post_init__(self):
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Rules involving text or several fields (e.g. a template must contain ``{}``);
        raise ``ErasureError`` naming the field and the fix."""


def check_fields(config) -> None:
    """Check every field of a config dataclass against its type hint and bounds.

    Args:
        config: a dataclass instance.
    """
    owner = type(config).__name__
    hints = _hints(type(config))
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if not _matches(value, hints[item.name]):
            raise ConfigValueError(owner, item.name, f"must be {_describe(hints[item.name])}, got {value!r}")
        bounds = item.metadata.get("bounds")
        for number in _numbers(value):
            if isinstance(number, float) and not math.isfinite(number):
                raise ConfigValueError(owner, item.name, f"must be a finite number, got {number}")
            problem = bounds.problem(number) if bounds else None
            if problem:
                raise ConfigValueError(owner, item.name, f"{problem}, got {number:g}")


def _numbers(value: Any) -> list:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


@functools.lru_cache(maxsize=None)
def _hints(config_class: type) -> dict[str, Any]:
    return typing.get_type_hints(config_class)


# ---- building a config from overrides ----------------------------------------------------


@dataclass(frozen=True)
class CommandLineValue:
    """A ``--set`` value: its YAML reading and the text as typed. A text setting takes
    the text (``--set parameter_rules=2025``, ``--set mixed_precision=no``), any other
    the YAML value."""

    text: str
    value: Any


def parse_override(text: str) -> tuple[str, CommandLineValue]:
    """``key=value`` from the command line, the value read as YAML (``lam=0.1``,
    ``preserve=[a, b]``); a dotted key sets a field of a nested config (``uce.lam=0.5``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ErasureError(f"--set {text!r}: write key=value, e.g. --set lam=0.1")
    try:
        return key.strip(), CommandLineValue(raw.strip(), yaml.safe_load(raw))
    except yaml.YAMLError:
        raise ErasureError(f"--set {text!r}: the value is not valid YAML") from None


def build_config(config_class: type, *overrides: dict, source: str = "config"):
    """``config_class()`` with each mapping of overrides applied in turn, type-checked.

    Args:
        config_class: a config dataclass.
        *overrides: mappings of field names to values, later ones winning. A nested
            config's fields are set by a mapping (``{"uce": {"lam": 0.5}}``) or a dotted
            key (``{"uce.lam": 0.5}``).
        source: what the keys are called in errors (``"config"``, ``"clip option"``).
    """
    hints = _hints(config_class)
    names = [item.name for item in dataclasses.fields(config_class)]
    values: dict[str, Any] = {}
    nested: dict[str, list[dict]] = {}
    for mapping in overrides:
        for key, value in (mapping or {}).items():
            head, dot, rest = str(key).partition(".")
            nested_class = hints.get(head) if _is_config_class(hints.get(head)) else None
            if head not in names or (dot and nested_class is None):
                raise ErasureError(_unknown_key(config_class, str(key), source))
            if nested_class is not None:
                nested.setdefault(head, []).append({rest: value} if dot else _nested_mapping(config_class, head, value))
            else:
                values[head] = _checked(config_class.__name__, head, value, hints[head])
    for head, mappings in nested.items():
        try:
            values[head] = build_config(hints[head], *mappings, source=source)
        except ConfigValueError as error:
            raise error.within(config_class.__name__, head) from None
    return config_class(**values)


def _unknown_key(config_class: type, key: str, source: str) -> str:
    message = f"unknown {source} key {key!r} for {config_class.__name__}"
    nested = field_path(config_class, key)
    if nested is not None:
        return f"{message}: it is {nested!r} there (--set {nested}=...)"
    return f"{message}: valid keys are {', '.join(f.name for f in dataclasses.fields(config_class))}"


def _is_config_class(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _nested_mapping(owner: type, name: str, value: Any) -> dict:
    value = value.value if isinstance(value, CommandLineValue) else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if not isinstance(value, dict):
        example = f"{name}: {{lam: 0.5}}"
        raise ConfigValueError(owner.__name__, name, f"must be a mapping of its own keys (e.g. {example}), got {value!r}")
    return value


def field_path(config_class: type, name: str) -> str | None:
    """Where a field called ``name`` lives: ``name`` itself, ``"<nested>.<name>"`` in a
    nested config (RECE's ``uce.preserve``), or ``None``."""
    hints = _hints(config_class)
    if name in hints:
        return name
    for head, hint in hints.items():
        if _is_config_class(hint) and field_path(hint, name) is not None:
            return f"{head}.{field_path(hint, name)}"
    return None


def _checked(owner: str, key: str, value: Any, hint: Any) -> Any:
    if isinstance(value, CommandLineValue):
        value = _command_line_value(value, hint)
    takes_float = hint is float or (_is_union(hint) and float in typing.get_args(hint))
    if takes_float and isinstance(value, str):
        value = _yaml_1_1_float(value)
    if not _matches(value, hint):
        raise ConfigValueError(owner, key, f"must be {_describe(hint)}, got {value!r}")
    if takes_float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigValueError(owner, key, f"must be a finite number, got {value}")
    if takes_float:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
    return value


def _command_line_value(given: CommandLineValue, hint: Any) -> Any:
    """The text as typed for a setting that takes text when YAML read a number, a
    boolean or nothing (``2025``, ``no``, an empty value); otherwise the YAML value."""
    value = given.value
    if isinstance(value, str) or not _takes_text(hint):
        return value
    if value is None and _matches(None, hint):
        return None
    return given.text if isinstance(value, (bool, int, float)) or value is None else value


def _takes_text(hint: Any) -> bool:
    if hint is str:
        return True
    if typing.get_origin(hint) is Literal:
        return any(isinstance(arg, str) for arg in typing.get_args(hint))
    return _is_union(hint) and any(_takes_text(arg) for arg in typing.get_args(hint))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


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
    if _is_union(hint):
        return any(_matches(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict) and (not args or all(_matches(k, args[0]) and _matches(v, args[1])
                                                            for k, v in value.items()))
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
    if _is_union(hint):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}" if args else "a mapping"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
