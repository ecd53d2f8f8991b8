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

from pathlib import Path

import torch
from torch import nn

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


def run_in_place(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)`` in inference, with each eval-mode batch norm and ReLU writing over its input.

    The values are bit for bit ``layers(x)``'s (the same kernels, ``native_batch_norm.out`` and ``relu_``), but
    each convolution's output is the only activation of its size alive: the lip stream's first layer holds one
    292 MB block per batch of 64 windows instead of two, and maps one instead of three (fewer page faults).
    Under autograd or in training mode it is ``layers(x)``.
    """
    if torch.is_grad_enabled() or layers.training:
        return layers(x)
    no_stats = x.new_empty(0)
    for layer in layers:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
            torch.ops.aten.native_batch_norm.out(x, layer.weight, layer.bias, layer.running_mean, layer.running_var,
                                                 False, 0.0, layer.eps, out=x, save_mean=no_stats,
                                                 save_invstd=no_stats)
        elif isinstance(layer, nn.ReLU):
            x = x.relu_()
        else:
            x = layer(x)
    return x


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
