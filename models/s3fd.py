"""S3FD face detector network (Zhang et al. 2017), as published with syncnet_python and av-diarization.

The state dict matches ``sfd_face.pth`` and ``s3fd.model`` key for key (``../shared/ckpt-manifests/s3fd.json``).
The network reads a float batch ``[B, 3, H, W]`` of RGB pixels minus ``INPUT_MEAN_RGB`` (the input both
references end up feeding) and returns, per anchor, a box regression and a face probability. Anchor geometry
(``prior_boxes``) is part of the network; box decoding and suppression live in ``pipeline.detect``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.loader import find_network_checkpoint, load_checkpoint, probe_input

INPUT_MEAN_RGB = (123.0, 117.0, 104.0)  # subtracted from R, G, B (0..255) before the network
PRIOR_STEPS_PX = (4, 8, 16, 32, 64, 128)  # anchor spacing of the 6 detection levels, input pixels
PRIOR_SIZES_PX = (16, 32, 64, 128, 256, 512)  # square anchor side of the 6 levels, input pixels
BOX_VARIANCES = (0.1, 0.2)  # regression scale of the centre and of the log size (SSD encoding)
NETWORK_NAME = "s3fd"

# VGG16 up to fc7 as (kind, out_channels); ModuleList indices follow the published keys vgg.0 ... vgg.33.
_VGG_LAYOUT = (
    ("conv", 64), ("relu", 0), ("conv", 64), ("relu", 0), ("pool", 0),
    ("conv", 128), ("relu", 0), ("conv", 128), ("relu", 0), ("pool", 0),
    ("conv", 256), ("relu", 0), ("conv", 256), ("relu", 0), ("conv", 256), ("relu", 0), ("pool_ceil", 0),
    ("conv", 512), ("relu", 0), ("conv", 512), ("relu", 0), ("conv", 512), ("relu", 0), ("pool", 0),
    ("conv", 512), ("relu", 0), ("conv", 512), ("relu", 0), ("conv", 512), ("relu", 0), ("pool", 0),
    ("fc6", 1024), ("relu", 0), ("fc7", 1024), ("relu", 0),
)
_VGG_TAPS = (16, 23, 30)  # vgg indices after conv3_3, conv4_3 and conv5_3 (+ ReLU)
_SOURCE_CHANNELS = (256, 512, 512, 1024, 512, 256)  # channels of the 6 detection levels


def _build_vgg() -> nn.ModuleList:
    layers: list[nn.Module] = []
    channels = 3
    for kind, out in _VGG_LAYOUT:
        if kind == "conv":
            layers.append(nn.Conv2d(channels, out, 3, 1, padding=1))
        elif kind == "fc6":  # dilated 3x3 replacing VGG's fc6
            layers.append(nn.Conv2d(channels, out, 3, 1, padding=6, dilation=6))
        elif kind == "fc7":
            layers.append(nn.Conv2d(channels, out, 1, 1))
        elif kind == "relu":
            layers.append(nn.ReLU(inplace=True))
        else:
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=kind == "pool_ceil"))
        channels = out or channels
    return nn.ModuleList(layers)


class L2Norm(nn.Module):
    """Per-position L2 normalisation over channels with a learnt per-channel scale."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.eps = 1e-10
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the same operations, in the same order, as the published network (bit-identical outputs)
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return self.weight.view(1, -1, 1, 1) * torch.div(x, norm)


class S3FD(nn.Module):
    """S3FD: VGG16 + L2Norm on conv3_3/4_3/5_3 + two extra stages, 6 levels of 1 anchor per position.

    ``forward(x)`` with ``x`` float ``[B, 3, H, W]`` (RGB minus ``INPUT_MEAN_RGB``) returns
    ``(loc, face_prob)``: ``loc`` float ``[B, N, 4]`` raw SSD regressions and ``face_prob`` float ``[B, N]``
    softmax face scores, ``N`` anchors ordered level by level, then row by row, then column by column
    (the order of ``prior_boxes(H, W)``). The first level's background score is the max of 3 outputs
    ("max-out background label").
    """

    def __init__(self) -> None:
        super().__init__()
        self.vgg = _build_vgg()
        self.L2Norm3_3 = L2Norm(256, 10.0)
        self.L2Norm4_3 = L2Norm(512, 8.0)
        self.L2Norm5_3 = L2Norm(512, 5.0)
        self.extras = nn.ModuleList([
            nn.Conv2d(1024, 256, 1, 1),
            nn.Conv2d(256, 512, 3, 2, padding=1),
            nn.Conv2d(512, 128, 1, 1),
            nn.Conv2d(128, 256, 3, 2, padding=1),
        ])
        self.loc = nn.ModuleList([nn.Conv2d(c, 4, 3, 1, padding=1) for c in _SOURCE_CHANNELS])
        conf_outputs = (4,) + (2,) * (len(_SOURCE_CHANNELS) - 1)  # level 0: 3 background + 1 face
        self.conf = nn.ModuleList(
            [nn.Conv2d(c, n, 3, 1, padding=1) for c, n in zip(_SOURCE_CHANNELS, conf_outputs)]
        )

    def _sources(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 6 feature maps the heads read."""
        sources = []
        norms = (self.L2Norm3_3, self.L2Norm4_3, self.L2Norm5_3)
        start = 0
        for stop, norm in zip(_VGG_TAPS, norms):
            for k in range(start, stop):
                x = self.vgg[k](x)
            sources.append(norm(x))
            start = stop
        for k in range(start, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, layer in enumerate(self.extras):
            x = F.relu(layer(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)
        return sources

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        locs, confs = [], []
        for level, source in enumerate(self._sources(x)):
            loc = self.loc[level](source)
            conf = self.conf[level](source)
            if level == 0:
                background, _ = torch.max(conf[:, 0:3], dim=1, keepdim=True)
                conf = torch.cat((background, conf[:, 3:]), dim=1)
            locs.append(loc.permute(0, 2, 3, 1).contiguous().view(batch, -1))
            confs.append(conf.permute(0, 2, 3, 1).contiguous().view(batch, -1))
        loc = torch.cat(locs, 1).view(batch, -1, 4)  # [B, N, 4]
        conf = torch.cat(confs, 1).view(batch, -1, 2)  # [B, N, 2] background, face
        face_prob = torch.softmax(conf, dim=-1)[..., 1]  # [B, N]
        return loc, face_prob


def feature_map_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(rows, cols) of the 6 detection levels for an input of ``height`` x ``width`` pixels."""

    def floor_half(n: int) -> int:  # 2x2 max-pool, stride 2
        return n // 2

    def ceil_half(n: int) -> int:  # ceil-mode max-pool, or 3x3 stride-2 conv with padding 1
        return (n + 1) // 2

    steps = (
        lambda n: floor_half(floor_half(n)),  # conv3_3: after pool1, pool2
        ceil_half,  # conv4_3: after pool3 (ceil mode)
        floor_half,  # conv5_3: after pool4
        floor_half,  # fc7: after pool5 (fc6/fc7 keep the size)
        ceil_half,  # extras stage 1 (stride-2 conv)
        ceil_half,  # extras stage 2 (stride-2 conv)
    )
    sizes = []
    rows, cols = height, width
    for step in steps:
        rows, cols = step(rows), step(cols)
        sizes.append((rows, cols))
    return sizes


def prior_boxes(height: int, width: int) -> np.ndarray:
    """Anchors of an input of ``height`` x ``width`` pixels: float32 ``[N, 4]`` (cx, cy, w, h) over the input size.

    Computed in float64 then rounded to float32, with the published arithmetic, so the values are identical.
    """
    levels = []
    for (rows, cols), step, size in zip(feature_map_sizes(height, width), PRIOR_STEPS_PX, PRIOR_SIZES_PX):
        cells_x = width / step  # anchors per input width, fractional
        cells_y = height / step
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) / cells_y, (np.arange(cols) + 0.5) / cells_x, indexing="ij")
        anchors = np.empty((rows * cols, 4), dtype=np.float64)
        anchors[:, 0] = cx.ravel()
        anchors[:, 1] = cy.ravel()
        anchors[:, 2] = size / width
        anchors[:, 3] = size / height
        levels.append(anchors)
    return np.concatenate(levels).astype(np.float32)


def load_s3fd(weights_dir: str | Path | None, file: str = "s3fd.model") -> S3FD:
    """An S3FD on the CPU in eval mode, loaded strictly from ``file`` (or the other published S3FD file)."""
    file = find_network_checkpoint(NETWORK_NAME, file, weights_dir)
    net = S3FD()
    load_checkpoint(net, file, weights_dir, probe=lambda m: m(probe_input(1, 3, 64, 64, scale=50.0)))
    return net.eval()


__all__ = [
    "BOX_VARIANCES",
    "INPUT_MEAN_RGB",
    "PRIOR_SIZES_PX",
    "PRIOR_STEPS_PX",
    "S3FD",
    "feature_map_sizes",
    "load_s3fd",
    "prior_boxes",
]
