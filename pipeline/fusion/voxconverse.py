"""Stage 3's decisions: who spoke when, from sync distances, VAD, face identities and speaker embeddings.

Pure functions on arrays, no I/O. They reproduce av-diarization's ``Diarizer.run`` step by step (every
threshold in ``cfg.diarise``), on a timeline of ``cfg.diarise.frame_rate_hz`` frames:

1. Per face track (``track_activity``): the SyncNet shift with the smallest mean distance, the per-frame
   distance at that shift padded at both ends, confidence = median of the mean distances minus it,
   median-filtered; one vote for the track's VAD and one per exceeded threshold; frames with enough votes,
   binary-closed, are the track's active speech, and runs longer than ``min_utterance_frames`` are
   utterances of the track's face identity (``face_utterances``).
2. Face identities are merged by average-linkage clustering of their mean speaker embeddings (cosine
   distance, ``merge_distance``), with ``cooccur_penalty`` added between identities seen together.
3. Whole-audio VAD frames no active face covers (runs longer than ``min_offscreen_frames``) are labelled
   frame by frame with the closest identity's cluster when cosine similarity reaches
   ``offscreen_min_similarity``, else ``unknown``, then majority-filtered.

Beyond the reference: the timeline has the video's real length (not a 120-minute buffer) and turn ends
are clipped to the duration; with no face utterances at all (zero tracks, or faces that never speak) the
uncovered speech runs are clustered by voice alone, one speaker per run (``audio_only_turns``); without any
embedding (no audio) face identities stay apart and voice-only speech is ``unknown``; silence or a single
identity give empty or one-speaker results instead of crashes.

Output, as the reference: one turn per face utterance and per labelled off-screen stretch, never merged,
so turns of different faces may overlap. ``unknown`` turns are kept and labelled ``unknown`` (the
reference writes them to its RTTM too, where they score as one more speaker); every other speaker is
named ``spk00``, ``spk01``... in order of first appearance.
"""
from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.ndimage import binary_closing

from pipeline.errors import CacheError
from pipeline.formats import RUN_SYNCNET, Turn
from pipeline.medfilt import medfilt
from pipeline.settings import DiariseConfig

UNKNOWN_SPEAKER = "unknown"
UNKNOWN_LABEL = -1
_COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps


@dataclass(frozen=True)
class TrackEvidence:
    """What the earlier stages know about one face track."""

    frames: np.ndarray  # int [num_frames_on_screen], ascending frame indices of the track
    dists: np.ndarray  # float [num_windows, num_shifts], SyncNet distances (activesd.pckl row)
    vad_s: Sequence[tuple[float, float]]  # speech in the track's audio, seconds from its first frame
    identity: int  # face identity (faceid.pckl)
    confidence: np.ndarray | None = None  # float [n] on frames first_frame + j, when the sync model gives its own

    @property
    def first_frame(self) -> int:
        return int(self.frames[0])


@dataclass(frozen=True)
class TrackActivity:
    """One track's per-frame decision, on frames ``first_frame + i``."""

    track_idx: int
    identity: int
    first_frame: int
    active: np.ndarray  # int {0, 1} [len(confidence)]


@dataclass(frozen=True)
class Utterance:
    """A run of active speech of one face track, in frames ``[start_frame, end_frame)``."""

    start_frame: int
    end_frame: int
    track_idx: int
    identity: int


# ---- small helpers ------------------------------------------------------------------------------------
def find_runs(values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(run values, run start indices, run lengths) of consecutive equal items of a 1-D sequence."""
    x = np.asarray(values)
    if x.ndim != 1:
        raise ValueError("find_runs expects a 1-D sequence")
    if x.size == 0:
        return x[:0], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    is_start = np.empty(x.size, dtype=bool)
    is_start[0] = True
    np.not_equal(x[:-1], x[1:], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    return x[is_start], starts, np.diff(np.append(starts, x.size))


def majority_filter(labels: Sequence[int], width_frames: int) -> list[int]:
    """The most frequent label in a window of ``width_frames`` starting at each frame, as av-diarization.

    The window starting at frame ``i`` gives the label of frame ``i + width // 2``; the first ``width // 2``
    frames copy the first result, the last windows are shortened by the end of the sequence, and a
    sequence no longer than the window is returned unchanged. Ties go to the label Python's ``set``
    iterates first, exactly as the reference's ``max(set(a), key=a.count)``.
    """
    seq = [int(v) for v in labels]
    if len(seq) <= width_frames:
        return seq
    offset = width_frames // 2
    result = []
    for i in range(len(seq) - offset):
        window = seq[i:i + width_frames]
        result.append(max(set(window), key=window.count))
    return [result[0]] * offset + result


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` [n, d] with every row of ``b`` [m, d]: [n, m]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a_unit = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), _COSINE_EPS)
    b_unit = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), _COSINE_EPS)
    return a_unit @ b_unit.T


def conf_thresholds(cfg_diarise: DiariseConfig, metric: str) -> tuple[float, ...]:
    """The confidence thresholds for the scale of the SyncNet distance stage 2 recorded."""
    if metric == "cosine":
        return tuple(float(v) for v in cfg_diarise.conf_thresholds_cosine)
    if metric == "euclidean":
        return tuple(float(v) for v in cfg_diarise.conf_thresholds_euclidean)
    raise CacheError(f"sync.pckl names an unknown distance metric {metric!r}: run {RUN_SYNCNET} again")


def _exact(value: float) -> float:
    """Round away float noise in a ratio of config values (25 * 0.2 -> 5.0) so indices match the reference."""
    return round(float(value), 9)


@dataclass(frozen=True)
class EmbeddingTimeline:
    """Maps times and frames to the sliding speaker embedding that represents them.

    Embedding k covers ``[k * hop_s, k * hop_s + window_s)``; the reference picks index
    ``min(max(0, 5 * t - 5), n - 1)`` for time t, i.e. ``(t - offset_s) / hop_s`` with the 1 s offset of a
    2 s window's centre, truncated. The arithmetic is kept in the reference's form so indices agree.
    """

    num_embeddings: int
    hop_s: float
    offset_s: float
    frame_rate_hz: float

    def at_time(self, time_s: float) -> int:
        per_s = _exact(1.0 / self.hop_s)
        position = time_s * per_s - _exact(self.offset_s * per_s)
        return int(min(max(0.0, position), self.num_embeddings - 1))

    def at_frames(self, frame_idx: np.ndarray) -> np.ndarray:
        frames_per_hop = _exact(self.frame_rate_hz * self.hop_s)
        position = np.asarray(frame_idx, dtype=np.float64) / frames_per_hop - _exact(self.offset_s / self.hop_s)
        return np.clip(position, 0.0, self.num_embeddings - 1).astype(np.int64)


# ---- 1. per-track active speech -------------------------------------------------------------------------
def sync_confidence(dists: np.ndarray, pad_frames: int, pad_value: float, medfilt_frames: int) -> np.ndarray:
    """Per-frame sync confidence of one track: [num_windows + 2 * pad_frames].

    The shift with the smallest mean distance over the track is the best; confidence is the median of
    the per-shift means minus the distance at the best shift, padded so window i sits on its centre frame.
    """
    dists = np.asarray(dists)
    if dists.ndim != 2 or dists.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    mean_per_shift = np.ascontiguousarray(dists.T).mean(axis=1)  # [num_shifts], summed like the reference
    best_shift = int(np.argmin(mean_per_shift))
    frame_dist = np.pad(dists[:, best_shift], (pad_frames, pad_frames), "constant", constant_values=pad_value)
    confidence = np.median(mean_per_shift) - frame_dist
    return medfilt(confidence, medfilt_frames)  # a kernel longer than a short track: zero-padded, as in the reference


def track_confidence(dists: np.ndarray, cfg_diarise) -> np.ndarray:
    """``sync_confidence`` with the config's padding and filter: the smoothed per-frame confidence of a track."""
    return sync_confidence(dists, cfg_diarise.conf_pad_frames, cfg_diarise.conf_pad_value,
                           cfg_diarise.conf_medfilt_frames)


def track_curve(track: TrackEvidence, cfg_diarise: DiariseConfig) -> np.ndarray:
    """The per-frame confidence the rules vote on: the sync model's own curve when stage 2 gave one
    (Wav2Lip's smoothed score), else SyncNet's from the distances (``track_confidence``)."""
    if track.confidence is not None:
        return np.asarray(track.confidence, dtype=np.float64)
    return track_confidence(track.dists, cfg_diarise)


def vad_frame_counts(segments_s: Sequence[tuple[float, float]], num_frames: int, frame_rate_hz: float) -> np.ndarray:
    """How many VAD segments cover each frame: [num_frames]; frames ``int(start * fps) .. int(end * fps) - 1``."""
    counts = np.zeros(num_frames, dtype=np.float64)
    for start_s, end_s in segments_s:
        counts[max(0, int(start_s * frame_rate_hz)):max(0, int(end_s * frame_rate_hz))] += 1
    return counts


def active_speaker_frames(confidence: np.ndarray, vad_counts: np.ndarray, thresholds: Sequence[float],
                          min_votes: int, closing_frames: int) -> np.ndarray:
    """Frames where VAD plus exceeded confidence thresholds give ``min_votes``, binary-closed: int {0, 1}.

    scipy's closing treats the outside as silence, so it also trims active frames within about
    ``closing_frames / 2`` of the track's ends, as in the reference.
    """
    votes = np.array(vad_counts, dtype=np.float64, copy=True)
    for threshold in thresholds:
        votes[confidence > threshold] += 1
    active = (votes >= min_votes).astype(np.int64)
    if active.size == 0:
        return active
    return binary_closing(active, structure=np.ones(closing_frames)).astype(np.int64)


def track_activity(track_idx: int, track: TrackEvidence, cfg_diarise: DiariseConfig,
                   thresholds: Sequence[float]) -> TrackActivity:
    """One track's active-speech frames from its sync confidence and its own VAD."""
    confidence = track_curve(track, cfg_diarise)
    vad_counts = vad_frame_counts(track.vad_s, confidence.size, cfg_diarise.frame_rate_hz)
    active = active_speaker_frames(confidence, vad_counts, thresholds, cfg_diarise.min_votes,
                                   cfg_diarise.closing_frames)
    return TrackActivity(track_idx, int(track.identity), track.first_frame, active)


def face_utterances(activity: TrackActivity, min_utterance_frames: int) -> list[Utterance]:
    """Runs of active frames longer than ``min_utterance_frames``, on the video's frame timeline."""
    values, starts, lengths = find_runs(activity.active)
    return [
        Utterance(activity.first_frame + int(s), activity.first_frame + int(s + n), activity.track_idx,
                  activity.identity)
        for v, s, n in zip(values, starts, lengths)
        if v > 0 and n > min_utterance_frames
    ]


# ---- 2. merging face identities by voice --------------------------------------------------------------
def average_linkage_clusters(distances: np.ndarray, threshold: float) -> np.ndarray:
    """Cluster labels of a precomputed distance matrix [n, n] by average linkage, merging while < threshold.

    Reproduces sklearn's ``AgglomerativeClustering(n_clusters=None, distance_threshold=threshold,
    linkage='average', metric='precomputed')``, which the reference uses, with scipy alone: scipy's
    average-linkage tree of the upper triangle, one cluster more than the merges at or above the
    threshold, and the tree cut top-down by splitting the newest node first, clusters numbered in the
    order sklearn numbers them (so the majority filter breaks ties as the reference does).
    """
    distances = np.asarray(distances, dtype=np.float64)
    n = distances.shape[0]
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    tree = linkage(distances[np.triu_indices(n, k=1)], method="average")
    children = tree[:, :2].astype(np.int64)
    num_clusters = int(np.count_nonzero(tree[:, 2] >= threshold)) + 1
    heads = [-(2 * n - 2)]  # negated node ids; the root is the last merge
    for _ in range(num_clusters - 1):
        left, right = children[-heads[0] - n]
        heapq.heappush(heads, -int(left))
        heapq.heappushpop(heads, -int(right))  # drops the node just split, the newest in the heap
    labels = np.zeros(n, dtype=np.int64)
    for label, head in enumerate(heads):
        stack = [-head]
        while stack:
            node = stack.pop()
            if node < n:
                labels[node] = label
            else:
                stack.extend(int(c) for c in children[node - n])
    return labels


def identity_embeddings(utterances: Sequence[Utterance], embeddings: np.ndarray, timeline: EmbeddingTimeline,
                        frame_rate_hz: float) -> tuple[list[int], np.ndarray]:
    """Sorted identities with utterances and the mean of the embeddings at their utterances' midpoints."""
    picked: dict[int, list[np.ndarray]] = {}
    for utt in utterances:
        mid_s = (utt.start_frame / frame_rate_hz + utt.end_frame / frame_rate_hz) / 2
        picked.setdefault(utt.identity, []).append(embeddings[timeline.at_time(mid_s)])
    identities = sorted(picked)
    means = np.stack([np.mean(np.stack(picked[k]), axis=0) for k in identities]) if identities else np.zeros((0, 0))
    return identities, means


def identity_cooccurrence(tracks: Sequence[TrackEvidence], identities: Sequence[int]) -> np.ndarray:
    """[n, n] 1 where two different identities have tracks on screen in a common frame, else 0."""
    frames = {k: np.unique(np.concatenate([t.frames for t in tracks if t.identity == k] or [np.zeros(0, int)]))
              for k in identities}
    n = len(identities)
    together = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            if np.intersect1d(frames[identities[i]], frames[identities[j]], assume_unique=True).size:
                together[i, j] = together[j, i] = 1
    return together


def cluster_identities(identity_embs: np.ndarray, cooccur: np.ndarray, merge_distance: float,
                       cooccur_penalty: float) -> np.ndarray:
    """Cluster label per identity: average linkage on 1 - cosine similarity plus the co-occurrence penalty."""
    n = len(identity_embs)
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    distances = 1.0 - cosine_similarity(identity_embs, identity_embs) + cooccur * cooccur_penalty
    return average_linkage_clusters(distances, merge_distance)


# ---- 3. speech no face covers ---------------------------------------------------------------------------
def uncovered_speech(vad_counts: np.ndarray, activities: Sequence[TrackActivity]) -> np.ndarray:
    """Whole-audio VAD counts minus the active frames of every track, negatives and zeros as 0."""
    left = np.array(vad_counts, dtype=np.float64, copy=True)
    for act in activities:
        left[act.first_frame:act.first_frame + act.active.size] -= act.active
    left[left < 1] = 0
    return left


def speech_runs(uncovered: np.ndarray, min_frames: int) -> list[tuple[int, int]]:
    """``(start_frame, end_frame)`` of runs of uncovered speech longer than ``min_frames``."""
    values, starts, lengths = find_runs(uncovered)
    return [(int(s), int(s + n)) for v, s, n in zip(values, starts, lengths) if v > 0 and n > min_frames]


def label_offscreen_run(start_frame: int, end_frame: int, embeddings: np.ndarray, timeline: EmbeddingTimeline,
                        identity_embs: np.ndarray, identity_labels: np.ndarray, min_similarity: float,
                        majority_frames: int) -> list[tuple[int, int, int]]:
    """Label each frame of a run with the closest identity's cluster (or UNKNOWN_LABEL), majority-filter,
    and return the sub-runs as ``(start_frame, end_frame, label)``."""
    frames = np.arange(start_frame, end_frame)
    if len(identity_embs) == 0 or timeline.num_embeddings == 0:
        labels = [UNKNOWN_LABEL] * frames.size
    else:
        similarity = cosine_similarity(embeddings[timeline.at_frames(frames)], identity_embs)  # [frames, ids]
        closest = np.argmax(similarity, axis=1)
        best = similarity[np.arange(frames.size), closest]
        labels = np.where(best >= min_similarity, identity_labels[closest], UNKNOWN_LABEL).tolist()
    values, starts, lengths = find_runs(majority_filter(labels, majority_frames))
    return [(start_frame + int(s), start_frame + int(s + n), int(v)) for v, s, n in zip(values, starts, lengths)]


def audio_only_turns(runs: Sequence[tuple[int, int]], embeddings: np.ndarray, timeline: EmbeddingTimeline,
                     merge_distance: float) -> list[tuple[int, int, int]]:
    """Our addition for videos without speaking faces: one turn per speech run, runs clustered by voice.

    A run's voice is the mean of the distinct sliding embeddings its frames map to; runs are merged by
    the same average-linkage cosine threshold as face identities (no co-occurrence: runs never overlap).
    Without any embedding (audio shorter than one window) every run is UNKNOWN_LABEL.
    """
    if not runs:
        return []
    if timeline.num_embeddings == 0:
        return [(s, e, UNKNOWN_LABEL) for s, e in runs]
    voices = np.stack([embeddings[np.unique(timeline.at_frames(np.arange(s, e)))].mean(axis=0) for s, e in runs])
    labels = average_linkage_clusters(1.0 - cosine_similarity(voices, voices), merge_distance)
    return [(s, e, int(label)) for (s, e), label in zip(runs, labels)]


# ---- output --------------------------------------------------------------------------------------------
def name_speakers(raw_turns: Sequence[tuple[int, int, int, str, tuple[int, ...]]], frame_rate_hz: float,
                  duration_s: float | None = None) -> list[Turn]:
    """Turns sorted by time, labels renamed ``spk00``, ``spk01``... by first appearance, -1 as ``unknown``.

    ``raw_turns`` hold ``(start_frame, end_frame, label, source, track_ids)``; ends are clipped to
    ``duration_s`` when given (the padded sync curve can reach one frame past the video).
    """
    names: dict[int, str] = {}
    turns = []
    for start_f, end_f, label, source, track_ids in sorted(raw_turns, key=lambda r: (r[0], r[1], r[3], r[4], r[2])):
        if label == UNKNOWN_LABEL:
            speaker = UNKNOWN_SPEAKER
        else:
            speaker = names.setdefault(label, f"spk{len(names):02d}")
        start_s, end_s = start_f / frame_rate_hz, end_f / frame_rate_hz
        if duration_s is not None:
            end_s = min(end_s, duration_s)
        if end_s > start_s:
            turns.append(Turn(start_s, end_s, speaker, source, tuple(int(t) for t in track_ids)))
    return turns


def timeline_frames(num_frames: int, audio_vad_s: Sequence[tuple[float, float]], activities: Sequence[TrackActivity],
                    frame_rate_hz: float) -> int:
    """Frames the decision arrays need: the video, the VAD and every track's padded curve must fit."""
    ends = [int(num_frames)]
    ends += [int(end_s * frame_rate_hz) for _, end_s in audio_vad_s]
    ends += [a.first_frame + a.active.size for a in activities]
    return max(ends)


def diarise(tracks: Sequence[TrackEvidence], audio_vad_s: Sequence[tuple[float, float]], embeddings: np.ndarray,
            cfg_diarise: DiariseConfig, metric: str, hop_s: float, num_frames: int,
            duration_s: float | None = None, thresholds: Sequence[float] | None = None) -> list[Turn]:
    """Speaker turns of one video from its face tracks, whole-audio VAD and sliding speaker embeddings.

    ``embeddings`` is [num_windows, dim] with window k starting at ``k * hop_s``; ``metric`` is the SyncNet
    distance stage 2 used ('cosine' or 'euclidean'), which picks the confidence thresholds unless
    ``thresholds`` gives them (another sync model's own scale).
    """
    thresholds = conf_thresholds(cfg_diarise, metric) if thresholds is None else tuple(thresholds)
    activities = [track_activity(i, t, cfg_diarise, thresholds) for i, t in enumerate(tracks) if len(t.frames)]
    return turns_from_activities(tracks, activities, cfg_diarise.min_utterance_frames, audio_vad_s,
                                 embeddings, cfg_diarise, hop_s, num_frames, duration_s)


def turns_from_activities(tracks: Sequence[TrackEvidence], activities: Sequence[TrackActivity],
                          min_utterance_frames: int, audio_vad_s: Sequence[tuple[float, float]],
                          embeddings: np.ndarray, cfg_diarise: DiariseConfig, hop_s: float, num_frames: int,
                          duration_s: float | None = None) -> list[Turn]:
    """Steps 2 and 3 from every track's active frames (step 1, whichever rule made them): the turns."""
    fps = cfg_diarise.frame_rate_hz
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2:
        embeddings = embeddings.reshape(-1, embeddings.shape[-1]) if embeddings.size else np.zeros((0, 0))
    timeline = EmbeddingTimeline(len(embeddings), float(hop_s), cfg_diarise.embedding_offset_s, fps)

    utterances = [u for a in activities for u in face_utterances(a, min_utterance_frames)]
    length = timeline_frames(num_frames, audio_vad_s, activities, fps)
    uncovered = uncovered_speech(vad_frame_counts(audio_vad_s, length, fps), activities)
    runs = speech_runs(uncovered, cfg_diarise.min_offscreen_frames)

    if not utterances:
        raw = [(s, e, label, "audio", ()) for s, e, label in
               audio_only_turns(runs, embeddings, timeline, cfg_diarise.merge_distance)]
        return name_speakers(raw, fps, duration_s)

    if timeline.num_embeddings:
        identities, id_embs = identity_embeddings(utterances, embeddings, timeline, fps)
        id_labels = cluster_identities(id_embs, identity_cooccurrence(tracks, identities),
                                       cfg_diarise.merge_distance, cfg_diarise.cooccur_penalty)
    else:  # no voice to compare: every face identity is its own speaker
        identities = sorted({u.identity for u in utterances})
        id_embs, id_labels = np.zeros((0, 0)), np.arange(len(identities))
    label_of = dict(zip(identities, id_labels.tolist()))

    raw = [(u.start_frame, u.end_frame, label_of[u.identity], "av", (u.track_idx,)) for u in utterances]
    for start_f, end_f in runs:
        for s, e, label in label_offscreen_run(start_f, end_f, embeddings, timeline, id_embs, id_labels,
                                               cfg_diarise.offscreen_min_similarity,
                                               cfg_diarise.majority_filter_frames):
            raw.append((s, e, label, "audio", ()))
    return name_speakers(raw, fps, duration_s)
