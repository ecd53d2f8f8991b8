"""Wav2Lip's lip-sync expert (``SyncNet_color``, Prajwal et al. 2020): the network only, plus its loader.

Layer indices match Rudrabha/Wav2Lip ``models/syncnet.py`` and ``models/conv.py``, so the published
``lipsync_expert.pth`` loads strictly (keys and shapes: ``../shared/ckpt-manifests/wav2lip_lipsync_expert.json``).
That file is a training checkpoint: the weights sit under ``state_dict`` (``models.loader`` unwraps it), and
copies saved from ``DataParallel`` prefix every key with ``module.`` (stripped here).

Inputs, as ``color_syncnet_train.py`` forms them:

- faces: ``[N, 15, 48, 96]`` float32 in [0, 1]: 5 consecutive 96 x 96 face crops read with ``cv2.imread``
  (so **BGR** channel order), concatenated on the channel axis frame by frame (channels ``3k .. 3k + 2`` are
  frame k), lower half only (rows 48..95);
- audio: ``[N, 1, 80, 16]`` float32: 16 frames (0.2 s) of Wav2Lip's 80-band mel spectrogram at 80 Hz
  (``MEL``, transcribed from Wav2Lip's ``hparams.py``).

Both streams end in 512-d embeddings, L2-normalised; their cosine similarity (in [0, 1], the embeddings
come out of a ReLU) is the expert's probability that the two are in sync (it was trained with binary
cross-entropy on it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.loader import load_checkpoint, probe_input

EMBEDDING_DIM = 512
FACE_SIZE_PX = 96  # hparams.img_size
WINDOW_FRAMES = 5  # syncnet_T: video frames per window
MEL_WINDOW_FRAMES = 16  # syncnet_mel_step_size: mel frames per window (0.2 s at 80 Hz)


@dataclass(frozen=True)
class MelParams:
    """Wav2Lip's ``hparams.py`` values that ``audio.melspectrogram`` uses (the expert was trained on them)."""

    sample_rate_hz: int = 16000
    n_fft: int = 800
    hop_samples: int = 200  # 12.5 ms: 80 mel frames per second
    win_samples: int = 800
    num_mels: int = 80
    fmin_hz: float = 55.0
    fmax_hz: float = 7600.0
    preemphasis: float = 0.97
    ref_level_db: float = 20.0
    min_level_db: float = -100.0
    max_abs_value: float = 4.0  # symmetric normalisation to [-4, 4], clipped

    @property
    def frames_per_s(self) -> float:
        """Mel frames per second (80)."""
        return self.sample_rate_hz / self.hop_samples


MEL = MelParams()


class Conv2dBlock(nn.Module):
    """Wav2Lip's ``Conv2d``: convolution, batch norm, optional residual add, ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride, padding, residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


def _face_encoder() -> nn.Sequential:
    c = Conv2dBlock
    return nn.Sequential(
        c(15, 32, kernel_size=(7, 7), stride=1, padding=3),
        c(32, 64, kernel_size=5, stride=(1, 2), padding=1),
        c(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
        c(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
        c(64, 128, kernel_size=3, stride=2, padding=1),
        c(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
        c(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
        c(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
        c(128, 256, kernel_size=3, stride=2, padding=1),
        c(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
        c(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
        c(256, 512, kernel_size=3, stride=2, padding=1),
        c(512, 512, kernel_size=3, stride=1, padding=1, residual=True),
        c(512, 512, kernel_size=3, stride=1, padding=1, residual=True),
        c(512, 512, kernel_size=3, stride=2, padding=1),
        c(512, 512, kernel_size=3, stride=1, padding=0),
        c(512, 512, kernel_size=1, stride=1, padding=0),
    )


def _audio_encoder() -> nn.Sequential:
    c = Conv2dBlock
    return nn.Sequential(
        c(1, 32, kernel_size=3, stride=1, padding=1),
        c(32, 32, kernel_size=3, stride=1, padding=1, residual=True),
        c(32, 32, kernel_size=3, stride=1, padding=1, residual=True),
        c(32, 64, kernel_size=3, stride=(3, 1), padding=1),
        c(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
        c(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
        c(64, 128, kernel_size=3, stride=3, padding=1),
        c(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
        c(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
        c(128, 256, kernel_size=3, stride=(3, 2), padding=1),
        c(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
        c(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
        c(256, 512, kernel_size=3, stride=1, padding=0),
        c(512, 512, kernel_size=1, stride=1, padding=0),
    )


class LipSyncExpert(nn.Module):
    """``SyncNet_color``: 5-frame lower-face windows and mel windows to L2-normalised 512-d embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder = _face_encoder()
        self.audio_encoder = _audio_encoder()

    def forward_face(self, faces: torch.Tensor) -> torch.Tensor:
        """``[N, 15, 48, 96]`` face windows -> ``[N, 512]`` unit-length face embeddings."""
        out = self.face_encoder(faces)  # [N, 512, 1, 1]
        return F.normalize(out.reshape(out.shape[0], -1), p=2, dim=1)

    def forward_audio(self, mels: torch.Tensor) -> torch.Tensor:
        """``[N, 1, 80, 16]`` mel windows -> ``[N, 512]`` unit-length audio embeddings."""
        out = self.audio_encoder(mels)  # [N, 512, 1, 1]
        return F.normalize(out.reshape(out.shape[0], -1), p=2, dim=1)

    def forward(self, mels: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio, face) embeddings, in the argument order of Wav2Lip's ``SyncNet_color.forward``."""
        return self.forward_audio(mels), self.forward_face(faces)


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without DataParallel's ``module.`` prefix (unchanged when no key has it)."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return state


def _probe(model: LipSyncExpert) -> tuple[torch.Tensor, torch.Tensor]:
    """Both streams on one seeded window (faces in [0, 1], mels in [-4, 4]): what ``load_checkpoint`` checks
    for finite output."""
    faces = probe_input(1, 3 * WINDOW_FRAMES, FACE_SIZE_PX // 2, FACE_SIZE_PX).clamp(-1, 1) * 0.5 + 0.5
    mels = probe_input(1, 1, MEL.num_mels, MEL_WINDOW_FRAMES, scale=2.0).clamp(-MEL.max_abs_value, MEL.max_abs_value)
    return model(mels, faces)


def load_lipsync_expert(weights_dir: str | Path | None, file: str,
                        device: torch.device | str = "cpu") -> LipSyncExpert:
    """The expert with the weights of ``file`` (strict keys and shapes), in eval mode on ``device``.

    Raises CheckpointError when the file is missing, unreadable, does not fit the network or gives
    non-finite output.
    """
    model = LipSyncExpert()
    load_checkpoint(model, file, weights_dir, convert=strip_module_prefix, probe=_probe)
    model = model.eval().to(device)
    if torch.device(device).type == "cpu":  # channels-last convolutions: about 1.4x faster on the CPU
        model = model.to(memory_format=torch.channels_last)
    return model
