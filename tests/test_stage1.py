"""Stage 1 end to end: real clips with injected detections, random S3FD weights, the cache, bad inputs."""
from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.cache import Cache
from pipeline.config import load_config
from pipeline.stage1 import run_pipeline
from pipeline.stage1_outputs import require_tracks_and_crops
from tests.conftest import DETECTIONS, REPO, clip
from tests.synth import make_video, make_wav

SCRIPT = REPO / "scripts" / "run_pipeline.py"


def run_script(*args: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--quiet"], capture_output=True, text=True,
                          timeout=timeout, env=env)


def inject(data_dir: Path, reference: str, detections: str) -> None:
    work = data_dir / "pywork" / reference
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(DETECTIONS / detections, work / "faces.pckl")


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def gestsync_b(tmp_path_factory):
    """asd2spk_b with gestsync's shipped detections injected: two shots, two tracks each."""
    data_dir = tmp_path_factory.mktemp("stage1")
    inject(data_dir, "b", "gestsync_asd2spk_b_faces.pckl")
    cache = Cache(data_dir, "b")
    result = run_pipeline(clip("gestsync_asd2spk_b"), cache, load_config())
    return cache, result


def test_injected_detections_give_gestsync_tracks_exactly(gestsync_b):
    """Shots [0, 53) and [53, 174) as gestsync's scene.pckl, and the same tracks as its tracks.pckl."""
    cache, result = gestsync_b
    assert cache.load_pickle("scene.pckl") == [(0, 53), (53, 174)]
    with open(DETECTIONS / "gestsync_asd2spk_b_tracks.pckl", "rb") as handle:
        expected = [track for shot in pickle.load(handle) for track in shot]
    tracks = cache.load_pickle("tracks.pckl")
    assert len(tracks) == len(expected) == 4
    for ours, theirs in zip(tracks, expected):
        np.testing.assert_array_equal(ours["track"]["frame"], theirs["track"]["frame"])
        np.testing.assert_allclose(ours["track"]["bbox"], theirs["track"]["bbox"])
        for key in "xys":
            np.testing.assert_allclose(ours["proc_track"][key], theirs["proc_track"][key])
    assert any("173 frames" in note for note in result.notes)  # gestsync's 173 against the direct 174


def test_crops_are_playable_with_audio(gestsync_b):
    cache, _ = gestsync_b
    tracks = cache.load_pickle("tracks.pckl")
    for idx, track in enumerate(tracks):
        num = len(track["track"]["frame"])
        with av.open(str(cache.crop_avi(idx))) as container:
            assert {s.type for s in container.streams} == {"video", "audio"}
            assert sum(1 for _ in container.decode(video=0)) == num
        frames = [f.to_ndarray(format="bgr24") for f in av.open(str(cache.crop_frames(idx))).decode(video=0)]
        assert len(frames) == num and frames[0].shape == (224, 224, 3)
        from scipy.io import wavfile

        rate, samples = wavfile.read(cache.crop_wav(idx))
        assert rate == 16000 and samples.dtype == np.int16 and len(samples) <= num * 640


def test_rerun_reuses_everything_and_force_redoes(gestsync_b):
    cache, _ = gestsync_b
    before = cache.read_manifest("tracks.pckl")["created"], cache.crop_avi(0).stat().st_mtime_ns
    result = run_pipeline(clip("gestsync_asd2spk_b"), cache, load_config())
    assert {"audio", "scenes", "tracks", "crops"} <= set(result.reused)
    assert (cache.read_manifest("tracks.pckl")["created"], cache.crop_avi(0).stat().st_mtime_ns) == before


def test_config_change_is_detected_and_redone(tmp_path):
    inject(tmp_path, "n", "syncnetdiar_3spk_newsmax_haar_faces.pckl")
    cache = Cache(tmp_path, "n")
    first = run_pipeline(clip("syncnetdiar_3spk_newsmax"), cache, load_config())
    assert first.num_tracks >= 3
    stricter = load_config(overrides=["track.min_face_size_px=500"])
    second = run_pipeline(clip("syncnetdiar_3spk_newsmax"), cache, stricter)
    assert second.num_tracks == 0 and "tracks" not in second.reused and "audio" in second.reused
    assert not list(cache.crop_dir.glob("*.avi"))  # stale crops of the first run are gone


def test_random_s3fd_weights_run_detection(tmp_path, weights_dir):
    """No injected faces: S3FD runs on every frame (seeded random weights, small scale to stay fast)."""
    cfg = load_config(overrides=["detect.image_scale=0.1"])
    cache = Cache(tmp_path, "r5")
    result = run_pipeline(clip("retalking_talkinghead_5"), cache, cfg, weights_dir=weights_dir)
    faces = cache.load_pickle("faces.pckl")
    assert len(faces) == result.num_frames == 122
    assert all(isinstance(dets, list) for dets in faces)
    assert cache.read_manifest("faces.pckl")["key"]["detect"]["image_scale"] == 0.1


def test_interrupted_crop_writing_leaves_nothing_trusted(tmp_path, monkeypatch):
    inject(tmp_path, "i", "retalking_talkinghead_3_haar_faces.pckl")
    cache = Cache(tmp_path, "i")
    import pipeline.crop as crop

    real_write = crop.TrackCropWriter.write
    calls = {"n": 0}

    def failing_write(self, image):
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt
        return real_write(self, image)

    monkeypatch.setattr(crop.TrackCropWriter, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(clip("retalking_talkinghead_3"), cache, load_config())
    assert cache.read_manifest("crops") is None
    assert not list(cache.crop_dir.glob("*.avi")) and not list(cache.crop_dir.glob("*.mkv"))
    assert not [p for p in cache.crop_dir.iterdir() if ".part" in p.name]
    monkeypatch.setattr(crop.TrackCropWriter, "write", real_write)
    result = run_pipeline(clip("retalking_talkinghead_3"), cache, load_config())
    assert "crops" not in result.reused and cache.read_manifest("crops") is not None


def test_killed_run_is_redone(tmp_path, weights_dir):
    """SIGKILL part-way through detection: no faces.pckl is trusted; the next run completes."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--videofile", str(clip("retalking_talkinghead_2")),
                             "--data_dir", str(tmp_path), "--reference", "k", "--weights_dir", str(weights_dir),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    audio_manifest = tmp_path / "pywork" / "k" / "manifest" / "audio.wav.json"
    deadline = time.time() + 120
    while not audio_manifest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cache = Cache(tmp_path, "k")
    assert cache.read_manifest("tracks.pckl") is None and cache.read_manifest("crops") is None
    done = run_script("--videofile", str(clip("retalking_talkinghead_2")), "--data_dir", str(tmp_path),
                      "--reference", "k", "--weights_dir", str(weights_dir), "--set", "detect.image_scale=0.1")
    assert done.returncode == 0, done.stderr
    assert cache.read_manifest("crops") is not None


# ---- bad input: one line on stderr, non-zero exit, nothing half-written ---------------------------------
def test_missing_video(tmp_path):
    proc = run_script("--videofile", str(tmp_path / "absent.mp4"), "--data_dir", str(tmp_path), "--reference", "x")
    assert_one_line_error(proc, "not found")


def test_not_a_video(tmp_path):
    text = tmp_path / "readme.mp4"
    text.write_text("hello\n" * 50)
    proc = run_script("--videofile", str(text), "--data_dir", str(tmp_path / "d"), "--reference", "x")
    assert_one_line_error(proc, "cannot read")
    assert not list((tmp_path / "d").rglob("*.pckl"))


def test_audio_only_file(tmp_path):
    """A wav (no video stream) is a video without faces: its frames cover the audio, no tracks, no crops."""
    proc = run_script("--videofile", str(make_wav(tmp_path / "a.wav", seconds=1.3)), "--data_dir", str(tmp_path),
                      "--reference", "x")
    assert proc.returncode == 0, proc.stderr
    cache = Cache(tmp_path, "x")
    info = cache.load_pickle("media.pckl")
    assert info["has_video"] is False and info["num_frames"] == 32 and info["num_samples"] == 20800
    assert cache.load_pickle("tracks.pckl") == [] and cache.load_pickle("scene.pckl") == [(0, 32)]
    assert require_tracks_and_crops(cache) == []  # what stages 2 and 3 read: valid, and empty


def test_video_without_audio(tmp_path):
    proc = run_script("--videofile", str(make_video(tmp_path / "v.mp4")), "--data_dir", str(tmp_path), "--reference", "x")
    assert_one_line_error(proc, "no audio stream")


def test_zero_frames(tmp_path):
    """An mp4 written with no video frame has no video stream at all (the muxer drops it): an audio-only input."""
    path = make_video(tmp_path / "empty.mp4", num_frames=0, audio_s=1.0)
    proc = run_script("--videofile", str(path), "--data_dir", str(tmp_path), "--reference", "x")
    assert proc.returncode == 0, proc.stderr
    info = Cache(tmp_path, "x").load_pickle("media.pckl")
    assert info["has_video"] is False and info["num_frames"] == round(info["num_samples"] * 25 / 16000)
    assert 16000 <= info["num_samples"] <= 16000 + 2048  # 1 s of AAC, plus at most its priming and padding


def test_truncated_video(tmp_path):
    data = clip("retalking_talkinghead_2").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    proc = run_script("--videofile", str(tmp_path / "cut.mp4"), "--data_dir", str(tmp_path), "--reference", "x")
    assert_one_line_error(proc)
    assert not list(tmp_path.rglob("manifest/*.json"))


def test_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    proc = run_script("--videofile", str(clip("retalking_talkinghead_2")), "--data_dir", str(blocker / "d"),
                      "--reference", "x")
    assert_one_line_error(proc, "cannot write to --data_dir")


@pytest.mark.parametrize("reference", ["a/b", "..", "a\\b"])
def test_reference_with_path_separators(tmp_path, reference):
    proc = run_script("--videofile", str(clip("retalking_talkinghead_2")), "--data_dir", str(tmp_path),
                      "--reference", reference)
    assert_one_line_error(proc, "--reference")


def test_missing_checkpoint_is_one_line(tmp_path):
    proc = run_script("--videofile", str(clip("retalking_talkinghead_2")), "--data_dir", str(tmp_path),
                      "--reference", "x", "--weights_dir", str(tmp_path / "no-weights"))
    assert_one_line_error(proc, "s3fd.model", "download_models.sh")


@pytest.mark.parametrize("name", ["with space.mp4", "non-ascii é 日本.mp4", "-leading-dash.mp4"])
def test_awkward_file_names_work(tmp_path, name):
    video = tmp_path / name
    shutil.copy(clip("retalking_talkinghead_5"), video)
    inject(tmp_path, "w", "retalking_talkinghead_5_haar_faces.pckl")
    proc = run_script(f"--videofile={video}", "--data_dir", str(tmp_path), "--reference", "w")
    assert proc.returncode == 0, proc.stderr
    assert "1 face tracks" in proc.stdout


def test_written_files_get_ordinary_permissions(gestsync_b):
    """Regression: files written through temporary names were left 0600, unreadable by the user's group."""
    cache, _ = gestsync_b
    umask = os.umask(0)
    os.umask(umask)
    for path in (cache.work("tracks.pckl"), cache.audio_wav, cache.crop_avi(0)):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_ctrl_c_is_one_line_and_keeps_only_finished_work(tmp_path, weights_dir):
    """SIGINT during detection: exit 130, one line, no traceback; only complete intermediates recorded."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--videofile", str(clip("gestsync_asd2spk_a")),
                             "--data_dir", str(tmp_path), "--reference", "c", "--weights_dir", str(weights_dir),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    audio_manifest = tmp_path / "pywork" / "c" / "manifest" / "audio.wav.json"
    deadline = time.time() + 120
    while not audio_manifest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # inside detection
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if ": warning:" not in line]
    assert proc.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0], stderr
    cache = Cache(tmp_path, "c")
    assert cache.read_manifest("faces.pckl") is None and cache.read_manifest("tracks.pckl") is None
    assert cache.is_valid("audio.wav", cache.read_manifest("audio.wav")["key"])


def _another(value: object) -> object:
    """A different value of the same type (ranges do not matter to a key)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return tuple(_another(v) for v in value)


@pytest.mark.parametrize("section", ["media", "scenes", "detect", "detections", "track", "crop"])
def test_stage1_keys_hold_every_setting_but_the_speed_only_ones(section):
    """Every field of the sections stage 1 reads is in the key of something it writes, and a speed-only one
    (detect.batch_size) is in none, so a changed setting is never served a stale cache and a faster batch size
    reuses the detections. Parametrised over the fields, so a new field is covered with no edit here."""
    import dataclasses

    from pipeline.config import Config
    from pipeline.stage1 import _crop_settings, _detect_key, _media_key, _track_settings

    cfg = load_config()

    def keys(config: Config) -> tuple:
        return _media_key(config, {}), _detect_key(config, {}), _track_settings(config), _crop_settings(config)

    base = keys(cfg)
    for name in cfg[section]:
        changed = dataclasses.replace(cfg[section], **{name: _another(cfg[section][name])})
        other = keys(Config({**{k: cfg[k] for k in cfg}, section: changed}))
        if name in cfg[section].speed_only_fields():
            assert other == base, f"{section}.{name}"
        else:
            assert other != base, f"{section}.{name}"
