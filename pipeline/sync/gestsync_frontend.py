"""GestSync's inputs (Sindhu-Hegde/gestsync ``utils/audio_utils.py`` and ``inference_syncoffset.py``).

Audio: ``wav2filterbanks``: log-mel filterbanks at 100 Hz (STFT n_fft 512, 320-sample Hann window, hop 160,
centred with reflection padding, the last frame dropped; magnitude, not power, through librosa's Slaney mel
basis; ``log(mel + 1e-20)``), time-major ``[T, 80]``.

Video: ``load_rgb_masked_frames``: each frame resized to 480 x 270 RGB with everything from the top down to
15 px below the face's lowest keypoint blacked out (in the original frame, before resizing), or, when no face
was found, rows 0..110 of the resized frame; values in [0, 1]. ``cv2.rectangle`` fills both corners
inclusively, so the masks cover rows ``0 .. bottom`` *including* ``bottom``.

Person crop: ``preprocess/inference_preprocess.py`` ``crop_video``: per frame of a person track the box's
centre and half its larger side, each median-filtered over the track (``scipy.signal.medfilt``, kernel 13,
zeros beyond the ends as scipy pads), a square of that side around that centre cut from the frame padded
with grey 110, resized to 480 x 270 (squashed: GestSync trains on such crops); the face mask is then drawn
on the crop, as GestSync finds the face on the crop video.

Windows: video window ``i`` is frames ``i .. i + 24`` (stride 1); its audio is filterbank frames
``4 i .. 4 i + 99`` (``load_spectrograms(stride=4)``), so both span the same second.

Stage 2's use of it (regions, windows, offsets, curves, caching): ``pipeline/sync/gestsync.py``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.medfilt import medfilt


@dataclass(frozen=True)
class FrontEndSettings:
    """GestSync's front-end values (config section ``gestsync``)."""

    sample_rate_hz: int = 16000
    n_fft: int = 512
    win_samples: int = 320
    hop_samples: int = 160
    num_mels: int = 80
    fmin_hz: float = 0.0
    fmax_hz: float = 8000.0
    log_floor: float = 1e-20
    mel_frames_per_video_frame: int = 4
    window_frames: int = 25
    window_stride_frames: int = 1
    frame_width_px: int = 480
    frame_height_px: int = 270
    mask_below_face_px: int = 15
    mask_rows_no_face: int = 110
    crop_median_kernel_frames: int = 13
    crop_pad_grey: int = 110

    def __post_init__(self) -> None:
        for name in ("sample_rate_hz", "n_fft", "win_samples", "hop_samples", "num_mels", "mel_frames_per_video_frame",
                     "window_frames", "window_stride_frames", "frame_width_px", "frame_height_px"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise InputError(f"gestsync {name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if self.win_samples > self.n_fft:
            raise InputError(f"gestsync win_samples ({self.win_samples}) must not exceed n_fft ({self.n_fft})")
        if not 0 <= self.fmin_hz < self.fmax_hz <= self.sample_rate_hz / 2:
            raise InputError(f"gestsync needs 0 <= fmin_hz < fmax_hz <= sample_rate_hz / 2, got "
                             f"{self.fmin_hz!r}, {self.fmax_hz!r}")
        if int(self.crop_median_kernel_frames) != self.crop_median_kernel_frames or \
                self.crop_median_kernel_frames < 1 or self.crop_median_kernel_frames % 2 == 0:
            raise InputError(f"gestsync crop_median_kernel_frames must be an odd whole number >= 1, got "
                             f"{self.crop_median_kernel_frames!r}")
        if not 0 <= self.crop_pad_grey <= 255:
            raise InputError(f"gestsync crop_pad_grey must be in 0..255, got {self.crop_pad_grey!r}")
        if not self.log_floor > 0:
            raise InputError(f"gestsync log_floor must be > 0, got {self.log_floor!r}")

    @classmethod
    def from_config(cls, cfg: Any) -> FrontEndSettings:
        """The ``gestsync`` section's front-end settings (every field is a key of that section)."""
        return cls(**{f.name: getattr(cfg.gestsync, f.name) for f in fields(cls)})

    @property
    def mel_window_frames(self) -> int:
        """Filterbank frames per window (100)."""
        return self.window_frames * self.mel_frames_per_video_frame


DEFAULTS = FrontEndSettings()


# ---- audio ---------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _mel_basis(sample_rate_hz: int, n_fft: int, num_mels: int, fmin_hz: float, fmax_hz: float) -> torch.Tensor:
    import librosa

    basis = librosa.filters.mel(sr=sample_rate_hz, n_fft=n_fft, n_mels=num_mels, fmin=fmin_hz, fmax=fmax_hz)
    return torch.from_numpy(basis).float()


def filterbanks(audio: np.ndarray, settings: FrontEndSettings = DEFAULTS) -> np.ndarray:
    """``[len // hop, 80]`` float32 log-mel filterbanks of mono audio (``wav2filterbanks``).

    int16 samples are scaled to [-1, 1) as ``librosa.load`` reads a 16-bit wav; float samples are taken as
    they are. Audio too short for reflection padding (at most n_fft / 2 samples) gives no frames.
    """
    wav = np.asarray(audio)
    if wav.ndim != 1 or not (wav.dtype == np.int16 or np.issubdtype(wav.dtype, np.floating)):
        raise InputError(f"GestSync needs mono int16 or float audio, got {wav.dtype} of shape {wav.shape}")
    if wav.size <= settings.n_fft // 2:
        return np.zeros((0, settings.num_mels), dtype=np.float32)
    samples = torch.from_numpy(wav.astype(np.float32) / 32768.0 if wav.dtype == np.int16 else wav.astype(np.float32))
    spectrum = torch.stft(samples, n_fft=settings.n_fft, hop_length=settings.hop_samples,
                          win_length=settings.win_samples, window=torch.hann_window(settings.win_samples),
                          center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    magnitude = spectrum[:, :-1].abs()  # [F, T]: the reference drops the last frame
    basis = _mel_basis(settings.sample_rate_hz, settings.n_fft, settings.num_mels, settings.fmin_hz, settings.fmax_hz)
    return torch.log(basis @ magnitude + settings.log_floor).T.contiguous().numpy()


def count_audio_windows(num_mel_frames: int, settings: FrontEndSettings = DEFAULTS) -> int:
    """How many whole audio windows (one per video window start) ``num_mel_frames`` filterbank frames hold."""
    span = settings.mel_window_frames
    step = settings.mel_frames_per_video_frame * settings.window_stride_frames
    return 0 if num_mel_frames < span else (num_mel_frames - span) // step + 1


def audio_windows(fbanks: np.ndarray, starts: Sequence[int], settings: FrontEndSettings = DEFAULTS) -> torch.Tensor:
    """``[N, 1, 80, 100]`` network input: the filterbank window of each video window start frame."""
    span, per_frame = settings.mel_window_frames, settings.mel_frames_per_video_frame
    out = np.empty((len(starts), 1, settings.num_mels, span), dtype=np.float32)
    for row, start in enumerate(starts):
        first = int(start) * per_frame
        if start < 0 or first + span > len(fbanks):
            raise InputError(f"no whole GestSync audio window at video frame {start} "
                             f"({len(fbanks)} filterbank frames)")
        out[row, 0] = fbanks[first:first + span].T
    return torch.from_numpy(out)


# ---- video ---------------------------------------------------------------------------------------
def masked_frame(frame_rgb: np.ndarray, face_bottom_px: int | None,
                 settings: FrontEndSettings = DEFAULTS) -> np.ndarray:
    """``[270, 480, 3]`` uint8: the frame (RGB, any size) resized, face and everything above it black.

    ``face_bottom_px``: the lowest face row in the frame as given (GestSync: the lowest face-oval keypoint);
    None when no face was found.
    """
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise InputError(f"GestSync needs uint8 RGB frames [H, W, 3], got {frame_rgb.dtype} {frame_rgb.shape}")
    size = (settings.frame_width_px, settings.frame_height_px)
    if face_bottom_px is None:
        out = cv2.resize(frame_rgb, size)
        out[: settings.mask_rows_no_face + 1] = 0
        return out
    img = frame_rgb.copy()
    img[: max(0, int(face_bottom_px) + settings.mask_below_face_px + 1)] = 0
    return cv2.resize(img, size)


def crop_squares(boxes: np.ndarray, settings: FrontEndSettings = DEFAULTS) -> np.ndarray:
    """``float64 [n, 3]``: per box ``(centre_x, centre_y, half_side)``, half the larger of width and height,
    each median-filtered over the sequence as ``crop_video`` does (``scipy.signal.medfilt``: zero padding, so
    the first and last ``kernel // 2`` values lean towards the smaller ones, as upstream's do)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(b):
        return np.zeros((0, 3))
    raw = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                    np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2], axis=1)
    kernel = settings.crop_median_kernel_frames
    return np.stack([medfilt(raw[:, k], kernel) for k in range(3)], axis=1)


def _square_span(centre: float, half: float, pad: int, size: int) -> tuple[int, int]:
    """First and end row (or column) of the square in frame pixels, as numpy slices ``crop_video``'s padded
    frame (``int`` truncation, then clamped to the padded extent)."""
    span = range(size + 2 * pad)[int(centre + pad - half):int(centre + pad + half)]
    return (span.start - pad, span.stop - pad) if len(span) else (0, 0)


def square_bounds(square: Sequence[float], width_px: int, height_px: int) -> tuple[int, int, int, int]:
    """``(x1, y1, x2, y2)`` in frame pixels (may reach beyond the frame) of the crop of ``square``."""
    x, y, half = (float(v) for v in square)
    pad = int(half)
    (y1, y2), (x1, x2) = _square_span(y, half, pad, height_px), _square_span(x, half, pad, width_px)
    return x1, y1, x2, y2


def square_crop(frame: np.ndarray, square: Sequence[float], settings: FrontEndSettings = DEFAULTS) -> np.ndarray:
    """``[270, 480, 3]`` uint8, the frame's channel order: ``crop_video``'s crop of one frame around
    ``square = (centre_x, centre_y, half_side)`` (grey ``crop_pad_grey`` outside the frame), resized.

    Only the part inside the frame is copied and bordered, not the whole padded frame: the same pixels."""
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = square_bounds(square, width, height)
    size = (settings.frame_width_px, settings.frame_height_px)
    if x2 <= x1 or y2 <= y1:
        return np.full((size[1], size[0], 3), settings.crop_pad_grey, dtype=np.uint8)
    inside = frame[max(y1, 0):min(y2, height), max(x1, 0):min(x2, width)]
    if inside.size == 0:
        crop = np.full((y2 - y1, x2 - x1, 3), settings.crop_pad_grey, dtype=np.uint8)
    else:
        grey = (settings.crop_pad_grey,) * 3
        crop = cv2.copyMakeBorder(inside, max(0, -y1), max(0, y2 - height), max(0, -x1), max(0, x2 - width),
                                  cv2.BORDER_CONSTANT, value=grey)
    return cv2.resize(crop, size)


def face_row_in_crop(face_bottom_px: float, square: Sequence[float], width_px: int, height_px: int,
                     settings: FrontEndSettings = DEFAULTS) -> int:
    """The row of the resized crop that shows frame row ``face_bottom_px`` (GestSync finds the face's lowest
    keypoint on the 480 x 270 crop and masks below it there)."""
    _, y1, _, y2 = square_bounds(square, width_px, height_px)
    return int(math.floor((float(face_bottom_px) - y1) * settings.frame_height_px / max(y2 - y1, 1)))


