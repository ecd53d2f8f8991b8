"""Load ``configs/default.yaml``, apply user overrides, check every value, and give sections as read-only maps.

Every value is checked when the config is read, so a bad ``--set`` or config file is one line naming the
key before any work starts:

- its type is the type of its default in configs/default.yaml (an int default takes only integers, a float
  default takes any finite number and is stored as float, a str default a string, a bool default true or
  false, a list default a list of the same length whose items have the defaults' types); keys added to
  default.yaml later are type-checked the same way without any change here;
- known keys also have a range (``RANGE_RULES``): scales and rates above 0, batch sizes at least 1,
  probabilities and IoUs in [0, 1], frame counts at least 0 or 1, median-filter kernels odd.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline import formats
from pipeline.errors import InputError, first_line

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
Rule = tuple[Callable[[Any], bool], str]


def _at_least(low: float) -> Rule:
    return (lambda v: v >= low), f">= {low:g}"


def _above(low: float) -> Rule:
    return (lambda v: v > low), f"> {low:g}"


def _between(low: float, high: float) -> Rule:
    return (lambda v: low <= v <= high), f"in [{low:g}, {high:g}]"


def _open_between(low: float, high: float) -> Rule:
    return (lambda v: low < v < high), f"in ({low:g}, {high:g})"


def _odd_positive() -> Rule:
    return (lambda v: v >= 1 and v % 2 == 1), "an odd number >= 1 (a median filter's kernel)"


def _one_of(*choices: Any) -> Rule:
    return (lambda v: v in choices), "one of " + ", ".join(str(c) for c in choices)


def _box_rule() -> Rule:
    return (lambda v: 0 <= v[0] < v[2] and 0 <= v[1] < v[3]), "[x1, y1, x2, y2] with 0 <= x1 < x2 and 0 <= y1 < y2"


def _increasing() -> Rule:
    return (lambda v: all(a <= b for a, b in zip(v, v[1:]))), "in increasing order"


# What GestSync's network takes (models/gestsync.py; config is read before torch is imported, so the numbers are
# here, and tests/test_nothing_silent.py checks them against the network): its audio stream reduces
# ``[80, L]`` filterbanks to one embedding only for 80 bands (69-84 run, on bands it was never trained on; fewer
# fail inside the network) and L = 85..116 frames; its positional encoding holds 50 positions, i.e. windows of
# up to 54 frames (the 5-frame first layer takes 4).
GESTSYNC_MEL_BANDS = 80
GESTSYNC_MEL_WINDOW_FRAMES = (85, 116)
GESTSYNC_MAX_WINDOW_FRAMES = 54

_PROBABILITY = _between(0.0, 1.0)
_POSITIVE = _above(0.0)
_NON_NEGATIVE = _at_least(0)
_AT_LEAST_ONE = _at_least(1)

# Range rules of known keys ("section.key"), named choices included (their lists live in pipeline/formats.py),
# so a bad value is refused when the config is read, before any stage runs. Keys not listed (checkpoint file
# names, codec names, free numbers) are only type-checked. A rule for a key that default.yaml no longer has
# is ignored. Any key named ``batch_size`` must be at least 1.
RANGE_RULES: dict[str, Rule] = {
    "sync.model": _one_of(*formats.SYNC_MODELS),
    "syncnet.metric": _one_of(*formats.SYNC_METRICS),
    "syncnet_demo.metric": _one_of(*formats.SYNC_METRICS),
    "vad.method": _one_of(*formats.VAD_METHODS),
    "embed.speaker_model": _one_of(*formats.SPEAKER_MODELS),
    "embed.cpu_precision": _one_of(*formats.EMBED_CPU_PRECISIONS),
    "diarise.mode": _one_of(*formats.FUSION_MODES),
    "train.model": _one_of(*formats.TRAIN_MODELS),
    "train.optimizer": _one_of(*formats.TRAIN_OPTIMIZERS),
    "train.cuda_precision": _one_of(*formats.TRAIN_CUDA_PRECISIONS),
    "gestsync.lip_model": _one_of(*formats.GESTSYNC_LIP_MODELS),
    "gestsync.prefer": _one_of(*formats.GESTSYNC_PREFERENCES),
    "runtime.threads": _NON_NEGATIVE,
    "media.frame_rate_hz": _POSITIVE,
    "media.sample_rate_hz": _POSITIVE,
    "media.audio_channels": _AT_LEAST_ONE,
    "media.audio_short_note_s": _NON_NEGATIVE,
    "input.max_missing_s": _NON_NEGATIVE,
    "detect.image_scale": _POSITIVE,
    "detect.conf_threshold": _PROBABILITY,
    "detect.nms_overlap": _PROBABILITY,
    "detect.prior_conf_threshold": _PROBABILITY,
    "detect.prior_nms_overlap": _PROBABILITY,
    "detect.prior_nms_top_k": _AT_LEAST_ONE,
    "detect.max_detections": _AT_LEAST_ONE,
    "scenes.content_threshold": _NON_NEGATIVE,
    "scenes.min_scene_len_frames": _NON_NEGATIVE,
    "track.iou_threshold": _PROBABILITY,
    "track.max_gap_frames": _NON_NEGATIVE,
    "track.min_track_frames": _NON_NEGATIVE,
    "track.min_face_size_px": _NON_NEGATIVE,
    "crop.size_px": _AT_LEAST_ONE,
    "crop.scale": _NON_NEGATIVE,
    "crop.smooth_kernel_frames": _odd_positive(),
    "crop.pad_value": _between(0, 255),
    "crop.keyframe_interval_frames": _AT_LEAST_ONE,
    "syncnet.vshift_frames": _NON_NEGATIVE,
    "syncnet.parallel_tracks": _AT_LEAST_ONE,
    "syncnet_demo.vshift_frames": _NON_NEGATIVE,
    "vad.webrtc_aggressiveness": _between(0, 3),
    "vad.webrtc_frame_ms": _one_of(10, 20, 30),
    "vad.webrtc_padding_ms": _POSITIVE,
    "vad.webrtc_trigger_ratio": _PROBABILITY,
    "vad.webrtc_release_ratio": _PROBABILITY,
    "vad.silero_threshold": _PROBABILITY,
    "vad.silero_min_speech_ms": _NON_NEGATIVE,
    "vad.silero_min_silence_ms": _NON_NEGATIVE,
    "vad.silero_speech_pad_ms": _NON_NEGATIVE,
    "vad.given_speech_tolerance_s": _NON_NEGATIVE,
    "embed.window_s": _POSITIVE,
    "embed.hop_s": _POSITIVE,
    "faces.frames_per_track": _AT_LEAST_ONE,
    "faces.crop_box_px": _box_rule(),
    "faces.input_size_px": _AT_LEAST_ONE,
    "faces.max_cosine_distance": _between(0.0, 2.0),
    "diarise.frame_rate_hz": _POSITIVE,
    "diarise.conf_pad_frames": _NON_NEGATIVE,
    "diarise.conf_medfilt_frames": _odd_positive(),
    "diarise.conf_thresholds_cosine": _increasing(),
    "diarise.conf_thresholds_euclidean": _increasing(),
    "diarise.min_votes": _NON_NEGATIVE,
    "diarise.closing_frames": _NON_NEGATIVE,
    "diarise.min_utterance_frames": _NON_NEGATIVE,
    "diarise.merge_distance": _between(0.0, 2.0),
    "diarise.cooccur_penalty": _NON_NEGATIVE,
    "diarise.min_offscreen_frames": _NON_NEGATIVE,
    "diarise.offscreen_min_similarity": _between(-1.0, 1.0),
    "diarise.majority_filter_frames": _odd_positive(),
    "diarise.embedding_offset_s": _NON_NEGATIVE,
    "detections.max_per_frame": _AT_LEAST_ONE,
    "conversations.sample_rate_hz": _POSITIVE,
    "conversations.frame_s": _POSITIVE,
    "conversations.silence_db": _POSITIVE,
    "conversations.min_pause_s": _POSITIVE,
    "conversations.min_phrase_s": _POSITIVE,
    "conversations.max_inner_pause_s": _NON_NEGATIVE,
    "conversations.turn_s": _increasing(),
    "conversations.gap_s": _increasing(),
    "conversations.overlap_turn_p": _PROBABILITY,
    "conversations.overlap_s": _increasing(),
    "conversations.backchannel_p": _PROBABILITY,
    "conversations.backchannel_s": _increasing(),
    "conversations.speaker_weight": _increasing(),
    "conversations.level_dbfs": _increasing(),
    "conversations.noise_slope": _increasing(),
    "conversations.fade_s": _NON_NEGATIVE,
    "conversations.edge_silence_s": _NON_NEGATIVE,
    "conversations.duration_s": _increasing(),
    "conversations.snr_db": _increasing(),
    "conversations.max_peak": _open_between(0.0, 1.0),
    "conversations.speakers": _increasing(),
    "conversations.overlap_files": _PROBABILITY,
    "conversations.noisy_files": _PROBABILITY,
    "detections.max_box_side_ratio": _POSITIVE,
    "wav2lip.box_expand": _NON_NEGATIVE,
    "wav2lip.vshift_frames": _NON_NEGATIVE,
    "wav2lip.smooth_frames": _AT_LEAST_ONE,
    "wav2lip.conf_thresholds": _increasing(),
    "train.steps": _AT_LEAST_ONE,
    "train.lr": _POSITIVE,
    "train.lr_final": _POSITIVE,
    "train.momentum": _between(0.0, 1.0),
    "train.weight_decay": _NON_NEGATIVE,
    "train.margin": _POSITIVE,
    "train.min_shift_frames": _AT_LEAST_ONE,
    "train.max_shift_frames": _AT_LEAST_ONE,
    "train.negatives_per_window": _NON_NEGATIVE,
    "train.other_track_negatives": _NON_NEGATIVE,
    "train.val_fraction": _open_between(0.0, 1.0),
    "train.val_windows": _AT_LEAST_ONE,
    "train.val_every_steps": _AT_LEAST_ONE,
    "train.bn_recalibration_windows": _AT_LEAST_ONE,
    "train.seed": _NON_NEGATIVE,
    "gestsync.sample_rate_hz": _POSITIVE,
    "gestsync.n_fft": _AT_LEAST_ONE,
    "gestsync.win_samples": _AT_LEAST_ONE,
    "gestsync.hop_samples": _AT_LEAST_ONE,
    "gestsync.num_mels": ((lambda v: v == GESTSYNC_MEL_BANDS),
                          f"{GESTSYNC_MEL_BANDS}, the filterbank bands GestSync's audio network was trained on"),
    "gestsync.fmin_hz": _NON_NEGATIVE,
    "gestsync.fmax_hz": _POSITIVE,
    "gestsync.log_floor": _POSITIVE,
    "gestsync.mel_frames_per_video_frame": _AT_LEAST_ONE,
    "gestsync.window_frames": _between(5, GESTSYNC_MAX_WINDOW_FRAMES),
    "gestsync.window_stride_frames": _AT_LEAST_ONE,
    "gestsync.frame_width_px": _AT_LEAST_ONE,
    "gestsync.frame_height_px": _AT_LEAST_ONE,
    "gestsync.mask_below_face_px": _NON_NEGATIVE,
    "gestsync.mask_rows_no_face": _NON_NEGATIVE,
    "gestsync.offset_stride_frames": _AT_LEAST_ONE,
    "gestsync.max_offset_frames": _NON_NEGATIVE,
    "gestsync.offset_avg_frames": _AT_LEAST_ONE,
    "gestsync.crop_median_kernel_frames": _AT_LEAST_ONE,
    "gestsync.crop_pad_grey": _between(0, 255),
    "gestsync.num_avg_frames": _AT_LEAST_ONE,
    "gestsync.region_width_faces": _POSITIVE,
    "gestsync.region_above_faces": _NON_NEGATIVE,
    "gestsync.region_below_faces": _POSITIVE,
    "gestsync.person_min_face_overlap": _PROBABILITY,
    "gestsync.conf_thresholds": _increasing(),
    "improved.min_face_run_frames": _NON_NEGATIVE,
    "improved.identity_merge_distance": _between(0.0, 2.0),
    "improved.anchor_share": _PROBABILITY,
    "improved.decode_step_frames": _AT_LEAST_ONE,
    "improved.max_ahc_points": _at_least(2),
    "improved.ahc_threshold": _between(-1.0, 1.0),
    "improved.max_threshold_scores": _at_least(2),
    "improved.drop_share": _PROBABILITY,
    "improved.init_smoothing": _NON_NEGATIVE,
    "improved.lda_dim": _AT_LEAST_ONE,
    "improved.fa": _POSITIVE,
    "improved.fb": _POSITIVE,
    "improved.loop_prob": _between(0.0, 1.0),
    "improved.max_iterations": _AT_LEAST_ONE,
    "improved.epsilon": _POSITIVE,
    "improved.min_speaker_s": _NON_NEGATIVE,
    "improved.audio_overlap_posterior": _PROBABILITY,
    "resemblyzer.merge_distance": _between(0.0, 2.0),
    "resemblyzer.offscreen_min_similarity": _between(-1.0, 1.0),
    "visualise.video_crf": _between(0, 51),
    "score.collar_s": _NON_NEGATIVE,
}


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
    rule = RANGE_RULES.get(key) or (_AT_LEAST_ONE if name == "batch_size" else None)
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


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Section:
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
    return Section(checked)


def with_overrides(cfg: Section, overrides: Iterable[str] = ()) -> Section:
    """``cfg`` with ``section.key=value`` overrides applied and checked as ``load_config`` checks them."""
    defaults = _read_yaml(DEFAULT_CONFIG_PATH)
    values = cfg.to_dict()
    for text in overrides:
        _merge(values, _parse_assignment(text), "")
    checked = validate(values, defaults)
    _check_together(checked)
    return Section(checked)


def _check_gestsync_window(gestsync: Mapping[str, Any]) -> None:
    """GestSync's audio window (window_frames x mel_frames_per_video_frame filterbank frames) must be one its
    audio network makes one embedding of."""
    if "window_frames" not in gestsync or "mel_frames_per_video_frame" not in gestsync:
        return
    span = int(gestsync["window_frames"]) * int(gestsync["mel_frames_per_video_frame"])
    low, high = GESTSYNC_MEL_WINDOW_FRAMES
    if not low <= span <= high:
        raise InputError(f"gestsync.window_frames x gestsync.mel_frames_per_video_frame is {span} filterbank frames; "
                         f"GestSync's audio network makes one embedding of {low} to {high} (trained on 25 x 4 = 100)")


def _check_together(values: Mapping[str, Any]) -> None:
    """Values that must agree with each other: stage 3 decides on the 25 fps frames stages 1 and 2 made, and
    the shifts a training negative may take are a non-empty range."""
    media_rate = values.get("media", {}).get("frame_rate_hz")
    diarise_rate = values.get("diarise", {}).get("frame_rate_hz")
    if media_rate is not None and diarise_rate is not None and float(media_rate) != float(diarise_rate):
        raise InputError(f"diarise.frame_rate_hz ({diarise_rate}) must equal media.frame_rate_hz ({media_rate}): "
                         "the sync curves and face tracks have one value per video frame")
    _check_gestsync_window(values.get("gestsync", {}))
    train = values.get("train", {})
    if "min_shift_frames" in train and "max_shift_frames" in train \
            and int(train["min_shift_frames"]) > int(train["max_shift_frames"]):
        raise InputError(f"train.min_shift_frames ({train['min_shift_frames']}) must not exceed "
                         f"train.max_shift_frames ({train['max_shift_frames']})")
