"""Resemblyzer's GE2E speaker encoder (3-layer LSTM + linear + ReLU + L2 norm) and its mel front end.

Transcribed from resemblyzer/voice_encoder.py, audio.py and hparams.py (Resemblyzer 0.1.4): 40 mel bands of a
power spectrogram (not log-compressed), 25 ms windows every 10 ms at 16 kHz, librosa's defaults otherwise.

The weights are the ``pretrained.pt`` that the Resemblyzer wheel ships (GE2E, Wan et al. 2018, trained by
Resemble AI). They are found, in this order, as

1. ``resemblyzer_ge2e.pt`` in the weights folder (``bash download_models.sh DIR resemblyzer`` extracts it from
   the Resemblyzer 0.1.4 wheel on PyPI and checks its sha256: registry row in models/checkpoints.tsv);
2. ``resemblyzer/pretrained.pt`` inside an installed Resemblyzer distribution (``pip install --no-deps
   'Resemblyzer==0.1.4'``), read as a file: the package is never imported, so its declared dependencies (the
   ``webrtcvad`` source package, the obsolete ``typing`` backport) are not needed.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.errors import CheckpointError, first_line
from models.loader import (
    WEIGHTS_ENV,
    check_finite,
    load_strict,
    probe_input,
    registry_entry,
    resolve_weights_dir,
    verify_hash,
)

SAMPLE_RATE_HZ = 16000  # hparams.sampling_rate
MEL_WINDOW_MS = 25  # hparams.mel_window_length
MEL_STEP_MS = 10  # hparams.mel_window_step
MEL_CHANNELS = 40  # hparams.mel_n_channels
HIDDEN_SIZE = 256  # hparams.model_hidden_size
EMBEDDING_SIZE = 256  # hparams.model_embedding_size
NUM_LAYERS = 3  # hparams.model_num_layers
WEIGHTS_FILE = "resemblyzer_ge2e.pt"  # the registry's name for Resemblyzer's pretrained.pt
DISTRIBUTION = "Resemblyzer"
PACKAGED_FILE = "resemblyzer/pretrained.pt"
# GE2E's loss scale (w, b of the similarity matrix): training-only, VoiceEncoder ignores them too
TRAINING_ONLY_KEYS = ("similarity_weight", "similarity_bias")


class GE2EEncoder(nn.Module):
    """Mel frames ``[B, T, 40]`` -> L2-normalised non-negative embeddings ``[B, 256]`` (VoiceEncoder.forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(MEL_CHANNELS, HIDDEN_SIZE, NUM_LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN_SIZE, EMBEDDING_SIZE)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)  # hidden: [layers, B, 256]
        raw = self.relu(self.linear(hidden[-1]))  # [B, 256]
        # VoiceEncoder divides by the norm unguarded; an all-zero output (pure silence) stays zero here, not NaN
        return raw / torch.norm(raw, dim=1, keepdim=True).clamp_min(1e-12)


def mel_frames(waveforms: np.ndarray) -> np.ndarray:
    """Resemblyzer's ``wav_to_mel_spectrogram`` on each row of ``[B, samples]``: ``[B, T, 40]`` float32."""
    import librosa

    mels = librosa.feature.melspectrogram(
        y=np.asarray(waveforms, dtype=np.float32), sr=SAMPLE_RATE_HZ,
        n_fft=SAMPLE_RATE_HZ * MEL_WINDOW_MS // 1000, hop_length=SAMPLE_RATE_HZ * MEL_STEP_MS // 1000,
        n_mels=MEL_CHANNELS)  # [B, 40, T]
    return np.ascontiguousarray(np.swapaxes(mels, -1, -2), dtype=np.float32)


def packaged_weights() -> Path | None:
    """``resemblyzer/pretrained.pt`` of the installed Resemblyzer distribution, or None (not imported)."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(PACKAGED_FILE))
    return path if path.is_file() else None


def find_weights(weights_dir: str | Path | None) -> Path:
    """The GE2E weights file (weights folder first, then the installed package), or a one-line CheckpointError."""
    folder = resolve_weights_dir(weights_dir)
    path = folder / WEIGHTS_FILE
    if path.is_file():
        return path
    packaged = packaged_weights()
    if packaged is not None:
        return packaged
    entry = registry_entry(WEIGHTS_FILE)
    version = entry.url.split("#")[0].rsplit("/", 1)[-1].split("-")[1] if entry else "0.1.4"  # the wheel's
    raise CheckpointError(
        f"the resemblyzer speaker model's weights {WEIGHTS_FILE} are not in {folder} (set --weights_dir or "
        f"${WEIGHTS_ENV}) and the Resemblyzer package is not installed: `bash download_models.sh {folder} "
        f"resemblyzer` fetches them, or `pip install --no-deps 'Resemblyzer=={version}'`")


def load_ge2e(weights_dir: str | Path | None = None, path: str | Path | None = None) -> GE2EEncoder:
    """GE2E encoder with Resemblyzer's weights: strict load of the LSTM + linear, ``weights_only``, finite check."""
    path = find_weights(weights_dir) if path is None else Path(path)
    if path.name == WEIGHTS_FILE:
        verify_hash(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle of arbitrary objects, wrong format...
        raise CheckpointError(f"GE2E weights {path} cannot be read ({first_line(err, 200)}); "
                              f"download them again") from None
    state = checkpoint.get("model_state") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"GE2E weights {path} hold no 'model_state' (not Resemblyzer's pretrained.pt)")
    state = {k: v for k, v in state.items() if k not in TRAINING_ONLY_KEYS}
    module = load_strict(GE2EEncoder(), state, path)
    check_finite(module, path, lambda m: m(probe_input(1, 20, MEL_CHANNELS).abs()))
    return module.eval()
