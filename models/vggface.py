"""VGGFace2 ResNet-50 face embedding (av-diarization's ``faceembedding.model``): 2048-d average-pooled features.

``include_top=False`` returns the pooled map before the classifier; the classifier (``fc``, 8631 VGGFace2
identities) still exists so that the published state dict loads strictly.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from models.loader import find_network_checkpoint, load_checkpoint, probe_input


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck; the stride sits on the first 1x1 convolution (Caffe-style, as the original)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class VGGFaceResNet50(nn.Module):
    """ResNet-50 for 224 x 224 input; ``forward`` gives ``[B, 2048, 1, 1]`` without the top, logits with it."""

    def __init__(self, num_classes: int = 8631, include_top: bool = False,
                 layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.include_top = include_top
        self._in_channels = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def _make_layer(self, channels: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._in_channels != channels * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, channels * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels * Bottleneck.expansion),
            )
        stack = [Bottleneck(self._in_channels, channels, stride, downsample)]
        self._in_channels = channels * Bottleneck.expansion
        stack += [Bottleneck(self._in_channels, channels) for _ in range(1, blocks)]
        return nn.Sequential(*stack)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # [B, 64, 56, 56] for 224 x 224 input
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, 2048, 7, 7]
        x = self.avgpool(x)  # [B, 2048, 1, 1]
        if not self.include_top:
            return x
        return self.fc(x.flatten(1))


def load_vggface(weights_dir: str | Path | None, file: str = "faceembedding.model") -> VGGFaceResNet50:
    """VGGFace2 ResNet-50 (8631 classes, no top) strictly loaded from ``file``."""
    found = find_network_checkpoint("vggface2", file, weights_dir)
    model = VGGFaceResNet50(num_classes=8631, include_top=False)
    load_checkpoint(model, found, weights_dir, probe=lambda m: m(probe_input(1, 3, 224, 224, scale=50.0)))
    return model.eval()
