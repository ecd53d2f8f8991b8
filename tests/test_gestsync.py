"""GestSync's RGB model (Hegde & Zisserman, BMVC 2023): the network and its checkpoint.

Seeded random weights in the published layout (``model_rgb.pth``: the weights under ``state_dict``, keys from
``../shared/ckpt-manifests/gestsync_rgb.json``). The network is heavy (a 270 x 480 3-D CNN and a 6-layer
transformer), so the forward passes run on the shortest clip it accepts.
"""
from __future__ import annotations

import math
import os
import subprocess

import pytest
import torch
from torch import nn

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


# ---- transcription of Sindhu-Hegde/gestsync sync_models/modules.py and gestsync_models.py ------------
# (VGGNet, PositionalEncoding_RGB, NetFC_2D, Transformer_RGB; debug printing left out; Variable dropped)
class RefVGGNet(nn.Module):
    conv_dict = {"conv2d": nn.Conv2d, "conv3d": nn.Conv3d, "fc2d": nn.Conv2d, "fc3d": nn.Conv3d}
    pool_dict = {"conv2d": nn.MaxPool2d, "conv3d": nn.MaxPool3d}
    norm_dict = {"conv2d": nn.BatchNorm2d, "conv3d": nn.BatchNorm3d, "fc2d": nn.BatchNorm2d, "fc3d": nn.BatchNorm3d}

    def __init__(self, n_channels_in, layers):
        super().__init__()
        self.layers = layers
        n_channels_prev = n_channels_in
        for l_id, lr in enumerate(self.layers):
            l_id += 1
            name = "fc" if "fc" in lr["type"] else "conv"
            self.__setattr__(f"{name:s}{l_id:d}", self.conv_dict[lr["type"]](
                n_channels_prev, lr["n_channels"], kernel_size=lr["kernel_size"], stride=lr["stride"],
                padding=lr["padding"]))
            n_channels_prev = lr["n_channels"]
            self.__setattr__(f"bn{l_id:d}", self.norm_dict[lr["type"]](lr["n_channels"]))
            if "maxpool" in lr:
                padding = lr["maxpool"]["padding"] if "padding" in lr["maxpool"] else 0
                self.__setattr__(f"mp{l_id:d}", self.pool_dict[lr["type"]](
                    kernel_size=lr["maxpool"]["kernel_size"], stride=lr["maxpool"]["stride"], padding=padding))

    def forward(self, inp):
        out = inp
        for l_id, lr in enumerate(self.layers):
            l_id += 1
            name = "fc" if "fc" in lr["type"] else "conv"
            out = self.__getattr__(f"{name:s}{l_id:d}")(out)
            out = self.__getattr__(f"bn{l_id:d}")(out)
            out = nn.ReLU(inplace=True)(out)
            if "maxpool" in lr:
                out = self.__getattr__(f"mp{l_id:d}")(out)
        return out


class RefPositionalEncoding(nn.Module):
    def __init__(self, d_model, dropout=0.1, max_len=50):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * -(math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))

    def forward(self, x):
        return self.dropout(x + self.pe[:, :x.size(1)])


class RefNetFC2D(nn.Module):
    def __init__(self, input_dim, hidden_dim, embed_dim):
        super().__init__()
        self.fc7 = nn.Conv2d(input_dim, hidden_dim, kernel_size=(1, 1))
        self.bn7 = nn.BatchNorm2d(hidden_dim)
        self.fc8 = nn.Conv2d(hidden_dim, embed_dim, kernel_size=(1, 1))

    def forward(self, inp):
        return self.fc8(nn.ReLU(inplace=True)(self.bn7(self.fc7(inp))))


def _c(kind, n, k, s, p, mp=None):
    layer = {"type": kind, "n_channels": n, "kernel_size": k, "stride": s, "padding": p}
    if mp:
        layer["maxpool"] = {"kernel_size": mp[0], "stride": mp[1]}
    return layer


class RefTransformerRGB(nn.Module):
    def __init__(self):
        super().__init__()
        self.net_vid = RefVGGNet(3, [
            _c("conv3d", 64, (5, 7, 7), (1, 3, 3), 0, ((1, 3, 3), (1, 2, 2))),
            _c("conv3d", 128, (1, 5, 5), (1, 2, 2), (0, 0, 0)),
            _c("conv3d", 256, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
            _c("conv3d", 256, (1, 3, 3), (1, 1, 2), (0, 1, 1)),
            _c("conv3d", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1), ((1, 3, 3), (1, 2, 2))),
            _c("fc3d", 512, (1, 4, 4), (1, 1, 1), 0)])
        self.ff_vid = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1024))
        self.pos_encoder = RefPositionalEncoding(d_model=512)
        encoder_layer = nn.TransformerEncoderLayer(d_model=512, nhead=8, batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(encoder_layer, num_layers=6)
        self.net_aud = RefVGGNet(1, [
            _c("conv2d", 64, (3, 3), (2, 2), (1, 1), ((3, 3), (2, 2))),
            _c("conv2d", 192, (3, 3), (1, 2), (1, 1), ((3, 3), (2, 2))),
            _c("conv2d", 384, (3, 3), (1, 1), (1, 1)),
            _c("conv2d", 256, (3, 3), (1, 1), (1, 1)),
            _c("conv2d", 256, (3, 3), (1, 1), (1, 1), ((2, 3), (2, 2))),
            _c("fc2d", 512, (4, 2), (1, 1), (0, 0))])
        self.lstm = nn.LSTM(512, 256, num_layers=1, bidirectional=True, batch_first=True)
        self.ff_aud = RefNetFC2D(input_dim=512, hidden_dim=512, embed_dim=1024)
        self.logits_scale = nn.Linear(1, 1, bias=False)
        self.fc = nn.Linear(1, 1)

    def forward_vid(self, x):
        out_conv = self.net_vid(x).squeeze(-1).squeeze(-1)
        out = self.pos_encoder(out_conv.transpose(1, 2))
        out_trans = self.transformer_encoder(out)
        return self.ff_vid(out_trans).transpose(1, 2)

    def forward_aud(self, x):
        return self.ff_aud(self.net_aud(x)).squeeze(-1)


def test_network_equals_the_transcribed_reference_on_the_same_weights(gestsync_dir):
    model = load_gestsync(gestsync_dir, FILE)
    reference = RefTransformerRGB()
    reference.load_state_dict(torch.load(gestsync_dir / FILE, weights_only=True)["state_dict"])
    reference.eval()
    gen = torch.Generator().manual_seed(2)
    frames = torch.rand(1, 3, 6, 270, 480, generator=gen)
    mels = torch.randn(2, 1, 80, 100, generator=gen) * 3 - 5
    with torch.inference_mode():
        ours_audio, ours_video = model(mels, frames)
        ref_audio, ref_video = reference.forward_aud(mels), reference.forward_vid(frames)
    assert torch.allclose(ours_audio, ref_audio, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ours_video, ref_video, atol=1e-5, rtol=1e-5)
