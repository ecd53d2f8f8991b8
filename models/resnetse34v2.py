"""ResNetSE34V2 speaker embedding network (clovaai/voxceleb_trainer), as av-diarization's SpeakerNet uses it.

The published files hold the front end's constants too (pre-emphasis filter, Hamming window, mel filter bank:
``torchfb.*``), so a strict load restores exactly the features the network was trained on.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.inference import batch_norm_, in_place_ok
from models.loader import find_network_checkpoint, load_checkpoint, probe_input

SAMPLE_RATE_HZ = 16000
_SPEAKER_PREFIX = "__S__."
_LOSS_PREFIX = "__L__."
_PARALLEL_PREFIX = "module."


class PreEmphasis(nn.Module):
    """y[t] = x[t] - coef * x[t-1], with x[-1] reflected from x[1] (voxceleb_trainer utils.PreEmphasis)."""

    def __init__(self, coef: float = 0.97) -> None:
        super().__init__()
        # conv1d is cross-correlation, so the filter is stored flipped: [-coef, 1]
        self.register_buffer("flipped_filter", torch.tensor([[[-coef, 1.0]]]))

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        padded = F.pad(waveforms.unsqueeze(1), (1, 0), mode="reflect")  # [B, 1, T + 1]
        return F.conv1d(padded, self.flipped_filter).squeeze(1)  # [B, T]


def htk_mel_filterbank(n_freqs: int, n_mels: int, sample_rate_hz: int, f_min_hz: float = 0.0,
                       f_max_hz: float | None = None) -> torch.Tensor:
    """Triangular HTK-scale mel filters ``[n_freqs, n_mels]``, unnormalised (torchaudio's ``melscale_fbanks``
    with its defaults, the filter bank voxceleb_trainer's ``MelSpectrogram`` builds)."""
    f_max_hz = sample_rate_hz / 2 if f_max_hz is None else f_max_hz
    all_freqs = torch.linspace(0, sample_rate_hz // 2, n_freqs)
    m_min = 2595.0 * math.log10(1.0 + f_min_hz / 700.0)
    m_max = 2595.0 * math.log10(1.0 + f_max_hz / 700.0)
    m_pts = torch.linspace(m_min, m_max, n_mels + 2)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]  # [n_mels + 1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # [n_freqs, n_mels + 2]
    down_slopes = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up_slopes = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down_slopes, up_slopes))


class Spectrogram(nn.Module):
    """Power spectrogram, centred frames with reflect padding (torchaudio ``Spectrogram`` defaults, power 2)."""

    def __init__(self, n_fft: int, win_length: int, hop_length: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.register_buffer("window", torch.hamming_window(win_length))

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(waveforms, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=True, pad_mode="reflect", normalized=False, onesided=True,
                          return_complex=True)
        return spec.abs().pow(2.0)  # [B, n_fft // 2 + 1, frames]


class MelScale(nn.Module):
    """Projects a power spectrogram onto the stored mel filter bank ``fb`` ``[n_freqs, n_mels]``."""

    def __init__(self, n_mels: int, sample_rate_hz: int, n_freqs: int) -> None:
        super().__init__()
        self.register_buffer("fb", htk_mel_filterbank(n_freqs, n_mels, sample_rate_hz))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)  # [B, n_mels, frames]


class MelSpectrogram(nn.Module):
    """voxceleb_trainer's ``torchaudio.transforms.MelSpectrogram(n_fft=512, win_length=400, hop_length=160,
    window_fn=torch.hamming_window, n_mels=64)`` in plain torch, with the same state-dict keys
    (``spectrogram.window``, ``mel_scale.fb``): torchaudio's compiled library is not needed to run it."""

    def __init__(self, sample_rate_hz: int, n_fft: int, win_length: int, hop_length: int, n_mels: int) -> None:
        super().__init__()
        self.spectrogram = Spectrogram(n_fft, win_length, hop_length)
        self.mel_scale = MelScale(n_mels, sample_rate_hz, n_fft // 2 + 1)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.mel_scale(self.spectrogram(waveforms))


class SELayer(nn.Module):
    """Squeeze-and-excitation of the channels."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc(x.mean(dim=(2, 3)))  # [B, C]
        return x * scale[:, :, None, None]


class SEBasicBlock(nn.Module):
    """Residual block with squeeze-excitation; ReLU comes before the first BatchNorm, as in the original."""

    def __init__(self, in_channels: int, channels: int, stride: int | tuple[int, int] = 1,
                 downsample: nn.Module | None = None, reduction: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(channels, reduction)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if in_place_ok(self):
            return self._forward_in_place(x)
        residual = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + residual)

    def _forward_in_place(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` in inference, each step written over the convolution's output: the same kernels and bits
        (``out * scale`` as ``mul_``, ``out + residual`` as ``add_``), 2-3 % faster on the CPU (issue 23)."""
        out = batch_norm_(self.bn1, self.conv1(x).relu_())
        out = batch_norm_(self.bn2, self.conv2(out))
        out.mul_(self.se.fc(out.mean(dim=(2, 3)))[:, :, None, None])
        residual = x if self.downsample is None else batch_norm_(self.downsample[1], self.downsample[0](x))
        return out.add_(residual).relu_()


class ResNetSE34V2(nn.Module):
    """ResNetSE34V2 with attentive statistics pooling ("ASP") on log-mel input; output ``[B, n_out]``."""

    def __init__(self, n_out: int = 512, n_mels: int = 64, log_input: bool = True,
                 num_filters: tuple[int, ...] = (32, 64, 128, 256), layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.log_input = log_input
        self._in_channels = num_filters[0]

        self.conv1 = nn.Conv2d(1, num_filters[0], kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(num_filters[0], layers[0], stride=1)
        self.layer2 = self._make_layer(num_filters[1], layers[1], stride=2)
        self.layer3 = self._make_layer(num_filters[2], layers[2], stride=2)
        self.layer4 = self._make_layer(num_filters[3], layers[3], stride=2)

        self.instancenorm = nn.InstanceNorm1d(n_mels)
        self.torchfb = nn.Sequential(
            PreEmphasis(),
            MelSpectrogram(SAMPLE_RATE_HZ, n_fft=512, win_length=400, hop_length=160, n_mels=n_mels),
        )
        pooled_channels = num_filters[3] * (n_mels // 8)
        self.attention = nn.Sequential(
            nn.Conv1d(pooled_channels, 128, kernel_size=1),
            nn.ReLU(),
            nn.BatchNorm1d(128),
            nn.Conv1d(128, pooled_channels, kernel_size=1),
            nn.Softmax(dim=2),
        )
        self.fc = nn.Linear(pooled_channels * 2, n_out)

    def _make_layer(self, channels: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._in_channels != channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        stack = [SEBasicBlock(self._in_channels, channels, stride, downsample)]
        self._in_channels = channels
        stack += [SEBasicBlock(channels, channels) for _ in range(1, blocks)]
        return nn.Sequential(*stack)

    def features(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Instance-normalised log-mel features ``[B, 1, n_mels, frames]`` of ``[B, samples]`` audio, in float32."""
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            mel = self.torchfb(waveforms.float()) + 1e-6  # [B, n_mels, frames]
            if self.log_input:
                mel = mel.log()
            return self.instancenorm(mel).unsqueeze(1)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = self.features(waveforms)
        x = batch_norm_(self.bn1, self.conv1(x).relu_()) if in_place_ok(self) else self.bn1(self.relu(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, 256, n_mels / 8, frames / 8]
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, 256 * n_mels / 8, frames / 8]
        weights = self.attention(x)
        mean = torch.sum(x * weights, dim=2)
        std = torch.sqrt((torch.sum(x * x * weights, dim=2) - mean * mean).clamp(min=1e-5))
        return self.fc(torch.cat((mean, std), dim=1))  # [B, n_out]


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bare keys from either published format: strip ``module.`` and ``__S__.``, drop the loss's ``__L__.`` keys."""
    converted = {}
    for key, value in state.items():
        name = key
        if name.startswith(_PARALLEL_PREFIX):
            name = name[len(_PARALLEL_PREFIX):]
        if name.startswith(_LOSS_PREFIX):
            continue
        if name.startswith(_SPEAKER_PREFIX):
            name = name[len(_SPEAKER_PREFIX):]
            if name.startswith(_PARALLEL_PREFIX):
                name = name[len(_PARALLEL_PREFIX):]
        converted[name] = value
    return converted


def load_resnetse34(weights_dir: str | Path | None, file: str = "speakernet.model") -> ResNetSE34V2:
    """ResNetSE34V2 (512-d, ASP, 64 log-mels) strictly loaded from ``file`` or another published resnetse34 file."""
    found = find_network_checkpoint("resnetse34", file, weights_dir)
    model = ResNetSE34V2(n_out=512, n_mels=64, log_input=True)
    load_checkpoint(model, found, weights_dir, convert=convert_state_dict,
                    probe=lambda m: m(probe_input(1, SAMPLE_RATE_HZ // 2, scale=0.1)))  # 0.5 s of noise
    return model.eval()
