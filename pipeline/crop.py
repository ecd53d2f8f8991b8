"""224 x 224 face-track crops, as syncnet_python's ``crop_video`` makes them, written while frames stream by."""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.cache import atomic_path
from pipeline.errors import InputError
from pipeline.medfilt import medfilt


def smooth_track(track: dict[str, np.ndarray], kernel_frames: int) -> dict[str, np.ndarray]:
    """Crop centre (x, y) and half-size s per frame, median-filtered like the references.

    ``scipy.signal.medfilt`` (here ``pipeline.medfilt``) pads with zeros, so the first and last
    ``kernel_frames // 2`` values are pulled towards the smaller neighbours exactly as in syncnet_python.
    """
    boxes = track["bbox"]
    half_size = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    return {
        "x": medfilt(centre_x, kernel_frames),
        "y": medfilt(centre_y, kernel_frames),
        "s": medfilt(half_size, kernel_frames),
    }


def crop_face(frame: np.ndarray, x: float, y: float, s: float, crop_scale: float, pad_value: int,
              size_px: int) -> np.ndarray:
    """The reference crop of one frame, without padding the whole frame.

    The reference pads the frame by ``bsi = int(s * (1 + 2 * crop_scale))`` pixels of ``pad_value`` and
    slices ``[int(my - s) : int(my + s * (1 + 2cs)), int(mx - s * (1 + cs)) : int(mx + s * (1 + cs))]``
    around the padded centre; here the same window is cut from the unpadded frame and the outside filled,
    pixel for pixel the reference's. A window larger than ``WINDOW_LIMIT`` frames (a box far larger than the
    frame) is instead sampled straight into the ``size_px`` output, so memory stays bounded by the frame and
    the output whatever the box.
    """
    height, width = frame.shape[:2]
    if not all(np.isfinite(v) for v in (x, y, s)) or s < 0:
        return np.full((size_px, size_px, frame.shape[2]), pad_value, dtype=frame.dtype)
    pad = int(s * (1 + 2 * crop_scale))
    my, mx = y + pad, x + pad
    rows = _clip_slice(int(my - s), int(my + s * (1 + 2 * crop_scale)), height + 2 * pad)
    cols = _clip_slice(int(mx - s * (1 + crop_scale)), int(mx + s * (1 + crop_scale)), width + 2 * pad)
    window_px = (rows[1] - rows[0]) * (cols[1] - cols[0])
    if window_px > WINDOW_LIMIT * max(height * width, size_px * size_px):
        return _sample_window(frame, rows[0] - pad, rows[1] - pad, cols[0] - pad, cols[1] - pad, pad_value, size_px)
    out = np.full((rows[1] - rows[0], cols[1] - cols[0], frame.shape[2]), pad_value, dtype=frame.dtype)
    src_r0, src_r1 = max(rows[0] - pad, 0), min(rows[1] - pad, height)
    src_c0, src_c1 = max(cols[0] - pad, 0), min(cols[1] - pad, width)
    if src_r1 > src_r0 and src_c1 > src_c0:
        out[src_r0 + pad - rows[0]:src_r1 + pad - rows[0], src_c0 + pad - cols[0]:src_c1 + pad - cols[0]] = \
            frame[src_r0:src_r1, src_c0:src_c1]
    if out.size == 0:
        out = np.full((1, 1, frame.shape[2]), pad_value, dtype=frame.dtype)
    return cv2.resize(out, (size_px, size_px))


# Windows (in frames, or outputs for small frames) cut and resized exactly as the reference does; larger
# ones are sampled with the same bilinear mapping but without materialising the window.
WINDOW_LIMIT = 4


def _sample_window(frame: np.ndarray, row0: int, row1: int, col0: int, col1: int, pad_value: int,
                   size_px: int) -> np.ndarray:
    """``cv2.resize`` of the window ``[row0:row1, col0:col1]`` of the frame padded with ``pad_value`` (frame
    coordinates, may reach far outside), computed as one affine warp into ``size_px`` x ``size_px``.

    Same source coordinates as ``cv2.resize`` (pixel centres, ``(d + 0.5) * scale - 0.5``); pixels of the
    window's last row and column may blend with their outside neighbours where resize repeats the edge.
    """
    scale_x = max(col1 - col0, 1) / size_px
    scale_y = max(row1 - row0, 1) / size_px
    inverse = np.array([[scale_x, 0.0, 0.5 * scale_x - 0.5 + col0],
                        [0.0, scale_y, 0.5 * scale_y - 0.5 + row0]], dtype=np.float64)
    return cv2.warpAffine(frame, inverse, (size_px, size_px), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(pad_value,) * 4)


def _clip_slice(start: int, stop: int, length: int) -> tuple[int, int]:
    """The (start, stop) numpy uses for ``array[start:stop]`` on an axis of ``length`` (non-negative start)."""
    start = min(max(start, 0), length)
    stop = min(max(stop, start), length)
    return start, stop


def _add_lossless_stream(container, frame_rate_hz: int, size_px: int, keyframe_interval_frames: int):
    """An RGB-lossless video stream: bgr24 frames decode back bit for bit.

    H.264 RGB at qp 0 (libx264rgb, ultrafast) encodes 3x and decodes 2x faster than FFV1 here; FFV1 is the
    fallback where the bundled FFmpeg lacks libx264. A keyframe every ``keyframe_interval_frames`` lets
    stage 3 seek to the few frames it samples instead of decoding the track up to them.
    """
    gop = str(int(keyframe_interval_frames))
    if "libx264rgb" in av.codecs_available:
        stream = container.add_stream("libx264rgb", rate=frame_rate_hz,
                                      options={"preset": "ultrafast", "qp": "0", "g": gop})
        stream.pix_fmt = "bgr24"
    else:
        stream = container.add_stream("ffv1", rate=frame_rate_hz, options={"g": gop})
        stream.pix_fmt = "bgr0"
    stream.width = stream.height = size_px
    return stream


class TrackCropWriter:
    """Writes one track's crops: a lossless .mkv for stage 2, and a watchable MPEG-4 .avi with audio."""

    def __init__(self, stack: ExitStack, frames_path: Path, avi_path: Path, audio: np.ndarray,
                 frame_rate_hz: int, sample_rate_hz: int, size_px: int, keyframe_interval_frames: int) -> None:
        self.audio = audio
        self.samples_per_frame = sample_rate_hz // frame_rate_hz
        self.sample_rate_hz = sample_rate_hz
        self.index = 0
        tmp_frames = stack.enter_context(atomic_path(frames_path))
        tmp_avi = stack.enter_context(atomic_path(avi_path))
        self.lossless = stack.enter_context(av.open(str(tmp_frames), "w", format="matroska"))
        self.ffv1 = _add_lossless_stream(self.lossless, frame_rate_hz, size_px, keyframe_interval_frames)
        self.watchable = stack.enter_context(av.open(str(tmp_avi), "w", format="avi"))
        self.mpeg4 = self.watchable.add_stream("mpeg4", rate=frame_rate_hz)
        self.mpeg4.width = self.mpeg4.height = size_px
        self.mpeg4.pix_fmt = "yuv420p"
        self.mpeg4.bit_rate = 2_000_000
        self.pcm = self.watchable.add_stream("pcm_s16le", rate=sample_rate_hz)
        self.pcm.layout = "mono"

    def write(self, crop_bgr: np.ndarray) -> None:
        """Append one crop and its frame's audio."""
        frame = av.VideoFrame.from_ndarray(crop_bgr, format="bgr24")
        for packet in self.ffv1.encode(frame):
            self.lossless.mux(packet)
        for packet in self.mpeg4.encode(frame):
            self.watchable.mux(packet)
        start = self.index * self.samples_per_frame
        chunk = self.audio[start:start + self.samples_per_frame]
        if len(chunk) < self.samples_per_frame:  # audio ends before the video: pad with silence
            chunk = np.pad(chunk, (0, self.samples_per_frame - len(chunk)))
        audio_frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        audio_frame.sample_rate = self.sample_rate_hz
        audio_frame.pts = start
        for packet in self.pcm.encode(audio_frame):
            self.watchable.mux(packet)
        self.index += 1

    def flush(self) -> None:
        """Flush the encoders; the files are closed and renamed into place when the ExitStack closes."""
        for stream, container in ((self.ffv1, self.lossless), (self.mpeg4, self.watchable), (self.pcm, self.watchable)):
            for packet in stream.encode():
                container.mux(packet)


def write_track_crops(frames: Iterable[np.ndarray], tracks: Sequence[dict], smoothed: Sequence[dict],
                      audio: np.ndarray, frames_paths: Sequence[Path], avi_paths: Sequence[Path], cfg_crop,
                      frame_rate_hz: int, sample_rate_hz: int, progress=None) -> int:
    """Stream the video once and write every track's crops; returns the number of frames read.

    Only the writers of tracks present at the current frame are open at once.
    """
    starts = {int(track["frame"][0]): [] for track in tracks}
    for idx, track in enumerate(tracks):
        starts[int(track["frame"][0])].append(idx)
    last_frame = max((int(track["frame"][-1]) for track in tracks), default=-1)
    samples_per_frame = sample_rate_hz // frame_rate_hz
    open_writers: dict[int, tuple[ExitStack, TrackCropWriter]] = {}
    frame_idx = -1
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    try:
        for frame_idx, frame in enumerate(frames):
            if frame_idx > last_frame:
                break
            for idx in starts.get(frame_idx, []):
                track = tracks[idx]
                first, end = int(track["frame"][0]), int(track["frame"][-1]) + 1
                track_audio = audio[first * samples_per_frame:end * samples_per_frame]
                stack = ExitStack()
                try:
                    writer = TrackCropWriter(stack, Path(frames_paths[idx]), Path(avi_paths[idx]), track_audio,
                                             frame_rate_hz, sample_rate_hz, cfg_crop.size_px,
                                             cfg_crop.keyframe_interval_frames)
                except BaseException:
                    stack.close()
                    raise
                open_writers[idx] = (stack, writer)
            def advance(idx: int, frame=frame, frame_idx=frame_idx) -> bool:
                """Write track ``idx``'s crop of this frame; True when the track is finished and renamed."""
                stack, writer = open_writers[idx]
                pos = frame_idx - int(tracks[idx]["frame"][0])
                sm = smoothed[idx]
                writer.write(crop_face(frame, sm["x"][pos], sm["y"][pos], sm["s"][pos], cfg_crop.scale,
                                       cfg_crop.pad_value, cfg_crop.size_px))
                if frame_idx != int(tracks[idx]["frame"][-1]):
                    return False
                writer.flush()
                stack.close()  # renames the finished files into place
                return True

            active = list(open_writers)
            # tracks of one frame are cropped and encoded in parallel (cv2 and FFmpeg release the GIL)
            finished = list(pool.map(advance, active)) if len(active) > 1 else [advance(i) for i in active]
            for idx, done in zip(active, finished):
                if done:
                    del open_writers[idx]
            if progress is not None:
                progress("crop", frame_idx + 1, last_frame + 1)
    finally:
        pool.shutdown(wait=True)
        for stack, _ in open_writers.values():
            # unfinished tracks: discard their temporary files
            stack.__exit__(RuntimeError, RuntimeError("unfinished"), None)
    if open_writers:
        raise InputError(f"the video ended at frame {frame_idx + 1}, before the tracks' last frame {last_frame + 1}")
    return frame_idx + 1
