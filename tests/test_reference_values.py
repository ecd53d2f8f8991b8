"""The faithful config holds the references' values, and its thresholds act at exactly the references' boundaries.

Every boundary case reads its threshold or width from ``configs/default.yaml`` (``load_config()``), and the
expected answer is worked out by hand from the reference's rule, so a changed value or a ``>`` turned into
``>=`` fails here. Sources are av-diarization (JaesungHuh/av-diarization, ``voxconverse/``, commit 2623697)
and syncnet_python (joonson/syncnet_python).
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.fusion import voxconverse as fuse
from pipeline.track import box_iou, link_detections

CFG = load_config()

# (config key, reference value, where the reference sets it)
AV_DIARIZATION_VALUES = [
    ("media.frame_rate_hz", 25, "preprocessor.py:33 frame_rate=25; diarizer.py:24 self.frame_rate = 25"),
    ("detect.image_scale", 0.35, "preprocessor.py:38 facedet_scale=0.35"),
    ("detect.conf_threshold", 0.9, "preprocessor.py:245 detect_faces(conf_th=0.9)"),
    ("track.iou_threshold", 0.5, "preprocessor.py:101 iouThres = 0.5 (used as iou > iouThres, :113)"),
    ("track.max_gap_frames", 25, "preprocessor.py:36 num_failed_det=25 (gap <= num_failed_det joins, :111)"),
    ("track.min_track_frames", 50, "preprocessor.py:35 min_track=50 (len(track) > min_track, :122)"),
    ("track.min_face_size_px", 40, "preprocessor.py:37 min_face_size=40 (mean side > min_face_size, :135)"),
    ("crop.scale", 0.40, "preprocessor.py:34 crop_scale=0.40"),
    ("crop.smooth_kernel_frames", 13, "preprocessor.py:166-168 signal.medfilt(kernel_size=13)"),
    ("diarise.frame_rate_hz", 25, "diarizer.py:24 self.frame_rate = 25"),
    ("diarise.conf_pad_frames", 3, "diarizer.py:87 np.pad(fdist, (3, 3), constant_values=10)"),
    ("diarise.conf_pad_value", 10.0, "diarizer.py:87 np.pad(fdist, (3, 3), constant_values=10)"),
    ("diarise.conf_medfilt_frames", 25, "diarizer.py:90 signal.medfilt(fconf, kernel_size=25)"),
    ("diarise.conf_thresholds_cosine", [0.5, 0.9], "diarizer.py:105-106 vadoutput[fconfm > 0.5/0.9] += 1"),
    ("diarise.min_votes", 2, "diarizer.py:108-109 vadoutput[vadoutput >= 2] = 1"),
    ("diarise.closing_frames", 12, "diarizer.py:111 binary_closing(structure=np.ones((12)))"),
    ("diarise.min_utterance_frames", 15, "diarizer.py:120 run_l[r_idx] > 15"),
    ("diarise.merge_distance", 0.3, "diarizer.py:25 self.dist_thres = 0.3"),
    ("diarise.cooccur_penalty", 100.0, "diarizer.py:150 ovl_penalty = 100"),
    ("diarise.min_offscreen_frames", 10, "diarizer.py:174 run_l[r_idx] > 10"),
    ("diarise.offscreen_min_similarity", 0.6, "diarizer.py:26 self.spk_thres = 0.6 (mval >= spk_thres, :184)"),
    ("diarise.majority_filter_frames", 25, "diarizer.py:189 majority_filter_traditional(indices, 25)"),
    ("faces.max_cosine_distance", 0.40, "facecluster.py:139 if mval <= 0.40"),
    ("syncnet.vshift_frames", 10, "syncnet.py evaluate(vshift=10) in av-diarization's pipeline"),
    ("syncnet.metric", "cosine", "syncnet.py: 1 - cosine similarity"),
]
SYNCNET_PYTHON_VALUES = [
    ("syncnet_demo.vshift_frames", 15, "demo_syncnet.py:15 --vshift default 15"),
    ("syncnet_demo.metric", "euclidean", "SyncNetInstance.py calc_pdist: pairwise Euclidean distance"),
]


def _value(key: str):
    section, name = key.split(".")
    value = getattr(getattr(CFG, section), name)
    return list(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("key, expected, source", AV_DIARIZATION_VALUES + SYNCNET_PYTHON_VALUES,
                         ids=[row[0] for row in AV_DIARIZATION_VALUES + SYNCNET_PYTHON_VALUES])
def test_default_config_holds_the_reference_value(key, expected, source):
    assert _value(key) == expected, f"{key} differs from the reference ({source})"


# ---- fusion boundaries, through the config ------------------------------------------------------------
D = CFG.diarise
LOW, HIGH = (float(t) for t in D.conf_thresholds_cosine)


def _active(confidence: np.ndarray, with_vad: bool) -> np.ndarray:
    vad_counts = np.full(confidence.size, 1 if with_vad else 0)
    return fuse.active_speaker_frames(confidence, vad_counts, (LOW, HIGH), int(D.min_votes), int(D.closing_frames))


def _plateau(value: float, length: int = 120, start: int = 40, width: int = 40) -> np.ndarray:
    confidence = np.zeros(length)
    confidence[start:start + width] = value
    return confidence


def test_confidence_exactly_at_the_lower_threshold_is_no_vote():
    # VAD gives one vote; a confidence equal to 0.5 does not exceed it, so two votes are never reached
    assert _active(_plateau(LOW), with_vad=True).sum() == 0
    assert _active(_plateau(np.nextafter(LOW, 1.0)), with_vad=True)[40:80].all()


def test_confidence_exactly_at_the_upper_threshold_is_no_second_vote():
    # without VAD: above 0.5 is one vote, 0.9 itself is not a second one
    assert _active(_plateau(HIGH), with_vad=False).sum() == 0
    assert _active(_plateau(np.nextafter(HIGH, 2.0)), with_vad=False)[40:80].all()


@pytest.mark.parametrize("gap_frames, filled", [(11, True), (12, False)])
def test_closing_fills_gaps_shorter_than_its_width(gap_frames, filled):
    # ones(12) dilates a run by 11 frames in all (6 one way, 5 the other): gaps of up to 11 close
    confidence = np.zeros(200)
    confidence[40:80] = 1.0
    confidence[80 + gap_frames:140] = 1.0
    active = _active(confidence, with_vad=True)
    assert bool(active[80:80 + gap_frames].all()) is filled
    assert active[40:80].all() and active[80 + gap_frames:140].all()


@pytest.mark.parametrize("run_frames, kept", [(15, False), (16, True)])
def test_utterances_must_be_longer_than_min_utterance_frames(run_frames, kept):
    active = np.zeros(100, dtype=np.int64)
    active[30:30 + run_frames] = 1
    activity = fuse.TrackActivity(track_idx=0, identity=0, first_frame=200, active=active)
    utterances = fuse.face_utterances(activity, int(D.min_utterance_frames))
    assert utterances == ([fuse.Utterance(230, 230 + run_frames, 0, 0)] if kept else [])


@pytest.mark.parametrize("spike_frames, survives", [(12, False), (13, True)])
def test_median_filter_removes_confidence_spikes_up_to_half_its_width(spike_frames, survives):
    # three shifts; shift 0 is best: confidence = median(means) - d = 10 - d, so 2.0 inside the spike
    num_windows = 100
    dists = np.full((num_windows, 3), 10.0)
    dists[40:40 + spike_frames, 0] = 8.0
    confidence = fuse.track_confidence(dists, D)
    assert confidence.size == num_windows + 2 * int(D.conf_pad_frames)
    centre = int(D.conf_pad_frames) + 40 + spike_frames // 2
    assert confidence[centre] == (2.0 if survives else 0.0)
    assert confidence.max() == (2.0 if survives else 0.0)


def test_offscreen_similarity_exactly_at_the_threshold_joins_the_speaker():
    voice = np.array([[1.0, 0.0]])  # every frame's embedding
    speaker = np.array([[3.0, 4.0]])  # cosine 3 / 5 = 0.6 exactly
    assert fuse.cosine_similarity(voice, speaker)[0, 0] == float(D.offscreen_min_similarity)
    timeline = fuse.EmbeddingTimeline(num_embeddings=1, hop_s=float(CFG.embed.hop_s),
                                      offset_s=float(D.embedding_offset_s), frame_rate_hz=float(D.frame_rate_hz))
    runs = fuse.label_offscreen_run(0, 50, voice, timeline, speaker, np.array([7]),
                                    float(D.offscreen_min_similarity), int(D.majority_filter_frames))
    assert runs == [(0, 50, 7)]
    below = np.array([[3.0, 4.0001]])
    runs = fuse.label_offscreen_run(0, 50, voice, timeline, below, np.array([7]),
                                    float(D.offscreen_min_similarity), int(D.majority_filter_frames))
    assert runs == [(0, 50, fuse.UNKNOWN_LABEL)]


@pytest.mark.parametrize("island_frames, survives", [(12, False), (13, True)])
def test_majority_filter_removes_islands_up_to_half_its_width(island_frames, survives):
    labels = [0] * 60 + [1] * island_frames + [0] * 60
    filtered = fuse.majority_filter(labels, int(D.majority_filter_frames))
    assert (1 in filtered) is survives


@pytest.mark.parametrize("run_frames, kept", [(10, False), (11, True)])
def test_offscreen_runs_must_be_longer_than_min_offscreen_frames(run_frames, kept):
    uncovered = np.zeros(60)
    uncovered[20:20 + run_frames] = 1
    assert fuse.speech_runs(uncovered, int(D.min_offscreen_frames)) == ([(20, 20 + run_frames)] if kept else [])


# ---- tracking boundaries, through the config -------------------------------------------------------------
T = CFG.track


def _det(frame: int, box: list[float]) -> dict:
    return {"frame": frame, "bbox": box, "conf": 1.0}


def test_iou_exactly_at_the_threshold_does_not_link():
    first, half = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]
    assert box_iou(first, half) == float(T.iou_threshold)
    tracks = link_detections([[_det(0, first)], [_det(1, half)]], float(T.iou_threshold), int(T.max_gap_frames))
    assert [len(t) for t in tracks] == [1, 1]
    more = [0.0, 0.0, 10.0, 6.0]  # IoU 0.6
    tracks = link_detections([[_det(0, first)], [_det(1, more)]], float(T.iou_threshold), int(T.max_gap_frames))
    assert [len(t) for t in tracks] == [2]


@pytest.mark.parametrize("gap_frames, linked", [(25, True), (26, False)])
def test_a_gap_of_max_gap_frames_still_links(gap_frames, linked):
    box = [0.0, 0.0, 50.0, 50.0]
    shot = [[] for _ in range(gap_frames + 1)]
    shot[0] = [_det(0, box)]
    shot[gap_frames] = [_det(gap_frames, box)]
    tracks = link_detections(shot, float(T.iou_threshold), int(T.max_gap_frames))
    assert [len(t) for t in tracks] == ([2] if linked else [1, 1])
