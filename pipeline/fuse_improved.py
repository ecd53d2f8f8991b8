"""Stage 3's ``improved`` rule (``diarise.mode: improved``, settings in the ``improved`` config section): the
same evidence as the VoxConverse rule, decided differently where that rule is known to lose (issue 14).

1. Faces: each track's active frames come from the VoxConverse votes (``fuse.track_activity``), but every
   run longer than ``min_face_run_frames`` counts (the reference drops runs of <= 15 frames from the VAD and
   never writes them). Face identities are merged by voice as in the reference (average linkage with the
   co-occurrence penalty); each merged group is an on-screen speaker whose mean voice comes from every
   5 Hz embedding window under its active frames.
2. Voice-only speech (VAD frames no active face covers, ``pipeline.fuse_voice``): its embedding windows,
   averaged in chunks of ``chunk_s``, are clustered by average linkage; a cluster whose mean voice is close to
   an on-screen speaker's is that speaker, the others become speakers of their own (``spkNN``, never one
   ``unknown``), near-duplicates merged on their means and clusters with under ``min_speaker_s`` of speech
   dropped (with no face at all: merged into the closest cluster instead). With no speaking face at all this
   is the audio-only path: the speaker count comes from mean voices of many windows, so it does not grow with
   the number of VAD runs.
3. Resegmentation (``pipeline.fuse_voice.viterbi_potts``): one state per speaker on the 25 fps frames of
   speech, in steps of ``decode_step_frames``; a frame's score for a speaker is ``voice_weight`` times the
   similarity of its embedding window to the speaker's mean voice plus ``face_bonus`` where that speaker's
   face is active; changing speaker costs ``switch_penalty``. Mean voices are re-estimated from the decoding
   ``refine_iterations`` times. A turn as short as a few tenths of a second survives when its evidence
   outweighs two switches.
4. Overlap: a second speaker in a frame where another speaker's face syncs above the top vote threshold
   (``overlap_face``), or, with ``overlap_voice``, where the voice is about as close to a second mean voice.
5. Rejection (``reject_unexplained``): voice-only speech whose 1 s mean similarity (within its speech run) to its speaker is below
   ``reject_similarity`` is taken for a VAD false alarm and dropped.

Speaker models differ in how similar unrelated voices are (Resemblyzer's GE2E windows of two speakers sit
near 0.7, ResNetSE34's near 0.3): the voice settings are stated for a floor of 0 and rescaled by
``similarity_floor`` (``calibrated``).

Without any embedding (audio shorter than one window) there is no voice to compare: the VoxConverse steps
run on the longer-kept face runs (``fuse.turns_from_activities``).
"""
from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from pipeline import fuse
from pipeline.formats import Turn
from pipeline.fuse_voice import (
    absorb_small,
    cluster_voice_chunks,
    merge_close_means,
    run_local_mean,
    unit_rows,
    viterbi_potts,
    window_means,
)


def kept_runs(active: np.ndarray, min_frames: int) -> np.ndarray:
    """bool copy of ``active`` keeping only runs longer than ``min_frames``."""
    values, starts, lengths = fuse.find_runs(np.asarray(active) > 0)
    kept = np.zeros(len(active), dtype=bool)
    for v, s, n in zip(values, starts, lengths):
        if v and n > min_frames:
            kept[s:s + n] = True
    return kept


def _place(length: int, first: int, values: np.ndarray) -> tuple[int, int, np.ndarray]:
    """The part of a track-relative array that falls on frames ``[0, length)``."""
    start, stop = max(first, 0), min(first + values.size, length)
    return start, stop, values[start - first:stop - first] if stop > start else values[:0]


def face_speakers(tracks: Sequence[fuse.TrackEvidence], activities: Sequence[fuse.TrackActivity],
                  curves: dict[int, np.ndarray], strong_threshold: float, length: int, unit_emb: np.ndarray,
                  windows: np.ndarray, cfg_diarise: Any, cfg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                              np.ndarray]:
    """On-screen speakers: (active [length, C] bool, strong [length, C] bool, track per frame [length, C] int
    (-1: none), mean voices [C, dim]); C = 0 when no face speaks."""
    kept = {a.track_idx: kept_runs(a.active, int(cfg.min_face_run_frames)) for a in activities}
    identities = sorted({a.identity for a in activities if kept[a.track_idx].any()})
    dim = unit_emb.shape[1] if unit_emb.ndim == 2 else 0
    if not identities:
        return (np.zeros((length, 0), bool), np.zeros((length, 0), bool), np.zeros((length, 0), np.int64),
                np.zeros((0, dim)))
    id_frames = {k: np.zeros(length, dtype=bool) for k in identities}
    for a in activities:
        if a.identity in id_frames:
            start, stop, part = _place(length, a.first_frame, kept[a.track_idx])
            id_frames[a.identity][start:stop] |= part
    if len(unit_emb):
        id_voice = np.stack([unit_emb[np.unique(windows[id_frames[k]])].mean(axis=0) for k in identities])
        labels = fuse.cluster_identities(id_voice, fuse.identity_cooccurrence(tracks, identities),
                                         float(cfg.identity_merge_distance), float(cfg_diarise.cooccur_penalty))
    else:
        labels = np.arange(len(identities))
    label_of = dict(zip(identities, labels.tolist()))
    num = int(labels.max()) + 1
    active = np.zeros((length, num), dtype=bool)
    strong = np.zeros((length, num), dtype=bool)
    track_at = np.full((length, num), -1, dtype=np.int64)
    for a in activities:
        if a.identity not in label_of:
            continue
        col = label_of[a.identity]
        start, stop, part = _place(length, a.first_frame, kept[a.track_idx])
        active[start:stop, col] |= part
        track_at[start:stop, col][part] = a.track_idx
        _, _, curve = _place(length, a.first_frame, curves[a.track_idx][:a.active.size])
        strong[start:start + curve.size, col] |= part[:curve.size] & (curve > strong_threshold)
    means = np.stack([unit_emb[np.unique(windows[active[:, c]])].mean(axis=0) for c in range(num)]) \
        if len(unit_emb) else np.zeros((num, 0))
    return active, strong, track_at, means


def speakers_from_voice(unit_emb: np.ndarray, window_weight: np.ndarray, onscreen_means: np.ndarray,
                        hop_s: float, cfg: Any) -> np.ndarray:
    """Mean voices of every speaker: the on-screen ones first, then voice-only clusters no face matches."""
    chunk_means, chunk_sizes = cluster_voice_chunks(unit_emb, window_weight, hop_s, cfg)
    means = [m for m in onscreen_means]
    extra, extra_sizes = [], []
    for mean, size in zip(chunk_means, chunk_sizes):
        if len(means):
            sims = unit_rows(np.stack(means[:len(onscreen_means)])) @ mean if len(onscreen_means) else np.zeros(0)
            if sims.size and sims.max() >= float(cfg.match_similarity):
                continue
        extra.append(mean)
        extra_sizes.append(size)
    if extra:
        extra_means, extra_sizes = merge_close_means(np.stack(extra), np.asarray(extra_sizes, dtype=np.float64),
                                                     float(cfg.centroid_merge_distance))
        if not len(onscreen_means):  # audio only: small clusters join the closest rather than vanish
            extra_means, extra_sizes = absorb_small(extra_means, extra_sizes, float(cfg.min_speaker_s) / hop_s)
        keep = extra_sizes * hop_s >= float(cfg.min_speaker_s)
        if not keep.any() and not len(onscreen_means):
            keep[int(np.argmax(extra_sizes))] = True
        means.extend(extra_means[keep])
    dim = unit_emb.shape[1]
    return unit_rows(np.stack(means)) if means else np.zeros((0, dim))


def decode(scores_voice: np.ndarray, face_active: np.ndarray, speech_idx: np.ndarray, run_starts: np.ndarray,
           cfg: Any) -> np.ndarray:
    """Speaker index per speech frame: Viterbi over ``voice_weight * similarity + face_bonus * active``,
    summed over steps of ``decode_step_frames`` frames within each speech run (``run_starts``)."""
    scores = float(cfg.voice_weight) * scores_voice
    if face_active.shape[1]:
        scores[:, :face_active.shape[1]] += float(cfg.face_bonus) * face_active[speech_idx]
    run_id = np.cumsum(np.isin(np.arange(speech_idx.size), run_starts)) - 1
    position = np.arange(speech_idx.size) - np.asarray(run_starts)[run_id]
    block = np.cumsum(np.diff(run_id * (speech_idx.size + 1) + position // int(cfg.decode_step_frames),
                              prepend=-1) != 0) - 1
    block_starts = np.flatnonzero(np.diff(block, prepend=-1) > 0)
    block_scores = np.add.reduceat(scores, block_starts, axis=0)
    block_run_starts = np.flatnonzero(np.diff(run_id[block_starts], prepend=-1) > 0)
    return viterbi_potts(block_scores, float(cfg.switch_penalty), block_run_starts)[block]


def similarity_floor(cfg: Any, speaker_model: str | None) -> float:
    """``improved.similarity_floor_<model>`` when the config has one for ``speaker_model``, else
    ``improved.similarity_floor``."""
    values = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    return float(values.get(f"similarity_floor_{speaker_model}", values["similarity_floor"]))


def calibrated(cfg: Any, floor: float) -> SimpleNamespace:
    """The ``improved`` settings on a speaker model whose unrelated voices are ``floor`` similar: every
    similarity threshold t becomes ``floor + t * (1 - floor)``, every distance d ``d * (1 - floor)`` and the
    voice weight is divided by ``1 - floor`` (the settings are stated for a floor of 0)."""
    values = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    scale = 1.0 - floor
    for key in ("identity_merge_distance", "chunk_merge_distance", "centroid_merge_distance", "overlap_margin"):
        values[key] = float(values[key]) * scale
    for key in ("match_similarity", "reject_similarity", "overlap_min_similarity"):
        values[key] = floor + float(values[key]) * scale
    values["voice_weight"] = float(values["voice_weight"]) / scale
    return SimpleNamespace(**values)


def diarise_improved(tracks: Sequence[fuse.TrackEvidence], audio_vad_s: Sequence[tuple[float, float]],
                     embeddings: np.ndarray, cfg_diarise: Any, cfg: Any, metric: str, hop_s: float,
                     num_frames: int, duration_s: float | None = None,
                     thresholds: Sequence[float] | None = None, speaker_model: str | None = None) -> list[Turn]:
    """Speaker turns by the improved rule (same inputs and output as ``fuse.diarise``, plus the ``improved``
    config section ``cfg`` and the name of the speaker model that made the embeddings, which picks the
    similarity floor)."""
    cfg = calibrated(cfg, similarity_floor(cfg, speaker_model))
    fps = float(cfg_diarise.frame_rate_hz)
    thresholds = fuse.conf_thresholds(cfg_diarise, metric) if thresholds is None else tuple(thresholds)
    present = [(i, t) for i, t in enumerate(tracks) if len(t.frames)]
    curves = {i: fuse.track_curve(t, cfg_diarise) for i, t in present}
    activities = [fuse.track_activity(i, t, cfg_diarise, thresholds) for i, t in present]
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        return fuse.turns_from_activities(tracks, activities, int(cfg.min_face_run_frames), audio_vad_s,
                                          np.zeros((0, 0)), cfg_diarise, hop_s, num_frames, duration_s)

    timeline = fuse.EmbeddingTimeline(len(embeddings), float(hop_s), float(cfg_diarise.embedding_offset_s), fps)
    length = fuse.timeline_frames(num_frames, audio_vad_s, activities, fps)
    windows = timeline.at_frames(np.arange(length))
    unit_emb = unit_rows(embeddings).astype(np.float32)

    face_active, face_strong, track_at, onscreen_means = face_speakers(
        tracks, activities, curves, max(thresholds), length, unit_emb, windows, cfg_diarise, cfg)
    any_face = face_active.any(axis=1)
    speech = (fuse.vad_frame_counts(audio_vad_s, length, fps) > 0) | any_face
    voice_only = speech & ~any_face
    # share of each window's frames that are voice-only speech: whole windows are what gets clustered
    owned = np.bincount(windows, minlength=len(unit_emb)).astype(np.float64)
    window_weight = np.bincount(windows, weights=voice_only, minlength=len(unit_emb)) / np.maximum(owned, 1)
    means = speakers_from_voice(unit_emb, window_weight, onscreen_means, float(hop_s), cfg)
    num_onscreen = face_active.shape[1]
    if len(means) == 0:
        return []

    speech_idx = np.flatnonzero(speech)
    if speech_idx.size == 0:
        return []
    run_starts = np.flatnonzero(np.diff(speech_idx, prepend=-2) > 1)
    speech_windows = windows[speech_idx]
    labels = np.zeros(speech_idx.size, dtype=np.int64)
    for _ in range(int(cfg.refine_iterations) + 1):
        window_sim = unit_emb @ means.T.astype(np.float32)  # [num_windows, speakers]
        labels = decode(window_sim[speech_windows], face_active, speech_idx, run_starts, cfg)
        means = window_means(unit_emb, speech_windows, labels, means)

    window_sim = unit_emb @ means.T.astype(np.float32)
    frame_sim = window_sim[speech_windows]
    chosen_sim = frame_sim[np.arange(labels.size), labels]
    keep = np.ones(labels.size, dtype=bool)
    if bool(cfg.reject_unexplained):
        smoothed = run_local_mean(chosen_sim, run_starts, int(round(float(cfg.reject_window_s) * fps)) // 2)
        keep = any_face[speech_idx] | (smoothed >= float(cfg.reject_similarity))

    speaking = np.zeros((length, len(means)), dtype=bool)
    speaking[speech_idx[keep], labels[keep]] = True
    if bool(cfg.overlap_face) and num_onscreen:
        speaking[:, :num_onscreen] |= face_strong
    if bool(cfg.overlap_voice) and len(means) > 1:
        order = np.argsort(-frame_sim, axis=1)
        second = np.where(order[:, 0] == labels, order[:, 1], order[:, 0])
        second_sim = frame_sim[np.arange(labels.size), second]
        extra = keep & (second_sim >= float(cfg.overlap_min_similarity)) & \
            (chosen_sim - second_sim <= float(cfg.overlap_margin))
        speaking[speech_idx[extra], second[extra]] = True
    return speaking_turns(speaking, face_active, track_at, fps, duration_s)


def speaking_turns(speaking: np.ndarray, face_active: np.ndarray, track_at: np.ndarray, fps: float,
                   duration_s: float | None) -> list[Turn]:
    """One turn per run of each speaker's frames; 'av' with its tracks where that speaker's face is active."""
    raw = []
    num_onscreen = face_active.shape[1]
    for label in range(speaking.shape[1]):
        values, starts, lengths = fuse.find_runs(speaking[:, label])
        for v, s, n in zip(values, starts, lengths):
            if not v:
                continue
            s, e = int(s), int(s + n)
            if label < num_onscreen and face_active[s:e, label].any():
                ids = tuple(int(t) for t in np.unique(track_at[s:e, label]) if t >= 0)
                raw.append((s, e, label, "av", ids))
            else:
                raw.append((s, e, label, "audio", ()))
    return fuse.name_speakers(raw, fps, duration_s)


__all__ = ["diarise_improved", "face_speakers", "kept_runs", "speakers_from_voice", "speaking_turns"]
