"""What the trainer needs to know about each sync model: its network, front end, loss and checkpoint format.

Each adapter reuses the model's stage-2 front end, so a model is trained on exactly the inputs stage 2 feeds
it, and saves in the published format stage 2 loads:

- ``syncnet``: MFCC windows (``pipeline.sync.syncnet.mfcc_windows``) and raw 0..255 BGR lip windows
  (``pipeline.sync.syncnet.lip_windows``); the contrastive loss of "Out of time" (Chung & Zisserman 2016, §3) on the
  Euclidean distance ``d`` of the 1024-d embeddings, ``y d^2 + (1 - y) max(margin - d, 0)^2``; saved as a
  bare state dict with the published keys (``syncnet.model``).
- ``wav2lip``: Wav2Lip's expert (``pipeline/sync/wav2lip.py``): 96 x 96 face crops cut from the video with the
  track's boxes, lower half, and 16-frame mel windows; binary cross-entropy on the cosine similarity of the
  embeddings (Wav2Lip ``color_syncnet_train.py`` ``cosine_loss``); saved as Wav2Lip's training checkpoint
  (``state_dict``, ``optimizer``, ``global_step``, ``global_epoch``) under the configured
  ``wav2lip.checkpoint`` name (``lipsync_expert.pth``).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.loader import load_strict, read_state_dict
from pipeline.cache import Cache
from pipeline.errors import InputError
from pipeline.sync.syncnet import SyncSettings, compute_mfcc, count_windows, lip_windows, mfcc_windows
from pipeline.train.data import TrackData, WindowBatch, decode_crops


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
        self.margin = cfg.train.margin
        self._mfcc: dict[int, torch.Tensor] = {}
        self._features: dict[tuple[str, int, int], torch.Tensor] | None = None  # frozen trunks: (stream, track, start)

    def cache_trunk_features(self) -> None:
        """Remember each window's convolutional features: with frozen trunks (in eval mode) they never change,
        so every window's trunk runs once and later steps cost only the fully connected heads."""
        self._features = {}

    def build(self) -> nn.Module:
        from models.syncnet import SyncNet

        return SyncNet()

    def convolutions(self, model: nn.Module) -> list[nn.Module]:
        """The convolutional trunks (``train.freeze_convolutions`` keeps them; the fully connected heads learn)."""
        return [model.netcnnlip, model.netcnnaud]

    def load_init(self, model: nn.Module, path: Path) -> None:
        """Strictly load a published (or earlier trained) SyncNet checkpoint to fine-tune."""
        load_strict(model, read_state_dict(path), path)

    def state_to_save(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> dict[str, torch.Tensor]:
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

    def _cached_trunk(self, stream: str, keys: list[tuple[int, int]], trunk: nn.Module,
                      inputs: Callable[[list[int]], torch.Tensor], device: torch.device) -> torch.Tensor:
        """``[len(keys), 512]`` trunk features, computing only those not seen before (frozen trunks only)."""
        assert self._features is not None
        missing = [i for i, key in enumerate(keys) if (stream, *key) not in self._features]
        if missing:
            with torch.no_grad():
                feats = trunk(inputs(missing))
            for i, feat in zip(missing, feats.reshape(len(missing), -1)):
                self._features[(stream, *keys[i])] = feat
        return torch.stack([self._features[(stream, *key)] for key in keys]).to(device)

    def loss(self, model: nn.Module, batch: WindowBatch, device: torch.device) -> torch.Tensor:
        """The contrastive loss of the batch's lip windows against their audio windows."""
        labels = torch.from_numpy(batch.labels).to(device)
        if self._features is None:
            lip_emb = model.forward_lip(self.lip_input(batch, device))  # [B, 1024]
            aud_emb = model.forward_aud(self.audio_input(batch, device))  # [B * K, 1024]
        else:
            lip_keys = [(id(t), int(s)) for t, s in zip(batch.tracks, batch.lip_starts)]
            aud_pairs = [(t, int(s)) for row_t, row_s in zip(batch.audio_tracks, batch.audio_starts)
                         for t, s in zip(row_t, row_s)]
            lip_feat = self._cached_trunk("lip", lip_keys, model.netcnnlip, lambda idx: self.lip_input(
                WindowBatch([batch.tracks[i] for i in idx], batch.lip_starts[idx], [], np.zeros((0, 0)),
                            np.zeros((0, 0))), device), device)
            aud_feat = self._cached_trunk("audio", [(id(t), s) for t, s in aud_pairs], model.netcnnaud,
                                          lambda idx: torch.cat([mfcc_windows(self._track_mfcc(aud_pairs[i][0]),
                                                                              aud_pairs[i][1], aud_pairs[i][1] + 1,
                                                                              self.settings) for i in idx]).to(device),
                                          device)
            lip_emb, aud_emb = model.netfclip(lip_feat), model.netfcaud(aud_feat)
        aud_emb = aud_emb.reshape(labels.shape[0], labels.shape[1], -1)  # [B, K, 1024]
        return contrastive_loss(lip_emb.float(), aud_emb.float(), labels, self.margin)


def bce_on_cosine(face: torch.Tensor, audio: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Wav2Lip's ``cosine_loss``: binary cross-entropy of the cosine similarity (the sync probability) of the
    expert's unit, non-negative embeddings. ``face`` [B, D], ``audio`` [B, K, D], ``labels`` [B, K]."""
    prob = F.cosine_similarity(face[:, None, :].expand_as(audio), audio, dim=-1)  # [B, K], in [0, 1]
    terms = F.binary_cross_entropy(prob.clamp(0.0, 1.0), labels, reduction="none")  # log clamped at -100 as BCELoss
    return balanced_mean(terms, labels)


class Wav2LipAdapter:
    """Wav2Lip's expert: lower halves of 96 x 96 face crops cut from the video with the track's boxes, and
    16-frame mel windows (``pipeline/sync/wav2lip.py``, stage 2's front end for ``sync.model: wav2lip``)."""

    name = "wav2lip"

    def __init__(self, cfg: Any) -> None:
        from pipeline.sync.wav2lip import ExpertSettings

        self.settings = ExpertSettings.from_config(cfg)
        self.checkpoint_file = cfg.wav2lip.checkpoint  # the name stage 2 loads (lipsync_expert.pth)
        self._mels: dict[int, np.ndarray] = {}

    @property
    def sample_rate_hz(self) -> int:
        return self.settings.sample_rate_hz

    def build(self) -> nn.Module:
        from models.wav2lip import LipSyncExpert

        return LipSyncExpert()

    def convolutions(self, model: nn.Module) -> list[nn.Module]:
        raise InputError("train.freeze_convolutions does not apply to the Wav2Lip expert: it is convolutions only")

    def load_init(self, model: nn.Module, path: Path) -> None:
        """Strictly load a published expert (``state_dict`` inside, ``module.`` prefixes stripped)."""
        from models.wav2lip import strip_module_prefix

        load_strict(model, strip_module_prefix(read_state_dict(path)), path)

    def state_to_save(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> dict[str, Any]:
        """The published format: ``state_dict``, ``optimizer``, ``global_step``, ``global_epoch`` (Wav2Lip's
        ``save_checkpoint``)."""
        return {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "global_step": int(step), "global_epoch": 0}

    def track_frames(self, cache: Cache, tracks: list[dict]) -> list[np.ndarray]:
        """Each track's 96 x 96 face crops, cut from the video stage 1 read as stage 2 cuts them."""
        from pipeline import media
        from pipeline.formats import MEDIA_FILE, RUN_PIPELINE
        from pipeline.sync.base import source_video
        from pipeline.sync.wav2lip import face_crop

        source = source_video(cache, cache.require(MEDIA_FILE, RUN_PIPELINE), "the Wav2Lip expert cuts its faces")
        firsts = [int(t["track"]["frame"][0]) for t in tracks]
        boxes = [np.asarray(t["track"]["bbox"], dtype=np.float64) for t in tracks]
        crops: list[list[np.ndarray]] = [[] for _ in tracks]
        last_frame = max((f + len(b) - 1 for f, b in zip(firsts, boxes)), default=-1)
        frames = media.iter_frames(source, self.settings.frame_rate_hz)
        try:
            for frame_idx, frame in enumerate(frames):
                if frame_idx > last_frame:
                    break
                for idx, (first, track_boxes) in enumerate(zip(firsts, boxes)):
                    if 0 <= frame_idx - first < len(track_boxes):
                        crops[idx].append(face_crop(frame, track_boxes[frame_idx - first], self.settings.box_expand))
        finally:
            frames.close()
        return [np.stack(c) if c else np.zeros((0, 96, 96, 3), np.uint8) for c in crops]

    def _track_mels(self, audio: np.ndarray) -> np.ndarray:
        from pipeline.sync.wav2lip import melspectrogram

        key = id(audio)
        if key not in self._mels:
            self._mels[key] = melspectrogram(audio)  # [80, M]
        return self._mels[key]

    def count_windows(self, num_frames: int, audio: np.ndarray) -> int:
        """Stage 2's windows: frames with a whole 16-frame mel window and 5 video frames."""
        from pipeline.sync.wav2lip import count_audio_windows

        return max(0, min(count_audio_windows(self._track_mels(audio).shape[1], self.settings.frame_rate_hz),
                          num_frames - 4))

    def lip_input(self, batch: WindowBatch, device: torch.device) -> torch.Tensor:
        """``[B, 15, 48, 96]`` face windows in [0, 1], exactly as stage 2 builds them."""
        from pipeline.sync.wav2lip import face_windows

        return torch.cat([face_windows(torch.from_numpy(t.frames[s:s + 5])) for t, s in
                          zip(batch.tracks, batch.lip_starts)]).to(device)

    def audio_input(self, batch: WindowBatch, device: torch.device) -> torch.Tensor:
        """``[B * K, 1, 80, 16]`` mel windows, exactly as stage 2 builds them."""
        from pipeline.sync.wav2lip import mel_windows

        windows = [mel_windows(self._track_mels(t.audio), [int(s)], self.settings.frame_rate_hz)
                   for row_t, row_s in zip(batch.audio_tracks, batch.audio_starts) for t, s in zip(row_t, row_s)]
        return torch.from_numpy(np.concatenate(windows)).to(device)

    def loss(self, model: nn.Module, batch: WindowBatch, device: torch.device) -> torch.Tensor:
        """Binary cross-entropy of the batch's face windows against their audio windows."""
        labels = torch.from_numpy(batch.labels).to(device)
        face_emb = model.forward_face(self.lip_input(batch, device))  # [B, 512]
        aud_emb = model.forward_audio(self.audio_input(batch, device)).reshape(labels.shape[0], labels.shape[1], -1)
        return bce_on_cosine(face_emb.float(), aud_emb.float(), labels)


ADAPTERS: dict[str, Callable[[Any], Any]] = {"syncnet": SyncNetAdapter, "wav2lip": Wav2LipAdapter}


def make_adapter(model_name: str, cfg: Any):
    """The adapter of ``model_name``; InputError naming the choices for an unknown one."""
    if model_name not in ADAPTERS:
        raise InputError(f"cannot train sync model {model_name!r}: choose one of {', '.join(ADAPTERS)}")
    return ADAPTERS[model_name](cfg)
