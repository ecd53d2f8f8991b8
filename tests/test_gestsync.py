"""GestSync's RGB model (Hegde & Zisserman, BMVC 2023): the network and its checkpoint.

Seeded random weights in the published layout (``model_rgb.pth``: the weights under ``state_dict``, keys from
``../shared/ckpt-manifests/gestsync_rgb.json``). The network is heavy (a 270 x 480 3-D CNN and a 6-layer
transformer), so the forward passes run on the shortest clip it accepts.
"""
from __future__ import annotations

import os
import subprocess

import pytest
import torch

from models import loader
from models.gestsync import EMBEDDING_DIM, GestSyncRGB, load_gestsync, strip_module_prefix
from pipeline.errors import CheckpointError
from tests import fakeweights
from tests.conftest import REPO

MANIFEST = "gestsync_rgb.json"
FILE = "model_rgb.pth"


def published_checkpoint(path, state=None, prefix=""):
    """``model_rgb.pth`` as GestSync's training script saves it (optionally from DataParallel)."""
    state = state if state is not None else fakeweights.random_state_dict(MANIFEST, seed=5)
    state = {prefix + key: value for key, value in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "optimizer": None, "global_step": 0, "global_epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def gestsync_dir(tmp_path_factory):
    return published_checkpoint(tmp_path_factory.mktemp("gestsync") / FILE).parent


def test_network_has_exactly_the_published_keys_and_shapes():
    expected = {entry["key"]: tuple(entry["shape"]) for entry in fakeweights.manifest_keys(MANIFEST)}
    ours = {key: tuple(value.shape) for key, value in GestSyncRGB().state_dict().items()}
    assert ours == expected


@pytest.mark.parametrize("prefix", ["", "module."])
def test_published_layout_loads_strictly_with_and_without_module_prefix(tmp_path, prefix):
    state = fakeweights.random_state_dict(MANIFEST, seed=5)
    published_checkpoint(tmp_path / FILE, state, prefix=prefix)
    model = load_gestsync(tmp_path, FILE)
    assert not model.training
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(state)
    for key in ("net_vid.conv1.weight", "pos_encoder.pe", "net_aud.fc6.weight", "lstm.weight_hh_l0_reverse", "fc.bias"):
        assert torch.equal(loaded[key], state[key])  # the checkpoint's values, not the constructor's
    assert strip_module_prefix({"a.b": 1}) == {"a.b": 1}


def test_wrong_key_truncated_and_missing_checkpoints_are_one_line(tmp_path):
    state = fakeweights.random_state_dict(MANIFEST, seed=5)
    state["net_aud.conv9.weight"] = state.pop("net_aud.conv5.weight")
    published_checkpoint(tmp_path / FILE, state)
    with pytest.raises(CheckpointError) as err:
        load_gestsync(tmp_path, FILE)
    message = str(err.value)
    assert "\n" not in message
    assert "missing keys: net_aud.conv5.weight" in message and "unexpected keys: net_aud.conv9.weight" in message

    path = published_checkpoint(tmp_path / FILE)
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="cannot be read") as err:
        load_gestsync(tmp_path, FILE)
    assert "\n" not in str(err.value)

    with pytest.raises(CheckpointError) as err:
        load_gestsync(tmp_path / "empty", FILE)
    message = str(err.value)
    assert "\n" not in message and "no direct download" in message and "github.com/Sindhu-Hegde/gestsync" in message


def test_wrong_shape_is_one_line(tmp_path):
    state = fakeweights.random_state_dict(MANIFEST, seed=5)
    state["ff_vid.2.weight"] = torch.zeros(512, 512)
    published_checkpoint(tmp_path / FILE, state)
    with pytest.raises(CheckpointError, match="wrong shape keys: ff_vid.2.weight") as err:
        load_gestsync(tmp_path, FILE)
    assert "\n" not in str(err.value)


def test_forward_gives_finite_embeddings_of_the_right_shape(gestsync_dir):
    model = load_gestsync(gestsync_dir, FILE)
    gen = torch.Generator().manual_seed(1)
    frames = torch.rand(1, 3, 6, 270, 480, generator=gen)  # 6 frames: the 5-frame temporal kernel leaves 2
    mels = torch.randn(2, 1, 80, 100, generator=gen) * 3 - 5
    with torch.inference_mode():
        audio, video = model(mels, frames)
        video_again = model.forward_vid(frames)
        other_audio = model.forward_aud(mels.flip(-1))
    assert audio.shape == (2, EMBEDDING_DIM, 1) and video.shape == (1, EMBEDDING_DIM, 2)
    assert torch.isfinite(audio).all() and torch.isfinite(video).all()
    assert torch.equal(video, video_again)  # eval mode: no dropout
    assert not torch.allclose(audio[0], audio[1]) and not torch.allclose(audio, other_audio)  # depends on its input
    assert not torch.allclose(video[..., 0], video[..., 1])  # positional encoding and content differ per step


def test_registry_row_and_download_script_say_where_to_get_it(tmp_path):
    entry = loader.registry_entry(FILE)
    assert entry.network == "gestsync" and entry.manual and not entry.default and entry.sha256 is None
    proc = subprocess.run(["bash", str(REPO / "download_models.sh"), str(tmp_path), "gestsync"], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 1  # asked for and not there: not a silent success
    assert f"{FILE} has no direct download" in proc.stderr and entry.url in proc.stderr
    assert not list(tmp_path.iterdir())
