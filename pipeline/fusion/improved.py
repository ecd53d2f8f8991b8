"""Stage 3's ``improved`` rule (``diarise.mode: improved``, settings in the ``improved`` config section): the
same evidence as the VoxConverse rule, with speakers found by a VBx-style back-end (issue 19) and anchored by
the faces seen speaking.

1. Speech is the whole-audio VAD (or the speech the user gave), nothing else: no frame outside it is labelled.
   Its runs are cut into steps of ``decode_step_frames``; each step is observed through the embedding window
   nearest its centre that lies inside its run (``run_windows``; a run shorter than a window takes the window
   centred on it), so no observation mixes two runs when the run is long enough.
2. Faces: each track's active frames come from the VoxConverse votes (``fuse.track_activity``), every run
   longer than ``min_face_run_frames`` counts, within speech. Face identities are merged by voice (average
   linkage on the back-end's projected voices, ``identity_merge_distance``, with the co-occurrence penalty);
   each merged group is an on-screen speaker. A step is anchored to a face speaker when that face is active in
   at least ``anchor_share`` of its frames; where some face syncs above the top vote threshold (strong) in that
   share, only the strong faces anchor it (a face between the two thresholds speaks only where no face is
   strong).
3. Back-end (``pipeline.fusion.speaker_backend`` then ``pipeline.fusion.vbx``): the observations are projected (centring,
   LDA, length norm; with the default transform or a fitted one of ``recording`` calibration, such as the
   shipped GE2E one, length norm alone) and clustered by average linkage at the recording's own two-mode
   threshold plus ``ahc_threshold`` (VBx's AHC). An AHC cluster is a face speaker when that face has anchored
   steps in it and AHC's own criterion would merge the face's voice with the cluster (the average similarity between the
   cluster's points and those of all the face's anchored steps above the same threshold; of several such
   faces, the one with most anchored steps there): a few stray anchored steps (a face syncing falsely while
   an off-screen voice speaks) do not hand another voice to the face. The others are voice-only speakers.
   The VB-HMM (``fa``, ``fb``, ``loop_prob`` over ``lda_dim`` PLDA dimensions, ``SpeakerBackend.vb_features``;
   every speech run a fresh draw of speaker) then re-assigns every step, except that an anchored step can only belong to its face
   speaker(s), which are fixed speakers of the model: a face seen speaking is a speaker (whatever the voice
   says there: a 2 s window barely hears a short turn), a voice no face claims is a speaker of its own.
4. Each step takes its most probable speaker; a voice-only speaker with less than ``min_speaker_s`` seconds of
   speech gives its steps to their next most probable speaker (smallest first; the last speaker stays).
5. Overlap only on evidence: a second speaker where two face speakers sync above the top vote threshold at once
   (``overlap_face``); with ``audio_overlap`` (off by default: no audio rule met the false-alarm bar on the
   development conversations, see configs/default.yaml) a second speaker where its posterior reaches
   ``audio_overlap_posterior``.

Without any embedding (audio shorter than one window) there is no voice to compare: the VoxConverse steps
run on the longer-kept face runs (``fuse.turns_from_activities``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.formats import Turn
from pipeline.fusion import voxconverse as fuse
from pipeline.fusion.speaker_backend import SpeakerBackend, default_backend
from pipeline.fusion.vbx import ahc_clusters, chunk_points, initial_posteriors, unit_rows, vbx


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


@dataclass(frozen=True)
class FaceSpeakers:
    """On-screen speakers on the frame timeline: active and strong [length, C] bool, track per frame [length, C]
    (-1: none); C = 0 when no face speaks."""

    active: np.ndarray
    strong: np.ndarray
    track_at: np.ndarray


def face_speakers(tracks: Sequence[fuse.TrackEvidence], activities: Sequence[fuse.TrackActivity],
                  curves: dict[int, np.ndarray], strong_threshold: float, speech: np.ndarray,
                  voices: np.ndarray, windows: np.ndarray, cfg_diarise: Any, cfg: Any) -> FaceSpeakers:
    """Face identities that speak (within ``speech``), merged by voice (``voices``: unit projected windows)."""
    length = speech.size
    kept = {a.track_idx: kept_runs(a.active, cfg.min_face_run_frames) for a in activities}
    id_frames: dict[int, np.ndarray] = {}
    for a in activities:
        start, stop, part = _place(length, a.first_frame, kept[a.track_idx])
        frames = id_frames.setdefault(a.identity, np.zeros(length, dtype=bool))
        frames[start:stop] |= part & speech[start:stop]
    identities = sorted(k for k, f in id_frames.items() if f.any())
    if not identities:
        empty = np.zeros((length, 0), dtype=bool)
        return FaceSpeakers(empty, empty, np.zeros((length, 0), dtype=np.int64))
    if len(voices):
        id_voice = unit_rows(np.stack([voices[np.unique(windows[id_frames[k]])].mean(axis=0) for k in identities]))
        labels = fuse.cluster_identities(id_voice, fuse.identity_cooccurrence(tracks, identities),
                                         cfg.identity_merge_distance, cfg_diarise.cooccur_penalty)
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
        part = part & speech[start:stop]
        active[start:stop, col] |= part
        track_at[start:stop, col][part] = a.track_idx
        _, _, curve = _place(length, a.first_frame, curves[a.track_idx][:a.active.size])
        strong[start:start + curve.size, col] |= part[:curve.size] & (curve > strong_threshold)
    return FaceSpeakers(active, strong, track_at)


# ---- observations ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Steps:
    """The speech frames cut into steps: frame indices [F], step of each [F], first step of each run [R],
    embedding window observing each step [T]."""

    frames: np.ndarray
    step_of_frame: np.ndarray
    run_starts: np.ndarray
    windows: np.ndarray


def run_windows(first: int, stop: int, centres: np.ndarray, num_windows: int, fps: float, hop_s: float,
                window_s: float) -> np.ndarray:
    """Window index for each centre frame of a speech run ``[first, stop)``: the window starting nearest
    ``centre - window_s / 2`` (a tie: the earlier) among those inside the run; for a run shorter than a
    window, the one centred on the run. Window k covers ``[k * hop_s, k * hop_s + window_s)``."""
    tiny = 1e-6
    low = int(np.ceil(first / fps / hop_s - tiny))
    high = int(np.floor((stop / fps - window_s) / hop_s + tiny))
    if low <= high:
        wanted = np.floor((centres / fps - window_s / 2) / hop_s + 0.5 - tiny).astype(np.int64)  # ties: earlier
        picked = np.clip(wanted, low, high)
    else:
        picked = np.full(centres.size, int(np.floor(((first + stop) / 2 / fps - window_s / 2) / hop_s + 0.5 - tiny)))
    return np.clip(picked, 0, num_windows - 1)


def speech_steps(speech: np.ndarray, step_frames: int, num_windows: int, fps: float, hop_s: float,
                 window_s: float) -> Steps:
    """Steps of ``step_frames`` within each run of ``speech`` frames and the window observing each."""
    frames = np.flatnonzero(speech)
    run_first = np.flatnonzero(np.diff(frames, prepend=-2) > 1)
    run_id = np.cumsum(np.isin(np.arange(frames.size), run_first)) - 1
    position = np.arange(frames.size) - run_first[run_id]
    key = run_id * (frames.size + 1) + position // step_frames
    step_of_frame = np.cumsum(np.diff(key, prepend=-1) != 0) - 1
    step_first = np.flatnonzero(np.diff(step_of_frame, prepend=-1) > 0)
    step_last = np.append(step_first[1:], frames.size) - 1
    centres = (frames[step_first] + frames[step_last] + 1) / 2.0
    run_starts = step_of_frame[run_first]
    windows = np.empty(step_first.size, dtype=np.int64)
    run_bounds = np.append(run_starts, step_first.size)
    for r, (s0, s1) in enumerate(zip(run_bounds[:-1], run_bounds[1:])):
        first = int(frames[run_first[r]])
        stop = int(frames[run_first[r + 1] - 1]) + 1 if r + 1 < run_first.size else int(frames[-1]) + 1
        windows[s0:s1] = run_windows(first, stop, centres[s0:s1], num_windows, fps, hop_s, window_s)
    return Steps(frames, step_of_frame, run_starts, windows)


def step_shares(steps: Steps, per_frame: np.ndarray) -> np.ndarray:
    """Share of each step's frames where each column of ``per_frame`` [length, C] is true: [T, C]."""
    counts = np.bincount(steps.step_of_frame, minlength=steps.windows.size).astype(np.float64)
    out = np.zeros((steps.windows.size, per_frame.shape[1]))
    for c in range(per_frame.shape[1]):
        out[:, c] = np.bincount(steps.step_of_frame, weights=per_frame[steps.frames, c],
                                minlength=steps.windows.size)
    return out / np.maximum(counts, 1)[:, None]


# ---- speakers ------------------------------------------------------------------------------------------------
def initial_labels(points: np.ndarray, anchored: np.ndarray, run_starts: np.ndarray, cfg: Any) -> np.ndarray:
    """Initial speaker of each step: its face speaker where anchored (columns of ``anchored`` [T, C]); else its
    AHC cluster, which is a face speaker when that face's voice is the cluster's voice (``claiming_face``), or
    a new voice-only speaker (numbered from C)."""
    num_faces = anchored.shape[1]
    chunks, chunk_of = chunk_points(points, run_starts, cfg.max_ahc_points)
    chunk_clusters, threshold = ahc_clusters(chunks, cfg.ahc_threshold, cfg.max_threshold_scores)
    clusters = chunk_clusters[chunk_of]
    face_of = np.where(anchored.any(axis=1), np.argmax(anchored, axis=1), -1) if num_faces else \
        np.full(len(points), -1)
    labels = np.empty(len(points), dtype=np.int64)
    next_label = num_faces
    for k in np.unique(clusters):
        members = clusters == k
        face = claiming_face(chunks[chunk_of[members]], chunks[chunk_of], face_of, face_of[members], threshold)
        if face >= 0:
            labels[members] = face
        else:
            labels[members] = next_label
            next_label += 1
    labels[face_of >= 0] = face_of[face_of >= 0]
    return labels


def claiming_face(cluster_points: np.ndarray, step_points: np.ndarray, face_of: np.ndarray,
                  cluster_faces: np.ndarray, threshold: float) -> int:
    """The face speaker an AHC cluster belongs to, or -1: among the faces anchored in the cluster
    (``cluster_faces``, -1: none), the one with the most anchored steps there whose voice AHC would merge with
    the cluster's (average-linkage similarity between the cluster's unit points and the points of every step
    anchored to that face, ``step_points`` / ``face_of``, above AHC's ``threshold``). A stray anchored step
    (a face active while another voice speaks) does not hand a whole cluster of that other voice to the
    face."""
    counts = np.bincount(cluster_faces[cluster_faces >= 0])
    cluster_mean = cluster_points.mean(axis=0)
    for face in np.argsort(-counts, kind="stable"):
        if counts[face] == 0:
            break
        if float(cluster_mean @ step_points[face_of == face].mean(axis=0)) > threshold:
            return int(face)
    return -1


def drop_small_speakers(gamma: np.ndarray, step_s: np.ndarray, num_faces: int, min_speaker_s: float) -> np.ndarray:
    """Most probable speaker per step, after voice-only speakers (index >= ``num_faces``) with less than
    ``min_speaker_s`` seconds of steps (``step_s``) give their steps to their next most probable speaker,
    smallest first, never the last speaker left."""
    allowed = np.ones(gamma.shape[1], dtype=bool)
    while True:
        labels = np.argmax(np.where(allowed, gamma, -1.0), axis=1)
        seconds = np.bincount(labels, weights=step_s, minlength=gamma.shape[1])
        used = np.flatnonzero(seconds > 0)
        small = [s for s in used if s >= num_faces and seconds[s] < min_speaker_s]
        if not small or len(used) <= 1:
            return labels
        allowed[min(small, key=lambda s: seconds[s])] = False


def diarise_improved(tracks: Sequence[fuse.TrackEvidence], audio_vad_s: Sequence[tuple[float, float]],
                     embeddings: np.ndarray, cfg_diarise: Any, cfg: Any, metric: str, hop_s: float,
                     num_frames: int, duration_s: float | None = None,
                     thresholds: Sequence[float] | None = None, backend: SpeakerBackend | None = None) -> list[Turn]:
    """Speaker turns by the improved rule (same inputs and output as ``fuse.diarise``, plus the ``improved``
    config section ``cfg`` and the speaker model's back-end transform; None: the default transform)."""
    fps = cfg_diarise.frame_rate_hz
    thresholds = fuse.conf_thresholds(cfg_diarise, metric) if thresholds is None else tuple(thresholds)
    present = [(i, t) for i, t in enumerate(tracks) if len(t.frames)]
    curves = {i: fuse.track_curve(t, cfg_diarise) for i, t in present}
    activities = [fuse.track_activity(i, t, cfg_diarise, thresholds) for i, t in present]
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        return fuse.turns_from_activities(tracks, activities, cfg.min_face_run_frames, audio_vad_s,
                                          np.zeros((0, 0)), cfg_diarise, hop_s, num_frames, duration_s)
    if backend is None:
        backend = default_backend("unnamed", embeddings.shape[1])

    length = fuse.timeline_frames(num_frames, audio_vad_s, activities, fps)
    speech = fuse.vad_frame_counts(audio_vad_s, length, fps) > 0
    if not speech.any():
        return []
    window_s = 2.0 * cfg_diarise.embedding_offset_s  # the window is centred offset_s after its start
    steps = speech_steps(speech, cfg.decode_step_frames, len(embeddings), fps, float(hop_s), window_s)
    voices = backend.project(embeddings)
    timeline = fuse.EmbeddingTimeline(len(embeddings), float(hop_s), cfg_diarise.embedding_offset_s, fps)
    faces = face_speakers(tracks, activities, curves, max(thresholds), speech, voices,
                          timeline.at_frames(np.arange(length)), cfg_diarise, cfg)
    num_faces = faces.active.shape[1]
    anchored = step_shares(steps, faces.active) >= cfg.anchor_share
    strong = step_shares(steps, faces.strong) >= cfg.anchor_share
    anchored = np.where(strong.any(axis=1, keepdims=True), strong, anchored)  # strong sync outranks a vote

    points = voices[steps.windows]
    labels = initial_labels(points, anchored, steps.run_starts, cfg)
    num_speakers = max(int(labels.max()) + 1, num_faces)
    lag = int(round(window_s * fps / cfg.decode_step_frames))  # steps one window length apart do not overlap
    features, phi = backend.vb_features(embeddings[steps.windows], points, cfg.lda_dim, lag)
    bias = np.zeros((len(points), num_speakers))  # anchored steps belong to their face speaker(s) only
    bias[np.flatnonzero(anchored.any(axis=1)), :] = -np.inf
    bias[:, :num_faces][anchored] = 0.0
    result = vbx(features, phi, initial_posteriors(labels, num_speakers, cfg.init_smoothing),
                 cfg.loop_prob, cfg.fa, cfg.fb, steps.run_starts, bias,
                 cfg.max_iterations, cfg.epsilon, cfg.drop_share)
    step_s = np.bincount(steps.step_of_frame, minlength=len(points)) / fps
    step_labels = drop_small_speakers(result.gamma, step_s, num_faces, cfg.min_speaker_s)

    speaking = np.zeros((length, num_speakers), dtype=bool)
    speaking[steps.frames, step_labels[steps.step_of_frame]] = True
    if cfg.overlap_face and num_faces > 1:
        together = faces.strong.sum(axis=1) >= 2
        speaking[:, :num_faces] |= faces.strong & together[:, None]
    if cfg.audio_overlap and num_speakers > 1:
        kept = np.isin(np.arange(num_speakers), step_labels)
        second = np.where(kept, result.gamma, -1.0)
        second[np.arange(len(points)), step_labels] = -1.0
        best = np.argmax(second, axis=1)
        extra = second[np.arange(len(points)), best] >= cfg.audio_overlap_posterior
        on = extra[steps.step_of_frame]
        speaking[steps.frames[on], best[steps.step_of_frame][on]] = True
    return speaking_turns(speaking, faces.active, faces.track_at, fps, duration_s)


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


__all__ = ["FaceSpeakers", "Steps", "claiming_face", "diarise_improved", "drop_small_speakers", "face_speakers", "initial_labels",
           "kept_runs", "run_windows", "speaking_turns", "speech_steps", "step_shares"]
