"""An annotated copy of the 25 fps video with the original audio, like syncnet_python's ``run_visualise.py``.

Every face box (the smoothed crop square of its track) is coloured by the speaker of its face identity and
captioned with that label, the track number and the live sync confidence; the box is thicker while one of
the speaker's audio-visual turns names the track. Frames are drawn and encoded one at a time (H.264,
yuv420p, even dimensions) with the audio interleaved (AAC) in an MP4 through PyAV, written to a temporary
name and renamed into place.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache import atomic_path
from pipeline.errors import CacheError, InputError
from pipeline.formats import RUN_PIPELINE, Turn

_AUDIO_FRAME_SAMPLES = 1024  # AAC frame size
_THIN_PX, _THICK_PX = 2, 5


@dataclass(frozen=True)
class Overlay:
    """One face box to draw on one frame."""

    box_px: tuple[int, int, int, int]  # x1, y1, x2, y2
    colour_bgr: tuple[int, int, int]
    text: str
    speaking: bool


def _speaking_frames(turns: Sequence[Turn], num_tracks: int, frame_rate_hz: float) -> list[list[tuple[int, int]]]:
    """Per track, the frame ranges ``[start, end)`` of the audio-visual turns that name it."""
    spans: list[list[tuple[int, int]]] = [[] for _ in range(num_tracks)]
    for turn in turns:
        if turn.source != "av":
            continue
        span = (int(round(turn.start_s * frame_rate_hz)), int(round(turn.end_s * frame_rate_hz)))
        for track_idx in turn.track_ids:
            if track_idx < num_tracks:  # GestSync's person tracks without a face come after the faces
                spans[track_idx].append(span)
    return spans


def format_confidence(conf: float) -> str:
    """A confidence to 2 decimals, never ``-0.00`` (a value in (-0.005, 0) rounds to 0.00)."""
    return f"{round(float(conf), 2) + 0.0:.2f}"  # + 0.0 turns -0.0 into 0.0


def build_overlays(tracks: Sequence[Mapping[str, Any]], confidences: Sequence[np.ndarray], labels: Sequence[str],
                   colours_bgr: Mapping[str, tuple[int, int, int]], turns: Sequence[Turn],
                   frame_rate_hz: float) -> dict[int, list[Overlay]]:
    """Frame index -> the boxes to draw on it, from tracks.pckl, per-track confidences and track labels.

    ``confidences[i][j]`` is the confidence at frame ``first_frame_i + j``.
    """
    speaking = _speaking_frames(turns, len(tracks), frame_rate_hz)
    overlays: dict[int, list[Overlay]] = {}
    for track_idx, track in enumerate(tracks):
        frames = np.asarray(track["track"]["frame"], dtype=np.int64)
        proc = track["proc_track"]
        xs, ys, half_sizes = (np.asarray(proc[key], dtype=np.float64) for key in ("x", "y", "s"))
        confidence = np.asarray(confidences[track_idx], dtype=np.float64)
        label = labels[track_idx]
        for j, frame_idx in enumerate(frames.tolist()):
            offset = frame_idx - int(frames[0])
            conf = confidence[offset] if 0 <= offset < confidence.size else math.nan
            x, y, s = xs[j], ys[j], half_sizes[j]
            text = f"{label}  T{track_idx}" + ("" if math.isnan(conf) else f"  conf {format_confidence(conf)}")
            overlays.setdefault(frame_idx, []).append(Overlay(
                box_px=(int(x - s), int(y - s), int(x + s), int(y + s)),
                colour_bgr=colours_bgr[label],
                text=text,
                speaking=any(start <= frame_idx < end for start, end in speaking[track_idx]),
            ))
    return overlays


def draw_overlays(image: np.ndarray, overlays: Sequence[Overlay]) -> np.ndarray:
    """Draw boxes and captions on a BGR frame, in place; returns it."""
    import cv2

    height = image.shape[0]
    font_scale = max(0.4, height / 720 * 0.6)
    text_thickness = max(1, int(round(font_scale * 2)))
    for overlay in overlays:
        x1, y1, x2, y2 = overlay.box_px
        cv2.rectangle(image, (x1, y1), (x2, y2), overlay.colour_bgr, _THICK_PX if overlay.speaking else _THIN_PX)
        (text_w, text_h), baseline = cv2.getTextSize(overlay.text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_thickness)
        top = max(0, y1 - text_h - baseline - 4)
        cv2.rectangle(image, (x1, top), (x1 + text_w + 4, top + text_h + baseline + 4), overlay.colour_bgr, cv2.FILLED)
        cv2.putText(image, overlay.text, (x1 + 2, top + text_h + 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (255, 255, 255), text_thickness, cv2.LINE_AA)
    return image


def _even(image: np.ndarray) -> np.ndarray:
    """Pad the bottom and right edges with black to even dimensions (yuv420p needs them)."""
    pad_bottom, pad_right = image.shape[0] % 2, image.shape[1] % 2
    if not (pad_bottom or pad_right):
        return image
    return np.pad(image, ((0, pad_bottom), (0, pad_right), (0, 0)))


class _AudioWriter:
    """Feeds a WAV file to an audio encoder in AAC-sized frames, up to a requested sample."""

    def __init__(self, container, wav_path: Path, codec: str) -> None:
        import av
        from scipy.io import wavfile

        self._av = av
        try:
            self.sample_rate_hz, samples = wavfile.read(str(wav_path), mmap=True)
        except (OSError, ValueError) as err:
            raise CacheError(f"{wav_path} is unreadable ({err}): run {RUN_PIPELINE} again") from None
        self.samples = samples  # memory-mapped [num_samples] or [num_samples, channels]
        self.scale = float(np.iinfo(samples.dtype).max + 1) if samples.dtype.kind in "iu" else 1.0
        self.offset = 128.0 if samples.dtype == np.uint8 else 0.0
        self.stream = container.add_stream(codec, rate=int(self.sample_rate_hz), layout="mono")
        self.container = container
        self.position = 0

    def _chunk(self, start: int, end: int) -> np.ndarray:
        chunk = np.asarray(self.samples[start:end], dtype=np.float32)
        if chunk.ndim == 2:
            chunk = chunk.mean(axis=1)
        return ((chunk - self.offset) / self.scale).reshape(1, -1)  # [1, n] planar float

    def write_until_s(self, time_s: float) -> None:
        """Encode whole frames of audio up to ``time_s``."""
        target = min(len(self.samples), int(round(time_s * self.sample_rate_hz)))
        while self.position + _AUDIO_FRAME_SAMPLES <= target:
            self._encode(self.position + _AUDIO_FRAME_SAMPLES)

    def finish(self) -> None:
        """Encode the rest of the audio and flush the encoder."""
        while self.position < len(self.samples):
            self._encode(min(len(self.samples), self.position + _AUDIO_FRAME_SAMPLES))
        self.container.mux(self.stream.encode(None))

    def _encode(self, end: int) -> None:
        frame = self._av.AudioFrame.from_ndarray(np.ascontiguousarray(self._chunk(self.position, end)),
                                                 format="fltp", layout="mono")
        frame.sample_rate = int(self.sample_rate_hz)
        frame.pts = self.position
        frame.time_base = Fraction(1, int(self.sample_rate_hz))
        self.container.mux(self.stream.encode(frame))
        self.position = end


def write_annotated_video(frames: Iterable[np.ndarray], overlays: Mapping[int, Sequence[Overlay]], out_path: Path,
                          audio_path: Path | None, num_frames: int, frame_rate_hz: float, cfg_visualise: Any,
                          progress: Callable[..., None] | None = None) -> Path:
    """Draw ``overlays`` on the first ``num_frames`` of ``frames`` and encode them with the audio to ``out_path``.

    Fewer frames than ``num_frames`` is a CacheError (the video changed since stage 1).
    """
    import av

    out_path = Path(out_path)
    iterator = iter(frames)
    try:
        with atomic_path(out_path, suffix=".part.mp4") as tmp:
            try:
                container = av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
            except (av.FFmpegError, OSError) as err:
                raise InputError(f"cannot write {out_path}: {err}") from None
            try:
                written = _encode_all(container, iterator, overlays, audio_path, num_frames, frame_rate_hz,
                                      cfg_visualise, progress)
            finally:
                container.close()
            if written < num_frames:
                raise CacheError(f"the video gave {written} frames but media.pckl says {num_frames}: "
                                 f"run {RUN_PIPELINE} again")
    except av.FFmpegError as err:
        raise InputError(f"cannot encode {out_path}: {err}") from None
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    return out_path


def _encode_all(container, frames: Iterator[np.ndarray], overlays: Mapping[int, Sequence[Overlay]],
                audio_path: Path | None, num_frames: int, frame_rate_hz: float, cfg_visualise: Any,
                progress: Callable[..., None] | None) -> int:
    """Encode up to ``num_frames`` annotated frames and all audio; returns the number of frames written."""
    import av

    first = next(frames, None)
    if first is None:
        return 0
    height, width = _even(first).shape[:2]
    rate = Fraction(frame_rate_hz).limit_denominator(1001)
    try:
        video = container.add_stream(cfg_visualise.video_codec, rate=rate,
                                     options={"crf": str(cfg_visualise.video_crf)})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = _AudioWriter(container, audio_path, cfg_visualise.audio_codec) if audio_path is not None else None
    except (ValueError, av.FFmpegError) as err:
        raise InputError(f"cannot encode with visualise.video_codec {cfg_visualise.video_codec!r} and "
                         f"visualise.audio_codec {cfg_visualise.audio_codec!r}: {err}") from None
    written = 0
    image: np.ndarray | None = first
    while image is not None and written < num_frames:
        image = _even(draw_overlays(np.ascontiguousarray(image), overlays.get(written, ())))
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = written, 1 / rate
        container.mux(video.encode(frame))
        written += 1
        if audio is not None:
            audio.write_until_s(written / float(rate))
        if progress is not None:
            progress("annotate video", written, num_frames)
        image = next(frames, None) if written < num_frames else None
    container.mux(video.encode(None))
    if audio is not None:
        audio.finish()
    return written


__all__ = ["Overlay", "build_overlays", "draw_overlays", "write_annotated_video"]
