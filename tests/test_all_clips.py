"""Every shared clip through all four stages (real detections injected, seeded random weights)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from models.random_weights import write_random_checkpoints
from pipeline.cache import Cache
from pipeline.config import load_config
from pipeline.export import read_rttm
from pipeline.stage1 import run_pipeline
from pipeline.stage2 import run_stage2
from pipeline.stage3 import run_cluster
from pipeline.stage4 import visualise
from tests.conftest import DETECTIONS, VIDEOS

CLIPS = sorted(path.stem for path in VIDEOS.glob("*.mp4"))


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
        assert dists.shape[0] <= len(track["track"]["frame"]) - cfg.syncnet.window_frames
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
