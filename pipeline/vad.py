"""Voice activity detection: webrtcvad with py-webrtcvad's collector (av-diarization's default) or silero-vad.

Both return speech as sorted ``(start_s, end_s)`` pairs. The webrtc path reproduces av-diarization's
``Vad.run_webrtc`` (its ``frame_generator`` and ``vad_collector``, taken from py-webrtcvad's example): 30 ms
frames, the last frame dropped when it would end exactly at the end of the audio, and a ring buffer of
300 ms that opens a segment when more than 90 % of its frames are voiced (the buffered frames included) and
closes it when more than 90 % are unvoiced (those frames included). The silero path runs the model that ships
inside the ``silero-vad`` package (never torch.hub) through the package's ``get_speech_timestamps``; times
are kept to the sample where av-diarization rounded them to 0.1 s.
"""
from __future__ import annotations

import collections
import functools
from typing import Any

import numpy as np
import torch

from pipeline.errors import CheckpointError, InputError
from pipeline.formats import VAD_METHODS
from pipeline.runtime import keep_threads
from pipeline.settings import VadConfig

METHODS = VAD_METHODS
_WEBRTC_RATES_HZ = (8000, 16000, 32000, 48000)
_SILERO_RATES_HZ = (8000, 16000)
_INT16_SCALE = 32768.0


def speech_segments(audio: np.ndarray, sample_rate_hz: int, cfg_vad: VadConfig,
                    method: str | None = None) -> list[tuple[float, float]]:
    """Speech of mono ``audio`` (int16, or float in [-1, 1]) as sorted ``(start_s, end_s)`` pairs.

    ``method`` is 'webrtc' or 'silero'; None takes ``cfg_vad.method``.
    """
    method = cfg_vad.method if method is None else method
    if method not in METHODS:
        raise InputError(f"unknown VAD method {method!r}: choose one of {', '.join(METHODS)}")
    samples = _mono(audio)
    if samples.size == 0:
        return []
    if method == "webrtc":
        return webrtc_segments(to_int16(samples), sample_rate_hz, cfg_vad)
    return silero_segments(to_float32(samples), sample_rate_hz, cfg_vad)


# ---- sample formats ----------------------------------------------------------------------------
def _mono(audio: np.ndarray) -> np.ndarray:
    samples = np.asarray(audio)
    if samples.ndim > 1:
        samples = samples.squeeze()
    if samples.ndim > 1:
        raise InputError(f"VAD needs mono audio, got an array of shape {np.shape(audio)}")
    if samples.dtype != np.int16 and not np.issubdtype(samples.dtype, np.floating):
        raise InputError(f"VAD needs int16 or float audio, got {samples.dtype}")
    return samples.reshape(-1)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """int16 samples; floats in [-1, 1] are scaled by 32768, rounded and clipped (as ffmpeg's pcm_s16le)."""
    if samples.dtype == np.int16:
        return samples
    scaled = np.rint(np.nan_to_num(samples.astype(np.float64)) * _INT16_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def to_float32(samples: np.ndarray) -> np.ndarray:
    """float32 samples in [-1, 1]; int16 is divided by 32768 (as torchaudio.load)."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / np.float32(_INT16_SCALE)
    return np.nan_to_num(samples.astype(np.float32))


# ---- webrtcvad -----------------------------------------------------------------------------------
def webrtc_frame_flags(samples: np.ndarray, sample_rate_hz: int, cfg_vad: VadConfig) -> np.ndarray:
    """webrtcvad's speech decision per frame (bool ``[num_frames]``), frames as py-webrtcvad's frame_generator."""
    import webrtcvad

    if sample_rate_hz not in _WEBRTC_RATES_HZ:
        raise InputError(f"webrtcvad needs audio at 8, 16, 32 or 48 kHz, got {sample_rate_hz} Hz")
    frame_ms, mode = cfg_vad.webrtc_frame_ms, cfg_vad.webrtc_aggressiveness  # in range: VadConfig's rules
    frame_len = sample_rate_hz * frame_ms // 1000
    # frame_generator yields a frame only while it ends strictly before the end of the audio
    num_frames = max(0, (samples.size - 1) // frame_len)
    pcm = np.ascontiguousarray(samples[: num_frames * frame_len], dtype="<i2").tobytes()
    vad = webrtcvad.Vad(mode)
    step = frame_len * 2  # bytes per frame
    return np.fromiter(
        (vad.is_speech(pcm[k * step:(k + 1) * step], sample_rate_hz) for k in range(num_frames)),
        dtype=bool, count=num_frames,
    )


def collect_voiced(flags: np.ndarray, padding_frames: int, trigger_ratio: float,
                   release_ratio: float) -> list[tuple[int, int]]:
    """py-webrtcvad's vad_collector on per-frame flags: segments as ``(first_frame, end_frame)``, end exclusive."""
    ring: collections.deque[bool] = collections.deque(maxlen=padding_frames)
    segments: list[tuple[int, int]] = []
    start: int | None = None
    for idx, is_speech in enumerate(flags.tolist()):
        ring.append(is_speech)
        if start is None:
            if sum(ring) > trigger_ratio * padding_frames:
                start = idx - len(ring) + 1  # the buffered frames open the segment
                ring.clear()
        elif len(ring) - sum(ring) > release_ratio * padding_frames:
            segments.append((start, idx + 1))  # the unvoiced frames in the buffer close it
            start = None
            ring.clear()
    if start is not None:
        segments.append((start, len(flags)))
    return segments


def webrtc_segments(samples: np.ndarray, sample_rate_hz: int, cfg_vad: VadConfig) -> list[tuple[float, float]]:
    """av-diarization's webrtcvad segments of int16 ``samples``."""
    flags = webrtc_frame_flags(samples, sample_rate_hz, cfg_vad)
    frame_ms = cfg_vad.webrtc_frame_ms
    padding_frames = cfg_vad.webrtc_padding_ms // frame_ms
    if padding_frames < 1:
        raise InputError(f"vad.webrtc_padding_ms must be at least one frame ({frame_ms} ms)")
    runs = collect_voiced(flags, padding_frames, cfg_vad.webrtc_trigger_ratio,
                          cfg_vad.webrtc_release_ratio)
    return webrtc_times(runs, sample_rate_hz * frame_ms // 1000, sample_rate_hz, frame_ms)


def webrtc_times(runs: list[tuple[int, int]], frame_len: int, sample_rate_hz: int,
                 frame_ms: int) -> list[tuple[float, float]]:
    """``(start_s, end_s)`` of frame runs, in the reference's float arithmetic.

    py-webrtcvad's ``frame_generator`` stamps frame k by adding the frame duration ``(n / rate) / 2`` (n
    bytes) k times to 0.0, and av-diarization's ``run_webrtc`` takes ``len(bytes) / 32000`` as the length,
    so ``end = start + length``. ``k * 0.03`` can round to the other side of a multiple of 1/25 s, which
    moves a boundary by one frame after ``int(t * 25)``.
    """
    frame_bytes = int(sample_rate_hz * (frame_ms / 1000.0) * 2)
    duration_s = (float(frame_bytes) / sample_rate_hz) / 2.0
    bytes_per_s = 2 * sample_rate_hz  # av-diarization's SEGMENT_FACTOR, 32000 at 16 kHz
    times: list[tuple[float, float]] = []
    timestamp, frame = 0.0, 0
    for first, end in runs:
        while frame < first:
            timestamp += duration_s
            frame += 1
        times.append((timestamp, timestamp + float((end - first) * frame_len * 2) / bytes_per_s))
    return times


# ---- silero-vad ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _silero_model() -> Any:
    """The TorchScript model bundled in the silero-vad package (read from its files, no download)."""
    try:
        with keep_threads():  # importing silero_vad sets torch to one thread (pipeline/runtime.py)
            from silero_vad import load_silero_vad

            return load_silero_vad(onnx=False)
    except Exception as err:  # missing package data, incompatible TorchScript...
        raise CheckpointError(f"cannot load the silero-vad model bundled in the silero-vad package: {err}") from None


def silero_segments(samples: np.ndarray, sample_rate_hz: int, cfg_vad: VadConfig) -> list[tuple[float, float]]:
    """silero-vad segments of float32 ``samples`` in [-1, 1], thresholds from ``cfg_vad``."""
    with keep_threads():
        from silero_vad import get_speech_timestamps

    if sample_rate_hz not in _SILERO_RATES_HZ and sample_rate_hz % 16000 != 0:
        raise InputError(f"silero-vad needs audio at 8 kHz or a multiple of 16 kHz, got {sample_rate_hz} Hz")
    model = _silero_model()
    with torch.inference_mode():
        stamps = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(samples)),
            model,
            threshold=cfg_vad.silero_threshold,
            sampling_rate=sample_rate_hz,
            min_speech_duration_ms=cfg_vad.silero_min_speech_ms,
            min_silence_duration_ms=cfg_vad.silero_min_silence_ms,
            speech_pad_ms=cfg_vad.silero_speech_pad_ms,
            return_seconds=False,
        )
    return [(stamp["start"] / sample_rate_hz, stamp["end"] / sample_rate_hz) for stamp in stamps]
