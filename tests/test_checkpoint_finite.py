"""A checkpoint whose network gives NaN or infinity is refused when it is loaded, with one line naming the file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.random_weights import write_random_checkpoints
from models.resnetse34v2 import load_resnetse34
from models.s3fd import load_s3fd
from models.syncnet import load_syncnet
from models.vggface import load_vggface
from pipeline.errors import CheckpointError
from tests.conftest import REPO, clip

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the published")

LOADERS = {
    "s3fd.model": load_s3fd,
    "syncnet.model": lambda folder: load_syncnet(folder, "syncnet.model"),
    "speakernet.model": load_resnetse34,
    "faceembedding.model": load_vggface,
}


@pytest.fixture(scope="module")
def good_weights(tmp_path_factory) -> Path:
    return write_random_checkpoints(tmp_path_factory.mktemp("good"))


def broken_copy(good: Path, folder: Path, file: str, how: str) -> Path:
    """``file`` from ``good``, alone in ``folder``, with finite weights whose network overflows to inf/NaN (two
    weight tensors times 1e30, as a diverged fine-tune gives) or with one weight infinite."""
    folder.mkdir(parents=True, exist_ok=True)
    state = torch.load(good / file, weights_only=True)
    weights = [k for k in state if k.endswith("weight") and state[k].dim() > 1]
    if how == "nan_output":
        for key in weights[:2]:
            state[key] = state[key] * 1e30
        assert all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())
    else:
        state[weights[0]] = state[weights[0]].clone().fill_(float("inf"))
    torch.save(state, folder / file)
    return folder / file


@pytest.mark.parametrize("file, how, needle", [(f, "nan_output", "gives non-finite output") for f in sorted(LOADERS)]
                         + [("syncnet.model", "inf_weight", "non-finite weights")])  # the weight scan is generic
def test_non_finite_network_is_refused_at_load(good_weights, tmp_path, file, how, needle):
    LOADERS[file](good_weights)  # the unbroken file loads
    path = broken_copy(good_weights, tmp_path / "w", file, how)
    with pytest.raises(CheckpointError) as err:
        LOADERS[file](tmp_path / "w")
    message = str(err.value)
    assert "\n" not in message and str(path) in message and needle in message, message


def test_run_pipeline_refuses_before_detecting(good_weights, tmp_path):
    broken_copy(good_weights, tmp_path / "w", "s3fd.model", "nan_output")
    data_dir = tmp_path / "data"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "run_pipeline.py"), "--videofile",
                             str(clip("gestsync_asd2spk_b")), "--data_dir", str(data_dir), "--weights_dir",
                             str(tmp_path / "w"), "--quiet"], capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = [line for line in result.stderr.strip().splitlines() if ": warning: " not in line]  # "not the published"
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "s3fd.model loads but its S3FD gives non-finite output" in lines[0]
    manifests = {p.name for p in (data_dir / "pywork" / "gestsync_asd2spk_b" / "manifest").iterdir()}
    assert manifests <= {"audio.wav.json"}  # no detections (or anything made from them) recorded


def test_ecapa_with_non_finite_output_is_refused_at_load(tmp_path):
    from pipeline import embed
    from pipeline.config import load_config
    from tests import fakespeaker

    cfg = load_config().embed
    folder = fakespeaker.build_ecapa_folder(tmp_path / cfg.ecapa_dir, seed=7)
    embed.load_speaker_model(cfg, tmp_path, "cpu", name="ecapa")  # the unbroken folder loads
    state = torch.load(folder / "embedding_model.ckpt", weights_only=True)
    for key in [k for k in state if k.endswith("weight") and state[k].dim() > 1][:2]:
        state[key] = state[key] * 1e30
    torch.save(state, folder / "embedding_model.ckpt")
    with pytest.raises(CheckpointError) as err:
        embed.load_speaker_model(cfg, tmp_path, "cpu", name="ecapa")
    assert "\n" not in str(err.value) and str(folder) in str(err.value) and "non-finite output" in str(err.value)


def test_diarize_refuses_a_bad_stage3_network_before_stage_1(good_weights, tmp_path):
    """A diverged speaker model is found before any stage runs, not after stages 1 and 2 (hours on a long video):
    one line naming the file, and the cache holds nothing from stage 1 on."""
    folder = tmp_path / "w"
    broken_copy(good_weights, folder, "speakernet.model", "nan_output")
    for path in good_weights.iterdir():
        if not (folder / path.name).exists():
            (folder / path.name).symlink_to(path)
    data_dir = tmp_path / "data"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "diarize.py"), "--videofile",
                             str(clip("gestsync_asd2spk_b")), "--data_dir", str(data_dir), "--weights_dir",
                             str(folder), "--quiet"], capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = [line for line in result.stderr.strip().splitlines() if ": warning: " not in line]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "speakernet.model loads but its ResNetSE34V2 gives non-finite output" in lines[0], lines[0]
    manifests = data_dir / "pywork" / "gestsync_asd2spk_b" / "manifest"
    assert not manifests.exists() or not any(manifests.iterdir())  # no stage ran
