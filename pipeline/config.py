"""Load ``configs/default.yaml``, apply user overrides, and give sections as read-only attribute maps."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from pipeline.errors import InputError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class Section(Mapping[str, Any]):
    """A read-only mapping whose keys are also attributes: ``cfg.detect.image_scale``."""

    def __init__(self, values: Mapping[str, Any], name: str = "") -> None:
        self._name = name
        self._values = {
            key: Section(value, f"{name}.{key}".strip(".")) if isinstance(value, Mapping) else value
            for key, value in values.items()
        }

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"config has no value {self._name + '.' if self._name else ''}{key}") from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Section({self.to_dict()!r})"

    def to_dict(self) -> dict[str, Any]:
        """A plain, deep-copied dict of the values."""
        return {k: v.to_dict() if isinstance(v, Section) else copy.deepcopy(v) for k, v in self._values.items()}

    def digest(self) -> str:
        """A short stable hash of the values, for cache manifests."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _merge(base: dict, override: Mapping, where: str) -> dict:
    for key, value in override.items():
        if key not in base:
            raise InputError(f"unknown config key {where}{key} (see configs/default.yaml)")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise InputError(f"config key {where}{key} is a section, not a value")
            _merge(base[key], value, f"{where}{key}.")
        else:
            base[key] = value
    return base


def _parse_assignment(text: str) -> dict:
    if "=" not in text:
        raise InputError(f"--set expects section.key=value, got {text!r}")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    nested: dict = {}
    node = nested
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"cannot read config file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Section:
    """The default config, updated by the YAML file at ``path`` and ``section.key=value`` overrides."""
    values = _read_yaml(DEFAULT_CONFIG_PATH)
    if path is not None:
        _merge(values, _read_yaml(Path(path)), "")
    for text in overrides:
        _merge(values, _parse_assignment(text), "")
    return Section(values)
