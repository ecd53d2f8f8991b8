"""Stage 2 with Wav2Lip's lip-sync expert: per-frame sync scores, offset and confidence of every face track.

The expert (``models.wav2lip``) sees what it was trained on (Wav2Lip ``color_syncnet_train.py``): for video
window i, the lower half of 5 consecutive 96 x 96 face crops (frames i .. i + 4, BGR, [0, 1]) and the 16 mel
frames starting at ``int(80 * i / 25)`` of Wav2Lip's mel spectrogram (``melspectrogram``: librosa's STFT and
mel basis with Wav2Lip's ``hparams.py``). The face crop is the track's own box grown by ``box_expand`` on
each side (syncnet-speaker-diarization's ``crop_faces``), cut from the normalised frames.

Like SyncNet's search (``pipeline.sync.syncnet``), each window is scored against the audio shifted by
``-vshift .. +vshift`` frames; the score is the cosine similarity of the two embeddings (in [0, 1]). The
column with the highest mean score is the offset (``offset = vshift - column``, SyncNet's sign), its mean the
best score, and ``confidence = best - median`` of the per-shift means. The per-frame curve is the score at the
best shift of the window centred on each frame; ``smooth_frames`` (75) frames of centred moving average
make the smoothed curve that stage 3 fuses and stage 4 draws. Layouts: ``pipeline/formats.py``.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import signal

from models.loader import checkpoint_path
from models.wav2lip import (
    EMBEDDING_DIM,
    FACE_SIZE_PX,
    MEL,
    MEL_WINDOW_FRAMES,
    WINDOW_FRAMES,
    LipSyncExpert,
    MelParams,
    load_lipsync_expert,
)
from pipeline import media
from pipeline.cache import Cache, sha256_file
from pipeline.errors import InputError
from pipeline.formats import MEDIA_FILE, TRACKS_FILE
from pipeline.formats import RUN_PIPELINE as STAGE1_SCRIPT
from pipeline.stage1_outputs import read_wav
from pipeline.sync.base import (
    STAGE,
    ClipReport,
    Evidence,
    Network,
    ProgressHook,
    SyncEvidence,
    SyncModel,
    TrackResult,
    curve_evidence,
    demo_report,
    offsets_table,
    own_curves,
    score_in_one_pass,
    silent_note,
    source_video,
)

MODEL = "wav2lip"
METRIC = "cosine_similarity"
STAGE3_ONLY_KEYS = ("conf_thresholds",)  # read by stage 3 only: not in stage 2's key
CENTRE_FRAME = WINDOW_FRAMES // 2  # window i is centred on frame i + 2
_U8_TO_UNIT = torch.from_numpy((np.arange(256) / 255.0).astype(np.float32))  # x / 255. in float64, then float32


@dataclass(frozen=True)
class ExpertSettings:
    """What the expert's offset search and curves depend on (config sections ``wav2lip`` and ``media``)."""

    vshift_frames: int = 10
    box_expand: float = 0.2
    smooth_frames: int = 75
    batch_size: int = 64
    frame_rate_hz: float = 25.0
    sample_rate_hz: int = 16000

    def __post_init__(self) -> None:
        if int(self.vshift_frames) != self.vshift_frames or self.vshift_frames < 0:
            raise InputError(f"wav2lip vshift_frames must be a whole number >= 0, got {self.vshift_frames!r}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise InputError(f"wav2lip batch_size must be a whole number >= 1, got {self.batch_size!r}")
        if int(self.smooth_frames) != self.smooth_frames or self.smooth_frames < 1:
            raise InputError(f"wav2lip smooth_frames must be a whole number >= 1, got {self.smooth_frames!r}")
        if not 0 <= self.box_expand <= 2:
            raise InputError(f"wav2lip box_expand must be between 0 and 2, got {self.box_expand!r}")
        if self.sample_rate_hz != MEL.sample_rate_hz:
            raise InputError(f"the Wav2Lip expert needs {MEL.sample_rate_hz} Hz audio (media.sample_rate_hz is "
                             f"{self.sample_rate_hz})")

    @classmethod
    def from_config(cls, cfg: Any) -> ExpertSettings:
        w2l = cfg.wav2lip
        return cls(vshift_frames=w2l.vshift_frames, box_expand=w2l.box_expand, smooth_frames=w2l.smooth_frames,
                   batch_size=w2l.batch_size, frame_rate_hz=float(cfg.media.frame_rate_hz),
                   sample_rate_hz=cfg.media.sample_rate_hz)

    @property
    def num_shifts(self) -> int:
        return 2 * self.vshift_frames + 1

    def key(self) -> dict[str, Any]:
        """The settings results depend on, for cache keys."""
        return {"vshift_frames": self.vshift_frames, "box_expand": self.box_expand,
                "smooth_frames": self.smooth_frames, "frame_rate_hz": self.frame_rate_hz,
                "sample_rate_hz": self.sample_rate_hz}


# ---- audio: Wav2Lip's mel spectrogram ------------------------------------------------------------
@lru_cache(maxsize=4)
def _mel_basis(mel: MelParams) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=mel.sample_rate_hz, n_fft=mel.n_fft, n_mels=mel.num_mels, fmin=mel.fmin_hz,
                               fmax=mel.fmax_hz)


def melspectrogram(audio: np.ndarray, mel: MelParams = MEL) -> np.ndarray:
    """``[80, 1 + len // 200]`` float32 Wav2Lip mel spectrogram of int16 mono audio (``audio.melspectrogram``).

    Samples are scaled to [-1, 1) as ``librosa.load`` reads a 16-bit wav; pre-emphasis, an STFT padded by
    reflection as librosa 0.7 (Wav2Lip's pin) did by default, the Slaney mel basis, dB re ``ref_level_db``
    floored at ``min_level_db``, then symmetric normalisation to [-4, 4] with clipping.
    """
    import librosa

    wav = np.asarray(audio)
    if wav.ndim != 1 or wav.dtype != np.int16:
        raise InputError(f"the Wav2Lip expert needs mono int16 audio, got {wav.dtype} of shape {wav.shape}")
    if wav.size <= mel.n_fft // 2:  # reflection padding needs more samples; far shorter than one window anyway
        return np.zeros((mel.num_mels, 0), dtype=np.float32)
    emphasised = signal.lfilter([1.0, -mel.preemphasis], [1.0], wav.astype(np.float64) / 32768.0)
    spectrum = np.abs(librosa.stft(y=emphasised, n_fft=mel.n_fft, hop_length=mel.hop_samples,
                                   win_length=mel.win_samples, pad_mode="reflect"))
    min_level = np.exp(mel.min_level_db / 20 * np.log(10))
    level_db = 20 * np.log10(np.maximum(min_level, _mel_basis(mel) @ spectrum)) - mel.ref_level_db
    scaled = (2 * mel.max_abs_value) * ((level_db - mel.min_level_db) / (-mel.min_level_db)) - mel.max_abs_value
    return np.clip(scaled, -mel.max_abs_value, mel.max_abs_value).astype(np.float32)


def mel_start(frame_idx: int, frame_rate_hz: float, mel: MelParams = MEL) -> int:
    """First mel frame of video frame ``frame_idx``'s audio window: ``int(80. * (i / 25.))`` as Wav2Lip."""
    return int(mel.frames_per_s * (frame_idx / float(frame_rate_hz)))


def count_audio_windows(num_mel_frames: int, frame_rate_hz: float, mel: MelParams = MEL) -> int:
    """How many frames i >= 0 have a whole 16-frame mel window: ``mel_start(i) + 16 <= num_mel_frames``."""
    if num_mel_frames < MEL_WINDOW_FRAMES:
        return 0
    count = int((num_mel_frames - MEL_WINDOW_FRAMES + 1) * frame_rate_hz / mel.frames_per_s) + 2
    while count > 0 and mel_start(count - 1, frame_rate_hz, mel) + MEL_WINDOW_FRAMES > num_mel_frames:
        count -= 1
    return count


def mel_windows(mels: np.ndarray, frame_indices: Sequence[int], frame_rate_hz: float) -> np.ndarray:
    """``[len(frame_indices), 1, 80, 16]`` float32 audio inputs (``mel[:, start : start + 16]`` per frame)."""
    out = np.empty((len(frame_indices), 1, mels.shape[0], MEL_WINDOW_FRAMES), dtype=np.float32)
    for row, frame_idx in enumerate(frame_indices):
        start = mel_start(int(frame_idx), frame_rate_hz)
        out[row, 0] = mels[:, start:start + MEL_WINDOW_FRAMES]
    return out


# ---- video: face crops and windows ---------------------------------------------------------------
def expanded_box(bbox: Sequence[float], expand: float, width: int, height: int) -> tuple[int, int, int, int]:
    """``(x1, y1, x2, y2)`` pixels of a box grown by ``expand`` of its width/height on each side, in the frame."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    grow_x, grow_y = expand * (x2 - x1), expand * (y2 - y1)
    left = min(max(int(round(x1 - grow_x)), 0), width - 1)
    top = min(max(int(round(y1 - grow_y)), 0), height - 1)
    right = max(min(int(round(x2 + grow_x)), width), left + 1)
    bottom = max(min(int(round(y2 + grow_y)), height), top + 1)
    return left, top, right, bottom


def face_crop(frame_bgr: np.ndarray, bbox: Sequence[float], expand: float) -> np.ndarray:
    """The expert's face image: the expanded box resized to 96 x 96 (cv2 bilinear, as Wav2Lip), BGR uint8."""
    height, width = frame_bgr.shape[:2]
    left, top, right, bottom = expanded_box(bbox, expand, width, height)
    return resize_face(frame_bgr[top:bottom, left:right])


def resize_face(image_bgr: np.ndarray) -> np.ndarray:
    """Any face image to the expert's 96 x 96 (``cv2.resize``'s default bilinear, as Wav2Lip)."""
    return cv2.resize(np.ascontiguousarray(image_bgr), (FACE_SIZE_PX, FACE_SIZE_PX))


def face_windows(faces_u8: torch.Tensor) -> torch.Tensor:
    """``[T, 96, 96, 3]`` uint8 BGR faces -> ``[T - 4, 15, 48, 96]`` float32 windows in [0, 1].

    Window i stacks frames i .. i + 4 on the channel axis (channels ``3k .. 3k + 2`` = frame i + k, BGR) and
    keeps the lower half (rows 48..95), as ``color_syncnet_train.py``.
    """
    half = FACE_SIZE_PX // 2
    lower = _U8_TO_UNIT.to(faces_u8.device)[faces_u8[:, half:].long()]  # [T, 48, 96, 3]
    frames = lower.permute(0, 3, 1, 2)  # [T, 3, 48, 96]
    windows = frames.unfold(0, WINDOW_FRAMES, 1)  # [T - 4, 3, 48, 96, 5]
    count = windows.shape[0]
    return windows.permute(0, 4, 1, 2, 3).reshape(count, 3 * WINDOW_FRAMES, half, FACE_SIZE_PX).contiguous()


# ---- scores, offset, curves ----------------------------------------------------------------------
def offset_search(scores: np.ndarray, vshift_frames: int) -> tuple[float, float, float]:
    """(offset_frames, best_score, confidence) from a ``[W, 2 * vshift + 1]`` score matrix.

    Mean score per shift over all windows; ``offset = vshift - argmax`` (first maximum on ties),
    ``confidence = best - median``. No windows: ``(nan, nan, 0.0)``.
    """
    values = np.asarray(scores, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] != 2 * vshift_frames + 1:
        raise InputError(f"score matrix must be [W, {2 * vshift_frames + 1}], got {values.shape}")
    if values.shape[0] == 0:
        return math.nan, math.nan, 0.0
    # float64 means (SyncNet's search keeps syncnet_python's float32 torch: see pipeline.sync.syncnet.offset_search;
    # GestSync's searches blocks of candidates: pipeline.sync.gestsync_scoring.offset_search)
    mean_per_shift = values.mean(axis=0, dtype=np.float64)
    best = int(np.argmax(mean_per_shift))
    confidence = float(mean_per_shift[best] - np.median(mean_per_shift))
    return float(vshift_frames - best), float(mean_per_shift[best]), confidence


def frame_curve(scores: np.ndarray, best_column: int, num_frames: int) -> np.ndarray:
    """float32 ``[num_frames]``: window i's score at ``best_column`` on its centre frame i + 2, NaN elsewhere."""
    curve = np.full(num_frames, np.nan, dtype=np.float32)
    values = np.asarray(scores)[:, best_column] if len(scores) else np.zeros(0, np.float32)
    count = max(0, min(len(values), num_frames - CENTRE_FRAME))
    curve[CENTRE_FRAME:CENTRE_FRAME + count] = values[:count]
    return curve


def moving_average(curve: np.ndarray, width_frames: int) -> np.ndarray:
    """Centred moving average over ``width_frames`` of the finite values of ``curve`` (NaN where none).

    The seed project averages with ``np.convolve(..., mode='same')``, which counts frames outside the
    series as zeros; here only the frames that exist count, so a track's first and last seconds are not
    pulled towards 0 (its tracks always span the whole video, ours start and end with the face).
    """
    values = np.asarray(curve, dtype=np.float64)
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    idx = np.arange(values.size)
    lo = np.clip(idx - (width_frames - 1) // 2, 0, values.size)
    hi = np.clip(idx + width_frames // 2 + 1, 0, values.size)
    num = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (sums[hi] - sums[lo]) / num
    return np.where(num > 0, mean, np.nan).astype(np.float32)



class ExpertScorer:
    """Scores one track's windows as its face crops arrive; memory bounded by one batch of windows."""

    def __init__(self, model: LipSyncExpert, audio: np.ndarray, settings: ExpertSettings,
                 device: torch.device | str = "cpu") -> None:
        self.model, self.settings, self.device = model, settings, torch.device(device)
        self.silent = not np.any(audio)
        self.mels = melspectrogram(audio)
        self.audio_windows = count_audio_windows(self.mels.shape[1], settings.frame_rate_hz)
        self.max_frames = self.audio_windows + WINDOW_FRAMES - 1  # frames any window can use
        self.buffer: list[np.ndarray] = []
        self.first_window = 0
        self.num_frames = 0
        self.rows: list[np.ndarray] = []
        self._kept_audio: tuple[int, torch.Tensor | None] = (0, None)  # (first frame, rows) of the last batch's tail

    def push(self, face_u8: np.ndarray) -> None:
        """Add the next frame's 96 x 96 BGR face crop."""
        if face_u8.shape != (FACE_SIZE_PX, FACE_SIZE_PX, 3) or face_u8.dtype != np.uint8:
            raise InputError(f"face crop {self.num_frames} is {face_u8.dtype} {tuple(face_u8.shape)}; the expert "
                             f"needs {FACE_SIZE_PX}x{FACE_SIZE_PX} BGR uint8")
        self.num_frames += 1
        if self.num_frames > self.max_frames:
            return  # no audio for a window that would use this frame: only counted, for the curves' length
        self.buffer.append(face_u8)
        if len(self.buffer) >= self.settings.batch_size + WINDOW_FRAMES - 1:
            self._run(self.settings.batch_size)

    def _run(self, num_windows: int) -> None:
        faces = torch.from_numpy(np.stack(self.buffer[:num_windows + WINDOW_FRAMES - 1])).to(self.device)
        windows = face_windows(faces)
        if self.device.type == "cpu":  # the CPU's convolutions run about 1.4x faster channels-last (same values)
            windows = windows.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            face_emb = self.model.forward_face(windows)  # [n, 512]
            audio_emb = self._audio_embeddings(self.first_window, num_windows)  # [n + 2v, 512]
            cand = audio_emb.unfold(0, self.settings.num_shifts, 1).permute(0, 2, 1)  # [n, S, 512]
            scores = F.cosine_similarity(face_emb[:, None, :].expand_as(cand), cand, dim=-1)  # [n, S]
        self.rows.append(scores.float().cpu().numpy())
        del self.buffer[:num_windows]
        self.first_window += num_windows

    def _audio_embeddings(self, first_window: int, num_windows: int) -> torch.Tensor:
        """Audio embeddings of frames ``first - vshift .. first + n + vshift - 1``; zero rows without audio.

        The first ``2 * vshift`` rows are the previous batch's last ones: they are kept, not recomputed.
        """
        vshift = self.settings.vshift_frames
        start = first_window - vshift
        frames = np.arange(start, first_window + num_windows + vshift)
        out = torch.zeros((frames.size, EMBEDDING_DIM), device=self.device)
        todo = (frames >= 0) & (frames < self.audio_windows)
        kept_start, kept = self._kept_audio
        if kept is not None and kept_start == start:
            count = min(kept.shape[0], frames.size)
            out[:count] = kept[:count]
            todo[:count] = False
        if todo.any():
            mels = torch.from_numpy(mel_windows(self.mels, frames[todo], self.settings.frame_rate_hz))
            out[torch.from_numpy(todo).to(self.device)] = self.model.forward_audio(mels.to(self.device))
        self._kept_audio = (first_window + num_windows - vshift, out[out.shape[0] - 2 * vshift:])
        return out

    def finish(self) -> TrackResult:
        """Score the windows left and summarise the track."""
        if len(self.buffer) >= WINDOW_FRAMES:
            self._run(len(self.buffer) - WINDOW_FRAMES + 1)
        shifts = self.settings.num_shifts
        scores = np.concatenate(self.rows).astype(np.float32) if self.rows else np.zeros((0, shifts), np.float32)
        offset, best, confidence = offset_search(scores, self.settings.vshift_frames)
        best_column = self.settings.vshift_frames - int(offset) if math.isfinite(offset) else 0
        raw = frame_curve(scores, best_column, self.num_frames)
        if self.silent:
            offset, confidence = math.nan, 0.0
        return TrackResult(scores, offset, best, confidence, self.num_frames, raw,
                           moving_average(raw, self.settings.smooth_frames), self.silent, int(scores.shape[0]))


def sync_faces(model: LipSyncExpert, faces: Iterable[np.ndarray], audio: np.ndarray, settings: ExpertSettings,
               device: torch.device | str = "cpu") -> TrackResult:
    """The expert's result for one sequence of 96 x 96 BGR face crops and its int16 audio (aligned at frame 0)."""
    scorer = ExpertScorer(model, audio, settings, device)
    for face in faces:
        scorer.push(face)
    return scorer.finish()


def summarise(results: Sequence[TrackResult], settings: ExpertSettings, checkpoint: str) -> SyncEvidence:
    """The ``sync.pckl`` record of the expert (layout: ``pipeline/formats.py``)."""
    return curve_evidence(MODEL, METRIC, results, checkpoint, vshift_frames=settings.vshift_frames,
                          smooth_frames=settings.smooth_frames)


def offsets_text(sync: SyncEvidence) -> str:
    """``offsets.txt``: a '#' header, then ``track offset_frames best_score confidence`` per line."""
    return offsets_table(f"# model wav2lip, {sync.metric}, vshift {sync.vshift_frames} frames; nan: too short "
                         "or silent", sync)


# ---- stage 2 on a cache --------------------------------------------------------------------------
def stage2_key(cache: Cache, cfg: Any, settings: ExpertSettings, ckpt_file: str, ckpt_sha256: str) -> dict:
    """What the expert's stage-2 outputs depend on."""
    return {
        "stage": STAGE,
        "model": MODEL,
        "wav2lip": WAV2LIP.section_key(cfg),
        "settings": settings.key(),
        "checkpoint": {"file": ckpt_file, "sha256": ckpt_sha256},
        "upstream": {MEDIA_FILE: cache.digest(MEDIA_FILE), TRACKS_FILE: cache.digest(TRACKS_FILE),
                     "crops": cache.digest("crops")},
    }


def check_vshift(vshift_frames: int, longest_frames: int, what: str) -> None:
    """A one-line InputError when the offset search reaches past every frame of the clip: no window could be
    compared with audio shifted that far, and each shift costs a batch's worth of memory (100000 frames asked
    for 26 GB). A clip too short for one window is left to the caller's "too short" message."""
    if longest_frames >= WINDOW_FRAMES and vshift_frames >= longest_frames:
        raise InputError(f"wav2lip.vshift_frames is {vshift_frames}, but {what} has only {longest_frames} frames: "
                         f"no window can be compared with audio shifted that far; use at most {longest_frames - 1}")


def score_tracks(model: LipSyncExpert, frames: Iterable[np.ndarray], tracks: Sequence[Mapping],
                 audios: Sequence[np.ndarray], settings: ExpertSettings, device: torch.device | str,
                 progress: ProgressHook) -> list[TrackResult]:
    """Every track's result from one pass over the normalised frames (each track's crops as they pass)."""
    scorers = [ExpertScorer(model, audio, settings, device) for audio in audios]
    boxes = [np.asarray(t["track"]["bbox"], dtype=np.float64) for t in tracks]

    def feed(idx: int, offset: int, frame: np.ndarray) -> None:
        scorers[idx].push(face_crop(frame, boxes[idx][offset], settings.box_expand))

    return score_in_one_pass(frames, [int(t["track"]["frame"][0]) for t in tracks], [len(b) for b in boxes], feed,
                             lambda idx: scorers[idx].finish(), progress, MODEL)


def expert_evidence(cache: Cache, cfg: Any, tracks: Sequence[Mapping], media_info: Mapping, ckpt_file: str,
                    weights_dir: str | Path | None, device: torch.device | str,
                    progress: ProgressHook) -> tuple[list[np.ndarray], SyncEvidence]:
    """The expert's score matrices and ``sync.pckl`` record for ``tracks`` of ``cache``, written nowhere (its
    stage 2 writes them; GestSync's stage 2 keeps them as its lip evidence)."""
    settings = ExpertSettings.from_config(cfg)
    results: list[TrackResult] = []
    if tracks:
        check_vshift(settings.vshift_frames, max(len(t["track"]["frame"]) for t in tracks), "the longest face track")
        source = source_video(cache, media_info, "the Wav2Lip expert cuts its faces")
        model = load_lipsync_expert(weights_dir, ckpt_file, device)
        audios = [read_wav(cache.crop_wav(i), settings.sample_rate_hz) for i in range(len(tracks))]
        with contextlib.closing(media.iter_frames(source, settings.frame_rate_hz)) as frames:
            results = score_tracks(model, frames, tracks, audios, settings, device, progress)
    return [r.scores for r in results], summarise(results, settings, ckpt_file)


# ---- single clip -----------------------------------------------------------------------------------
def sync_clip(videofile: str | Path, cfg: Any, weights_dir: str | Path | None = None,
              device: torch.device | str = "cpu") -> TrackResult:
    """Offset, best score and confidence of one face clip: every decoded frame, whole, is the face.

    As SyncNet's single-clip mode, frames are used as decoded (no frame-rate conversion) with the clip's audio
    at 16 kHz mono. InputError when the clip has no usable window.
    """
    settings = ExpertSettings.from_config(cfg)
    media.check_video_input(videofile, need_audio=True)
    ckpt_file = cfg.wav2lip.checkpoint
    audio = media.decode_audio(videofile, settings.sample_rate_hz)
    check_vshift(settings.vshift_frames, int(len(audio) / settings.sample_rate_hz * settings.frame_rate_hz),
                 f"the audio of {videofile}")
    model = load_lipsync_expert(weights_dir, ckpt_file, device)
    with contextlib.closing(media.iter_video_frames(videofile)) as frames:
        result = sync_faces(model, (resize_face(frame) for frame in frames), audio, settings, device)
    if result.num_windows == 0:
        raise InputError(
            f"{videofile} is too short for the Wav2Lip expert: it needs {WINDOW_FRAMES} frames and "
            f"{MEL_WINDOW_FRAMES / MEL.frames_per_s:.2f} s of audio "
            f"(audio {len(audio) / settings.sample_rate_hz:.2f} s, {result.num_frames} frames)")
    return result


# ---- the model, as the stages use it -------------------------------------------------------------
class Wav2LipModel(SyncModel):
    """Wav2Lip's lip-sync expert: per-frame scores in [0, 1], smoothed here, thresholds in ``wav2lip``."""

    name = MODEL
    section = "wav2lip"
    stage3_only_keys = STAGE3_ONLY_KEYS
    own_curves = True
    input_files = (MEDIA_FILE, TRACKS_FILE, "crops")
    channel_order = "BGR"  # syncnet_python and Wav2Lip read frames with cv2
    stage2_what = "Wav2Lip's lip-sync expert on the face tracks"  # diarize.py's stage-2 line
    plot_what, plot_ylabel = "Wav2Lip expert smoothed score", "lip-sync score (smoothed)"

    def settings(self, cfg: Any) -> ExpertSettings:
        return ExpertSettings.from_config(cfg)

    def checkpoint_file(self, cfg: Any, weights_dir: str | Path | None) -> str:
        return cfg.wav2lip.checkpoint

    def networks(self, cfg: Any, weights_dir: str | Path | None) -> list[Network]:
        file = self.checkpoint_file(cfg, weights_dir)
        return [Network(file, lambda: load_lipsync_expert(weights_dir, file, "cpu"))]

    def stage2_key(self, cache: Cache, cfg: Any, tracks: Sequence[Mapping], weights_dir: str | Path | None
                   ) -> dict[str, Any]:
        cache.require(MEDIA_FILE, STAGE1_SCRIPT)
        settings = self.settings(cfg)
        file = self.checkpoint_file(cfg, weights_dir)
        return stage2_key(cache, cfg, settings, file, sha256_file(checkpoint_path(file, weights_dir)))

    def evidence(self, cache: Cache, cfg: Any, tracks: Sequence[Mapping], weights_dir: str | Path | None,
                 device: Any, progress: ProgressHook) -> Evidence:
        media_info = cache.require(MEDIA_FILE, STAGE1_SCRIPT)
        file = self.checkpoint_file(cfg, weights_dir)
        return Evidence(*expert_evidence(cache, cfg, tracks, media_info, file, weights_dir, device, progress))

    def offsets_text(self, sync: SyncEvidence) -> str:
        return offsets_text(sync)

    def summary(self, sync: SyncEvidence) -> str:
        return "Wav2Lip expert"

    def vote_thresholds(self, cfg: Any, sync: SyncEvidence) -> tuple[float, ...]:
        return tuple(cfg.wav2lip.conf_thresholds)

    def track_curves(self, cfg: Any, sync: SyncEvidence, distances: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The expert's smoothed per-frame scores, one per track of ``distances``."""
        return own_curves(sync, len(distances), self.name)

    def fusion_curves(self, cfg: Any, sync: SyncEvidence, num_tracks: int
                      ) -> tuple[list[np.ndarray] | None, list[str] | None]:
        curves = own_curves(sync, num_tracks, self.name)
        return curves, [self.name] * len(curves)

    def stage3_key(self, cfg: Any, sync: SyncEvidence) -> dict[str, Any]:
        return {"sync_model": self.name, **self.threshold_key(cfg)}

    def clip_report(self, videofile: str | Path, cfg: Any, weights_dir: str | Path | None, device: Any,
                    features: str | None = None) -> ClipReport:
        if features:
            raise InputError("--features saves SyncNet's embeddings (syncnet_python's demo_feature.py); "
                             f"it does not apply to --sync_model {self.name}")
        result = sync_clip(videofile, cfg, weights_dir, device)
        return ClipReport(demo_report(result.offset_frames, "Best score", result.best_score, result.confidence),
                          silent_note(videofile, result.silent))


WAV2LIP = Wav2LipModel()
