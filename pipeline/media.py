"""Decode any video into the pipeline's one 25 fps frame sequence and 16 kHz mono audio, with PyAV.

Frame i of the sequence is the frame that ``ffmpeg -i V -r 25`` (ffmpeg 5.1, constant-frame-rate output)
shows at time i / 25: ``CfrSchedule`` reproduces ffmpeg's frame duplication and dropping on the decoded
timestamps, so edit lists, 29.97 fps, 30 fps and variable frame rates all land where ffmpeg puts them.
Audio is ``-async 1 -ac 1 -ar 16000``: resampled by the same libswresample, its first sample placed at its
timestamp on the video's clock (silence before it, priming samples before 0 dropped), and gaps or
overlaps larger than ``min_hard_comp_s`` hard-compensated as ``aresample=async=1`` does.

Frames are decoded lazily and never all held in memory.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from pipeline.errors import InputError, first_line

# Hard compensation threshold of ffmpeg's `-async` (aresample min_hard_comp default, 0.1 s).
MIN_HARD_COMP_S = 0.1


@dataclass(frozen=True)
class MediaInfo:
    """What the container says about a file, before decoding."""

    width: int
    height: int
    has_video: bool
    has_audio: bool
    duration_s: float | None
    frame_rate_hz: float | None


def _open(path: str | Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise InputError(f"video file not found: {path}")
    if not path.is_file():
        raise InputError(f"not a regular file: {path}")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except av.FFmpegError as err:
        raise InputError(f"cannot read {path} as a video ({_reason(err)}): not a media file, or truncated") from None
    except (OSError, UnicodeError) as err:
        raise InputError(f"cannot open {path}: {err}") from None


def _reason(err: Exception) -> str:
    strerror = getattr(err, "strerror", None)
    return strerror.strip()[:120] if isinstance(strerror, str) and strerror.strip() else first_line(err, 120)


def probe(path: str | Path) -> MediaInfo:
    """Stream facts of ``path``; InputError when it is not a media file."""
    with _open(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        duration_s = container.duration / av.time_base if container.duration else None
        rate = float(video.guessed_rate) if video is not None and video.guessed_rate else None
        return MediaInfo(
            width=video.codec_context.width if video is not None else 0,
            height=video.codec_context.height if video is not None else 0,
            has_video=video is not None,
            has_audio=bool(container.streams.audio),
            duration_s=duration_s,
            frame_rate_hz=rate,
        )


def check_video_input(path: str | Path, need_audio: bool = True, allow_audio_only: bool = False) -> MediaInfo:
    """A readable file with a video stream (and an audio stream when ``need_audio``), or a one-line InputError.

    With ``allow_audio_only``, a file with an audio stream and no video stream (a wav) is accepted too
    (``has_video`` False): stage 1 then diarises it as a video without faces."""
    info = probe(path)
    if allow_audio_only and not info.has_video and info.has_audio:
        return info
    if not info.has_video:
        raise InputError(f"{path} has no video stream (an audio-only file?): stage 1 needs faces to track")
    if need_audio and not info.has_audio:
        raise InputError(f"{path} has no audio stream: there is no speech to diarise")
    return info


def _gbrp_to_bgr(frame: av.VideoFrame) -> np.ndarray:
    """A planar G, B, R frame (what H.264 RGB decodes to: stage 1's lossless crops) interleaved as B, G, R.

    The same bytes as swscale's ``gbrp`` -> ``bgr24`` (a copy, no arithmetic), about 4x faster on 224 x 224 crops
    (0.22 against 1.0 ms a frame), which stage 2 reads frame by frame (issue 23).
    """
    height, width = frame.height, frame.width
    green, blue, red = (np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)[:, :width]
                        for plane in frame.planes)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = blue, green, red
    return image


def to_bgr(frame: av.VideoFrame) -> np.ndarray:
    """BGR uint8 pixels of a decoded frame, upright.

    Same-size conversion with swscale; point sampling selects its fast unscaled path and gives the same
    bytes as ffmpeg's `-pix_fmt bgr24` on the test clips (tests/test_media.py), 3x faster than the default.
    A display rotation (phone videos) is applied as ffmpeg's default autorotation does.
    """
    image = _gbrp_to_bgr(frame) if frame.format.name == "gbrp" else \
        frame.reformat(format="bgr24", interpolation="POINT").to_ndarray()
    quarter_turns = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image


def _lrintf(value: float) -> int:
    """C lrintf: round half to even, as ffmpeg rounds frame counts."""
    return int(round(value))


class CfrSchedule:
    """ffmpeg 5.1's constant-frame-rate video sync (``do_video_out``, vsync cfr / vscfr), on timestamps.

    ``push(pts_ticks, duration_ticks)`` takes a decoded frame's timestamp and duration in output frame
    ticks (1 / 25 s) and returns how many output frames repeat the previous frame and how many show this one.
    The constants (0.5, 0.6, 1.1 ticks) are ffmpeg's own, not settings: changing them would no longer give
    ffmpeg's frames.
    """

    def __init__(self, single_stream_input: bool = False) -> None:
        self.next_out = 0  # ffmpeg's ost->sync_opts
        self.frames_out = 0
        self.last_nb0 = [0, 0, 0]
        self.vscfr = single_stream_input  # ffmpeg picks vscfr when the input file has one stream

    def push(self, pts_ticks: float, duration_ticks: float) -> tuple[int, int]:
        """(number of repeats of the previous frame, number of copies of this frame) to output now."""
        delta0 = pts_ticks - self.next_out
        delta = delta0 + duration_ticks
        nb0, nb = 0, 1
        if delta0 < 0 < delta:
            delta0 = 0.0  # frame starts in the past: clip it to the next output slot
        if self.vscfr and self.frames_out == 0 and delta0 >= 0.5:
            delta = delta - delta0  # do not duplicate initial frames: start the output at this frame
            delta0 = 0.0
            self.next_out = round(pts_ticks)
        if delta < -1.1:
            nb = 0
        elif delta > 1.1:
            nb = _lrintf(delta)
            if delta0 > 1.1:
                nb0 = _lrintf(delta0 - 0.6)
        nb0 = min(nb0, nb)
        self.last_nb0 = [nb0] + self.last_nb0[:2]
        self.next_out += nb
        self.frames_out += nb
        return nb0, nb - nb0

    def flush(self) -> int:
        """Repeats of the last frame ffmpeg adds at the end of the stream (median of the last three)."""
        extra = sorted(self.last_nb0)[1]
        self.next_out += extra
        self.frames_out += extra
        return extra


def _to_ticks(pts: int, time_base, start_time_us: int, frame_rate_hz: float) -> float:
    """A timestamp in output ticks with ffmpeg's extra precision and midpoint nudge."""
    seconds = float(pts * time_base) - start_time_us / 1_000_000
    ticks = seconds * frame_rate_hz
    return ticks + (1.0 if ticks > 0 else -1.0) / (1 << 17)


def iter_frames(path: str | Path, frame_rate_hz: float = 25.0,
                max_missing_s: float | None = None) -> Iterator[np.ndarray]:
    """The normalised frame sequence of ``path``: BGR uint8 frames at ``frame_rate_hz``, like ``ffmpeg -r``.

    Raises InputError for an unreadable file, a file without video, or a decoding failure part-way; with
    ``max_missing_s``, also when the decoded frames end more than that before the video stream's declared end
    (a cut file whose index, at the front, still declares the whole length), after the last frame.
    """
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        start_us = container.start_time or 0
        guessed = float(stream.guessed_rate) if stream.guessed_rate else 0.0
        default_duration = min(frame_rate_hz / guessed, 1.0) if guessed > 0 else 1.0
        schedule = CfrSchedule(single_stream_input=len(container.streams) == 1)
        stream_end_s = None
        if stream.duration and stream.time_base:
            stream_end_s = float((stream.duration + (stream.start_time or 0)) * stream.time_base)
        previous = None  # ffmpeg's last_frame: the latest decoded frame, shown or not
        previous_image: np.ndarray | None = None
        decoded_end_s = 0.0
        for frame, is_last in _with_last(_decode(container, stream, path)):
            if frame.pts is None:
                continue
            decoded_end_s = max(decoded_end_s, float((frame.pts + (frame.duration or 0)) * frame.time_base))
            pts_ticks = _to_ticks(frame.pts, frame.time_base, start_us, frame_rate_hz)
            duration = default_duration
            if frame.duration:
                duration_s = float(frame.duration * frame.time_base)
                if is_last and stream_end_s is not None:
                    # newer FFmpeg stretches the final sample to the edit-list end; ffmpeg 5.1 ends it at the stream end
                    duration_s = min(duration_s, max(0.0, stream_end_s - float(frame.pts * frame.time_base)))
                rounded = _lrintf(duration_s * frame_rate_hz)
                if rounded > 0:
                    duration = rounded
            repeats, copies = schedule.push(pts_ticks, duration)
            if repeats:
                source = previous if previous is not None else frame
                if previous_image is None or source is not previous:
                    previous_image = to_bgr(source)
                for _ in range(repeats):
                    yield previous_image.copy()
            previous, previous_image = frame, None
            if copies:
                previous_image = to_bgr(frame)
                yield previous_image
                for _ in range(copies - 1):
                    yield previous_image.copy()
        if previous is None:
            raise InputError(f"{path} has no decodable video frames")
        if max_missing_s is not None:
            check_complete(path, "video", stream_end_s, decoded_end_s, max_missing_s)
        extra = schedule.flush()
        if extra:
            image = to_bgr(previous)
            for _ in range(extra):
                yield image.copy()
    finally:
        container.close()


def check_complete(path: str | Path, what: str, declared_end_s: float | None, decoded_end_s: float,
                   max_missing_s: float) -> None:
    """A one-line InputError when a stream decodes to less than its container declares (a truncated file must
    not be read as a short one); nothing when the container declares no length."""
    if declared_end_s is not None and declared_end_s - decoded_end_s > max_missing_s:
        raise InputError(f"{path} is truncated: its {what} stream declares {declared_end_s:.2f} s but only "
                         f"{decoded_end_s:.2f} s decode (an interrupted download or copy?); get the whole file")


def _stream_end_s(stream, start_us: int) -> float | None:
    """Where the container says ``stream`` ends, in seconds on the file's clock (None when it does not say)."""
    if not stream.duration or not stream.time_base:
        return None
    return float((stream.duration + (stream.start_time or 0)) * stream.time_base) - start_us / 1_000_000


def _non_finite(frame: av.AudioFrame) -> tuple[int, int]:
    """(how many samples of a decoded float audio frame are NaN or infinite, the index of the first) ((0, 0) for
    integer formats, which cannot hold them)."""
    if not frame.format.name.startswith(("flt", "dbl")):
        return 0, 0
    values = frame.to_ndarray()
    channels = 1 if frame.format.is_planar else max(1, len(frame.layout.channels))
    bad = ~np.isfinite(values.reshape(-1, channels) if channels > 1 else values.T)  # [samples, channels]
    per_sample = bad.any(axis=1)
    return int(np.count_nonzero(per_sample)), int(np.argmax(per_sample))


def _video_stream(container, path) -> av.video.stream.VideoStream:
    """The first video stream, set to decode with threads; InputError when there is none."""
    if not container.streams.video:
        raise InputError(f"{path} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _with_last(items):
    """Pairs (item, is_last) with one item of look-ahead."""
    iterator = iter(items)
    try:
        pending = next(iterator)
    except StopIteration:
        return
    for item in iterator:
        yield pending, False
        pending = item
    yield pending, True


def _decode(container, stream, path) -> Iterator[av.VideoFrame | av.AudioFrame]:
    try:
        yield from container.decode(stream)
    except av.FFmpegError as err:
        raise InputError(f"decoding {path} failed ({_reason(err)}): the file is corrupt or truncated") from None


def iter_video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Every decoded frame of ``path`` as BGR uint8, without frame-rate conversion (crops, single clips)."""
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        for frame in _decode(container, stream, path):
            yield to_bgr(frame)
    finally:
        container.close()


def decode_audio(path: str | Path, sample_rate_hz: int = 16000, min_hard_comp_s: float = MIN_HARD_COMP_S,
                 max_missing_s: float | None = None) -> np.ndarray:
    """The first audio stream as int16 mono at ``sample_rate_hz``, sample 0 at the video's time 0.

    Equivalent to ``ffmpeg -i V -async 1 -ac 1 -ar RATE -acodec pcm_s16le``. InputError when there is no
    audio stream, decoding fails, a float stream holds NaN or infinite samples (a damaged file: converted,
    they would be loud noise or silence that nobody asked for), or, with ``max_missing_s``, the stream decodes
    to more than that less than the container declares (``check_complete``).
    """
    container = _open(path)
    try:
        if not container.streams.audio:
            raise InputError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        start_us = container.start_time or 0
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate_hz)
        hard_comp = int(round(min_hard_comp_s * sample_rate_hz))
        chunks: list[np.ndarray] = []
        written = 0  # samples placed so far
        first = True

        def place(samples: np.ndarray, at: int | None) -> None:
            nonlocal written, first
            if at is not None and (first or abs(at - written) > hard_comp):
                if at > written:
                    chunks.append(np.zeros(at - written, dtype=np.int16))
                    written = at
                elif at < written:
                    # starts before time 0 (codec priming) or overlaps what is written: drop the excess
                    samples = samples[written - at:]
            first = False
            if len(samples):
                chunks.append(samples)
                written += len(samples)

        bad, first_bad_s = 0, None
        for frame in _decode(container, stream, path):
            at = None
            non_finite, first_index = _non_finite(frame)
            if non_finite and first_bad_s is None:
                frame_s = float(frame.pts * frame.time_base) if frame.pts is not None else written / sample_rate_hz
                first_bad_s = frame_s + first_index / frame.sample_rate
            bad += non_finite
            if frame.pts is not None:
                at = int(round((float(frame.pts * frame.time_base) - start_us / 1_000_000) * sample_rate_hz))
            for out in resampler.resample(frame):
                place(out.to_ndarray().reshape(-1).astype(np.int16, copy=False), at)
                at = None
        for out in resampler.resample(None):
            place(out.to_ndarray().reshape(-1).astype(np.int16, copy=False), None)
        if bad:
            raise InputError(f"{path} has {bad} NaN or infinite audio samples (the first at {first_bad_s:.2f} s): "
                             f"the audio is damaged; repair or re-export it")
        if max_missing_s is not None:
            check_complete(path, "audio", _stream_end_s(stream, start_us), written / sample_rate_hz, max_missing_s)
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    finally:
        container.close()


__all__ = [
    "CfrSchedule",
    "MediaInfo",
    "check_complete",
    "check_video_input",
    "decode_audio",
    "iter_frames",
    "iter_video_frames",
    "probe",
]
