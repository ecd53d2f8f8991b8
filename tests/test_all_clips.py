"""Every shared clip through all four stages (real detections injected, seeded random weights)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from models.random_weights import write_random_checkpoints
from models.syncnet import WINDOW_FRAMES
from pipeline.cache import Cache
from pipeline.config import load_config
from pipeline.export import read_rttm
from pipeline.stage1 import run_pipeline
from pipeline.stage2 import run_stage2
from pipeline.stage3 import run_cluster
from pipeline.stage4 import visualise
from tests.conftest import DETECTIONS, REPO, VIDEOS

CLIPS = sorted(path.stem for path in VIDEOS.glob("*.mp4"))
# The RTTM each clip gives with the faithful defaults, its haar detections and write_random_checkpoints'
# seeded weights: any change of behaviour shows here and must be explained in its commit, then stored anew
# with `python tests/make_regression_rttms.py`.
REGRESSION_DIR = REPO / "tests" / "data" / "regression"


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    return write_random_checkpoints(tmp_path_factory.mktemp("weights"))


@pytest.mark.parametrize("name", CLIPS)
def test_clip_runs_through_every_stage(tmp_path, random_weights, name):
    cfg = load_config()
    cache = Cache(tmp_path, name)
    shutil.copy(DETECTIONS / f"{name}_haar_faces.pckl", cache.work("faces.pckl"))
    stage1 = run_pipeline(VIDEOS / f"{name}.mp4", cache, cfg)

    stage2 = run_stage2(cache, cfg, random_weights, "cpu")
    assert len(stage2.distances) == stage1.num_tracks
    for dists, track in zip(stage2.distances, cache.load_pickle("tracks.pckl")):
        assert dists.shape[1] == 2 * cfg.syncnet.vshift_frames + 1
        assert dists.shape[0] <= len(track["track"]["frame"]) - WINDOW_FRAMES
    lines = [line for line in cache.work("offsets.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(lines) == stage1.num_tracks

    turns = run_cluster(cache, cfg, random_weights, "cpu")
    assert all(0 <= t.start_s < t.end_s <= stage1.num_frames / 25 + 1e-6 for t in turns)
    assert all(t.source in ("av", "audio") for t in turns)

    outputs = visualise(tmp_path, name, cfg)
    rttm = read_rttm(outputs["rttm"])
    assert sum(len(v) for v in rttm.values()) == len([t for t in turns if t.end_s > t.start_s])
    assert json.loads(outputs["via"].read_text())["file"]["1"]["fname"] == f"{name}.mp4"
    assert np.isfinite([t.start_s for t in turns]).all()
    stored = REGRESSION_DIR / f"{name}.rttm"
    assert outputs["rttm"].read_text() == stored.read_text(), (
        f"{name}: the pipeline's RTTM changed from {stored}; if the change is intended, explain it in the commit "
        "and run python tests/make_regression_rttms.py")


# Wav2Lip's lip-sync expert as stage 2's model (issue 9). To keep CI short it runs one clip here, a
# variable-frame-rate talking head (VoxConverse rule); tests/test_diarize_cli.py runs the expert with the argmax
# rule and the annotated video on two faces in two shots at 29.97 fps. `AVDIARISE_ALL_CLIPS=1` runs every clip,
# each with its annotated video (8.5 min on the shared 2-core CPU), two of them with the argmax rule.
WAV2LIP_CLIPS = CLIPS if os.environ.get("AVDIARISE_ALL_CLIPS") else ["retalking_talkinghead_1"]
WAV2LIP_ARGMAX_CLIPS = ("gestsync_asd2spk_b", "syncnetdiar_3spk_newsmax")


@pytest.mark.parametrize("name", WAV2LIP_CLIPS)
def test_clip_runs_through_every_stage_with_wav2lip(tmp_path, random_weights, name):
    argmax = name in WAV2LIP_ARGMAX_CLIPS
    cfg = load_config(overrides=["sync.model=wav2lip"] + (["diarise.mode=argmax"] if argmax else []))
    cache = Cache(tmp_path, name)
    shutil.copy(DETECTIONS / f"{name}_haar_faces.pckl", cache.work("faces.pckl"))
    stage1 = run_pipeline(VIDEOS / f"{name}.mp4", cache, cfg)

    stage2 = run_stage2(cache, cfg, random_weights, "cpu")
    assert stage2.sync.model == "wav2lip" and len(stage2.distances) == stage1.num_tracks
    for idx, (scores, track) in enumerate(zip(stage2.distances, cache.load_pickle("tracks.pckl"))):
        track_frames = len(track["track"]["frame"])
        assert scores.shape[1] == 2 * cfg.wav2lip.vshift_frames + 1 and scores.shape[0] <= track_frames - 4
        assert np.all((scores >= 0) & (scores <= 1 + 1e-6))
        assert stage2.sync.score_raw[idx].shape == stage2.sync.score_smooth[idx].shape == (track_frames,)
    assert run_stage2(cache, cfg, random_weights, "cpu").reused

    turns = run_cluster(cache, cfg, random_weights, "cpu")
    assert all(0 <= t.start_s < t.end_s <= stage1.num_frames / 25 + 1e-6 for t in turns)
    video = argmax or bool(os.environ.get("AVDIARISE_ALL_CLIPS"))
    outputs = visualise(tmp_path, name, cfg, video=video)
    rttm = read_rttm(outputs["rttm"])
    assert sum(len(v) for v in rttm.values()) == len(turns)
    assert json.loads(outputs["via"].read_text())["file"]["1"]["fname"] == f"{name}.mp4"
    assert outputs["sync_plot"].stat().st_size > 0 and outputs["timeline_plot"].stat().st_size > 0
    if video:
        assert outputs["video"].stat().st_size > 0
