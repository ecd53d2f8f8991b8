"""SyncNet audio-video offset and confidence of one face track (syncnet_python's ``SyncNetInstance.evaluate``).

The steps, as the original does them:

1. MFCC of the track's 16 kHz int16 audio with ``python_speech_features.mfcc`` defaults (13 coefficients,
   25 ms windows every 10 ms, i.e. 4 MFCC frames per 25 fps video frame).
2. ``min_length = min(video frames, floor(audio samples / 640))`` and windows ``i = 0 .. min_length - 6``
   (``min_length - 5`` windows): window i pairs video frames ``i .. i + 4`` with MFCC frames
   ``4i .. 4i + 19``. An audio of N * 640 samples gives 4N - 1 MFCC frames, so the window starting at
   ``N - 5`` would lack its last MFCC frame; the original stops one window earlier for that reason and so do we.
3. Lip and audio embeddings of every window (here: streamed in batches, any batch size gives the same values).
4. Row i of the distance matrix compares lip window i with audio windows ``i - vshift .. i + vshift``;
   audio windows outside the track are zero vectors (``F.pad`` in the original's ``calc_pdist``).
   ``euclidean``: ``F.pairwise_distance`` (syncnet_python); ``cosine``: ``1 - F.cosine_similarity`` (av-diar).
5. The mean over windows of each column; ``offset = vshift - argmin`` (syncnet_python's sign: audio lagging
   the video by d frames reads ``-d``), ``min_dist`` = that minimum, ``confidence = median - min``.

Edge cases (documented results, never an exception):

- fewer than ``window_frames + 1`` usable frames (video or audio too short): an empty ``[0, 2 * vshift + 1]``
  matrix, offset and min dist NaN, confidence 0;
- audio shorter than video (or the reverse): windows cover the common length only (step 2), so the matrix
  may have fewer rows than ``num_frames - 5``;
- digitally silent audio (all samples zero): distances are computed as usual, but the offset is NaN and the
  confidence 0, since there is nothing to synchronise with.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import python_speech_features
import torch
import torch.nn.functional as F

from models.syncnet import CROP_SIZE_PX, MFCC_PER_FRAME, WINDOW_FRAMES, SyncNet, load_syncnet, syncnet_checkpoint
from pipeline import media
from pipeline.cache import Cache, atomic_path
from pipeline.errors import CacheError, InputError
from pipeline.formats import RUN_PIPELINE as STAGE1_SCRIPT
from pipeline.formats import SYNC_METRICS
from pipeline.runtime import apply_runtime
from pipeline.stage1_outputs import read_wav
from pipeline.sync.base import (
    ProgressHook,
    SyncEvidence,
    offsets_table,
)

METRICS = SYNC_METRICS


@dataclass(frozen=True)
class SyncSettings:
    """Everything the offset search depends on (config sections ``syncnet``/``syncnet_demo`` and ``media``)."""

    metric: str = "cosine"
    vshift_frames: int = 10
    batch_size: int = 64
    cpu_lip_chunk_windows: int = 32
    frame_rate_hz: float = 25.0
    sample_rate_hz: int = 16000

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InputError(f"syncnet metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if int(self.vshift_frames) != self.vshift_frames or self.vshift_frames < 0:
            raise InputError(f"syncnet vshift_frames must be a whole number >= 0, got {self.vshift_frames!r}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise InputError(f"syncnet batch_size must be a whole number >= 1, got {self.batch_size!r}")
        if int(self.cpu_lip_chunk_windows) != self.cpu_lip_chunk_windows or self.cpu_lip_chunk_windows < 2:
            raise InputError(  # chunks of one window would all take the single-window kernel (see chunk_bounds)
                f"syncnet cpu_lip_chunk_windows must be a whole number >= 2, got {self.cpu_lip_chunk_windows!r}")
        spf = self.sample_rate_hz / self.frame_rate_hz
        if spf != int(spf) or spf <= 0:
            raise InputError(
                f"media.sample_rate_hz / frame_rate_hz must be a whole number of samples per frame, got {spf}")

    @classmethod
    def from_config(cls, cfg: Any, demo: bool = False) -> SyncSettings:
        """The pipeline's settings (``syncnet``), or the single-clip demo's (``syncnet_demo`` over ``syncnet``)."""
        sync = cfg.syncnet.to_dict()
        if demo:
            sync.update({k: v for k, v in cfg.syncnet_demo.to_dict().items() if k != "checkpoint"})
        return cls(metric=sync["metric"], vshift_frames=sync["vshift_frames"], batch_size=sync["batch_size"],
                   cpu_lip_chunk_windows=sync["cpu_lip_chunk_windows"], frame_rate_hz=float(cfg.media.frame_rate_hz),
                   sample_rate_hz=cfg.media.sample_rate_hz)

    @property
    def window_frames(self) -> int:
        """Video frames per SyncNet window (fixed by the network)."""
        return WINDOW_FRAMES

    @property
    def mfcc_per_frame(self) -> int:
        """MFCC frames per video frame (fixed by the network's audio input)."""
        return MFCC_PER_FRAME

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per video frame (640 at 16 kHz and 25 fps)."""
        return int(self.sample_rate_hz / self.frame_rate_hz)

    @property
    def num_shifts(self) -> int:
        """Columns of the distance matrix: ``2 * vshift + 1``."""
        return 2 * self.vshift_frames + 1


@dataclass
class SyncResult:
    """One track's (or clip's) SyncNet result."""

    distances: np.ndarray  # float32 [num_windows, 2 * vshift + 1]
    offset_frames: float  # vshift - argmin; NaN when not measurable
    min_dist: float
    confidence: float
    num_frames: int  # video frames used (at most the audio's length in frames)
    silent: bool = False
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # 'lip', 'audio', 'lip_conv' when asked

    @property
    def num_windows(self) -> int:
        return int(self.distances.shape[0])


# ---- audio features ------------------------------------------------------------------------------
def compute_mfcc(audio: np.ndarray, settings: SyncSettings) -> np.ndarray:
    """``[13, num_mfcc_frames]`` float32 MFCC of int16 mono audio, ``python_speech_features`` defaults.

    The step is one ``mfcc_per_frame``-th of a video frame (10 ms at 25 fps, the library's default).
    """
    step_s = 1.0 / (settings.frame_rate_hz * settings.mfcc_per_frame)
    feats = python_speech_features.mfcc(audio, samplerate=settings.sample_rate_hz, winstep=step_s)  # [M, 13]
    return np.ascontiguousarray(feats.T, dtype=np.float32)


def count_windows(num_frames: int, num_samples: int, settings: SyncSettings) -> int:
    """Number of SyncNet windows: ``min(num_frames, floor(num_samples / 640)) - 5``, at least 0."""
    min_length = min(num_frames, num_samples // settings.samples_per_frame)
    return max(0, min_length - settings.window_frames)


def mfcc_windows(mfcc: np.ndarray | torch.Tensor, start: int, stop: int, settings: SyncSettings) -> torch.Tensor:
    """``[stop - start, 1, 13, 20]`` audio inputs: window i holds MFCC frames ``4i .. 4i + 19``."""
    mfcc_t = torch.as_tensor(mfcc)
    per, width = settings.mfcc_per_frame, settings.window_frames * settings.mfcc_per_frame
    block = mfcc_t[:, start * per: (stop - 1) * per + width]  # [13, ...]
    windows = block.unfold(1, width, per)  # [13, stop - start, 20]
    return windows.permute(1, 0, 2).unsqueeze(1).contiguous()


def lip_windows(frames_u8: torch.Tensor, window_frames: int = 5, channels_last: bool = False) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 BGR frames -> ``[T - 4, 3, 5, H, W]`` float32 windows, values 0..255 (as the original).

    ``channels_last`` stores them channels-last (same values): the CPU's 3-D convolutions run about 1.4x faster.
    """
    video = frames_u8.permute(3, 0, 1, 2).float()  # [3, T, H, W]
    windows = video.unfold(1, window_frames, 1).permute(1, 0, 4, 2, 3)  # [T - 4, 3, 5, H, W]
    return windows.contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)


class AudioEmbeddings:
    """SyncNet's audio embeddings, each MFCC window computed once per clip (on the CPU).

    Face tracks on screen together cut the same stretch of the video's audio, so their MFCC windows are the same
    bytes (not at a track's first window: pre-emphasis starts there). The audio network's output for a window
    depends on the window and on the batch's size (oneDNN picks its kernels by shape), not on the other windows
    in the batch, so a window is remembered with the size of the batch it came in, and missing windows are
    computed in a batch of that same size (padded with copies): every embedding is bit for bit what the track's
    own batch gives (``tests/test_syncnet.py``). Four tracks over the same minute of audio need the audio network for
    about a quarter of their windows.
    """

    def __init__(self, model: SyncNet, max_windows: int) -> None:
        self.model = model
        self.max_windows = max_windows  # the least recently used go first: memory stays bounded on long videos
        self.known: OrderedDict[tuple[int, bytes], torch.Tensor] = OrderedDict()

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """``[n, 1024]`` embeddings of ``[n, 1, 13, 20]`` MFCC windows, as ``model.forward_aud(windows)``."""
        size = int(windows.shape[0])
        keys = [(size, window.numpy().tobytes()) for window in windows]
        first_row: dict[tuple[int, bytes], int] = {}
        for row, key in enumerate(keys):
            if key not in self.known:
                first_row.setdefault(key, row)
        if first_row:
            rows = list(first_row.values())
            batch = windows[rows + [rows[0]] * (size - len(rows))]  # the batch's own size: the same kernels
            for key, embedding in zip(first_row, self.model.forward_aud(batch)):
                self.known[key] = embedding.clone()  # a row of its own, not a view keeping the whole batch alive
        out = torch.stack([self.known[key] for key in keys])
        for key in keys:
            self.known.move_to_end(key)
        while len(self.known) > self.max_windows:
            self.known.popitem(last=False)
        return out


class LipWindowBuffer:
    """One track's reused CPU memory for its batches of lip windows: the same values and channels-last layout as
    ``lip_windows(..., channels_last=True)``, written in place instead of allocated per batch.

    A batch of 64 windows is 193 MB of float32 (plus 41 MB for the float frames on the way), far above glibc's
    mmap threshold, so fresh tensors map and zero new pages on every batch: page faults, i.e. system time.
    Here the pages are mapped once per track, and the uint8 frames convert straight into the window layout.
    """

    def __init__(self, max_windows: int, window_frames: int = WINDOW_FRAMES) -> None:
        self.max_windows = max_windows
        self.window_frames = window_frames
        self.frames: np.ndarray | None = None  # [max_windows + window_frames - 1, H, W, 3] uint8
        self.windows: torch.Tensor | None = None  # [max_windows, 3, window_frames, H, W] float32, channels-last

    def fill(self, frames: list[np.ndarray]) -> torch.Tensor:
        """``[len(frames) - window_frames + 1, 3, window_frames, H, W]`` windows of ``frames`` (a view of the buffer,
        valid until the next ``fill``)."""
        win = self.window_frames
        num_windows = len(frames) - win + 1
        if not 1 <= num_windows <= self.max_windows:
            raise ValueError(f"{len(frames)} frames make {num_windows} windows; the buffer holds 1..{self.max_windows}")
        if self.frames is None:
            height, width, channels = frames[0].shape
            self.frames = np.empty((self.max_windows + win - 1, height, width, channels), dtype=np.uint8)
            self.windows = torch.empty((self.max_windows, channels, win, height, width), dtype=torch.float32,
                                       memory_format=torch.channels_last_3d)
        frames_u8 = torch.from_numpy(np.stack(frames, out=self.frames[: len(frames)]))  # [n + 4, H, W, 3]
        out = self.windows[:num_windows]  # channels-last: memory order [n, win, H, W, 3]
        out.permute(0, 2, 3, 4, 1).copy_(frames_u8.unfold(0, win, 1).permute(0, 4, 1, 2, 3))
        return out


def chunk_bounds(num_windows: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of at most ``chunk`` windows; a last chunk of one window joins the one
    before it, since a convolution over a single window picks another oneDNN kernel (its features differ in the
    last bits from the same window's in a batch, up to 4e-5), while every other batch size gives the same bits."""
    starts = list(range(0, num_windows, chunk))
    if len(starts) > 1 and num_windows - starts[-1] == 1:
        starts.pop()
    return [(start, min(start + chunk, num_windows) if start != starts[-1] else num_windows) for start in starts]


# ---- distances and search ------------------------------------------------------------------------
def _distance_rows(lip: torch.Tensor, context: torch.Tensor, metric: str) -> torch.Tensor:
    """``[n, S]`` distances of ``n`` lip rows to ``S`` consecutive rows of ``context`` ``[n + S - 1, D]``."""
    n, dim = lip.shape
    num_shifts = context.shape[0] - n + 1
    cand = context.unfold(0, num_shifts, 1).permute(0, 2, 1)  # [n, S, D]
    ref = lip[:, None, :].expand(n, num_shifts, dim)
    if metric == "euclidean":
        return F.pairwise_distance(ref.reshape(-1, dim), cand.reshape(-1, dim)).reshape(n, num_shifts)
    return 1 - F.cosine_similarity(ref, cand, dim=-1)


def offset_search(distances: np.ndarray, vshift_frames: int) -> tuple[float, float, float]:
    """(offset_frames, min_dist, confidence) from a ``[W, 2 * vshift + 1]`` distance matrix.

    Mean distance per shift over all windows; ``offset = vshift - argmin`` (first minimum on ties),
    ``confidence = median - min``. No windows: ``(nan, nan, 0.0)``.
    """
    dists = np.asarray(distances, dtype=np.float32)
    if dists.ndim != 2 or dists.shape[1] != 2 * vshift_frames + 1:
        raise InputError(f"distance matrix must be [W, {2 * vshift_frames + 1}], got {dists.shape}")
    if dists.shape[0] == 0:
        return math.nan, math.nan, 0.0
    # Not shared with Wav2Lip's search (``pipeline.sync.wav2lip.offset_search``): this one is syncnet_python's
    # float32 torch mean and min, that one a float64 numpy mean and argmax. A merged search would need the
    # library, the dtype and min/max as parameters to keep both bit-identical, for six lines each.
    mean_dist = torch.from_numpy(np.ascontiguousarray(dists.T)).mean(1)  # [S], float32 like the original
    min_val, min_idx = torch.min(mean_dist, 0)
    confidence = torch.median(mean_dist) - min_val
    return float(vshift_frames - int(min_idx)), float(min_val), float(confidence)


class _DistanceStream:
    """Distance rows computed as embeddings arrive, keeping only ``2 * vshift`` audio rows of context."""

    def __init__(self, vshift_frames: int, metric: str) -> None:
        self.vshift = vshift_frames
        self.metric = metric
        self.lip: torch.Tensor | None = None  # [pending, D]: lip rows not yet scored
        self.context: torch.Tensor | None = None  # [*, D]: audio rows from (first pending - vshift)
        self.rows: list[np.ndarray] = []

    def push(self, lip: torch.Tensor, audio: torch.Tensor) -> None:
        if self.lip is None:
            self.lip = lip[:0]
            self.context = audio.new_zeros((self.vshift, audio.shape[1]))  # rows before window 0
        self.lip = torch.cat([self.lip, lip])
        self.context = torch.cat([self.context, audio])
        self._drain()

    def _drain(self) -> None:
        ready = min(self.lip.shape[0], self.context.shape[0] - 2 * self.vshift)
        if ready <= 0:
            return
        rows = _distance_rows(self.lip[:ready], self.context[: ready + 2 * self.vshift], self.metric)
        self.rows.append(rows.float().cpu().numpy())
        self.lip = self.lip[ready:]
        self.context = self.context[ready:]

    def finish(self) -> np.ndarray:
        """All rows, the last ones scored against zero audio past the end."""
        if self.lip is not None and self.lip.shape[0]:
            self.context = torch.cat([self.context, self.context.new_zeros((self.vshift, self.context.shape[1]))])
            self._drain()
        if not self.rows:
            return np.zeros((0, 2 * self.vshift + 1), dtype=np.float32)
        return np.concatenate(self.rows).astype(np.float32, copy=False)


# ---- one track ----------------------------------------------------------------------------------
def _check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1 or audio.dtype != np.int16:
        raise InputError(f"SyncNet needs mono int16 audio, got {audio.dtype} of shape {audio.shape}")
    return audio


def _check_frame(frame: np.ndarray, index: int) -> None:
    if frame.shape != (CROP_SIZE_PX, CROP_SIZE_PX, 3) or frame.dtype != np.uint8:
        raise InputError(
            f"frame {index} is {frame.dtype} {tuple(frame.shape)}; SyncNet needs {CROP_SIZE_PX}x{CROP_SIZE_PX} "
            "BGR uint8 face crops (like pycrop/REF/00000.avi)")


@torch.inference_mode()
def sync_track(model: SyncNet, frames: Iterable[np.ndarray], audio: np.ndarray, settings: SyncSettings,
               device: torch.device | str = "cpu", keep_embeddings: bool = False,
               audio_embeddings: AudioEmbeddings | None = None) -> SyncResult:
    """SyncNet offset, min dist, confidence and distance matrix of one face track.

    ``frames``: 224 x 224 BGR uint8 frames at 25 fps (decoded lazily; at most as many as the audio covers
    are read). ``audio``: the track's int16 mono samples at ``settings.sample_rate_hz``, aligned with frame 0.
    Memory is bounded by ``batch_size`` windows whatever the track length (plus the result itself and, with
    ``keep_embeddings``, the embeddings). ``audio_embeddings`` (CPU only): the clip's remembered audio embeddings,
    shared by its tracks.
    """
    audio = _check_audio(audio)
    device = torch.device(device)
    silent = not np.any(audio)
    max_frames = len(audio) // settings.samples_per_frame
    if max_frames <= settings.window_frames:  # not one window: no need to decode anything
        return _too_short(settings, num_frames=0, silent=silent, keep=keep_embeddings)
    mfcc = torch.from_numpy(compute_mfcc(audio, settings))
    stream = _DistanceStream(settings.vshift_frames, settings.metric)
    kept: dict[str, list[np.ndarray]] = {"lip": [], "audio": [], "lip_conv": []}
    batch, win = settings.batch_size, settings.window_frames
    buffer: list[np.ndarray] = []
    first_window = 0
    num_frames = 0

    chunk = min(settings.cpu_lip_chunk_windows, batch)
    reused = LipWindowBuffer(chunk + 1, win) if device.type == "cpu" else None  # + 1: a merged last window

    def lip_features(num_windows: int) -> torch.Tensor:
        """``[num_windows, 512]`` lip-network features of the buffered frames (on the CPU a chunk at a time)."""
        if reused is None:
            return model.forward_lipfeat(lip_windows(torch.from_numpy(np.stack(buffer[: num_windows + win - 1]))
                                                     .to(device), win))
        return torch.cat([model.forward_lipfeat(reused.fill(buffer[start: stop + win - 1]))
                          for start, stop in chunk_bounds(num_windows, chunk)])

    def run(num_windows: int) -> None:
        lip_conv = lip_features(num_windows)  # [n, 512]
        lip = model.netfclip(lip_conv)  # [n, 1024]
        audio_windows = mfcc_windows(mfcc, first_window, first_window + num_windows, settings)
        aud = audio_embeddings(audio_windows) if audio_embeddings is not None else \
            model.forward_aud(audio_windows.to(device))
        stream.push(lip, aud)
        if keep_embeddings:
            kept["lip"].append(lip.cpu().numpy())
            kept["audio"].append(aud.cpu().numpy())
            kept["lip_conv"].append(lip_conv.cpu().numpy())

    for frame in itertools.islice(frames, max_frames):
        _check_frame(frame, num_frames)
        buffer.append(frame)
        num_frames += 1
        if len(buffer) >= batch + win:  # window i counts only once frame i + 5 exists (step 2)
            run(batch)
            del buffer[:batch]
            first_window += batch
    if len(buffer) > win:
        run(len(buffer) - win)
    if num_frames <= win:
        return _too_short(settings, num_frames=num_frames, silent=silent, keep=keep_embeddings)
    distances = stream.finish()
    offset, min_dist, confidence = offset_search(distances, settings.vshift_frames)
    if silent:
        offset, confidence = math.nan, 0.0
    embeddings = {k: np.concatenate(v).astype(np.float32) for k, v in kept.items()} if keep_embeddings else {}
    return SyncResult(distances, offset, min_dist, confidence, num_frames, silent, embeddings)


def _too_short(settings: SyncSettings, num_frames: int, silent: bool, keep: bool) -> SyncResult:
    empty = np.zeros((0, settings.num_shifts), dtype=np.float32)
    embeddings = {"lip": np.zeros((0, 1024), np.float32), "audio": np.zeros((0, 1024), np.float32),
                  "lip_conv": np.zeros((0, 512), np.float32)} if keep else {}
    return SyncResult(empty, math.nan, math.nan, 0.0, num_frames, silent, embeddings)


def summarise(results: list[SyncResult], settings: SyncSettings, checkpoint: str | None) -> SyncEvidence:
    """The ``sync.pckl`` record: metric, vshift and per-track offset, min dist, confidence (plain floats)."""
    return SyncEvidence(model="syncnet", metric=settings.metric, checkpoint=checkpoint, score_name="min_dist",
                        offset_frames=tuple(float(r.offset_frames) for r in results),
                        score=tuple(float(r.min_dist) for r in results),
                        confidence=tuple(float(r.confidence) for r in results),
                        vshift_frames=settings.vshift_frames)


# ---- stage 2 on a cache --------------------------------------------------------------------------
def _sync_crop(cache: Cache, idx: int, model: SyncNet, settings: SyncSettings, device: torch.device,
               audio_embeddings: AudioEmbeddings | None) -> SyncResult:
    audio = read_wav(cache.crop_wav(idx), settings.sample_rate_hz)
    frames_path = cache.crop_frames(idx)
    with contextlib.closing(media.iter_video_frames(frames_path)) as frames:
        try:
            return sync_track(model, frames, audio, settings, device, audio_embeddings=audio_embeddings)
        except InputError as err:  # undecodable or wrong-size crop: stage 1's output is broken
            raise CacheError(f"track {idx}: {err}; run {STAGE1_SCRIPT} again") from None


def _map_tracks(work: Callable[[int], SyncResult], num_tracks: int, workers: int) -> Iterator[SyncResult]:
    """``work(idx)`` for every track, in order; on CUDA several at once so their decoding overlaps.

    PyAV releases the GIL while decoding, so threads decode in parallel and keep the GPU fed; each track
    still holds at most one batch of windows. On the CPU the network already uses every core: one at a time.
    """
    if workers <= 1:
        yield from (work(idx) for idx in range(num_tracks))
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="syncnet")
    try:
        yield from pool.map(work, range(num_tracks))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def offsets_text(sync: SyncEvidence) -> str:
    """``offsets.txt``: a '#' header, then ``track offset_frames min_dist confidence`` per line, tab-separated."""
    return offsets_table(f"# metric {sync.metric}, vshift {sync.vshift_frames} frames; nan: too short or silent", sync)


def syncnet_evidence(cache: Cache, cfg: Any, num_tracks: int, ckpt_file: str | None,
                     weights_dir: str | Path | None, device: torch.device | str,
                     progress: ProgressHook) -> tuple[list[np.ndarray], SyncEvidence]:
    """SyncNet's distance matrices and ``sync.pckl`` record for the first ``num_tracks`` crops of ``cache``,
    written nowhere (stage 2 writes them; GestSync's stage 2 keeps them as its lip evidence)."""
    settings = SyncSettings.from_config(cfg)
    device = torch.device(device)
    results: list[SyncResult] = []
    if num_tracks:
        model = load_syncnet(weights_dir, ckpt_file, device)
        workers = cfg.syncnet.parallel_tracks if device.type == "cuda" else 1
        memo = cfg.syncnet.cpu_audio_memo_windows
        shared = AudioEmbeddings(model, memo) if device.type == "cpu" and memo else None  # shared audio, once
        progress("syncnet", 0, num_tracks)
        for result in _map_tracks(lambda idx: _sync_crop(cache, idx, model, settings, device, shared), num_tracks,
                                  workers):
            results.append(result)
            progress("syncnet", len(results), num_tracks)
    return [r.distances for r in results], summarise(results, settings, ckpt_file)


# ---- single clip (syncnet_python's demo_syncnet.py / demo_feature.py) ---------------------------
def sync_clip(videofile: str | Path, cfg: Any, weights_dir: str | Path | None = None,
              device: torch.device | str = "cpu", keep_embeddings: bool = False) -> SyncResult:
    """Offset, min dist and confidence of one face-crop clip with the ``syncnet_demo`` settings.

    Every decoded frame is used as is (no frame-rate conversion), with the clip's audio at 16 kHz mono,
    as the original extracts them with ffmpeg. InputError when the clip has no usable window.
    """
    apply_runtime(cfg.runtime)
    settings = SyncSettings.from_config(cfg, demo=True)
    media.check_video_input(videofile, need_audio=True)  # a bad clip is reported before a missing checkpoint
    ckpt_file = syncnet_checkpoint(weights_dir, cfg.syncnet_demo.checkpoint)
    audio = media.decode_audio(videofile, settings.sample_rate_hz)
    device = torch.device(device)
    model = load_syncnet(weights_dir, ckpt_file, device)
    with contextlib.closing(media.iter_video_frames(videofile)) as frames:
        result = sync_track(model, frames, audio, settings, device, keep_embeddings=keep_embeddings)
    if result.num_windows == 0:
        raise InputError(
            f"{videofile} is too short for SyncNet: it needs more than {settings.window_frames} frames with audio "
            f"(audio {len(audio) / settings.sample_rate_hz:.2f} s, {result.num_frames} frames used)")
    return result


def save_features(path: str | Path, result: SyncResult, settings: SyncSettings) -> Path:
    """Write the per-window embeddings of a clip to an ``.npz`` (atomically).

    Arrays: ``lip`` [W, 1024] and ``audio`` [W, 1024] embeddings, ``lip_conv`` [W, 512] (the output of
    syncnet_python's ``forward_lipfeat``, what its demo_feature.py saves), ``window_start_frame`` [W],
    ``distances`` [W, 2 * vshift + 1], and the scalars ``offset_frames``, ``min_dist``, ``confidence``, ``metric``.
    """
    final = Path(path)
    if not result.embeddings:
        raise InputError("no embeddings to save: run sync_clip with keep_embeddings=True")
    try:
        with atomic_path(final, suffix=".part.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **result.embeddings, window_start_frame=np.arange(result.num_windows),
                         distances=result.distances, offset_frames=result.offset_frames,
                         min_dist=result.min_dist, confidence=result.confidence, metric=settings.metric,
                         vshift_frames=settings.vshift_frames)
    except OSError as err:
        raise InputError(f"cannot write --features {final}: {err.strerror or err}") from None
    return final
