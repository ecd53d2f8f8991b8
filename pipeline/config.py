"""Load ``configs/default.yaml``, apply user overrides, check every value, and give a typed ``Config``.

Every value is checked when the config is read, so a bad ``--set`` or config file is one line naming the
key before any work starts:

- its type is the type of its default in configs/default.yaml (an int default takes only integers, a float
  default takes any finite number and is stored as float, a str default a string, a bool default true or
  false, a list default a list of the same length whose items have the defaults' types); keys added to
  default.yaml later are type-checked the same way without any change here;
- known keys also have a range, stated once as their field's metadata in pipeline/settings.py
  (``RANGE_RULES`` collects them): scales and rates above 0, batch sizes at least 1, probabilities and IoUs
  in [0, 1], frame counts at least 0 or 1, median-filter kernels odd.

The checked values become a ``Config`` of typed, frozen sections (pipeline/settings.py), built once here, so
stages read ``cfg.detect.batch_size`` as an int and never cast it.
"""
from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import InputError, first_line
from pipeline.settings import (  # noqa: F401  (re-exported: the GestSync limits and Section are read from here)
    BATCH_SIZE_RULE,
    GESTSYNC_MAX_WINDOW_FRAMES,
    GESTSYNC_MEL_BANDS,
    GESTSYNC_MEL_WINDOW_FRAMES,
    RANGE_RULES,
    Config,
    Section,
    SettingsSection,
)

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def _unknown_key(base: Mapping, key: str, where: str) -> InputError:
    """One line naming an unknown key and the closest known key of its section (a misspelt key would otherwise
    leave its default in force)."""
    close = difflib.get_close_matches(str(key), [str(k) for k in base], n=1, cutoff=0.6)
    hint = f"; did you mean {where}{close[0]}?" if close else f"; {where.rstrip('.') or 'the top level'} has " \
        f"{', '.join(str(k) for k in base)}"
    return InputError(f"unknown config key {where}{key} (see configs/default.yaml){hint}")


def _merge(base: dict, override: Mapping, where: str) -> dict:
    for key, value in override.items():
        if key not in base:
            raise _unknown_key(base, key, where)
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
        raise InputError(f"cannot read config file {path}: {first_line(err)}") from None
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping of sections")
    return data


# ---- value checks ------------------------------------------------------------------------------
def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a finite number"
    if isinstance(default, str):
        return "a string"
    return type(default).__name__


def _checked_scalar(value: Any, default: Any) -> tuple[bool, Any]:
    """(ok, value converted to the default's type) for one scalar."""
    if default is None:
        return True, value
    if isinstance(default, bool):
        return isinstance(value, bool), value
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool), value
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if isinstance(default, str):
        return isinstance(value, str), value
    return isinstance(value, type(default)), value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_value(key: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default``, or a one-line InputError naming ``key``."""
    if isinstance(default, list) and not default:  # an empty default says nothing about length or items
        if not isinstance(value, list):
            raise InputError(f"config value {key} must be a list, got {_show(value)}")
    elif isinstance(default, list):
        if not isinstance(value, list) or len(value) != len(default):
            raise InputError(f"config value {key} must be a list of {len(default)} values like {default}, "
                             f"got {_show(value)}")
        checked = []
        for item, item_default in zip(value, default):
            ok, item = _checked_scalar(item, item_default)
            if not ok:
                raise InputError(f"config value {key} must hold {_type_name(item_default)}s like {default}, "
                                 f"got {_show(value)}")
            checked.append(item)
        value = checked
    else:
        ok, value = _checked_scalar(value, default)
        if not ok:
            raise InputError(f"config value {key} must be {_type_name(default)}, got {_show(value)}")
    name = key.rsplit(".", 1)[-1]
    rule = RANGE_RULES.get(key) or (BATCH_SIZE_RULE if name == "batch_size" else None)
    if rule is not None and not rule[0](value):
        raise InputError(f"config value {key} must be {rule[1]}, got {_show(value)}")
    return value


def validate(values: dict, defaults: Mapping, where: str = "") -> dict:
    """Check (and convert in place) every value of ``values`` against ``defaults``; see the module docstring."""
    for key, default in defaults.items():
        if key not in values:
            continue
        if isinstance(default, Mapping):
            if not isinstance(values[key], Mapping):
                raise InputError(f"config key {where}{key} is a section, not a value")
            validate(values[key], default, f"{where}{key}.")
        else:
            values[key] = _check_value(f"{where}{key}", values[key], default)
    return values


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """The default config, updated by the YAML file at ``path`` and ``section.key=value`` overrides.

    Every value is type- and range-checked (``validate``); a bad one is a one-line InputError naming it.
    """
    defaults = _read_yaml(DEFAULT_CONFIG_PATH)
    values = copy.deepcopy(defaults)
    if path is not None:
        _merge(values, _read_yaml(Path(path)), "")
    for text in overrides:
        _merge(values, _parse_assignment(text), "")
    checked = validate(values, defaults)
    _check_together(checked)
    return Config.from_values(checked)


def with_overrides(cfg: Section, overrides: Iterable[str] = ()) -> Config:
    """``cfg`` with ``section.key=value`` overrides applied and checked as ``load_config`` checks them (a
    hand-made ``cfg`` may hold only some keys: the others keep their defaults)."""
    defaults = _read_yaml(DEFAULT_CONFIG_PATH)
    values = _merge(copy.deepcopy(defaults), cfg.to_dict(), "")
    for text in overrides:
        _merge(values, _parse_assignment(text), "")
    checked = validate(values, defaults)
    _check_together(checked)
    return Config.from_values(checked)


def replace_checked(section: SettingsSection, **changes: Any) -> SettingsSection:
    """``section`` with ``changes`` (command-line values such as ``--steps``) checked as ``load_config`` checks a
    ``--set`` of the same key: its type, its range rule, and the values that must agree."""
    values = section.to_dict()
    _merge(values, changes, f"{section.section}.")
    checked = validate(values, section.to_dict(), f"{section.section}.")
    _check_together({section.section: checked})
    return type(section).from_values(checked)


def _check_gestsync_window(gestsync: Mapping[str, Any]) -> None:
    """GestSync's audio window (window_frames x mel_frames_per_video_frame filterbank frames) must be one its
    audio network makes one embedding of."""
    if "window_frames" not in gestsync or "mel_frames_per_video_frame" not in gestsync:
        return
    span = gestsync["window_frames"] * gestsync["mel_frames_per_video_frame"]
    low, high = GESTSYNC_MEL_WINDOW_FRAMES
    if not low <= span <= high:
        raise InputError(f"gestsync.window_frames x gestsync.mel_frames_per_video_frame is {span} filterbank frames; "
                         f"GestSync's audio network makes one embedding of {low} to {high} (trained on 25 x 4 = 100)")


def _check_together(values: Mapping[str, Any]) -> None:
    """Values that must agree with each other: stage 3 decides on the 25 fps frames stages 1 and 2 made, and
    the shifts a training negative may take are a non-empty range."""
    media_rate = values.get("media", {}).get("frame_rate_hz")
    diarise_rate = values.get("diarise", {}).get("frame_rate_hz")
    if media_rate is not None and diarise_rate is not None and media_rate != diarise_rate:
        raise InputError(f"diarise.frame_rate_hz ({diarise_rate}) must equal media.frame_rate_hz ({media_rate}): "
                         "the sync curves and face tracks have one value per video frame")
    _check_gestsync_window(values.get("gestsync", {}))
    train = values.get("train", {})
    if "min_shift_frames" in train and "max_shift_frames" in train \
            and train["min_shift_frames"] > train["max_shift_frames"]:
        raise InputError(f"train.min_shift_frames ({train['min_shift_frames']}) must not exceed "
                         f"train.max_shift_frames ({train['max_shift_frames']})")
