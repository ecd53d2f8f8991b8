"""The config loader checks every value's type and range when the config is read, with one line naming the key."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from pipeline import config
from pipeline.config import RANGE_RULES, load_config
from pipeline.errors import InputError
from pipeline.settings import SECTIONS

REPO = Path(__file__).resolve().parent.parent


def refused(*overrides: str) -> str:
    with pytest.raises(InputError) as err:
        load_config(overrides=list(overrides))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_defaults_pass_every_rule():
    cfg = load_config()
    defaults = yaml.safe_load(config.DEFAULT_CONFIG_PATH.read_text())
    for key, (check, _) in RANGE_RULES.items():
        section, name = key.split(".")
        if name in defaults.get(section, {}):
            assert check(cfg[section][name]), key


@pytest.mark.parametrize("override, needles", [
    ("diarise.merge_distance=abc", ["diarise.merge_distance", "number", "'abc'"]),
    ("detect.image_scale=-1", ["detect.image_scale", "> 0"]),
    ("detect.image_scale=0", ["detect.image_scale", "> 0"]),
    ("detect.batch_size=0", ["detect.batch_size", ">= 1"]),
    ("embed.batch_size=-3", ["embed.batch_size", ">= 1"]),
    ("detect.batch_size=2.5", ["detect.batch_size", "integer"]),
    ("detect.batch_size=true", ["detect.batch_size", "integer"]),
    ("detect.conf_threshold=1.5", ["detect.conf_threshold", "[0, 1]"]),
    ("track.iou_threshold=-0.1", ["track.iou_threshold", "[0, 1]"]),
    ("track.max_gap_frames=-1", ["track.max_gap_frames", ">= 0"]),
    ("crop.smooth_kernel_frames=12", ["crop.smooth_kernel_frames", "odd"]),
    ("diarise.conf_medfilt_frames=0", ["diarise.conf_medfilt_frames", "odd"]),
    ("diarise.conf_thresholds_cosine=[0.5]", ["diarise.conf_thresholds_cosine", "list of 2"]),
    ("diarise.conf_thresholds_cosine=[0.9, 0.5]", ["diarise.conf_thresholds_cosine", "increasing"]),
    ("diarise.conf_thresholds_cosine=[a, 0.5]", ["diarise.conf_thresholds_cosine", "number"]),
    ("faces.crop_box_px=[32, 0, 192.5, 160]", ["faces.crop_box_px", "integer"]),
    ("faces.crop_box_px=[192, 0, 32, 160]", ["faces.crop_box_px", "x1 < x2"]),
    ("score.skip_overlap=3", ["score.skip_overlap", "true or false"]),
    ("vad.method=3", ["vad.method", "string"]),
    ("vad.webrtc_frame_ms=25", ["vad.webrtc_frame_ms", "10, 20, 30"]),
    ("detect.image_scale=.nan", ["detect.image_scale", "finite"]),
    ("detect.image_scale=", ["detect.image_scale", "None"]),
    # named choices are refused when the config is read, not when a later stage uses them
    ("vad.method=energy", ["vad.method", "one of webrtc, silero", "'energy'"]),
    ("embed.cpu_precision=fp8", ["embed.cpu_precision", "one of float32, bfloat16"]),
    ("embed.speaker_model=xvector", ["embed.speaker_model", "resnetse34, ecapa, resemblyzer"]),
    ("syncnet.metric=l1", ["syncnet.metric", "cosine, euclidean"]),
    ("train.optimizer=lion", ["train.optimizer", "adam, sgd"]),
    ("gestsync.prefer=both", ["gestsync.prefer", "lips, gestures, stronger"]),
    # ranges of the sections added after the first ones
    ("detections.max_per_frame=-5", ["detections.max_per_frame", ">= 1"]),
    ("detections.max_box_side_ratio=-1", ["detections.max_box_side_ratio", "> 0"]),
    ("improved.decode_step_frames=0", ["improved.decode_step_frames", ">= 1"]),
    ("improved.loop_prob=1.5", ["improved.loop_prob", "[0, 1]"]),
    ("improved.fb=0", ["improved.fb", "> 0"]),
    ("train.val_fraction=1", ["train.val_fraction", "(0, 1)"]),
    ("train.min_shift_frames=20", ["train.min_shift_frames (20)", "max_shift_frames (15)"]),
    ("gestsync.num_avg_frames=0", ["gestsync.num_avg_frames", ">= 1"]),
    ("wav2lip.conf_thresholds=[0.8, 0.5]", ["wav2lip.conf_thresholds", "increasing"]),
    ("resemblyzer.merge_distance=3", ["resemblyzer.merge_distance", "[0, 2]"]),
])
def test_bad_values_are_refused_naming_the_key(override, needles):
    message = refused(override)
    for needle in needles:
        assert needle in message, message


def test_good_values_are_converted_to_the_default_type():
    cfg = load_config(overrides=["diarise.merge_distance=1", "detect.batch_size=1", "detect.conf_threshold=1"])
    assert cfg.diarise.merge_distance == 1.0 and isinstance(cfg.diarise.merge_distance, float)
    assert cfg.detect.batch_size == 1 and cfg.detect.conf_threshold == 1.0
    # an int and a float of the same value give the same cache key
    assert load_config(overrides=["diarise.merge_distance=1"]).digest() == \
        load_config(overrides=["diarise.merge_distance=1.0"]).digest()


def test_config_file_values_are_checked(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("detect:\n  image_scale: big\n")
    with pytest.raises(InputError, match="detect.image_scale must be a finite number"):
        load_config(path)


def test_keys_without_a_rule_are_type_checked_from_their_default(tmp_path, monkeypatch):
    """A section another change adds to default.yaml is checked by type with no rule written for it."""
    defaults = tmp_path / "default.yaml"
    defaults.write_text(config.DEFAULT_CONFIG_PATH.read_text()
                        + "\nnewsection:\n  count_frames: 3\n  ratio: 0.5\n  name: x\n  pair: [1.0, 2.0]\n"
                          "  flag: false\n  batch_size: 4\n  anything: null\n  names: []\n")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", defaults)
    cfg = load_config()
    assert cfg.newsection.to_dict() == {"count_frames": 3, "ratio": 0.5, "name": "x", "pair": [1.0, 2.0],
                                        "flag": False, "batch_size": 4, "anything": None, "names": []}
    assert load_config(overrides=["newsection.anything=[1, x]", "newsection.names=[a, b, c]"]).newsection.names == \
        ["a", "b", "c"]
    assert "newsection.names must be a list" in refused("newsection.names=a")
    assert load_config(overrides=["newsection.count_frames=-7", "newsection.ratio=-2"]).newsection.ratio == -2.0
    assert "newsection.count_frames must be an integer" in refused("newsection.count_frames=1.5")
    assert "newsection.ratio must be a finite number" in refused("newsection.ratio=abc")
    assert "newsection.name must be a string" in refused("newsection.name=[1]")
    assert "newsection.pair must be a list of 2" in refused("newsection.pair=[1, 2, 3]")
    assert "newsection.flag must be true or false" in refused("newsection.flag=0")
    assert "newsection.batch_size must be >= 1" in refused("newsection.batch_size=0")


@pytest.mark.parametrize("override, needle", [("diarise.merge_distance=abc", "diarise.merge_distance"),
                                              ("detect.image_scale=-1", "detect.image_scale"),
                                              ("embed.cpu_precision=fp8", "embed.cpu_precision")])
def test_cli_refuses_a_bad_value_before_any_work(tmp_path, override, needle):
    video = REPO.parent / "shared" / "data" / "videos" / "syncnetdiar_3spk_newsmax.mp4"
    data_dir = tmp_path / "data"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "diarize.py"), "--videofile", str(video),
                             "--data_dir", str(data_dir), "--set", override, "--quiet"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diarize.py: error: config value " + needle), result.stderr
    assert not data_dir.exists()  # nothing written, let alone trusted


# ---- typed sections (pipeline/settings.py) -------------------------------------------------------
def _yaml_sections() -> dict:
    return yaml.safe_load(config.DEFAULT_CONFIG_PATH.read_text())


def _field_type_name(hint: object) -> str:
    return hint.__name__ if isinstance(hint, type) else "tuple"


def test_every_yaml_key_has_a_typed_field_of_its_defaults_type_and_back():
    cfg = load_config()
    assert set(_yaml_sections()) == set(SECTIONS)
    for name, values in _yaml_sections().items():
        section = cfg[name]
        assert isinstance(section, SECTIONS[name])
        hints = typing.get_type_hints(SECTIONS[name])
        assert set(values) == {f.name for f in dataclasses.fields(SECTIONS[name])}, name
        for key, default in values.items():
            expected = "tuple" if isinstance(default, list) else type(default).__name__
            assert _field_type_name(hints[key]) == expected, f"{name}.{key}"
            assert type(section[key]).__name__ == expected, f"{name}.{key}"


def test_sections_are_frozen_and_keep_the_mapping_interface():
    cfg = load_config()
    assert cfg.detect.batch_size == cfg["detect"]["batch_size"] == cfg.detect.get("batch_size") == 16
    assert list(cfg.faces) == list(_yaml_sections()["faces"])
    assert cfg.faces.crop_box_px == (32, 0, 192, 160)
    assert cfg.faces.to_dict()["crop_box_px"] == [32, 0, 192, 160]  # as default.yaml spells it: keys unchanged
    assert cfg.to_dict() == _yaml_sections()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.detect.batch_size = 3
    with pytest.raises(AttributeError, match="config has no value detect.batchsize"):
        cfg.detect.batchsize  # noqa: B018


def test_range_rules_are_the_fields_metadata():
    """The rules are stated once, on the fields; RANGE_RULES only collects them, and each one refuses a bad
    --set."""
    stated = {f"{name}.{f.name}" for name, section in SECTIONS.items() for f in dataclasses.fields(section)
              if f.metadata.get("rule") is not None}
    assert stated == set(RANGE_RULES)
    field = next(f for f in dataclasses.fields(SECTIONS["improved"]) if f.name == "loop_prob")
    assert field.metadata["rule"] is RANGE_RULES["improved.loop_prob"]
    assert "improved.loop_prob must be in [0, 1]" in refused("improved.loop_prob=2")


def _changed(value: object) -> object:
    """Another valid-typed value (the range does not matter to a key)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return tuple(_changed(v) for v in value)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_the_key_holds_every_field_but_the_speed_only_ones(section):
    """Changing any field that can change a result changes the section's key; a speed-only one does not.
    Parametrised over every field of every section, so a new field is covered with no edit here."""
    values = load_config()[section]
    speed_only = set(values.speed_only_fields())
    assert set(values.key_dict()) == set(values) - speed_only
    for name in values:
        other = dataclasses.replace(values, **{name: _changed(values[name])})
        if name in speed_only:
            assert other.key_dict() == values.key_dict(), f"{section}.{name}"
        else:
            assert other.key_dict() != values.key_dict(), f"{section}.{name}"


def test_speed_only_fields_are_the_ones_results_do_not_depend_on():
    marked = {f"{name}.{field}" for name, section in SECTIONS.items() for field in section.speed_only_fields()}
    assert marked == {"runtime.threads", "runtime.heap_reuse_mb", "input.max_missing_s", "detect.batch_size",
                      "syncnet.batch_size", "syncnet.cpu_lip_chunk_windows", "syncnet.cpu_audio_memo_windows",
                      "syncnet.parallel_tracks",
                      "vad.given_speech_tolerance_s", "embed.batch_size",
                      "wav2lip.batch_size", "gestsync.batch_size"}


def test_command_line_values_are_checked_by_the_same_rules():
    """scripts/train_sync.py's --steps and --model replace config values and are refused like a --set."""
    train = load_config().train
    assert config.replace_checked(train, steps=3).steps == 3
    for change, needle in [({"steps": 0}, "train.steps must be >= 1"), ({"model": "x"}, "train.model must be one of"),
                           ({"lr": "a"}, "train.lr must be a finite number"),
                           ({"min_shift_frames": 16}, "train.min_shift_frames (16) must not exceed")]:
        with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            config.replace_checked(train, **change)


def test_with_overrides_types_a_hand_made_section():
    """pipeline.api accepts a config object: one made by hand is typed and checked like a loaded one."""
    from pipeline.config import Section, with_overrides

    cfg = with_overrides(Section({"detect": {"batch_size": 3}}))
    assert isinstance(cfg.detect, SECTIONS["detect"]) and cfg.detect.batch_size == 3
    assert cfg.detect.image_scale == load_config().detect.image_scale
    with pytest.raises(InputError, match="detect.batch_size must be >= 1"):
        with_overrides(Section({"detect": {"batch_size": 0}}))
