"""GestSync's RGB sync model (``Transformer_RGB``, Hegde & Zisserman, BMVC 2023): the network only, plus its loader.

Module names match Sindhu-Hegde/gestsync ``sync_models/gestsync_models.py`` and ``sync_models/modules.py``
(``VGGNet`` names its layers ``conv1 .. conv5``, ``fc6``, ``bn1 .. bn6``, ``mp*``), so the published
``model_rgb.pth`` loads strictly (keys and shapes: ``../shared/ckpt-manifests/gestsync_rgb.json``). Its weights
sit under ``state_dict`` (``models.loader`` unwraps it); copies saved from ``DataParallel`` prefix every key
with ``module.`` (stripped here, as the reference's ``load_checkpoint`` does).

Inputs, as ``inference_syncoffset.py`` forms them (``pipeline.sync.gestsync_frontend`` builds both):

- video: ``[N, 3, 25, 270, 480]`` float32 RGB in [0, 1]: 25 consecutive upper-body frames, face masked out;
- audio: ``[N, 1, 80, 100]`` float32 log-mel filterbanks, 100 frames (4 per video frame) of 80 bands.

``forward_vid`` gives ``[N, 1024, T - 4]`` (one embedding per position left by the 5-frame temporal kernel);
the reference averages it over time before comparing. ``forward_aud`` gives ``[N, 1024, 1]``. The reference
L2-normalises both before taking similarities, and both demos pass every cosine through the learnt
``logits_scale`` (a 1x1 linear layer without bias: a multiplication by its one weight, which may be negative;
``inference_syncoffset.py`` ``calc_att_map``, ``inference_activespeaker.py`` ``predict_active_speaker``), so
the scores they compare are ``logits_scale * cosine`` (``score_scale``). The published network also holds a
bidirectional LSTM and ``fc`` that inference never uses; they are kept so the checkpoint loads strictly.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from models.loader import load_checkpoint, probe_input

EMBEDDING_DIM = 1024
WINDOW_FRAMES = 25  # --num_frames: video frames per window
FRAME_HEIGHT_PX = 270  # --height
FRAME_WIDTH_PX = 480  # --width
MEL_BANDS = 80  # audio_opts['n_mel']
MEL_FRAMES_PER_VIDEO_FRAME = 4  # load_spectrograms(stride=4): 100 Hz filterbanks against 25 fps video
TRANSFORMER_DIM = 512
POS_ENCODING_MAX_LEN = 50  # PositionalEncoding_RGB(max_len=50)

# (type, out channels, kernel, stride, padding, maxpool (kernel, stride) or None): Transformer_RGB.build_net_vid
_VIDEO_LAYERS = (
    ("conv", 64, (5, 7, 7), (1, 3, 3), 0, ((1, 3, 3), (1, 2, 2))),
    ("conv", 128, (1, 5, 5), (1, 2, 2), (0, 0, 0), None),
    ("conv", 256, (1, 3, 3), (1, 2, 2), (0, 1, 1), None),
    ("conv", 256, (1, 3, 3), (1, 1, 2), (0, 1, 1), None),
    ("conv", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1), ((1, 3, 3), (1, 2, 2))),
    ("fc", 512, (1, 4, 4), (1, 1, 1), 0, None),
)
# Transformer_RGB.build_net_aud
_AUDIO_LAYERS = (
    ("conv", 64, (3, 3), (2, 2), (1, 1), ((3, 3), (2, 2))),
    ("conv", 192, (3, 3), (1, 2), (1, 1), ((3, 3), (2, 2))),
    ("conv", 384, (3, 3), (1, 1), (1, 1), None),
    ("conv", 256, (3, 3), (1, 1), (1, 1), None),
    ("conv", 256, (3, 3), (1, 1), (1, 1), ((2, 3), (2, 2))),
    ("fc", 512, (4, 2), (1, 1), (0, 0), None),
)


class VGGNet(nn.Module):
    """GestSync's ``VGGNet``: per layer a convolution, batch norm, ReLU and an optional max pool."""

    def __init__(self, channels_in: int, layers: tuple, dims: int) -> None:
        super().__init__()
        conv, norm, pool = {2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d),
                            3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)}[dims]
        self.names: list[tuple[str, str, str | None]] = []
        prev = channels_in
        for index, (kind, channels, kernel, stride, padding, maxpool) in enumerate(layers, start=1):
            conv_name, bn_name, mp_name = f"{kind}{index}", f"bn{index}", f"mp{index}" if maxpool else None
            setattr(self, conv_name, conv(prev, channels, kernel_size=kernel, stride=stride, padding=padding))
            setattr(self, bn_name, norm(channels))
            if maxpool:
                setattr(self, mp_name, pool(kernel_size=maxpool[0], stride=maxpool[1], padding=0))
            self.names.append((conv_name, bn_name, mp_name))
            prev = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv_name, bn_name, mp_name in self.names:
            x = torch.relu(getattr(self, bn_name)(getattr(self, conv_name)(x)))
            if mp_name:
                x = getattr(self, mp_name)(x)
        return x


class PositionalEncoding(nn.Module):
    """``PositionalEncoding_RGB``: sinusoidal encodings added to the sequence, then dropout (a buffer ``pe``
    that the checkpoint carries)."""

    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = POS_ENCODING_MAX_LEN) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * -(math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.pe[:, : x.size(1)])


class NetFC2D(nn.Module):
    """``NetFC_2D``: 1x1 convolution, batch norm, ReLU, 1x1 convolution."""

    def __init__(self, input_dim: int, hidden_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.fc7 = nn.Conv2d(input_dim, hidden_dim, kernel_size=(1, 1))
        self.bn7 = nn.BatchNorm2d(hidden_dim)
        self.fc8 = nn.Conv2d(hidden_dim, embed_dim, kernel_size=(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(torch.relu(self.bn7(self.fc7(x))))


class GestSyncRGB(nn.Module):
    """``Transformer_RGB``: masked RGB frame windows and log-mel windows to 1024-d embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.net_vid = VGGNet(3, _VIDEO_LAYERS, dims=3)
        self.ff_vid = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, EMBEDDING_DIM))
        self.pos_encoder = PositionalEncoding(d_model=TRANSFORMER_DIM)
        layer = nn.TransformerEncoderLayer(d_model=TRANSFORMER_DIM, nhead=8, batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, num_layers=6, enable_nested_tensor=False)
        self.net_aud = VGGNet(1, _AUDIO_LAYERS, dims=2)
        self.lstm = nn.LSTM(512, 256, num_layers=1, bidirectional=True, batch_first=True)  # unused at inference
        self.ff_aud = NetFC2D(input_dim=512, hidden_dim=512, embed_dim=EMBEDDING_DIM)
        self.logits_scale = nn.Linear(1, 1, bias=False)  # the learnt score scale both demos apply (score_scale)
        self.fc = nn.Linear(1, 1)  # training only

    def forward_vid(self, frames: torch.Tensor) -> torch.Tensor:
        """``[N, 3, T, 270, 480]`` masked RGB frames -> ``[N, 1024, T - 4]`` video embeddings (not normalised)."""
        out = self.net_vid(frames).squeeze(-1).squeeze(-1)  # [N, 512, T - 4]
        out = self.transformer_encoder(self.pos_encoder(out.transpose(1, 2)))
        return self.ff_vid(out).transpose(1, 2)

    def forward_aud(self, mels: torch.Tensor) -> torch.Tensor:
        """``[N, 1, 80, 100]`` log-mel windows -> ``[N, 1024, 1]`` audio embeddings (not normalised)."""
        return self.ff_aud(self.net_aud(mels)).squeeze(-1)

    def forward(self, mels: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio, video) embeddings."""
        return self.forward_aud(mels), self.forward_vid(frames)


def score_scale(model: GestSyncRGB) -> float:
    """The learnt ``logits_scale`` weight: GestSync's scores are this times the cosine similarity."""
    return float(model.logits_scale.weight.detach().reshape(-1)[0].float())


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without DataParallel's ``module.`` prefix (unchanged when no key has it)."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return state


def _probe(model: GestSyncRGB) -> tuple[torch.Tensor, torch.Tensor]:
    """The network on a tiny seeded input: one 5-frame clip (one embedding) and one audio window."""
    frames = probe_input(1, 3, 5, FRAME_HEIGHT_PX, FRAME_WIDTH_PX).clamp(-1, 1) * 0.5 + 0.5
    mels = probe_input(1, 1, MEL_BANDS, WINDOW_FRAMES * MEL_FRAMES_PER_VIDEO_FRAME, scale=3.0)
    return model(mels, frames)


def load_gestsync(weights_dir: str | Path | None, file: str = "model_rgb.pth",
                  device: torch.device | str = "cpu") -> GestSyncRGB:
    """GestSync's RGB model with the weights of ``file`` (strict keys and shapes), in eval mode on ``device``.

    Raises CheckpointError when the file is missing, unreadable, does not fit the network or gives
    non-finite output.
    """
    model = GestSyncRGB()
    load_checkpoint(model, file, weights_dir, convert=strip_module_prefix, probe=_probe)
    return model.eval().to(device)
