"""Whole-clip GestSync windows, as the reference cuts them (``inference_syncoffset.py``: every 25-frame window of
the masked frames at once), kept as test oracles for the streaming scorer in ``pipeline/sync/gestsync.py``
(which shares the trunk's features between overlapping windows instead). Not used by the package."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.sync.gestsync_frontend import DEFAULTS, FrontEndSettings, count_audio_windows


def count_video_windows(num_frames: int, settings: FrontEndSettings = DEFAULTS) -> int:
    """How many whole ``window_frames`` windows at ``window_stride_frames`` fit in ``num_frames`` frames."""
    if num_frames < settings.window_frames:
        return 0
    return (num_frames - settings.window_frames) // settings.window_stride_frames + 1


def window_starts(num_frames: int, num_mel_frames: int, settings: FrontEndSettings = DEFAULTS) -> list[int]:
    """Start frames of the windows that have both whole video and whole audio (the reference truncates the
    longer stream to the shorter)."""
    count = min(count_video_windows(num_frames, settings), count_audio_windows(num_mel_frames, settings))
    return [i * settings.window_stride_frames for i in range(count)]


def video_windows(masked_u8: np.ndarray, starts: Sequence[int], settings: FrontEndSettings = DEFAULTS) -> torch.Tensor:
    """``[N, 3, 25, 270, 480]`` float32 in [0, 1]: frames ``start .. start + 24`` of ``masked_u8``
    (``[T, 270, 480, 3]`` uint8 from ``masked_frame``), channels first."""
    span = settings.window_frames
    frames = torch.from_numpy(np.ascontiguousarray(masked_u8))
    if any(s < 0 or s + span > len(frames) for s in starts):
        raise InputError(f"a GestSync window of {span} frames does not fit {len(frames)} frames at {list(starts)}")
    if not len(starts):
        return torch.zeros((0, 3, span, settings.frame_height_px, settings.frame_width_px))
    batch = torch.stack([frames[s:s + span] for s in starts])  # [N, 25, H, W, 3]
    return batch.permute(0, 4, 1, 2, 3).float() / 255.0
