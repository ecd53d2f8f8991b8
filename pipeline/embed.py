"""Speaker embeddings: ResNetSE34V2 (av-diarization's default), speechbrain's ECAPA-TDNN or Resemblyzer's GE2E
encoder (no download needed), over sliding windows.

av-diarization's ``SpeakerNet`` reads the whole 16 kHz audio with ``torchaudio.load`` (floats in [-1, 1]) and
embeds windows of 200 * 160 samples starting every 3200 samples, ``range(0, num_samples - window, hop)``: the
window that would end exactly at the end of the audio, and any shorter tail, are not embedded. We compute the
same windows, in batches; audio no longer than one window (where the reference has nothing) gives one
embedding of all of it.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.loader import resolve_weights_dir
from pipeline.errors import CheckpointError, InputError, first_line
from pipeline.formats import EMBED_CPU_PRECISIONS, SPEAKER_MODELS

SAMPLE_RATE_HZ = 16000
PROGRESS_STEP = "speaker embeddings"
ECAPA_FILES = ("hyperparams.yaml", "embedding_model.ckpt", "mean_var_norm_emb.ckpt", "classifier.ckpt",
               "label_encoder.txt")
_PRECISIONS = EMBED_CPU_PRECISIONS

ProgressHook = Callable[[str, int, int], None]


class SpeakerModel:
    """A speaker network behind one call: float32 ``[B, samples]`` at 16 kHz in, ``[B, dim]`` numpy out.

    ``min_samples`` is the shortest input the network takes; shorter audio is zero-padded to it.
    """

    name: str
    dim: int
    min_samples: int = 512  # one 512-point FFT frame of ResNetSE34V2's front end

    def embed(self, waveforms: torch.Tensor) -> np.ndarray:
        """Embeddings ``[B, dim]`` (float32) of a batch of equally long 16 kHz waveforms in [-1, 1]."""
        raise NotImplementedError


class ResNetSE34Model(SpeakerModel):
    """ResNetSE34V2 on ``device``; on a CPU, optionally with bfloat16 convolutions (autocast)."""

    def __init__(self, module: torch.nn.Module, device: torch.device, cpu_precision: str = "float32") -> None:
        if cpu_precision not in _PRECISIONS:
            raise InputError(f"embed.cpu_precision must be one of {', '.join(_PRECISIONS)}, got {cpu_precision!r}")
        self.name = "resnetse34"
        self.dim = int(module.fc.out_features)
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        if self.device.type == "cpu":  # oneDNN's channels-last convolutions: 13% faster here, same values to 2e-8
            self.module = self.module.to(memory_format=torch.channels_last)
        self.bfloat16 = (cpu_precision == "bfloat16" and self.device.type == "cpu" and _cpu_has_bfloat16())

    def embed(self, waveforms: torch.Tensor) -> np.ndarray:
        batch = waveforms.to(self.device, dtype=torch.float32)  # [B, samples]
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.bfloat16 else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            out = self.module(batch)  # [B, 512]
        return out.float().cpu().numpy()


class EcapaModel(SpeakerModel):
    """speechbrain's EncoderClassifier; ``embed`` is its ``encode_batch`` (no embedding normalisation),
    as av-diarization calls it."""

    def __init__(self, classifier: Any, device: torch.device) -> None:
        self.name = "ecapa"
        self.min_samples = 800  # the dilated TDNN layers reflect-pad 4 frames each side: 5 or more frames needed
        self.classifier = classifier
        self.device = torch.device(device)
        self.dim = int(self.embed(torch.zeros(1, self.min_samples)).shape[1])

    def embed(self, waveforms: torch.Tensor) -> np.ndarray:
        batch = waveforms.to(self.device, dtype=torch.float32)  # [B, samples]
        with torch.inference_mode():
            out = self.classifier.encode_batch(batch)  # [B, 1, 192]
        return out.reshape(out.shape[0], -1).float().cpu().numpy()


class ResemblyzerModel(SpeakerModel):
    """Resemblyzer's GE2E encoder (models/ge2e.py) on the pipeline's own windows: one embedding of each whole
    window's mel frames (Resemblyzer's ``VoiceEncoder.forward``), no volume normalisation or partial averaging."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.name = "resemblyzer"
        self.dim = int(module.linear.out_features)
        self.min_samples = 400  # one 25 ms mel window
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()

    def embed(self, waveforms: torch.Tensor) -> np.ndarray:
        from models.ge2e import mel_frames

        mels = torch.from_numpy(mel_frames(waveforms.float().cpu().numpy())).to(self.device)  # [B, T, 40]
        with torch.inference_mode():
            out = self.module(mels)  # [B, 256]
        return out.float().cpu().numpy()


def _cpu_has_bfloat16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# ---- loading -------------------------------------------------------------------------------------
def load_speaker_model(cfg_embed: Any, weights_dir: str | Path | None, device: str | torch.device,
                       name: str | None = None) -> SpeakerModel:
    """The speaker network ``name`` (one of SPEAKER_MODELS; None takes ``cfg_embed.speaker_model``)."""
    name = cfg_embed.speaker_model if name is None else name
    device = torch.device(device)
    if name == "resnetse34":
        from models.resnetse34v2 import load_resnetse34

        module = load_resnetse34(weights_dir, cfg_embed.resnetse34_checkpoint)
        return ResNetSE34Model(module, device, cfg_embed.cpu_precision)
    if name == "ecapa":
        return EcapaModel(load_ecapa(resolve_weights_dir(weights_dir) / cfg_embed.ecapa_dir, device), device)
    if name == "resemblyzer":
        from models.ge2e import load_ge2e

        return ResemblyzerModel(load_ge2e(weights_dir), device)
    raise InputError(f"unknown speaker model {name!r}: choose one of {', '.join(SPEAKER_MODELS)}")


def _import_speechbrain() -> tuple[Any, Any, Any]:
    """speechbrain's classes, or one line naming the torch/torchaudio pair when torchaudio cannot load.

    Only ECAPA needs torchaudio (through speechbrain); torchaudio's compiled library must match torch exactly,
    so a mismatched pair fails here and nowhere else in the pipeline.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before speechbrain imports huggingface_hub
    try:
        from speechbrain.inference.speaker import EncoderClassifier
        from speechbrain.utils.fetching import FetchConfig, LocalStrategy
    except (ImportError, OSError) as err:
        from importlib.metadata import PackageNotFoundError, version

        def installed(dist: str) -> str:
            try:
                return version(dist)
            except PackageNotFoundError:
                return "not installed"

        reason = first_line(err)
        raise CheckpointError(
            f"ECAPA-TDNN needs speechbrain and torchaudio, which cannot be imported with torch {installed('torch')}, "
            f"torchaudio {installed('torchaudio')}, speechbrain {installed('speechbrain')} ({reason[:160]}); "
            "reinstall the pair setup.py pins (pip install -e .) or use --speaker_model resnetse34"
        ) from None
    return EncoderClassifier, FetchConfig, LocalStrategy


def load_ecapa(folder: Path, device: torch.device) -> Any:
    """speechbrain's EncoderClassifier from a local folder laid out like ``speechbrain/spkrec-ecapa-voxceleb``.

    Nothing is fetched: the hub id in the published hyperparams.yaml (``pretrained_path``) is overridden with
    the folder, files are read where they are (no links written into the folder) and network access is off.
    """
    missing = [name for name in ECAPA_FILES if not (folder / name).is_file()]
    if missing:
        what = "not found" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise CheckpointError(
            f"ECAPA-TDNN folder {folder} {what} (set --weights_dir or $AVDIARISE_WEIGHTS_DIR); "
            f"`bash download_models.sh {folder.parent} ecapa` fetches it"
        )
    EncoderClassifier, FetchConfig, LocalStrategy = _import_speechbrain()

    source = str(folder.resolve())
    try:
        with tempfile.TemporaryDirectory(prefix="ecapa-") as savedir:
            classifier = EncoderClassifier.from_hparams(
                source=source,
                savedir=savedir,
                overrides={"pretrained_path": source},
                local_strategy=LocalStrategy.NO_LINK,
                fetch_config=FetchConfig(allow_network=False),
                run_opts={"device": str(device)},
            )
    except Exception as err:  # bad yaml, wrong shapes, unreadable checkpoint...
        reason = first_line(err)
        raise CheckpointError(f"cannot load ECAPA-TDNN from {folder}: {reason[:200]}") from None
    classifier.eval()
    from models.loader import probe_input

    with torch.inference_mode():  # a network that gives NaN or infinity is refused now, not after stages 1-2
        probe = classifier.encode_batch(probe_input(1, SAMPLE_RATE_HZ // 2, scale=0.1).to(device))
    if not bool(torch.isfinite(probe).all()):
        raise CheckpointError(f"ECAPA-TDNN in {folder} loads but gives non-finite output (NaN or infinity) on a "
                              f"test input; download it again or use another checkpoint")
    return classifier


# ---- windows -------------------------------------------------------------------------------------
def _float_audio(audio: np.ndarray, sample_rate_hz: int) -> torch.Tensor:
    """1-D float32 tensor in [-1, 1] (int16 divided by 32768, as torchaudio.load) of 16 kHz mono audio."""
    if sample_rate_hz != SAMPLE_RATE_HZ:
        raise InputError(f"speaker embeddings need {SAMPLE_RATE_HZ} Hz audio, got {sample_rate_hz} Hz")
    samples = np.asarray(audio)
    if samples.ndim > 1:
        samples = samples.squeeze()
    if samples.ndim > 1:
        raise InputError(f"speaker embeddings need mono audio, got an array of shape {np.shape(audio)}")
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / np.float32(32768.0)
    elif np.issubdtype(samples.dtype, np.floating):
        samples = np.nan_to_num(samples.astype(np.float32, copy=False))
    else:
        raise InputError(f"speaker embeddings need int16 or float audio, got {samples.dtype}")
    return torch.from_numpy(np.ascontiguousarray(samples.reshape(-1)))


def _pad_short(samples: torch.Tensor, min_samples: int) -> torch.Tensor:
    if samples.numel() >= min_samples:
        return samples
    return torch.nn.functional.pad(samples, (0, min_samples - samples.numel()))


def window_starts(num_samples: int, window_samples: int, hop_samples: int) -> np.ndarray:
    """Start samples of av-diarization's windows, ``range(0, num_samples - window, hop)``; ``[0]`` when the
    audio is no longer than one window."""
    if window_samples <= 0 or hop_samples <= 0:
        raise InputError("embed.window_s and embed.hop_s must be positive")
    if num_samples <= window_samples:
        return np.zeros(1, dtype=np.int64)
    return np.arange(0, num_samples - window_samples, hop_samples, dtype=np.int64)


def sliding_embeddings(model: SpeakerModel, audio: np.ndarray, sample_rate_hz: int, cfg_embed: Any,
                       progress: ProgressHook | None = None) -> np.ndarray:
    """float32 ``[num_windows, dim]``: window k covers ``[k * hop_s, k * hop_s + window_s)`` of ``audio``."""
    samples = _float_audio(audio, sample_rate_hz)
    window = int(round(cfg_embed.window_s * sample_rate_hz))
    hop = int(round(cfg_embed.hop_s * sample_rate_hz))
    batch_size = cfg_embed.batch_size
    if batch_size < 1:
        raise InputError(f"embed.batch_size must be at least 1, got {cfg_embed.batch_size}")
    starts = window_starts(samples.numel(), window, hop)
    if samples.numel() <= window:
        windows = _pad_short(samples, model.min_samples).unsqueeze(0)  # [1, samples]
    else:
        windows = samples.unfold(0, window, hop)[: len(starts)]  # [num_windows, window], a view
    total = windows.shape[0]
    out = np.empty((total, model.dim), dtype=np.float32)
    if progress is not None:
        progress(PROGRESS_STEP, 0, total)
    for first in range(0, total, batch_size):
        batch = windows[first:first + batch_size].contiguous()
        out[first:first + batch.shape[0]] = _finite(model.embed(batch), model)
        if progress is not None:
            progress(PROGRESS_STEP, first + batch.shape[0], total)
    return out


def _finite(embeddings: np.ndarray, model: SpeakerModel) -> np.ndarray:
    """``embeddings``, or a CheckpointError when the network gave NaN or infinity (a broken checkpoint)."""
    if not np.isfinite(embeddings).all():
        raise CheckpointError(f"the {model.name} speaker network gave non-finite embeddings: its checkpoint is broken")
    return embeddings


def segment_embedding(model: SpeakerModel, audio: np.ndarray, sample_rate_hz: int, start_s: float,
                      end_s: float) -> np.ndarray:
    """float32 ``[dim]`` embedding of ``audio[start_s:end_s]`` in one pass (e.g. a VAD segment)."""
    samples = _float_audio(audio, sample_rate_hz)
    first = min(max(0, int(round(start_s * sample_rate_hz))), samples.numel())
    last = min(max(first, int(round(end_s * sample_rate_hz))), samples.numel())
    if last <= first:
        raise InputError(f"empty segment {start_s:.3f}-{end_s:.3f} s of {samples.numel() / sample_rate_hz:.3f} s audio")
    return _finite(model.embed(_pad_short(samples[first:last], model.min_samples).unsqueeze(0)), model)[0]
