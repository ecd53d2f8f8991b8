"""The input video is identified by its content (size + sha256), not its path or modification time."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from pipeline.cache import Cache, content_identity
from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.stage1 import run_pipeline
from tests.conftest import DETECTIONS, clip


def test_moved_video_keeps_user_detections_and_every_cached_stage(tmp_path):
    video = tmp_path / "first" / "clip.mp4"
    video.parent.mkdir()
    shutil.copy(clip("gestsync_asd2spk_b"), video)
    cache = Cache(tmp_path / "data", "b")
    shutil.copy(DETECTIONS / "gestsync_asd2spk_b_faces.pckl", cache.work("faces.pckl"))
    user_faces = cache.work("faces.pckl").read_bytes()
    cfg = load_config()
    run_pipeline(video, cache, cfg)
    manifests = {p.name: p.read_text() for p in cache.manifest_dir.iterdir()}
    media_bytes = cache.work("media.pckl").read_bytes()

    moved = tmp_path / "elsewhere" / "renamed.mp4"
    moved.parent.mkdir()
    shutil.move(video, moved)
    os.utime(moved, ns=(1_000_000_000, 1_000_000_000))  # and a different modification time
    result = run_pipeline(moved, cache, cfg)
    assert {"audio", "scenes", "tracks", "crops"} <= set(result.reused)
    assert any("faces.pckl" in note for note in result.notes)
    assert cache.work("faces.pckl").read_bytes() == user_faces
    assert {p.name: p.read_text() for p in cache.manifest_dir.iterdir()} == manifests  # nothing redone
    assert cache.work("media.pckl").read_bytes() == media_bytes  # so stages 2-4 keep theirs too
    media = cache.load_pickle("media.pckl")
    assert media["source"] == content_identity(moved) and "path" not in media["source"]
    assert cache.source_video(media) == moved.resolve()  # stage 4 finds the video where it is now
    assert json.loads(cache.source_json.read_text())["path"] == str(moved.resolve())

    with open(moved, "ab") as handle:  # different content at the same path: the user's detections are not
        handle.write(b"\0" * 16)       # silently applied to it, nor overwritten
    with pytest.raises(InputError, match="detections you placed for another video"):
        run_pipeline(moved, cache, cfg)
    assert cache.work("faces.pckl").read_bytes() == user_faces


def test_content_identity_sees_a_change_anywhere(tmp_path):
    path = tmp_path / "v.bin"
    data = bytearray(os.urandom(5 << 20))
    path.write_bytes(data)
    first = content_identity(path)
    data[len(data) // 2] ^= 1  # one bit in the middle, same size
    path.write_bytes(data)
    assert content_identity(path)["size"] == first["size"] and content_identity(path) != first
