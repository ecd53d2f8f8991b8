"""Lip and gesture evidence for the same person: GestSync's stage 2 with ``gestsync.lip_model`` also runs a lip
model on every face track, and stage 3 chooses per track which evidence the fusion reads (``gestsync.prefer``).

Stage 2 (``gestsync.lip_model: syncnet | wav2lip``) keeps the lip model's own stage-2 evidence, exactly what
``run_syncnet.py --sync_model syncnet`` (or ``wav2lip``) would write, inside GestSync's ``sync.pckl`` record under
``lips`` (``LipEvidence``: ``model``, ``distances`` per face track, ``sync``: that model's own record).

Stage 3 puts both on GestSync's scale. The VoxConverse rule counts, per frame, the thresholds a track's curve
exceeds; the lip curve (SyncNet's smoothed confidence, or the expert's smoothed score) is mapped onto the
gesture scale by the increasing piecewise-linear map that sends each lip threshold onto the gesture threshold
of the same rank (linear beyond the first and last), so a mapped lip curve gets exactly the votes it gets on
its own scale with its own thresholds, and the two kinds of curve can be compared frame by frame. Then per
face track:

- ``lips``: the lip curve where the lip model scored the track (a finite offset), else the gesture curve;
- ``gestures``: the gesture curve where GestSync scored the track, else the lip curve;
- ``stronger``: per frame the higher of the two (a face turned away still speaks by its gestures, a hidden
  body by its lips).

Person tracks without a face (from ``persons.pckl``) have only gesture evidence.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from models.loader import checkpoint_path
from pipeline.cache import sha256_file
from pipeline.errors import CacheError, InputError
from pipeline.formats import GESTSYNC_LIP_MODELS as LIP_MODELS
from pipeline.formats import GESTSYNC_PREFERENCES as PREFERENCES
from pipeline.formats import RUN_SYNCNET
from pipeline.sync.base import SyncModel
from pipeline.sync.evidence_record import LipEvidence, SyncEvidence
from pipeline.sync.syncnet_model import SYNCNET
from pipeline.sync.wav2lip import WAV2LIP

SOURCE_LIPS, SOURCE_GESTURES, SOURCE_BOTH = "lips", "gestures", "lips+gestures"
LIP_SYNC_MODELS: dict[str, SyncModel] = {model.name: model for model in (SYNCNET, WAV2LIP)}  # LIP_MODELS[1:]


def lip_model(cfg: Any) -> SyncModel | None:
    """The model ``gestsync.lip_model`` names, None for 'none'."""
    name = cfg.gestsync.lip_model
    if name not in LIP_MODELS:
        raise InputError(f"unknown gestsync.lip_model {name!r}: choose one of {', '.join(LIP_MODELS)}")
    return LIP_SYNC_MODELS.get(name)


def preference(cfg: Any) -> str:
    """``gestsync.prefer``."""
    prefer = cfg.gestsync.prefer
    if prefer not in PREFERENCES:
        raise InputError(f"unknown gestsync.prefer {prefer!r}: choose one of {', '.join(PREFERENCES)}")
    return prefer


# ---- stage 2 -------------------------------------------------------------------------------------
def lip_key(cfg: Any, weights_dir: Any) -> dict[str, Any] | None:
    """What the lip evidence depends on beyond stage 1 (for GestSync's stage-2 key); None without one."""
    model = lip_model(cfg)
    if model is None:
        return None
    file = model.checkpoint_file(cfg, weights_dir)
    return {"model": model.name, model.section: model.section_key(cfg),
            "checkpoint": {"file": file, "sha256": sha256_file(checkpoint_path(file, weights_dir))}}


def lip_evidence(cache: Any, cfg: Any, tracks: Sequence[Mapping], weights_dir: Any, device: Any,
                 progress: Any) -> LipEvidence | None:
    """The lip model's stage-2 evidence on the face tracks (``sync.pckl`` ``lips``), None without a lip model."""
    model = lip_model(cfg)
    if model is None:
        return None
    evidence = model.evidence(cache, cfg, tracks, weights_dir, device, progress)
    return LipEvidence(model.name, tuple(evidence.distances), evidence.sync)


# ---- stage 3 -------------------------------------------------------------------------------------
def scale_map(values: np.ndarray, from_thresholds: Sequence[float], to_thresholds: Sequence[float]) -> np.ndarray:
    """``values`` under the increasing piecewise-linear map sending ``from_thresholds[k]`` to ``to_thresholds[k]``
    (linear with the end pieces' slopes beyond them; a shift for a single threshold). NaN stays NaN.

    ``x > from_thresholds[k]`` exactly when the mapped value ``> to_thresholds[k]``: the votes do not change.
    """
    src = np.asarray(from_thresholds, dtype=np.float64)
    dst = np.asarray(to_thresholds, dtype=np.float64)
    if src.size != dst.size or src.size == 0:
        raise InputError(f"the lip and gesture thresholds must be as many ({src.size} and {dst.size}) to put the "
                         f"two kinds of evidence on one scale")
    if np.any(np.diff(src) <= 0) or np.any(np.diff(dst) <= 0):
        raise InputError("the lip and gesture thresholds must each be strictly increasing to put the two kinds "
                         "of evidence on one scale")
    x = np.asarray(values, dtype=np.float64)
    if src.size == 1:
        return x - src[0] + dst[0]
    out = np.interp(x, src, dst)
    low_slope = (dst[1] - dst[0]) / (src[1] - src[0])
    high_slope = (dst[-1] - dst[-2]) / (src[-1] - src[-2])
    below, above = x < src[0], x > src[-1]
    out[below] = dst[0] + (x[below] - src[0]) * low_slope
    out[above] = dst[-1] + (x[above] - src[-1]) * high_slope
    return out


def lip_curves_and_thresholds(cfg: Any, lips: LipEvidence) -> tuple[list[np.ndarray], tuple[float, ...]]:
    """Per face track the lip model's per-frame curve on its own scale, and that model's vote thresholds."""
    model = LIP_SYNC_MODELS.get(lips.model)
    if model is None or lips.sync.model != lips.model:
        raise CacheError(f"sync.pckl holds malformed lip evidence: run {RUN_SYNCNET} --sync_model gestsync again")
    return model.track_curves(cfg, lips.sync, lips.distances), model.vote_thresholds(cfg, lips.sync)


def _frame_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per frame the larger finite value of two curves of the same track (either may be shorter)."""
    size = max(a.size, b.size)
    pa, pb = np.full(size, np.nan), np.full(size, np.nan)
    pa[:a.size], pb[:b.size] = a, b
    both = np.isfinite(pa) & np.isfinite(pb)
    out = np.where(np.isfinite(pa), pa, pb)
    out[both] = np.maximum(pa[both], pb[both])
    return out


def choose_curves(gesture_curves: Sequence[np.ndarray], gesture_offsets: Sequence[float],
                  lip_curves: Sequence[np.ndarray], lip_offsets: Sequence[float], prefer: str
                  ) -> tuple[list[np.ndarray], list[str]]:
    """The curve each track's fusion reads and where it came from (``lips``, ``gestures`` or both).

    All curves on the gesture scale; the first ``len(lip_curves)`` tracks are the face tracks, the rest
    gesture-only person tracks. A finite offset means the model scored the track.
    """
    curves, sources = [], []
    for idx, gesture in enumerate(gesture_curves):
        gesture = np.asarray(gesture, dtype=np.float64)
        if idx >= len(lip_curves):
            curves.append(gesture)
            sources.append(SOURCE_GESTURES)
            continue
        lip = np.asarray(lip_curves[idx], dtype=np.float64)
        has_lips, has_gestures = np.isfinite(lip_offsets[idx]), np.isfinite(gesture_offsets[idx])
        if prefer == "stronger" and has_lips and has_gestures:
            curves.append(_frame_max(lip, gesture))
            sources.append(SOURCE_BOTH)
        elif has_lips and (prefer == "lips" or not has_gestures):
            curves.append(lip)
            sources.append(SOURCE_LIPS)
        else:
            curves.append(gesture)
            sources.append(SOURCE_GESTURES)
    return curves, sources


def combined_curves(cfg: Any, sync: SyncEvidence, gesture_curves: Sequence[np.ndarray]
                    ) -> tuple[list[np.ndarray], list[str]]:
    """GestSync's curves with its lip evidence folded in by ``gestsync.prefer`` (see the module docstring)."""
    lips = sync.lips
    gesture_offsets = list(sync.offset_frames)
    if not lips:
        return [np.asarray(c, dtype=np.float64) for c in gesture_curves], [SOURCE_GESTURES] * len(gesture_curves)
    raw_curves, thresholds = lip_curves_and_thresholds(cfg, lips)
    if len(raw_curves) > len(gesture_curves):
        raise CacheError(f"sync.pckl holds lip evidence for more tracks than GestSync scored: run {RUN_SYNCNET} again")
    gesture_thresholds = tuple(cfg.gestsync.conf_thresholds)
    mapped = [scale_map(c, thresholds, gesture_thresholds) for c in raw_curves]
    lip_offsets = list(lips.sync.offset_frames)
    return choose_curves(gesture_curves, gesture_offsets, mapped, lip_offsets, preference(cfg))


def key_extra(cfg: Any, sync: SyncEvidence) -> dict[str, Any]:
    """What stage 3's decisions read of the lip evidence's settings (empty without lip evidence)."""
    lips = sync.lips
    if lips is None:
        return {}
    model = LIP_SYNC_MODELS.get(lips.model)
    return {"gestsync_prefer": preference(cfg), "lip_model": lips.model,
            **(model.threshold_key(cfg) if model is not None else {})}


__all__ = ["LIP_MODELS", "PREFERENCES", "choose_curves", "combined_curves", "key_extra", "lip_evidence", "lip_key",
           "lip_model", "preference", "scale_map"]
