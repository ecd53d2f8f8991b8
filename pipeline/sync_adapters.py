"""What the trainer needs to know about each sync model: its network, front end, loss and checkpoint format.

Each adapter reuses the model's stage-2 front end, so a model is trained on exactly the inputs stage 2 feeds
it, and saves in the published format stage 2 loads:

- ``syncnet``: MFCC windows (``pipeline.sync.mfcc_windows``) and raw 0..255 BGR lip windows
  (``pipeline.sync.lip_windows``); the contrastive loss of "Out of time" (Chung & Zisserman 2016, §3) on the
  Euclidean distance ``d`` of the 1024-d embeddings, ``y d^2 + (1 - y) max(margin - d, 0)^2``; saved as a
  bare state dict with the published keys (``syncnet.model``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.loader import load_strict, read_state_dict
from pipeline.errors import InputError
from pipeline.cache import Cache
from pipeline.sync import SyncSettings, compute_mfcc, count_windows, lip_windows, mfcc_windows
from pipeline.train_data import TrackData, WindowBatch, decode_crops


def balanced_mean(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of the positive terms plus mean of the negative terms, halved: positives and negatives weigh the
    same whatever their counts (the papers sample them 1:1)."""
    pos, neg = labels > 0.5, labels <= 0.5
    return 0.5 * (values[pos].mean() + values[neg].mean())


def contrastive_loss(lip: torch.Tensor, audio: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """"Out of time"'s contrastive loss. ``lip`` [B, D], ``audio`` [B, K, D], ``labels`` [B, K] (1: in sync)."""
    dist = F.pairwise_distance(lip[:, None, :].expand_as(audio).reshape(-1, lip.shape[1]),
                               audio.reshape(-1, audio.shape[2])).reshape(labels.shape)  # as stage 2 measures
    terms = labels * dist.pow(2) + (1 - labels) * torch.clamp(margin - dist, min=0).pow(2)
    return balanced_mean(terms, labels)


class SyncNetAdapter:
    """The original SyncNet: 5 frames of 224 x 224 BGR lips and 13 x 20 MFCC windows."""

    name = "syncnet"
    checkpoint_file = "syncnet.model"  # the name stage 2 loads by default (configs/default.yaml syncnet.checkpoint)

    def __init__(self, cfg: Any) -> None:
        self.settings = SyncSettings.from_config(cfg)
        self.margin = float(cfg.train.margin)
        self._mfcc: dict[int, torch.Tensor] = {}

    def build(self) -> nn.Module:
        from models.syncnet import SyncNet

        return SyncNet()

    def load_init(self, model: nn.Module, path: Path) -> None:
        """Strictly load a published (or earlier trained) SyncNet checkpoint to fine-tune."""
        load_strict(model, read_state_dict(path), path)

    def state_to_save(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The published format: a bare state dict with syncnet_python's keys, on the CPU."""
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    @property
    def sample_rate_hz(self) -> int:
        return self.settings.sample_rate_hz

    def track_frames(self, cache: Cache, tracks: list[dict]) -> list[np.ndarray]:
        """Each track's 224 x 224 lossless crops, the frames stage 2 feeds SyncNet."""
        return [decode_crops(cache, idx) for idx in range(len(tracks))]

    def count_windows(self, num_frames: int, audio: np.ndarray) -> int:
        """Stage 2's windows: ``min(num_frames, samples // 640) - 5``."""
        return count_windows(num_frames, len(audio), self.settings)

    def _track_mfcc(self, track: TrackData) -> torch.Tensor:
        key = id(track)
        if key not in self._mfcc:
            self._mfcc[key] = torch.from_numpy(compute_mfcc(track.audio, self.settings))  # [13, M]
        return self._mfcc[key]

    def lip_input(self, batch: WindowBatch, device: torch.device) -> torch.Tensor:
        """``[B, 3, 5, 224, 224]`` float32 lip windows, exactly as stage 2 builds them."""
        win = self.settings.window_frames
        frames = np.stack([t.frames[s:s + win] for t, s in zip(batch.tracks, batch.lip_starts)])  # [B, 5, H, W, 3]
        u8 = torch.from_numpy(frames).to(device)
        return torch.cat([lip_windows(clip, win, device.type == "cpu") for clip in u8])

    def audio_input(self, batch: WindowBatch, device: torch.device) -> torch.Tensor:
        """``[B * K, 1, 13, 20]`` MFCC windows, exactly as stage 2 builds them."""
        windows = [mfcc_windows(self._track_mfcc(t), int(s), int(s) + 1, self.settings)
                   for row_t, row_s in zip(batch.audio_tracks, batch.audio_starts) for t, s in zip(row_t, row_s)]
        return torch.cat(windows).to(device)

    def loss(self, model: nn.Module, lip: torch.Tensor, audio: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lip_emb = model.forward_lip(lip)  # [B, 1024]
        aud_emb = model.forward_aud(audio).reshape(labels.shape[0], labels.shape[1], -1)  # [B, K, 1024]
        return contrastive_loss(lip_emb.float(), aud_emb.float(), labels, self.margin)


ADAPTERS: dict[str, Callable[[Any], Any]] = {"syncnet": SyncNetAdapter}


def make_adapter(model_name: str, cfg: Any):
    """The adapter of ``model_name``; InputError naming the choices for an unknown one."""
    if model_name not in ADAPTERS:
        raise InputError(f"cannot train sync model {model_name!r}: choose one of {', '.join(ADAPTERS)}")
    return ADAPTERS[model_name](cfg)
