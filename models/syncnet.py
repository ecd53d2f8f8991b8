"""SyncNet (Chung & Zisserman, "Out of time", 2016): the network only, plus its loader.

Layer indices match the published ``syncnet_v2.model`` (joonson/syncnet_python) and av-diarization's
``syncnet.model``, so both load strictly (keys and shapes: ``../shared/ckpt-manifests/syncnet.json``).

Inputs, as syncnet_python's ``SyncNetInstance.evaluate`` feeds them:

- audio: ``[N, 1, 13, 20]`` float32, 13 MFCC coefficients x 20 frames at 100 Hz (0.2 s);
- lips: ``[N, 3, 5, 224, 224]`` float32, 5 frames of 224 x 224. The original reads the frames with
  ``cv2.imread`` and stacks them unchanged, so channel 0 is **blue** (BGR order) and values are raw
  0..255 with no mean subtraction or scaling. The checkpoints' published results (offset 3, min dist
  5.353, confidence 10.021 on syncnet_python's ``example.avi``) were produced that way, so we feed the
  network exactly that and do not "fix" it to RGB or [0, 1]: doing so would change every distance.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from models.inference import batch_norm_, in_place_ok
from models.loader import find_network_checkpoint, load_checkpoint, probe_input

EMBEDDING_DIM = 1024
WINDOW_FRAMES = 5  # the lip stream's first 3-D convolution spans 5 frames
MFCC_PER_FRAME = 4  # 100 Hz MFCC frames per 25 fps video frame: the audio stream sees 5 x 4 = 20 of them
CROP_SIZE_PX = 224


def _audio_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
        nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
        nn.BatchNorm2d(192),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
        nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),
        nn.BatchNorm2d(384),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),
        nn.BatchNorm2d(256),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),
        nn.BatchNorm2d(256),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
        nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),
        nn.BatchNorm2d(512),
        nn.ReLU(),
    )


def _lip_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
        nn.BatchNorm3d(96),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
        nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
        nn.BatchNorm3d(256),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        nn.BatchNorm3d(256),
        nn.ReLU(inplace=True),
        nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        nn.BatchNorm3d(256),
        nn.ReLU(inplace=True),
        nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        nn.BatchNorm3d(256),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
        nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),
        nn.BatchNorm3d(512),
        nn.ReLU(inplace=True),
    )


def _fc() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, EMBEDDING_DIM))


def _is_identity_pool(layer: nn.Module) -> bool:
    """A 1 x 1 max-pool with stride 1 and no padding (the audio stream's fourth layer): its output is its input."""
    return (isinstance(layer, nn.MaxPool2d) and _pair(layer.kernel_size) == (1, 1) and _pair(layer.stride) == (1, 1)
            and _pair(layer.padding) == (0, 0) and not layer.ceil_mode)


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def separable_max_pool2d(x: torch.Tensor, layer: nn.MaxPool2d) -> torch.Tensor:
    """``layer(x)`` for a channels-first ``[N, C, H, W]`` tensor, as a maximum over rows then over columns.

    A maximum is exact whatever the order, so the values are ``layer(x)``'s bit for bit (NaN propagates as in
    ``max_pool2d``); on the CPU torch's channels-first max-pool runs about 6x slower than these strided
    ``torch.maximum`` calls on the audio stream's small planes (13 x 20).
    """
    (kh, kw), (sh, sw), (ph, pw) = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding)
    if ph or pw:  # max_pool2d's padding never wins the maximum
        x = torch.nn.functional.pad(x, (pw, pw, ph, ph), value=-math.inf)
    out_h, out_w = (x.shape[-2] - kh) // sh + 1, (x.shape[-1] - kw) // sw + 1
    rows = x[..., 0:(out_h - 1) * sh + 1:sh, :]
    for i in range(1, kh):
        rows = torch.maximum(rows, x[..., i:i + (out_h - 1) * sh + 1:sh, :])
    out = rows[..., 0:(out_w - 1) * sw + 1:sw]
    for j in range(1, kw):
        out = torch.maximum(out, rows[..., j:j + (out_w - 1) * sw + 1:sw])
    return out.contiguous()


def _plain_max_pool2d(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``separable_max_pool2d`` computes ``layer(x)``: a 2-D max-pool without dilation, ceil mode or
    indices on a channels-first tensor (channels-last tensors keep torch's own kernel, which is fast there)."""
    return (isinstance(layer, nn.MaxPool2d) and x.dim() == 4 and x.is_contiguous() and not layer.ceil_mode
            and not layer.return_indices and _pair(layer.dilation) == (1, 1))


def run_in_place(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)`` in inference, with each eval-mode batch norm and ReLU writing over its input.

    The values are bit for bit ``layers(x)``'s, by four exact rewrites:

    - batch norm and ReLU write over their input (the same kernels, ``native_batch_norm.out`` and ``relu_``):
      each convolution's output is the only activation of its size alive, so the lip stream's first layer holds
      one 292 MB block per batch of 64 windows instead of two, and maps one instead of three (fewer page faults);
    - a ReLU followed by a max-pool runs after it, on the pooled tensor (a quarter of the size): both are
      maxima, ``max(0, max(a)) == max(max(0, a))``;
    - the audio stream's 1 x 1 max-pool with stride 1 is skipped (it copies its input);
    - channels-first 2-D max-pools are ``separable_max_pool2d``.

    Under autograd or in training mode it is ``layers(x)``.
    """
    if not in_place_ok(layers):
        return layers(x)
    steps = list(layers)
    k = 0
    while k < len(steps):
        layer = steps[k]
        following = steps[k + 1] if k + 1 < len(steps) else None
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
            batch_norm_(layer, x)
        elif isinstance(layer, nn.ReLU) and isinstance(following, (nn.MaxPool2d, nn.MaxPool3d)):
            x = _max_pool(following, x).relu_()
            k += 1
        elif isinstance(layer, nn.ReLU):
            x = x.relu_()
        elif isinstance(layer, (nn.MaxPool2d, nn.MaxPool3d)):
            x = _max_pool(layer, x)
        else:
            x = layer(x)
        k += 1
    return x


def _max_pool(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if _is_identity_pool(layer):
        return x
    if _plain_max_pool2d(layer, x):
        return separable_max_pool2d(x, layer)
    return layer(x)


class SyncNet(nn.Module):
    """The two-stream SyncNet: MFCC windows and 5-frame lip windows to 1024-d embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = _audio_cnn()
        self.netfcaud = _fc()
        self.netfclip = _fc()
        self.netcnnlip = _lip_cnn()

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``[N, 1, 13, 20]`` MFCC windows -> ``[N, 1024]`` audio embeddings."""
        mid = run_in_place(self.netcnnaud, mfcc)  # [N, 512, 1, 1]
        return self.netfcaud(mid.reshape(mid.shape[0], -1))

    def forward_lipfeat(self, frames: torch.Tensor) -> torch.Tensor:
        """``[N, 3, 5, 224, 224]`` lip windows -> ``[N, 512]`` convolutional features (syncnet_python's name)."""
        mid = run_in_place(self.netcnnlip, frames)  # [N, 512, 1, 1, 1]
        return mid.reshape(mid.shape[0], -1)

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """``[N, 3, 5, 224, 224]`` lip windows -> ``[N, 1024]`` lip embeddings."""
        return self.netfclip(self.forward_lipfeat(frames))


def syncnet_checkpoint(weights_dir: str | Path | None, file: str) -> str:
    """The checkpoint file name to use: ``file`` if present, else the other published SyncNet file."""
    return find_network_checkpoint("syncnet", file, weights_dir)


def _probe(model: SyncNet) -> tuple[torch.Tensor, torch.Tensor]:
    """Both streams on one seeded window: what ``load_checkpoint`` checks for finite output."""
    return (model.forward_aud(probe_input(1, 1, 13, 20, scale=10.0)),
            model.forward_lip(probe_input(1, 3, 5, 224, 224, scale=50.0)))


def load_syncnet(weights_dir: str | Path | None, file: str, device: torch.device | str = "cpu") -> SyncNet:
    """SyncNet with the weights of ``file`` (strict keys and shapes), in eval mode on ``device``.

    Raises CheckpointError when the file is missing, unreadable or does not fit the network.
    """
    model = SyncNet()
    load_checkpoint(model, file, weights_dir, probe=_probe)
    return model.eval().to(device)
