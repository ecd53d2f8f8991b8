"""The diarisation rules (pipeline/fusion/voxconverse.py) on constructed inputs whose answers are worked out by hand.

Conventions of the constructed inputs, with the default ``diarise`` config (25 fps, pad 3, median filter 25,
thresholds 0.5/0.9 cosine and 1.5/3.0 Euclidean, 2 votes, closing 12, utterances > 15 frames, off-screen
runs > 10 frames) and embeddings every 0.2 s (index of time t: int(5 t - 5)):

- ``speaking_dists`` gives 21 shifts of distance ``high`` except shift 10, which is ``low`` in the windows
  whose centre frame (window + 3) is speaking. Shift 10 has the smallest mean, the median of the means is
  ``high``, so the confidence is ``high - low`` on speaking frames and 0 elsewhere; runs are >= 25 frames
  and >= 12 frames from the track's ends, so the median filter and the closing leave them unchanged.
- Speaker voices are the unit vectors A, B, C (cosine similarity 1 with themselves, 0 with each other).
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import CacheError
from pipeline.formats import Turn
from pipeline.fusion import voxconverse as fuse

CFG = load_config().diarise
HOP_S = 0.2
A, B, C = np.eye(4, dtype=np.float32)[:3]


def speaking_dists(num_frames: int, speaking: list[tuple[int, int]], low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """SyncNet distances [num_frames - 5, 21] of a track that speaks in track-relative frames [s, e)."""
    dists = np.full((num_frames - 5, 21), high, dtype=np.float32)
    for start, end in speaking:
        dists[start - 3:end - 3, 10] = low
    return dists


def track(first_frame: int, num_frames: int, speaking: list[tuple[int, int]], identity: int,
          vad_s=(), low: float = 0.0, high: float = 1.0) -> fuse.TrackEvidence:
    frames = np.arange(first_frame, first_frame + num_frames)
    return fuse.TrackEvidence(frames, speaking_dists(num_frames, speaking, low, high), list(vad_s), identity)


def voices(num: int, spans: list[tuple[int, int, np.ndarray]]) -> np.ndarray:
    """Embeddings [num, 4]: rows [s, e) set to a voice."""
    emb = np.zeros((num, 4), dtype=np.float32)
    for start, end, voice in spans:
        emb[start:end] = voice
    return emb


def run(tracks, vad_s, emb, num_frames, metric="cosine", duration_s=None):
    return fuse.diarise(tracks, vad_s, emb, CFG, metric, HOP_S, num_frames, duration_s)


# ---- the full rules -------------------------------------------------------------------------------------
def test_two_faces_in_turns_with_offscreen_voices():
    """Face 0 speaks 1-5 s with voice A, face 1 speaks 6-10 s with voice B (on screen together, 0-12 s).
    Off screen: 13-16 s with voice A (joins face 0's cluster), 17-20 s with voice C (nobody: unknown).

    Embedding indices: utterance midpoints 3 s -> 10 (A), 8 s -> 35 (B); 13-16 s -> frames 325..399
    -> indices 60..74 (A); 17-20 s -> frames 425..499 -> indices 80..94 (C).
    """
    tracks = [track(0, 300, [(25, 125)], identity=5), track(0, 300, [(150, 250)], identity=2)]
    emb = voices(100, [(0, 23, A), (23, 60, B), (60, 80, A), (80, 100, C)])
    vad = [(1.0, 5.0), (6.0, 10.0), (13.0, 16.0), (17.0, 20.0)]
    assert run(tracks, vad, emb, 500, duration_s=20.0) == [
        Turn(1.0, 5.0, "spk00", "av", (0,)),
        Turn(6.0, 10.0, "spk01", "av", (1,)),
        Turn(13.0, 16.0, "spk00", "audio", ()),
        Turn(17.0, 20.0, "unknown", "audio", ()),
    ]


def test_speaker_names_follow_first_appearance_not_identity_numbers():
    """The face that speaks first is spk00 whatever its identity number or track index."""
    tracks = [track(0, 300, [(150, 250)], identity=0), track(0, 300, [(25, 125)], identity=9)]
    emb = voices(100, [(0, 23, A), (23, 60, B)])
    turns = run(tracks, [], emb, 300)
    assert [(t.start_s, t.speaker, t.track_ids) for t in turns] == [(1.0, "spk00", (1,)), (6.0, "spk01", (0,))]


def test_offscreen_speech_split_by_majority_filtered_labels():
    """Off-screen 13-19 s: frames 325..474 map to indices 60..89; A for 60..74 (frames 325..399), B after.
    One face per voice, so the run splits at 16 s into spk00 then spk01 (each part longer than the filter)."""
    tracks = [track(0, 300, [(25, 125)], identity=0), track(0, 300, [(150, 250)], identity=1)]
    emb = voices(100, [(0, 23, A), (23, 60, B), (60, 75, A), (75, 100, B)])
    turns = run(tracks, [(1.0, 5.0), (6.0, 10.0), (13.0, 19.0)], emb, 500)
    assert [(t.start_s, t.end_s, t.speaker, t.source) for t in turns if t.source == "audio"] == [
        (13.0, 16.0, "spk00", "audio"), (16.0, 19.0, "spk01", "audio")]


def test_short_offscreen_runs_are_ignored():
    """Uncovered speech of 10 frames (0.4 s) is not longer than min_offscreen_frames: no turn."""
    tracks = [track(0, 300, [(25, 125)], identity=0)]
    emb = voices(100, [(0, 100, A)])
    turns = run(tracks, [(1.0, 5.0), (13.0, 13.4)], emb, 500)
    assert turns == [Turn(1.0, 5.0, "spk00", "av", (0,))]


def test_speech_a_face_covers_is_not_labelled_again():
    """Whole-audio VAD 0.6-5.4 s around a face speaking 1-5 s leaves 10 uncovered frames each side:
    neither run is longer than 10 frames, so only the face's turn remains."""
    tracks = [track(0, 300, [(25, 125)], identity=0)]
    emb = voices(100, [(0, 100, A)])
    assert run(tracks, [(0.6, 5.4)], emb, 300) == [Turn(1.0, 5.0, "spk00", "av", (0,))]


def test_overlapping_faces_never_merge_even_with_identical_voices():
    """Both identities are on screen in frames 0..299 (co-occurrence penalty 100): distance 0 + 100 > 0.3."""
    tracks = [track(0, 300, [(25, 125)], identity=0), track(0, 300, [(150, 250)], identity=1)]
    emb = voices(100, [(0, 100, A)])
    turns = run(tracks, [(1.0, 5.0), (6.0, 10.0)], emb, 300)
    assert [t.speaker for t in turns] == ["spk00", "spk01"]


def test_identities_never_on_screen_together_merge_by_voice():
    """Same voice, identities in frames 0..299 and 300..599: cosine distance 0 < 0.3, one speaker."""
    tracks = [track(0, 300, [(25, 125)], identity=0), track(300, 300, [(25, 125)], identity=1)]
    emb = voices(150, [(0, 150, A)])
    turns = run(tracks, [(1.0, 5.0), (13.0, 17.0)], emb, 600)
    assert turns == [Turn(1.0, 5.0, "spk00", "av", (0,)), Turn(13.0, 17.0, "spk00", "av", (1,))]


def test_one_identity_in_two_tracks():
    """Two tracks of one face identity and its voice off screen: a single speaker everywhere."""
    tracks = [track(0, 300, [(25, 125)], identity=3), track(300, 300, [(25, 125)], identity=3)]
    emb = voices(150, [(0, 150, A)])
    turns = run(tracks, [(1.0, 5.0), (13.0, 17.0), (20.0, 22.0)], emb, 600)
    assert turns == [Turn(1.0, 5.0, "spk00", "av", (0,)), Turn(13.0, 17.0, "spk00", "av", (1,)),
                     Turn(20.0, 22.0, "spk00", "audio", ())]


def test_track_vad_is_one_vote():
    """Confidence 0.7 (> 0.5, not > 0.9) is one vote; the track's own VAD 2-3 s (relative) is the second.
    The track starts at frame 50, so the utterance is 4-5 s of the video."""
    speaking = [(25, 125)]
    assert run([track(50, 300, speaking, 0, vad_s=[(2.0, 3.0)], low=0.3)], [], voices(100, [(0, 100, A)]), 400) == [
        Turn(4.0, 5.0, "spk00", "av", (0,))]
    assert run([track(50, 300, speaking, 0, low=0.3)], [], voices(100, [(0, 100, A)]), 400) == []


@pytest.mark.parametrize("metric, vad_s, expected", [
    ("cosine", [], [Turn(1.0, 5.0, "spk00", "av", (0,))]),            # 2.0 > 0.5 and > 0.9: two votes
    ("euclidean", [], []),                                             # 2.0 > 1.5 only: one vote
    ("euclidean", [(0.0, 12.0)], [Turn(1.0, 5.0, "spk00", "av", (0,))]),  # plus the track VAD
])
def test_thresholds_follow_the_recorded_metric(metric, vad_s, expected):
    """Distances 4.0 against 2.0 at the best shift: confidence 2.0 on speaking frames."""
    tracks = [track(0, 300, [(25, 125)], 0, vad_s=vad_s, low=2.0, high=4.0)]
    assert run(tracks, [], voices(100, [(0, 100, A)]), 300, metric=metric) == expected


def test_unknown_metric_names_stage_2():
    with pytest.raises(CacheError, match="run_syncnet.py"):
        fuse.conf_thresholds(CFG, "manhattan")


def test_zero_tracks_gives_audio_only_diarisation():
    """Speech 1-3, 4-6, 7-9 s -> frames 25..74, 100..149, 175..224 -> indices 0..9, 15..24, 30..39:
    voices A, B, A. Segments 1 and 3 cluster together (distance 0), segment 2 apart (distance 1)."""
    emb = voices(60, [(0, 15, A), (15, 30, B), (30, 60, A)])
    assert run([], [(1.0, 3.0), (4.0, 6.0), (7.0, 9.0)], emb, 250) == [
        Turn(1.0, 3.0, "spk00", "audio", ()), Turn(4.0, 6.0, "spk01", "audio", ()),
        Turn(7.0, 9.0, "spk00", "audio", ())]


def test_faces_that_never_speak_fall_back_to_audio_only():
    """A face track with flat distances (confidence 0) has no utterance: the voices are clustered alone."""
    silent_face = fuse.TrackEvidence(np.arange(0, 300), np.ones((295, 21), np.float32), [], 0)
    emb = voices(60, [(0, 15, A), (15, 30, B), (30, 60, A)])
    turns = run([silent_face], [(1.0, 3.0), (4.0, 6.0), (7.0, 9.0)], emb, 300)
    assert [(t.start_s, t.speaker, t.source) for t in turns] == [
        (1.0, "spk00", "audio"), (4.0, "spk01", "audio"), (7.0, "spk00", "audio")]


@pytest.mark.parametrize("tracks", [[], [fuse.TrackEvidence(np.arange(300), np.ones((295, 21), np.float32), [], 0)]])
def test_silence_gives_no_turns(tracks):
    assert run(tracks, [], voices(10, []), 300) == []


def test_audio_shorter_than_one_embedding_window():
    """No embedding at all: speech cannot be told apart by voice and is 'unknown'; faces stay separate."""
    no_emb = np.zeros((0, 4), np.float32)
    assert run([], [(0.0, 1.6)], no_emb, 40) == [Turn(0.0, 1.6, "unknown", "audio", ())]
    tracks = [track(0, 300, [(25, 125)], identity=0), track(300, 300, [(25, 125)], identity=1)]
    turns = run(tracks, [], no_emb, 600)
    assert [t.speaker for t in turns] == ["spk00", "spk01"]


def test_turn_ends_are_clipped_to_the_duration():
    """The padded curve reaches one frame past the track; a turn never ends after the video."""
    emb = voices(60, [(0, 60, A)])
    assert run([], [(1.0, 3.0)], emb, 100, duration_s=2.5) == [Turn(1.0, 2.5, "spk00", "audio", ())]


# ---- the steps ------------------------------------------------------------------------------------------
def test_sync_confidence_by_hand():
    """Means per shift (1, 0.3, 1): best shift 1, median 1; padded [10, 0.2, 0.4, 10] -> [-9, 0.8, 0.6, -9]."""
    dists = np.array([[1.0, 0.2, 1.0], [1.0, 0.4, 1.0]], dtype=np.float32)
    conf = fuse.sync_confidence(dists, pad_frames=1, pad_value=10.0, medfilt_frames=1)
    np.testing.assert_allclose(conf, [-9.0, 0.8, 0.6, -9.0], rtol=1e-6)
    # kernel 3, zero padded at the ends: medians of (0,-9,0.8), (-9,0.8,0.6), (0.8,0.6,-9), (0.6,-9,0)
    np.testing.assert_allclose(fuse.sync_confidence(dists, 1, 10.0, 3), [0.0, 0.6, 0.6, 0.0], rtol=1e-6)


def test_vad_frame_counts_use_the_reference_truncation():
    """Frames int(start * 25) .. int(end * 25) - 1; overlapping segments count twice."""
    counts = fuse.vad_frame_counts([(0.1, 0.25), (0.2, 0.3)], 10, 25.0)
    np.testing.assert_array_equal(counts, [0, 0, 1, 1, 1, 2, 1, 0, 0, 0])


def test_active_frames_closing_fills_gaps_up_to_11_frames():
    conf = np.zeros(100)
    conf[20:40] = conf[51:70] = conf[82:95] = 1.0  # gaps of 11 and 12 frames
    active = fuse.active_speaker_frames(conf, np.zeros(100), (0.5, 0.9), 2, 12)
    np.testing.assert_array_equal(np.flatnonzero(np.diff(np.r_[0, active, 0])), [20, 70, 82, 95])


def test_find_runs():
    values, starts, lengths = fuse.find_runs([0, 0, 1, 1, 1, -1, 0])
    assert values.tolist() == [0, 1, -1, 0] and starts.tolist() == [0, 2, 5, 6] and lengths.tolist() == [2, 3, 1, 1]
    assert [a.size for a in fuse.find_runs([])] == [0, 0, 0]


def test_majority_filter_by_hand():
    """Width 5: the window starting at i labels frame i + 2; a blip of 2 disappears, one of 3 stays."""
    assert fuse.majority_filter([0] * 10 + [1] * 2 + [0] * 20, 5) == [0] * 32
    assert fuse.majority_filter([0] * 10 + [1] * 3 + [0] * 20, 5) == [0] * 10 + [1] * 3 + [0] * 20
    assert fuse.majority_filter([0] * 10 + [1] * 4, 5) == [0] * 10 + [1] * 4  # shortened windows at the end
    assert fuse.majority_filter([2, -1, 2], 25) == [2, -1, 2]  # no longer than the window: unchanged


def test_embedding_index_matches_the_reference_formula():
    """Time t -> int(min(max(0, 5 t - 5), n - 1)); frame f -> int(min(max(0, f / 5 - 5), n - 1))."""
    timeline = fuse.EmbeddingTimeline(num_embeddings=40, hop_s=0.2, offset_s=1.0, frame_rate_hz=25.0)
    frames = np.arange(0, 400)
    expected = [int(min(max(0, f / 5 - 5), 39)) for f in frames]
    assert timeline.at_frames(frames).tolist() == expected
    for t in [0.0, 0.5, 1.0, 1.6, 3.0, 4.92, 7.3, 100.0]:
        assert timeline.at_time(t) == int(min(max(0, t * 5 - 5), 39))


def partition(labels) -> list[list[int]]:
    """Clusters as sorted lists of members, independent of label numbers."""
    groups: dict[int, list[int]] = {}
    for idx, label in enumerate(labels):
        groups.setdefault(int(label), []).append(idx)
    return sorted(groups.values())


@pytest.mark.parametrize("d_ab, expected", [(0.3, [[0], [1]]), (0.2999, [[0, 1]])])
def test_clustering_merges_only_below_the_threshold(d_ab, expected):
    """sklearn's distance_threshold: two identities exactly at merge_distance (0.3) stay apart."""
    distances = np.array([[0.0, d_ab], [d_ab, 0.0]])
    assert partition(fuse.average_linkage_clusters(distances, CFG.merge_distance)) == expected


@pytest.mark.parametrize("d_bc, expected", [(0.5, [[0, 1], [2]]), (0.4375, [[0, 1, 2]])])
def test_clustering_uses_the_average_linkage(d_bc, expected):
    """A-B 0.125 merge first; then (A,B)-C is the mean of 0.25 and d_bc: 0.375 (not < 0.375) or 0.34375."""
    distances = np.array([[0.0, 0.125, 0.25], [0.125, 0.0, d_bc], [0.25, d_bc, 0.0]])
    assert partition(fuse.average_linkage_clusters(distances, 0.375)) == expected


def test_clustering_matches_sklearn_agglomerative():
    """Same labels as the reference's sklearn call on random matrices with ties and penalties (sklearn is
    not a dependency; the test runs where it happens to be installed)."""
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 10))
        points = rng.normal(size=(n, 3))
        if trial % 2:
            points = np.round(points)
        distances = np.abs(points[:, None] - points[None]).sum(-1)
        distances /= max(distances.max(), 1e-9)
        if trial % 3 == 0:
            together = np.triu(rng.integers(0, 2, size=(n, n)), 1)
            distances = distances + 100 * (together + together.T)
        threshold = float(rng.choice([0.1, 0.3, 0.5]))
        reference = sklearn_cluster.AgglomerativeClustering(
            n_clusters=None, metric="precomputed", distance_threshold=threshold, linkage="average").fit(distances)
        assert fuse.average_linkage_clusters(distances, threshold).tolist() == reference.labels_.tolist()


def test_cooccurrence_is_per_identity():
    tracks = [fuse.TrackEvidence(np.arange(0, 10), np.zeros((5, 3)), [], 0),
              fuse.TrackEvidence(np.arange(20, 30), np.zeros((5, 3)), [], 0),
              fuse.TrackEvidence(np.arange(25, 40), np.zeros((10, 3)), [], 1),
              fuse.TrackEvidence(np.arange(50, 60), np.zeros((5, 3)), [], 2)]
    np.testing.assert_array_equal(fuse.identity_cooccurrence(tracks, [0, 1, 2]), [[0, 1, 0], [1, 0, 0], [0, 0, 0]])
