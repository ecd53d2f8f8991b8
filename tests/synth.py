"""Small media files made on the fly with PyAV, for exact cases the real clips cannot give."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_video(path: Path, num_frames: int = 30, fps: float = 25, size: tuple[int, int] = (64, 48),
               audio_s: float | None = None, sample_rate_hz: int = 16000, codec: str = "mpeg4",
               frame_fn=None, container_format: str | None = None) -> Path:
    """A video whose frame k is a flat grey of level 4k (or ``frame_fn(k)``), with optional audio tone."""
    width, height = size
    with av.open(str(path), "w", format=container_format) as out:
        video = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = None
        if audio_s is not None:
            audio = out.add_stream("aac" if codec != "ffv1" else "pcm_s16le", rate=sample_rate_hz)
            audio.layout = "mono"
        for k in range(num_frames):
            image = frame_fn(k) if frame_fn else np.full((height, width, 3), (4 * k) % 256, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio is not None:
            t = np.arange(int(audio_s * sample_rate_hz)) / sample_rate_hz
            samples = (3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
            frame_fmt = "s16" if audio.codec_context.name.startswith("pcm") else "fltp"
            data = samples.reshape(1, -1) if frame_fmt == "s16" else (samples / 32768).astype(np.float32).reshape(1, -1)
            step = 1024
            for start in range(0, data.shape[1], step):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, start:start + step]), format=frame_fmt,
                                                   layout="mono")
                chunk.sample_rate = sample_rate_hz
                chunk.pts = start
                for packet in audio.encode(chunk):
                    out.mux(packet)
            for packet in audio.encode():
                out.mux(packet)
    return path


def make_wav(path: Path, seconds: float = 1.0, sample_rate_hz: int = 16000) -> Path:
    """A mono 16-bit wav of a tone."""
    from scipy.io import wavfile

    t = np.arange(int(seconds * sample_rate_hz)) / sample_rate_hz
    wavfile.write(path, sample_rate_hz, (3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16))
    return path
