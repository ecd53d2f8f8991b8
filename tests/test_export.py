"""RTTM and VIA 3 writers, the RTTM reader and the pyannote Annotation (pipeline/export.py)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.export import (
    available_writers,
    get_writer,
    read_rttm,
    rttm_token,
    to_annotation,
    to_rttm,
    to_via_project,
    write_rttm,
    write_via_json,
)
from pipeline.formats import Turn

VOXCONVERSE_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "voxconverse" / "dev"

TURNS = [
    Turn(4.0, 6.5, "spk01", "audio", ()),
    Turn(0.5, 2.25, "spk00", "av", (0,)),
    Turn(2.25, 3.0, "spk00", "av", (0, 1)),
    Turn(5.0, 5.0, "spk00", "av", (0,)),  # zero length: not written
]


def dev_rttm(name: str) -> Path:
    path = VOXCONVERSE_DEV / f"{name}.rttm"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


# ---- RTTM writing ---------------------------------------------------------------------------------------
def test_rttm_lines_are_sorted_with_ten_fields_and_three_decimals():
    lines = to_rttm(TURNS, "clip").splitlines()
    assert lines == [
        "SPEAKER clip 1 0.500 1.750 <NA> <NA> spk00 <NA> <NA>",
        "SPEAKER clip 1 2.250 0.750 <NA> <NA> spk00 <NA> <NA>",
        "SPEAKER clip 1 4.000 2.500 <NA> <NA> spk01 <NA> <NA>",
    ]
    assert all(len(line.split()) == 10 for line in lines)


def test_rttm_round_trip(tmp_path):
    path = write_rttm(TURNS, tmp_path / "clip.rttm", file_id="clip")
    assert read_rttm(path) == {"clip": [(0.5, 2.25, "spk00"), (2.25, 3.0, "spk00"), (4.0, 6.5, "spk01")]}


def test_rttm_rounds_to_milliseconds():
    line = to_rttm([(1.23456, 2.0, "a")], "f")
    assert line == "SPEAKER f 1 1.235 0.765 <NA> <NA> a <NA> <NA>\n"


def test_real_voxconverse_file_round_trips(tmp_path):
    source = dev_rttm("afjiv")
    original = read_rttm(source)["afjiv"]
    again = read_rttm(write_rttm(original, tmp_path / "afjiv.rttm", file_id="afjiv"))["afjiv"]
    assert len(again) == len(original)
    for (s0, e0, k0), (s1, e1, k1) in zip(original, again):
        assert k0 == k1 and s1 == pytest.approx(s0, abs=1e-9) and e1 == pytest.approx(e0, abs=1e-6)


def test_whitespace_in_labels_and_file_id_becomes_underscore():
    line = to_rttm([(0.0, 1.0, "Speaker A")], "my video")
    assert line.split() == ["SPEAKER", "my_video", "1", "0.000", "1.000", "<NA>", "<NA>", "Speaker_A", "<NA>", "<NA>"]
    assert rttm_token(" a \t b ") == "a_b"


def test_labels_that_collide_after_replacement_are_refused():
    with pytest.raises(InputError, match="same in RTTM"):
        to_rttm([(0.0, 1.0, "a b"), (1.0, 2.0, "a_b")], "f")


def test_empty_label_is_refused():
    with pytest.raises(InputError, match="empty speaker label"):
        to_rttm([(0.0, 1.0, "  ")], "f")


@pytest.mark.parametrize("turn", [(2.0, 1.0, "a"), (-1.0, 1.0, "a"), (0.0, float("nan"), "a")])
def test_invalid_turn_times_are_refused(turn):
    with pytest.raises(InputError, match="invalid times"):
        to_rttm([turn], "f")


# ---- RTTM reading ---------------------------------------------------------------------------------------
def test_reader_does_not_assume_sorted_input(tmp_path):
    lines = dev_rttm("abjxc").read_text().splitlines() + dev_rttm("afjiv").read_text().splitlines()
    random.Random(0).shuffle(lines)
    shuffled = tmp_path / "mixed.rttm"
    shuffled.write_text("\n".join(lines) + "\n")
    result = read_rttm(shuffled)
    assert set(result) == {"abjxc", "afjiv"}
    assert result["abjxc"] == read_rttm(dev_rttm("abjxc"))["abjxc"]
    assert result["afjiv"] == sorted(result["afjiv"])
    assert result["afjiv"] == read_rttm(dev_rttm("afjiv"))["afjiv"]


def test_reader_skips_comments_other_types_blank_and_zero_length(tmp_path):
    path = tmp_path / "x.rttm"
    path.write_text(
        ";; a comment\n"
        "\n"
        "SPKR-INFO f 1 <NA> <NA> <NA> unknown spk00 <NA>\n"
        "SPEAKER f 1 3.0 1.0 <NA> <NA> spk00 <NA> <NA>\n"
        "SPEAKER f 1 1.0 0.0 <NA> <NA> spk01 <NA> <NA>\n"
        "SPEAKER f 1 0.5 1.0 <NA> <NA> spk01\n"  # 8 fields: accepted
    )
    assert read_rttm(path) == {"f": [(0.5, 1.5, "spk01"), (3.0, 4.0, "spk00")]}


@pytest.mark.parametrize("bad_line, reason", [
    ("SPEAKER f 1 0.5 xyz <NA> <NA> spk00 <NA> <NA>", "not a number"),
    ("SPEAKER f 1 0.5", "at least 8 fields"),
    ("SPEAKER f 1 0.5 -1.0 <NA> <NA> spk00 <NA> <NA>", "not negative"),
    ("SPEAKER f 1 inf 1.0 <NA> <NA> spk00 <NA> <NA>", "finite"),
    ("SPEEKER f 1 0.5 1.0 <NA> <NA> spk00 <NA> <NA>", "unknown type"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, reason):
    path = tmp_path / "bad.rttm"
    path.write_text("SPEAKER f 1 0.0 1.0 <NA> <NA> spk00 <NA> <NA>\n\n" + bad_line + "\n")
    with pytest.raises(InputError) as info:
        read_rttm(path)
    message = str(info.value)
    assert f"{path}:3:" in message and reason in message and "\n" not in message


def test_missing_and_binary_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_rttm(tmp_path / "absent.rttm")
    binary = tmp_path / "binary.rttm"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(InputError, match="not a UTF-8"):
        read_rttm(binary)


# ---- VIA 3 project ----------------------------------------------------------------------------------------
def _check_via3_project(project: dict) -> None:
    """Every field VIA 3 (data format 3.1.1) reads when it loads a project with temporal segments."""
    assert set(project) == {"project", "config", "attribute", "file", "metadata", "view"}
    meta = project["project"]
    required = {"pid", "rev", "rev_timestamp", "pname", "data_format_version", "creator", "created", "vid_list"}
    assert required <= set(meta)
    # these markers make VIA treat the project as local (not shared): project_is_remote() is false
    assert (meta["pid"], meta["rev"], meta["rev_timestamp"]) == (
        "__VIA_PROJECT_ID__", "__VIA_PROJECT_REV_ID__", "__VIA_PROJECT_REV_TIMESTAMP__")
    assert meta["data_format_version"] == "3.1.1"  # 3.1.0 would trigger VIA's version fix on config.file.path
    assert isinstance(meta["created"], int)
    assert isinstance(meta["pname"], str) and meta["pname"]
    assert set(project["config"]["file"]["loc_prefix"]) == {"1", "2", "3", "4"}
    assert isinstance(project["config"]["ui"], dict)

    for vid in meta["vid_list"]:
        assert isinstance(vid, str) and vid in project["view"]
    for view in project["view"].values():
        assert view["fid_list"] and all(str(fid) in project["file"] for fid in view["fid_list"])
    for fid, entry in project["file"].items():
        assert set(entry) == {"fid", "fname", "type", "loc", "src"}
        assert str(entry["fid"]) == fid
        assert entry["type"] == 4  # _VIA_FILE_TYPE.VIDEO
        assert entry["loc"] in (1, 2, 3, 4)  # _VIA_FILE_LOC
        assert isinstance(entry["fname"], str) and isinstance(entry["src"], str)

    temporal_aids = []
    for aid, attribute in project["attribute"].items():
        assert set(attribute) == {"aname", "anchor_id", "type", "desc", "options", "default_option_id"}
        assert attribute["type"] in (1, 2, 3, 4, 5)  # _VIA_ATTRIBUTE_TYPE
        assert isinstance(attribute["options"], dict)
        assert attribute["default_option_id"] == "" or attribute["default_option_id"] in attribute["options"]
        if attribute["anchor_id"] == "FILE1_Z2_XY0":
            temporal_aids.append(aid)
    assert temporal_aids, "the temporal segmenter needs an attribute anchored to FILE1_Z2_XY0"

    for mid, entry in project["metadata"].items():
        assert isinstance(mid, str)
        assert set(entry) == {"vid", "flg", "z", "xy", "av"}
        assert entry["vid"] in project["view"] and entry["flg"] == 0
        # a temporal segment: two times, no spatial region (what _via_temporal_segmenter groups)
        assert len(entry["z"]) == 2 and entry["xy"] == []
        assert all(isinstance(t, (int, float)) for t in entry["z"]) and 0 <= entry["z"][0] < entry["z"][1]
        for aid, value in entry["av"].items():
            attribute = project["attribute"][aid]
            if attribute["type"] in (3, 4):  # radio/select: the value is an option id
                assert value in attribute["options"]


def test_via_project_has_every_field_via3_needs(tmp_path):
    video = tmp_path / "clip.mp4"
    path = write_via_json(TURNS, tmp_path / "clip_via.json", file_id="clip", video_path=video)
    project = json.loads(path.read_text(encoding="utf-8"))
    _check_via3_project(project)
    assert project["file"]["1"]["fname"] == "clip.mp4"
    assert project["file"]["1"]["src"] == video.as_uri()
    attribute = project["attribute"]["1"]
    assert attribute["aname"] == "Speaker" and attribute["type"] == 4
    assert attribute["options"] == {"spk00": "spk00", "spk01": "spk01"}
    segments = sorted((m["z"][0], m["z"][1], m["av"]["1"]) for m in project["metadata"].values())
    assert segments == [(0.5, 2.25, "spk00"), (2.25, 3.0, "spk00"), (4.0, 6.5, "spk01")]


def test_via_project_relative_video_path_kept_and_empty_turns_valid():
    project = to_via_project([], "videos/x.mp4", created_ms=0)
    _check_via3_project(project)
    assert project["file"]["1"]["src"] == "videos/x.mp4"
    assert project["metadata"] == {} and project["attribute"]["1"]["options"] == {}


def test_via_projects_are_independent():
    """av-diarization filled one module-level template, so a second video inherited the first one's turns."""
    first = to_via_project(TURNS, "/a.mp4", created_ms=0)
    first["metadata"]["extra"] = {"vid": "1"}
    first["attribute"]["1"]["options"]["ghost"] = "ghost"
    second = to_via_project([(0.0, 1.0, "x")], "/b.mp4", created_ms=0)
    assert list(second["attribute"]["1"]["options"]) == ["x"]
    assert len(second["metadata"]) == 1


# ---- registry and Annotation -------------------------------------------------------------------------------
def test_writer_registry(tmp_path):
    assert available_writers() == ["rttm", "via"]
    for name in available_writers():
        suffix, writer = get_writer(name)
        out = writer(TURNS, tmp_path / f"clip{suffix}", file_id="clip", video_path=tmp_path / "clip.mp4")
        assert out.is_file() and out.stat().st_size > 0
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    with pytest.raises(InputError, match="unknown output format"):
        get_writer("srt")


def test_to_annotation():
    annotation = to_annotation(TURNS, uri="clip")
    assert annotation.uri == "clip"
    assert sorted(annotation.labels()) == ["spk00", "spk01"]
    tracks = sorted((seg.start, seg.end, label) for seg, _, label in annotation.itertracks(yield_label=True))
    assert tracks == [(0.5, 2.25, "spk00"), (2.25, 3.0, "spk00"), (4.0, 6.5, "spk01")]
    assert annotation.label_duration("spk00") == pytest.approx(2.5)
