"""The README's main job, scripts/diarize.py, end to end on real clips with seeded random weights."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest

from models.random_weights import write_random_checkpoints
from pipeline.export import read_rttm
from tests.conftest import DETECTIONS, REPO, clip

SCRIPT = REPO / "scripts" / "diarize.py"


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """Our own networks' seeded default initialisation: finite activations everywhere."""
    return write_random_checkpoints(tmp_path_factory.mktemp("random_weights"))


def diarize(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--quiet"], capture_output=True, text=True,
                          timeout=900, env=dict(os.environ))


# newsmax: three frontal faces; asd2spk_b: 29.97 fps, two shots; offset0: no usable face (audio only)
@pytest.mark.parametrize("name", ["syncnetdiar_3spk_newsmax", "gestsync_asd2spk_b", "gestsync_sync_offset0"])
def test_diarize_writes_every_output(tmp_path, random_weights, name):
    data_dir, out_dir = tmp_path / "data", tmp_path / "out"
    (data_dir / "pywork" / name).mkdir(parents=True)
    shutil.copy(DETECTIONS / f"{name}_haar_faces.pckl", data_dir / "pywork" / name / "faces.pckl")
    proc = diarize("--videofile", str(clip(name)), "--data_dir", str(data_dir), "--out_dir", str(out_dir),
                   "--weights_dir", str(random_weights), "--video")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    turns = read_rttm(out_dir / f"{name}.rttm")
    assert set(turns) == {name} and turns[name], "the clips have speech: the RTTM must hold turns"
    via = json.loads((out_dir / f"{name}_via.json").read_text())
    assert set(via) >= {"project", "config", "attribute", "file", "view", "metadata"}
    for plot in ("sync", "timeline"):
        assert (out_dir / f"{name}_{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with av.open(str(out_dir / f"{name}_annotated.mp4")) as container:
        assert {s.type for s in container.streams} == {"video", "audio"}
        frames = sum(1 for _ in container.decode(video=0))
    with open(DETECTIONS / f"{name}_haar_faces.pckl", "rb") as handle:
        assert frames == len(pickle.load(handle))  # every frame of the 25 fps sequence

    again = diarize("--videofile", str(clip(name)), "--data_dir", str(data_dir), "--weights_dir", str(random_weights))
    assert again.returncode == 0, again.stderr  # second run reuses the cache

    if name == "gestsync_sync_offset0":  # the file id a reference RTTM uses, written and said on stdout
        named = diarize("--videofile", str(clip(name)), "--data_dir", str(data_dir), "--weights_dir",
                        str(random_weights), "--file_id", "offset0_ref", "--out_dir", str(tmp_path / "named"))
        assert named.returncode == 0, named.stderr
        assert "RTTM file id 'offset0_ref'" in named.stdout and "RTTM file id" not in named.stderr
        assert set(read_rttm(tmp_path / "named" / f"{name}.rttm")) == {"offset0_ref"}
        bad = diarize("--videofile", str(clip(name)), "--data_dir", str(data_dir), "--file_id", "two words")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--file_id must be one word" in bad.stderr

    if name == "gestsync_asd2spk_b":  # Wav2Lip's expert and the argmax rule on the same cache (stage 1 reused)
        expert = diarize("--videofile", str(clip(name)), "--data_dir", str(data_dir), "--weights_dir",
                         str(random_weights), "--sync_model", "wav2lip", "--fusion", "argmax", "--out_dir",
                         str(tmp_path / "expert"), "--video")
        assert expert.returncode == 0, expert.stderr
        assert (tmp_path / "expert" / f"{name}_annotated.mp4").stat().st_size > 0
        with open(data_dir / "pywork" / name / "sync.pckl", "rb") as handle:
            assert pickle.load(handle)["model"] == "wav2lip"
        assert (tmp_path / "expert" / f"{name}_sync.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert set(read_rttm(tmp_path / "expert" / f"{name}.rttm")) <= {name}


def test_missing_video_is_one_line(tmp_path):
    proc = diarize("--videofile", str(tmp_path / "absent.mp4"), "--data_dir", str(tmp_path))
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1 and "not found" in proc.stderr


def test_unwritable_out_dir_is_one_line(tmp_path, random_weights):
    name = "retalking_talkinghead_5"
    (tmp_path / "pywork" / name).mkdir(parents=True)
    shutil.copy(DETECTIONS / f"{name}_haar_faces.pckl", tmp_path / "pywork" / name / "faces.pckl")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    proc = diarize("--videofile", str(clip(name)), "--data_dir", str(tmp_path), "--out_dir", str(blocker / "out"),
                   "--weights_dir", str(random_weights))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"diarize.py: error: cannot write to --out_dir {blocker / 'out'}: Not a directory"]
