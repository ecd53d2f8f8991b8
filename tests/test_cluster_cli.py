"""scripts/cluster.py on bad inputs: one line on stderr naming what to do, a non-zero exit, no traceback.

Most cases run the script's ``main`` in this process (as the command line does, through ``run_main``); two
run it as a real command.
"""
from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from pipeline.cache import Cache
from pipeline.cli import run_main
from pipeline.config import load_config
from pipeline.formats import turns_from_pickle
from pipeline.sync.evidence_record import SyncEvidence
from tests import fakespeaker, fakeweights
from tests.conftest import DETECTIONS, clip
from tests.synth import make_video

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "cluster.py"
RATE_HZ = 16000


def _script_module():
    spec = importlib.util.spec_from_file_location("cluster_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT_MODULE = _script_module()


def cluster(*args: str, env_weights: Path | None = None) -> subprocess.CompletedProcess:
    """The script as a command."""
    command = [sys.executable, str(SCRIPT), *args, "--quiet"]
    if env_weights is not None:
        command += ["--weights_dir", str(env_weights)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.fixture
def cluster_main(capsys):
    """The script's main in this process, with its exit code and output, shaped like ``cluster``'s result."""
    def call(*args: str, env_weights: Path | None = None) -> subprocess.CompletedProcess:
        argv = [*args, "--quiet"] + (["--weights_dir", str(env_weights)] if env_weights is not None else [])
        code = run_main(SCRIPT_MODULE.main, SCRIPT_MODULE.build_parser(), argv)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err)
    return call


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("cluster.py: error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def fake_stage1(data_dir: Path, tracks: list | None = None, seconds: float = 3.0) -> Cache:
    """Stage 1's outputs for a silent video: media.pckl, tracks.pckl, the crops manifest and audio."""
    tracks = tracks or []
    cache = Cache(data_dir, "clip")
    num_samples = int(seconds * RATE_HZ)
    wavfile.write(cache.audio_wav, RATE_HZ, np.zeros(num_samples, dtype=np.int16))
    media_info = {"num_frames": int(seconds * 25), "frame_rate_hz": 25, "duration_s": seconds,
                  "num_samples": num_samples, "sample_rate_hz": RATE_HZ, "has_audio": True, "width": 320,
                  "height": 240, "source": {}}
    cache.save_pickle("media.pckl", media_info, "run_pipeline", {"test": 1})
    cache.save_pickle("tracks.pckl", tracks, "run_pipeline", {"test": 1})
    crop_files = []
    for idx, t in enumerate(tracks):
        frames = len(t["track"]["frame"])
        wavfile.write(cache.crop_wav(idx), RATE_HZ, np.zeros(frames * 640, dtype=np.int16))
        make_video(cache.crop_frames(idx), num_frames=frames, size=(224, 224), codec="ffv1",
                   container_format="matroska")
        crop_files += [cache.crop_wav(idx), cache.crop_frames(idx)]
    cache.record("crops", "run_pipeline", {"upstream": {"tracks.pckl": cache.digest("tracks.pckl")}}, crop_files)
    return cache


def fake_stage2(cache: Cache, num_tracks: int = 0) -> None:
    key = {"upstream": {"tracks.pckl": cache.digest("tracks.pckl"), "crops": cache.digest("crops")}}
    cache.save_pickle("activesd.pckl", [np.ones((95, 21), np.float32)] * num_tracks, "run_syncnet", key)
    sync = SyncEvidence("syncnet", "cosine", score_name="min_dist", vshift_frames=10,
                        offset_frames=(0.0,) * num_tracks, score=(1.0,) * num_tracks, confidence=(0.0,) * num_tracks)
    cache.save_pickle("sync.pckl", sync.to_pickle(), "run_syncnet", key)


def one_track() -> list[dict]:
    return [{"track": {"frame": np.arange(100), "bbox": np.zeros((100, 4))},
             "proc_track": {"x": np.zeros(100), "y": np.zeros(100), "s": np.ones(100)}}]


def test_missing_stage1_names_run_pipeline(tmp_path):
    assert_one_line_error(cluster("--data_dir", str(tmp_path), "--reference", "clip"), "run_pipeline.py", "media.pckl")


def test_missing_crops_names_run_pipeline(cluster_main, tmp_path):
    cache = fake_stage1(tmp_path)
    cache.invalidate("crops")
    result = cluster_main("--data_dir", str(tmp_path), "--reference", "clip")
    assert_one_line_error(result, "run_pipeline.py", "crops")


def test_missing_stage2_names_run_syncnet(cluster_main, tmp_path):
    fake_stage1(tmp_path)
    result = cluster_main("--data_dir", str(tmp_path), "--reference", "clip")
    assert_one_line_error(result, "run_syncnet.py", "activesd.pckl")


def test_stale_stage2_names_run_syncnet(cluster_main, tmp_path):
    """Stage 1 re-ran (now one track) after stage 2: stage 2's outputs are stale."""
    cache = fake_stage1(tmp_path)
    fake_stage2(cache)
    fake_stage1(tmp_path, tracks=one_track())
    result = cluster_main("--data_dir", str(tmp_path), "--reference", "clip")
    assert_one_line_error(result, "run_syncnet.py", "stale")


def test_edited_stage2_output_names_run_syncnet(cluster_main, tmp_path):
    cache = fake_stage1(tmp_path)
    fake_stage2(cache)
    cache.work("sync.pckl").write_bytes(pickle.dumps({"metric": "euclidean"}))
    assert_one_line_error(cluster_main("--data_dir", str(tmp_path), "--reference", "clip"), "run_syncnet.py")


def test_corrupt_audio_is_one_line(cluster_main, tmp_path):
    cache = fake_stage1(tmp_path)
    fake_stage2(cache)
    cache.audio_wav.write_bytes(b"RIFF\x00\x00not a wave file at all")
    result = cluster_main("--data_dir", str(tmp_path), "--reference", "clip")
    assert_one_line_error(result, "audio.wav", "run_pipeline.py")


def test_missing_speaker_checkpoint_names_download_script(cluster_main, tmp_path):
    cache = fake_stage1(tmp_path)
    fake_stage2(cache)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    result = cluster_main("--data_dir", str(tmp_path), "--reference", "clip", env_weights=empty)
    assert_one_line_error(result, "speakernet.model", "download_models.sh")


def test_reference_with_a_path_separator(cluster_main, tmp_path):
    assert_one_line_error(cluster_main("--data_dir", str(tmp_path), "--reference", "a/b"), "--reference")


@pytest.fixture(scope="module")
def speaker_weights(weights_dir, tmp_path_factory) -> Path:
    """The seeded random checkpoints, with a ResNetSE34 whose front end is real so embeddings are finite."""
    folder = tmp_path_factory.mktemp("weights3")
    for name in ("syncnet.model", "faceembedding.model"):
        (folder / name).symlink_to(weights_dir / name)
    fakeweights.save_checkpoint(fakespeaker.resnetse34_state(seed=2), folder / "speakernet.model")
    return folder


def test_silent_video_without_faces_gives_no_turns(cluster_main, tmp_path, speaker_weights):
    """Zero tracks and silence: an empty diarization.pckl, a one-line summary, and a second run reuses it."""
    cache = fake_stage1(tmp_path)
    fake_stage2(cache)
    result = cluster_main("--data_dir", str(tmp_path), "--reference", "clip", env_weights=speaker_weights)
    assert result.returncode == 0, result.stderr
    assert "0 turns" in result.stdout and len(result.stdout.strip().splitlines()) == 1
    with open(cache.work("diarization.pckl"), "rb") as handle:
        assert turns_from_pickle(pickle.load(handle)) == []
    for name in ("vad.pckl", "embeddings.pckl", "faceid.pckl", "diarization.pckl"):
        assert cache.read_manifest(name) is not None
    manifest_before = cache.read_manifest("diarization.pckl")
    again = cluster_main("--data_dir", str(tmp_path), "--reference", "clip", env_weights=speaker_weights)
    assert again.returncode == 0 and cache.read_manifest("diarization.pckl") == manifest_before


def test_after_real_stages_1_and_2(tmp_path, speaker_weights):
    """A real clip (one talking head, 4.9 s) through stage 1 (injected Haar detections) and stage 2 (random
    SyncNet), then this script: valid turns inside the video, every intermediate recorded, a re-run reuses
    them, and another VAD method redoes the VAD and what depends on it."""
    from pipeline.stage1 import run_pipeline
    from pipeline.stage2 import run_stage2

    video = clip("retalking_talkinghead_5")
    cache = Cache(tmp_path, "head")
    (cache.work_dir / "faces.pckl").write_bytes((DETECTIONS / "retalking_talkinghead_5_haar_faces.pckl").read_bytes())
    cfg = load_config()
    run_pipeline(video, cache, cfg)
    run_stage2(cache, cfg, speaker_weights, "cpu")

    result = cluster("--data_dir", str(tmp_path), "--reference", "head", env_weights=speaker_weights)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 and " turns " in result.stdout
    turns = turns_from_pickle(cache.load_pickle("diarization.pckl"))
    duration_s = cache.load_pickle("media.pckl")["duration_s"]
    num_tracks = len(cache.load_pickle("tracks.pckl"))
    assert turns, "the clip speaks: some turn is expected"
    assert turns == sorted(turns, key=lambda t: t.start_s)
    for turn in turns:
        assert 0 <= turn.start_s < turn.end_s <= duration_s + 1e-9
        assert " " not in turn.speaker and turn.source in ("av", "audio")
        assert all(0 <= idx < num_tracks for idx in turn.track_ids) and bool(turn.track_ids) == (turn.source == "av")
    assert len(cache.load_pickle("faceid.pckl")) == num_tracks
    vad = cache.load_pickle("vad.pckl")
    assert vad["method"] == "webrtc" and len(vad["tracks"]) == num_tracks

    manifests = {name: cache.read_manifest(name) for name in ("vad.pckl", "embeddings.pckl", "faceid.pckl")}
    again = cluster("--data_dir", str(tmp_path), "--reference", "head", "--vad", "silero",
                    env_weights=speaker_weights)
    assert again.returncode == 0, again.stderr
    assert cache.load_pickle("vad.pckl")["method"] == "silero"
    assert cache.read_manifest("vad.pckl") != manifests["vad.pckl"]
    for name in ("embeddings.pckl", "faceid.pckl"):  # independent of the VAD: reused
        assert cache.read_manifest(name) == manifests[name]
