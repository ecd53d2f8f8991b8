"""``pipeline.diarize``: one video through the four stages from Python, as scripts/diarize.py runs it."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import pipeline
from models.random_weights import write_random_checkpoints
from pipeline.errors import InputError
from pipeline.export import read_rttm
from tests.conftest import DETECTIONS, REPO, clip

NAME = "gestsync_asd2spk_a"


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    return write_random_checkpoints(tmp_path_factory.mktemp("random_weights"))


def test_import_pipeline_stays_light():
    """The package's lazy ``diarize`` must not pull torch into scripts that only check their arguments."""
    code = "import sys, pipeline; print('torch' in sys.modules, callable(pipeline.diarize))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_diarize_returns_the_turns_it_wrote(tmp_path, random_weights):
    data_dir, out_dir = tmp_path / "data", tmp_path / "out"
    (data_dir / "pywork" / NAME).mkdir(parents=True)
    shutil.copy(DETECTIONS / f"{NAME}_haar_faces.pckl", data_dir / "pywork" / NAME / "faces.pckl")
    started = []
    result = pipeline.diarize(clip(NAME), data_dir, out_dir=out_dir, weights_dir=random_weights, device="cpu",
                              overrides={"vad.method": "webrtc"}, on_stage=started.append)
    assert started == ["stage1", "stage2", "stage3", "stage4"]
    assert set(result.stage_seconds) == set(started)
    assert result.reference == NAME and result.num_tracks >= 1
    assert result.outputs["rttm"] == out_dir / f"{NAME}.rttm"
    written = read_rttm(result.outputs["rttm"]).get(NAME, [])
    assert [(start, speaker) for start, _, speaker in written] == \
        sorted((round(t.start_s, 3), t.speaker) for t in result.turns if t.end_s > t.start_s)
    assert result.speakers == list(dict.fromkeys(t.speaker for t in result.turns))

    again = pipeline.diarize(clip(NAME), data_dir, weights_dir=random_weights, device="cpu")
    assert again.turns == result.turns  # reused from the cache


def test_diarize_missing_video_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="video file not found"):
        pipeline.diarize(tmp_path / "nope.mp4", tmp_path / "data")
