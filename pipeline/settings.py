"""The config's types: one frozen dataclass per section of configs/default.yaml, with each value's range rule.

configs/default.yaml holds every default value and says where it came from; this module holds only what a value
may be. Each field's ``metadata`` states its range rule once (``rule``: a check and the words a refusal uses;
``pipeline.config`` applies it to the defaults, the user's file and every ``--set``) and whether it is
``speed_only``: a value that changes how fast a run goes, or only whether an input is refused, never what it
writes, and so stays out of every cache key (``SettingsSection.key_dict``). Named choices list their names in
pipeline/formats.py. ``pipeline.config.load_config`` builds a ``Config`` of these sections once; stages read
typed values from it and never cast them.
"""
from __future__ import annotations

import copy
import hashlib
import json
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from pipeline import formats

Rule = tuple[Callable[[Any], bool], str]


# ---- range rules -------------------------------------------------------------------------------
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
BATCH_SIZE_RULE = _AT_LEAST_ONE  # also for a ``batch_size`` of a section that has no type here yet


def setting(rule: Rule | None = None, *, speed_only: bool = False) -> Any:
    """A field with no default (default.yaml gives it), its range ``rule`` and whether it is ``speed_only``."""
    return field(metadata={"rule": rule, "speed_only": speed_only})


def _plain(value: Any) -> Any:
    """A value as default.yaml spells it (tuples as lists), so keys and digests read as the config's JSON."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else copy.deepcopy(value)


class SettingsSection(Mapping[str, Any]):
    """One config section's typed values: attributes (``cfg.detect.image_scale``), and read-only mapping access
    (``cfg.detect["image_scale"]``, ``.get``, iteration) for code that treats a section as a dict."""

    section: ClassVar[str] = ""  # its name in default.yaml, set by ``Config``

    def __getattr__(self, key: str) -> Any:  # only reached for a name that is not a field
        if key.startswith("_"):
            raise AttributeError(key)
        raise AttributeError(f"config has no value {self.section}.{key}")

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:  # type: ignore[attr-defined]
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)  # type: ignore[attr-defined]

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> SettingsSection:
        """The section from checked values (lists become tuples); a key default.yaml has and this class has not
        (or the other way round) is a programming error, named here rather than as a TypeError."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if set(values) != names:
            raise TypeError(f"config section {cls.section}: {cls.__name__} in pipeline/settings.py and "
                           f"configs/default.yaml disagree on {sorted(set(values) ^ names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @classmethod
    def speed_only_fields(cls) -> tuple[str, ...]:
        """The fields left out of cache keys."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("speed_only"))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """Every value, as a plain dict (lists, as in default.yaml)."""
        return {name: _plain(getattr(self, name)) for name in self}

    def key_dict(self) -> dict[str, Any]:
        """Every value that can change a result (all but the ``speed_only`` fields): what a cache key holds."""
        skip = self.speed_only_fields()
        return {name: value for name, value in self.to_dict().items() if name not in skip}

    def digest(self) -> str:
        """A short stable hash of the values, for cache manifests."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"


# ---- the sections ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuntimeConfig(SettingsSection):
    """Config section ``runtime``."""

    threads: int = setting(rule=_NON_NEGATIVE, speed_only=True)
    heap_reuse_mb: int = setting(rule=_NON_NEGATIVE, speed_only=True)


@dataclass(frozen=True)
class MediaConfig(SettingsSection):
    """Config section ``media``."""

    frame_rate_hz: int = setting(rule=_POSITIVE)
    sample_rate_hz: int = setting(rule=_POSITIVE)
    audio_channels: int = setting(rule=_AT_LEAST_ONE)
    audio_short_note_s: float = setting(rule=_NON_NEGATIVE)


@dataclass(frozen=True)
class InputConfig(SettingsSection):
    """Config section ``input``."""

    max_missing_s: float = setting(rule=_NON_NEGATIVE, speed_only=True)


@dataclass(frozen=True)
class DetectConfig(SettingsSection):
    """Config section ``detect``."""

    checkpoint: str = setting()
    image_scale: float = setting(rule=_POSITIVE)
    conf_threshold: float = setting(rule=_PROBABILITY)
    nms_overlap: float = setting(rule=_PROBABILITY)
    prior_conf_threshold: float = setting(rule=_PROBABILITY)
    prior_nms_overlap: float = setting(rule=_PROBABILITY)
    prior_nms_top_k: int = setting(rule=_AT_LEAST_ONE)
    max_detections: int = setting(rule=_AT_LEAST_ONE)
    batch_size: int = setting(rule=_AT_LEAST_ONE, speed_only=True)


@dataclass(frozen=True)
class ScenesConfig(SettingsSection):
    """Config section ``scenes``."""

    content_threshold: float = setting(rule=_NON_NEGATIVE)
    min_scene_len_frames: int = setting(rule=_NON_NEGATIVE)


@dataclass(frozen=True)
class TrackConfig(SettingsSection):
    """Config section ``track``."""

    iou_threshold: float = setting(rule=_PROBABILITY)
    max_gap_frames: int = setting(rule=_NON_NEGATIVE)
    min_track_frames: int = setting(rule=_NON_NEGATIVE)
    min_face_size_px: int = setting(rule=_NON_NEGATIVE)


@dataclass(frozen=True)
class CropConfig(SettingsSection):
    """Config section ``crop``."""

    size_px: int = setting(rule=_AT_LEAST_ONE)
    scale: float = setting(rule=_NON_NEGATIVE)
    smooth_kernel_frames: int = setting(rule=_odd_positive())
    pad_value: int = setting(rule=_between(0, 255))
    keyframe_interval_frames: int = setting(rule=_AT_LEAST_ONE)


@dataclass(frozen=True)
class SyncNetConfig(SettingsSection):
    """Config section ``syncnet``."""

    checkpoint: str = setting()
    metric: str = setting(rule=_one_of(*formats.SYNC_METRICS))
    vshift_frames: int = setting(rule=_NON_NEGATIVE)
    batch_size: int = setting(rule=_AT_LEAST_ONE, speed_only=True)
    cpu_lip_chunk_windows: int = setting(rule=_at_least(2), speed_only=True)
    cpu_audio_memo_windows: int = setting(rule=_NON_NEGATIVE, speed_only=True)
    parallel_tracks: int = setting(rule=_AT_LEAST_ONE, speed_only=True)


@dataclass(frozen=True)
class SyncNetDemoConfig(SettingsSection):
    """Config section ``syncnet_demo``."""

    checkpoint: str = setting()
    metric: str = setting(rule=_one_of(*formats.SYNC_METRICS))
    vshift_frames: int = setting(rule=_NON_NEGATIVE)


@dataclass(frozen=True)
class VadConfig(SettingsSection):
    """Config section ``vad``."""

    method: str = setting(rule=_one_of(*formats.VAD_METHODS))
    webrtc_aggressiveness: int = setting(rule=_between(0, 3))
    webrtc_frame_ms: int = setting(rule=_one_of(10, 20, 30))
    webrtc_padding_ms: int = setting(rule=_POSITIVE)
    webrtc_trigger_ratio: float = setting(rule=_PROBABILITY)
    webrtc_release_ratio: float = setting(rule=_PROBABILITY)
    silero_threshold: float = setting(rule=_PROBABILITY)
    silero_min_speech_ms: int = setting(rule=_NON_NEGATIVE)
    silero_min_silence_ms: int = setting(rule=_NON_NEGATIVE)
    silero_speech_pad_ms: int = setting(rule=_NON_NEGATIVE)
    given_speech_tolerance_s: float = setting(rule=_NON_NEGATIVE, speed_only=True)


@dataclass(frozen=True)
class EmbedConfig(SettingsSection):
    """Config section ``embed``."""

    speaker_model: str = setting(rule=_one_of(*formats.SPEAKER_MODELS))
    resnetse34_checkpoint: str = setting()
    ecapa_dir: str = setting()
    window_s: float = setting(rule=_POSITIVE)
    hop_s: float = setting(rule=_POSITIVE)
    batch_size: int = setting(rule=_AT_LEAST_ONE, speed_only=True)
    cpu_precision: str = setting(rule=_one_of(*formats.EMBED_CPU_PRECISIONS))


@dataclass(frozen=True)
class FacesConfig(SettingsSection):
    """Config section ``faces``."""

    checkpoint: str = setting()
    frames_per_track: int = setting(rule=_AT_LEAST_ONE)
    crop_box_px: tuple[int, ...] = setting(rule=_box_rule())
    input_size_px: int = setting(rule=_AT_LEAST_ONE)
    max_cosine_distance: float = setting(rule=_between(0.0, 2.0))


@dataclass(frozen=True)
class DiariseConfig(SettingsSection):
    """Config section ``diarise``."""

    mode: str = setting(rule=_one_of(*formats.FUSION_MODES))
    frame_rate_hz: int = setting(rule=_POSITIVE)
    conf_pad_frames: int = setting(rule=_NON_NEGATIVE)
    conf_pad_value: float = setting()
    conf_medfilt_frames: int = setting(rule=_odd_positive())
    conf_thresholds_cosine: tuple[float, ...] = setting(rule=_increasing())
    conf_thresholds_euclidean: tuple[float, ...] = setting(rule=_increasing())
    min_votes: int = setting(rule=_NON_NEGATIVE)
    closing_frames: int = setting(rule=_NON_NEGATIVE)
    min_utterance_frames: int = setting(rule=_NON_NEGATIVE)
    merge_distance: float = setting(rule=_between(0.0, 2.0))
    cooccur_penalty: float = setting(rule=_NON_NEGATIVE)
    min_offscreen_frames: int = setting(rule=_NON_NEGATIVE)
    offscreen_min_similarity: float = setting(rule=_between(-1.0, 1.0))
    majority_filter_frames: int = setting(rule=_odd_positive())
    embedding_offset_s: float = setting(rule=_NON_NEGATIVE)


@dataclass(frozen=True)
class VisualiseConfig(SettingsSection):
    """Config section ``visualise``."""

    video_codec: str = setting()
    video_crf: int = setting(rule=_between(0, 51))
    audio_codec: str = setting()


@dataclass(frozen=True)
class ScoreConfig(SettingsSection):
    """Config section ``score``."""

    collar_s: float = setting(rule=_NON_NEGATIVE)
    skip_overlap: bool = setting()


@dataclass(frozen=True)
class ConversationsConfig(SettingsSection):
    """Config section ``conversations``."""

    sample_rate_hz: int = setting(rule=_POSITIVE)
    frame_s: float = setting(rule=_POSITIVE)
    silence_db: float = setting(rule=_POSITIVE)
    min_pause_s: float = setting(rule=_POSITIVE)
    min_phrase_s: float = setting(rule=_POSITIVE)
    max_inner_pause_s: float = setting(rule=_NON_NEGATIVE)
    turn_s: tuple[float, ...] = setting(rule=_increasing())
    gap_s: tuple[float, ...] = setting(rule=_increasing())
    overlap_turn_p: float = setting(rule=_PROBABILITY)
    overlap_s: tuple[float, ...] = setting(rule=_increasing())
    backchannel_p: float = setting(rule=_PROBABILITY)
    backchannel_s: tuple[float, ...] = setting(rule=_increasing())
    speaker_weight: tuple[float, ...] = setting(rule=_increasing())
    level_dbfs: tuple[float, ...] = setting(rule=_increasing())
    noise_slope: tuple[float, ...] = setting(rule=_increasing())
    fade_s: float = setting(rule=_NON_NEGATIVE)
    edge_silence_s: float = setting(rule=_NON_NEGATIVE)
    duration_s: tuple[float, ...] = setting(rule=_increasing())
    snr_db: tuple[float, ...] = setting(rule=_increasing())
    max_peak: float = setting(rule=_open_between(0.0, 1.0))
    speakers: tuple[int, ...] = setting(rule=_increasing())
    overlap_files: float = setting(rule=_PROBABILITY)
    noisy_files: float = setting(rule=_PROBABILITY)


@dataclass(frozen=True)
class SyncConfig(SettingsSection):
    """Config section ``sync``."""

    model: str = setting(rule=_one_of(*formats.SYNC_MODELS))


@dataclass(frozen=True)
class Wav2LipConfig(SettingsSection):
    """Config section ``wav2lip``."""

    checkpoint: str = setting()
    box_expand: float = setting(rule=_NON_NEGATIVE)
    vshift_frames: int = setting(rule=_NON_NEGATIVE)
    smooth_frames: int = setting(rule=_AT_LEAST_ONE)
    batch_size: int = setting(rule=_AT_LEAST_ONE, speed_only=True)
    conf_thresholds: tuple[float, ...] = setting(rule=_increasing())


@dataclass(frozen=True)
class DetectionsConfig(SettingsSection):
    """Config section ``detections``."""

    max_per_frame: int = setting(rule=_AT_LEAST_ONE)
    max_box_side_ratio: float = setting(rule=_POSITIVE)


@dataclass(frozen=True)
class TrainConfig(SettingsSection):
    """Config section ``train``."""

    model: str = setting(rule=_one_of(*formats.TRAIN_MODELS))
    steps: int = setting(rule=_AT_LEAST_ONE)
    batch_size: int = setting(rule=_AT_LEAST_ONE)
    optimizer: str = setting(rule=_one_of(*formats.TRAIN_OPTIMIZERS))
    lr: float = setting(rule=_POSITIVE)
    lr_final: float = setting(rule=_POSITIVE)
    momentum: float = setting(rule=_between(0.0, 1.0))
    weight_decay: float = setting(rule=_NON_NEGATIVE)
    margin: float = setting(rule=_POSITIVE)
    min_shift_frames: int = setting(rule=_AT_LEAST_ONE)
    max_shift_frames: int = setting(rule=_AT_LEAST_ONE)
    negatives_per_window: int = setting(rule=_AT_LEAST_ONE)
    other_track_negatives: int = setting(rule=_NON_NEGATIVE)
    val_fraction: float = setting(rule=_open_between(0.0, 1.0))
    val_windows: int = setting(rule=_AT_LEAST_ONE)
    val_every_steps: int = setting(rule=_AT_LEAST_ONE)
    bn_recalibration_windows: int = setting(rule=_AT_LEAST_ONE)
    freeze_convolutions: bool = setting()
    seed: int = setting(rule=_NON_NEGATIVE)
    cuda_precision: str = setting(rule=_one_of(*formats.TRAIN_CUDA_PRECISIONS))


@dataclass(frozen=True)
class GestSyncConfig(SettingsSection):
    """Config section ``gestsync``."""

    checkpoint: str = setting()
    sample_rate_hz: int = setting(rule=_POSITIVE)
    n_fft: int = setting(rule=_AT_LEAST_ONE)
    win_samples: int = setting(rule=_AT_LEAST_ONE)
    hop_samples: int = setting(rule=_AT_LEAST_ONE)
    num_mels: int = setting(rule=((lambda v: v == GESTSYNC_MEL_BANDS),
                          f"{GESTSYNC_MEL_BANDS}, the filterbank bands GestSync's audio network was trained on"))
    fmin_hz: float = setting(rule=_NON_NEGATIVE)
    fmax_hz: float = setting(rule=_POSITIVE)
    log_floor: float = setting(rule=_POSITIVE)
    mel_frames_per_video_frame: int = setting(rule=_AT_LEAST_ONE)
    window_frames: int = setting(rule=_between(5, GESTSYNC_MAX_WINDOW_FRAMES))
    window_stride_frames: int = setting(rule=_AT_LEAST_ONE)
    frame_width_px: int = setting(rule=_AT_LEAST_ONE)
    frame_height_px: int = setting(rule=_AT_LEAST_ONE)
    mask_below_face_px: int = setting(rule=_NON_NEGATIVE)
    mask_rows_no_face: int = setting(rule=_NON_NEGATIVE)
    offset_stride_frames: int = setting(rule=_AT_LEAST_ONE)
    max_offset_frames: int = setting(rule=_NON_NEGATIVE)
    offset_avg_frames: int = setting(rule=_AT_LEAST_ONE)
    num_avg_frames: int = setting(rule=_AT_LEAST_ONE)
    crop_median_kernel_frames: int = setting(rule=_odd_positive())
    crop_pad_grey: int = setting(rule=_between(0, 255))
    global_speaker: bool = setting()
    batch_size: int = setting(rule=_AT_LEAST_ONE, speed_only=True)
    region_width_faces: float = setting(rule=_POSITIVE)
    region_above_faces: float = setting(rule=_NON_NEGATIVE)
    region_below_faces: float = setting(rule=_POSITIVE)
    person_min_face_overlap: float = setting(rule=_PROBABILITY)
    conf_thresholds: tuple[float, ...] = setting(rule=_increasing())
    lip_model: str = setting(rule=_one_of(*formats.GESTSYNC_LIP_MODELS))
    prefer: str = setting(rule=_one_of(*formats.GESTSYNC_PREFERENCES))


@dataclass(frozen=True)
class ImprovedConfig(SettingsSection):
    """Config section ``improved``."""

    min_face_run_frames: int = setting(rule=_NON_NEGATIVE)
    identity_merge_distance: float = setting(rule=_between(0.0, 2.0))
    anchor_share: float = setting(rule=_PROBABILITY)
    decode_step_frames: int = setting(rule=_AT_LEAST_ONE)
    max_ahc_points: int = setting(rule=_at_least(2))
    max_threshold_scores: int = setting(rule=_at_least(2))
    ahc_threshold: float = setting(rule=_between(-1.0, 1.0))
    init_smoothing: float = setting(rule=_NON_NEGATIVE)
    lda_dim: int = setting(rule=_AT_LEAST_ONE)
    fa: float = setting(rule=_POSITIVE)
    fb: float = setting(rule=_POSITIVE)
    loop_prob: float = setting(rule=_between(0.0, 1.0))
    drop_share: float = setting(rule=_PROBABILITY)
    max_iterations: int = setting(rule=_AT_LEAST_ONE)
    epsilon: float = setting(rule=_POSITIVE)
    min_speaker_s: float = setting(rule=_NON_NEGATIVE)
    overlap_face: bool = setting()
    audio_overlap: bool = setting()
    audio_overlap_posterior: float = setting(rule=_PROBABILITY)


@dataclass(frozen=True)
class ResemblyzerConfig(SettingsSection):
    """Config section ``resemblyzer``."""

    merge_distance: float = setting(rule=_between(0.0, 2.0))
    offscreen_min_similarity: float = setting(rule=_between(-1.0, 1.0))


class Section(Mapping[str, Any]):
    """A read-only mapping whose keys are also attributes: a section default.yaml has and this module has no
    type for yet (type-checked from its defaults all the same), or the whole config (``Config``)."""

    def __init__(self, values: Mapping[str, Any], name: str = "") -> None:
        self._name = name
        self._values = {
            key: value if isinstance(value, SettingsSection)
            else Section(value, f"{name}.{key}".strip(".")) if isinstance(value, Mapping) else value
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
        return {k: v.to_dict() if isinstance(v, (Section, SettingsSection)) else copy.deepcopy(v)
                for k, v in self._values.items()}

    def digest(self) -> str:
        """A short stable hash of the values, for cache manifests."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Config(Section):
    """The whole config, as ``load_config`` returns it: one typed section per section of default.yaml."""

    runtime: RuntimeConfig
    media: MediaConfig
    input: InputConfig
    detect: DetectConfig
    scenes: ScenesConfig
    track: TrackConfig
    crop: CropConfig
    syncnet: SyncNetConfig
    syncnet_demo: SyncNetDemoConfig
    vad: VadConfig
    embed: EmbedConfig
    faces: FacesConfig
    diarise: DiariseConfig
    visualise: VisualiseConfig
    score: ScoreConfig
    conversations: ConversationsConfig
    sync: SyncConfig
    wav2lip: Wav2LipConfig
    detections: DetectionsConfig
    train: TrainConfig
    gestsync: GestSyncConfig
    improved: ImprovedConfig
    resemblyzer: ResemblyzerConfig

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Config:
        """The config from checked values: typed sections where this module has a type, plain ones elsewhere."""
        return cls({name: SECTIONS[name].from_values(value) if name in SECTIONS else value
                    for name, value in values.items()})


SECTIONS: dict[str, type[SettingsSection]] = {
    name: hint for name, hint in typing.get_type_hints(Config).items()
    if isinstance(hint, type) and issubclass(hint, SettingsSection)
}
for _name, _type in SECTIONS.items():
    _type.section = _name

RANGE_RULES: dict[str, Rule] = {
    f"{name}.{f.name}": f.metadata["rule"]
    for name, section in SECTIONS.items() for f in fields(section) if f.metadata.get("rule") is not None
}
