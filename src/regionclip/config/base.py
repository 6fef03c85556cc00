"""One dict / JSON / YAML (de)serialisation for every dataclass config of the package.

`ConfigBase` is mixed into a ``@dataclass`` and gives it:

* ``to_dict()``: plain YAML/JSON-safe data in field order: nested configs become dicts, tuples become lists,
  everything else is kept as is. Run-cache keys hash this output, so its form is part of the cache contract.
* ``from_dict(data)``: the inverse. Values are converted by the field's type hint: a mapping becomes the nested
  dataclass, a list becomes a tuple for ``tuple[...]`` fields (element-wise, recursively), ``Optional`` accepts
  ``None``. A key that is not a field is an error naming it (``vision.lyers``): a typo must not silently leave a
  default in place. Per-class validation and coercion stay in each class's ``__post_init__``.
* ``to_yaml(path) -> Path`` (atomic write) and ``from_yaml(path)``; an empty YAML file means "all defaults".
* ``to_json()`` (sorted keys) and ``from_json(text)``, the form stored in weight-file metadata.

A class sets ``config_label`` to name itself in errors ("unknown model config keys: ['nme']") and may override
``expand_dict`` to rewrite its input before the fields are read (`WorldConfig` expands a ``preset:`` key there).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from ..utils import atomic_write_text

ConfigT = TypeVar("ConfigT", bound="ConfigBase")


class ConfigBase:
    """Mixin for dataclass configs: ``to_dict``/``from_dict``, ``to_yaml``/``from_yaml``, ``to_json``/``from_json``."""

    #: how error messages name this config ("unknown <label> keys: [...]")
    config_label: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python (YAML/JSON-safe) dict of all fields, in field order."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
        """Build from a dict such as ``to_dict()`` gives; unknown or missing required keys are a ``ValueError``."""
        return _build(cls, data, prefix="", label=cls.config_label)

    @classmethod
    def expand_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Rewrite the input of `from_dict` before its keys are checked (identity unless a class overrides it)."""
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls: type[ConfigT], text: str) -> ConfigT:
        return cls.from_dict(json.loads(text))

    def to_yaml(self, path: str | Path) -> Path:
        """Write all fields to a YAML file (atomically); returns the path."""
        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls: type[ConfigT], path: str | Path) -> ConfigT:
        """Load a YAML mapping of fields; errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as error:
            if type(error) not in (ValueError, TypeError):  # subclasses may take other constructor arguments
                raise
            raise type(error)(f"{path}: {error}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _build(cls: type[ConfigT], data: Any, prefix: str, label: str) -> ConfigT:
    """``cls(**data)`` with every value converted by its field's type hint; ``prefix`` is the key path so far."""
    if not isinstance(data, Mapping):
        where = f" {prefix[:-1]!r}" if prefix else ""
        raise TypeError(f"{label}{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    data = cls.expand_dict(dict(data))
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(prefix + key for key in set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {label} keys: {unknown}; known keys of {cls.__name__}: {sorted(fields)}")
    missing = sorted(
        prefix + name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"missing required {label} keys: {missing}")
    hints = typing.get_type_hints(cls)
    return cls(**{key: _convert(value, hints[key], f"{prefix}{key}.", label) for key, value in data.items()})


def _convert(value: Any, hint: Any, prefix: str, label: str) -> Any:
    """``value`` shaped as ``hint`` asks where the plain form differs (mapping → dataclass, list → tuple); values
    whose shape does not match are passed on unchanged for ``__post_init__`` to normalise or reject."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(options) != 1:
            return value
        hint, origin = options[0], typing.get_origin(options[0])
    if isinstance(hint, type) and issubclass(hint, ConfigBase):
        return value if isinstance(value, hint) else _build(hint, value, prefix, label)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis or origin is list and len(args) == 1:
            item_hints = [args[0]] * len(value)
        elif origin is tuple and len(args) == len(value):
            item_hints = list(args)
        else:
            item_hints = [Any] * len(value)
        return origin(
            _convert(item, item_hint, f"{prefix}{i}.", label) for i, (item, item_hint) in enumerate(zip(value, item_hints))
        )
    return value
