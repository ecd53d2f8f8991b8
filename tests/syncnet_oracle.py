"""SyncNet's whole distance matrix at once (syncnet_python's ``calc_pdist`` over every window), kept as a test
oracle for the streamed rows ``pipeline/sync/syncnet.py`` computes as embeddings arrive. Not used by the package."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import InputError
from pipeline.sync.syncnet import METRICS, _distance_rows


def distance_matrix(lip: torch.Tensor | np.ndarray, audio: torch.Tensor | np.ndarray, vshift_frames: int,
                    metric: str, chunk_windows: int = 512) -> np.ndarray:
    """``[W, 2 * vshift + 1]`` float32: row i compares lip window i with audio windows ``i - vshift .. i + vshift``.

    Audio windows outside ``[0, W)`` are zero vectors, as in the original's ``calc_pdist``.
    """
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    lip_t, aud_t = torch.as_tensor(lip).float(), torch.as_tensor(audio).float()
    if lip_t.shape != aud_t.shape or lip_t.ndim != 2:
        raise InputError(
            f"lip and audio embeddings must both be [W, D], got {tuple(lip_t.shape)} and {tuple(aud_t.shape)}")
    padded = F.pad(aud_t, (0, 0, vshift_frames, vshift_frames))  # [W + 2v, D]
    rows = [
        _distance_rows(lip_t[s: s + chunk_windows], padded[s: s + chunk_windows + 2 * vshift_frames], metric)
        for s in range(0, lip_t.shape[0], chunk_windows)
    ]
    if not rows:
        return np.zeros((0, 2 * vshift_frames + 1), dtype=np.float32)
    return torch.cat(rows).cpu().numpy().astype(np.float32, copy=False)
