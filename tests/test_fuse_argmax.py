"""The argmax rule (diarise.mode: argmax), the VoxConverse rule on the Wav2Lip expert's own curves with its
own thresholds, and stage 3's refusal of evidence from another sync model; hand-made curves throughout.

Voices are unit vectors A, B, C; embeddings every 0.2 s (index of time t: int(5 t - 5)), as in test_fuse.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline import evidence
from pipeline.config import load_config
from pipeline.errors import CacheError, InputError
from pipeline.formats import Turn
from pipeline.fusion import voxconverse as fuse
from pipeline.fusion.argmax import NO_FACE, argmax_faces, diarise_argmax
from pipeline.plots import argmax_spans
from pipeline.sync.evidence_record import SyncEvidence

CFG = load_config().diarise
HOP_S = 0.2
A, B, C = np.eye(4, dtype=np.float32)[:3]


def expert_track(first_frame: int, curve, identity: int, vad_s=()) -> fuse.TrackEvidence:
    """A track whose sync model gave its own per-frame curve (the expert's smoothed score)."""
    curve = np.asarray(curve, dtype=np.float64)
    frames = np.arange(first_frame, first_frame + len(curve))
    return fuse.TrackEvidence(frames, np.zeros((0, 21), np.float32), list(vad_s), identity, confidence=curve)


def voices(num: int, spans: list[tuple[int, int, np.ndarray]]) -> np.ndarray:
    emb = np.zeros((num, 4), dtype=np.float32)
    for start, end, voice in spans:
        emb[start:end] = voice
    return emb


def steps(num_frames: int, spans: list[tuple[int, int, float]], base: float) -> np.ndarray:
    curve = np.full(num_frames, base)
    for start, end, value in spans:
        curve[start:end] = value
    return curve


def test_argmax_faces_by_hand():
    """frames:         0    1    2    3    4    5    6
    track 0 (from 1):      0.1  0.5  0.5  nan  0.2
    track 1 (from 0): 0.3  0.5  0.5
    track 2 (from 4):                     0.9
    frame 2 is a tie (lower track wins), frame 4 ignores the NaN, frame 6 has no face."""
    curves = [np.array([0.1, 0.5, 0.5, np.nan, 0.2]), np.array([0.3, 0.5, 0.5]), np.array([0.9])]
    assert argmax_faces(curves, [1, 0, 4], 7).tolist() == [1, 1, 0, 0, 2, 0, NO_FACE]
    assert argmax_spans([np.arange(1, 6), np.arange(0, 3), np.arange(4, 5)], curves, 7) == [
        (0, 2, 1), (2, 4, 0), (4, 5, 2), (5, 6, 0)]


def test_argmax_rule_two_faces_and_an_offscreen_voice():
    """Two faces on screen 0-12 s (frames 0..299); face 0's score is higher in 1-5 s, face 1's in 6-10 s;
    speech (VAD) 1-5 s, 6-10 s and 13-16 s. Outside speech nobody speaks whatever the curves say; in speech,
    the higher face speaks (no threshold, no minimum length: the seed project's rule); 13-16 s has no face
    on screen and is labelled by voice (A: face 0's cluster)."""
    face0 = steps(300, [(25, 125, 0.8), (150, 250, 0.3)], base=0.6)
    face1 = steps(300, [(25, 125, 0.2), (150, 250, 0.7)], base=0.5)
    tracks = [expert_track(0, face0, identity=5), expert_track(0, face1, identity=2)]
    emb = voices(100, [(0, 23, A), (23, 60, B), (60, 80, A), (80, 100, C)])
    vad = [(1.0, 5.0), (6.0, 10.0), (13.0, 16.0)]
    turns = diarise_argmax(tracks, vad, emb, CFG, HOP_S, 500, 20.0)
    assert turns == [Turn(1.0, 5.0, "spk00", "av", (0,)), Turn(6.0, 10.0, "spk01", "av", (1,)),
                     Turn(13.0, 16.0, "spk00", "audio", ())]


def test_argmax_rule_hands_speech_over_mid_utterance():
    """One stretch of speech 2-6 s; face 1 overtakes face 0 at 4 s: two turns, split at 4 s exactly."""
    face0 = steps(200, [(100, 200, 0.4)], base=0.7)
    face1 = np.full(200, 0.55)
    tracks = [expert_track(0, face0, identity=0), expert_track(0, face1, identity=1)]
    emb = voices(40, [(0, 15, A), (15, 40, B)])  # 3 s -> index 10 (A), 5 s -> index 20 (B)
    turns = diarise_argmax(tracks, [(2.0, 6.0)], emb, CFG, HOP_S, 200, 8.0)
    assert turns == [Turn(2.0, 4.0, "spk00", "av", (0,)), Turn(4.0, 6.0, "spk01", "av", (1,))]


def test_voxconverse_rule_on_expert_curves_reads_its_thresholds_from_the_config():
    """One face, VAD on its track all the time; its smoothed score is 0.6 on frames 50..149, 0.3 elsewhere.
    Default wav2lip.conf_thresholds [0.5, 0.75]: VAD + one vote = 2 votes on 50..149, one utterance 2-6 s.
    With thresholds raised to [0.65, 0.9] by the config, nothing is active: audio-only turns instead."""
    curve = steps(250, [(50, 150, 0.6)], base=0.3)
    tracks = [expert_track(0, curve, identity=0, vad_s=[(0.0, 10.0)])]
    emb = voices(45, [(0, 45, A)])
    sync = SyncEvidence("wav2lip", "cosine_similarity")
    default = evidence.vote_thresholds(load_config(), sync)
    assert default == (0.5, 0.75)
    turns = fuse.diarise(tracks, [(2.0, 6.0)], emb, CFG, "cosine_similarity", HOP_S, 250, 10.0, thresholds=default)
    assert turns == [Turn(2.0, 6.0, "spk00", "av", (0,))]
    raised = evidence.vote_thresholds(load_config(overrides=["wav2lip.conf_thresholds=[0.65, 0.9]"]), sync)
    assert raised == (0.65, 0.9)
    turns = fuse.diarise(tracks, [(2.0, 6.0)], emb, CFG, "cosine_similarity", HOP_S, 250, 10.0, thresholds=raised)
    assert [t.source for t in turns] == ["audio"]
    # SyncNet evidence keeps the diarise thresholds of its metric
    assert evidence.vote_thresholds(load_config(), SyncEvidence("syncnet", "cosine")) == (0.5, 0.9)


def test_stage3_refuses_evidence_of_another_model_and_unknown_names():
    syncnet_cfg = load_config()
    expert_cfg = load_config(overrides=["sync.model=wav2lip"])
    expert, syncnet = SyncEvidence("wav2lip", "cosine_similarity"), SyncEvidence("syncnet", "cosine")
    assert evidence.check_evidence_model(expert_cfg, expert) == "wav2lip"
    assert evidence.check_evidence_model(syncnet_cfg, syncnet) == "syncnet"
    with pytest.raises(CacheError, match="holds wav2lip evidence but sync.model is syncnet") as err:
        evidence.check_evidence_model(syncnet_cfg, expert)
    assert "\n" not in str(err.value) and "--sync_model syncnet" in str(err.value)
    with pytest.raises(CacheError, match="holds syncnet evidence but sync.model is wav2lip"):
        evidence.check_evidence_model(expert_cfg, syncnet)
    with pytest.raises(InputError, match="sync.model must be one of syncnet, wav2lip, gestsync, got 'lipnet'"):
        load_config(overrides=["sync.model=lipnet"])  # refused when the config is read, before any stage runs
    with pytest.raises(InputError, match="diarise.mode must be one of voxconverse, argmax, improved"):
        load_config(overrides=["diarise.mode=vote"])
    with pytest.raises(InputError, match="unknown sync model"):  # a config not read by load_config
        evidence.configured_model(SimpleNamespace(sync=SimpleNamespace(model="lipnet")))
    with pytest.raises(InputError, match="unknown fusion mode"):
        evidence.fusion_mode(SimpleNamespace(diarise=SimpleNamespace(mode="vote")))
    with pytest.raises(CacheError, match="smoothed wav2lip score curve per track"):
        evidence.fusion_curves(load_config(), SyncEvidence("wav2lip", "cosine_similarity",
                                                           score_smooth=(np.zeros(3, np.float32),)), 2)


def test_argmax_rule_keeps_a_won_run_of_a_fifth_of_a_second():
    """No minimum length (the seed project has none): face 1 wins frames 100..104 (4.0-4.2 s, 5 frames, well
    under ``diarise.min_utterance_frames``) inside face 0's speech 2-6 s, and those 0.2 s are its turn."""
    assert CFG.min_utterance_frames > 5  # the run would be dropped if the VoxConverse minimum applied
    face0 = np.full(200, 0.7)
    face1 = steps(200, [(100, 105, 0.9)], base=0.55)
    tracks = [expert_track(0, face0, identity=0), expert_track(0, face1, identity=1)]
    emb = voices(40, [(0, 40, A), (14, 17, B)])
    turns = diarise_argmax(tracks, [(2.0, 6.0)], emb, CFG, HOP_S, 200, 8.0)
    assert turns == [Turn(2.0, 4.0, "spk00", "av", (0,)), Turn(4.0, 4.2, "spk01", "av", (1,)),
                     Turn(4.2, 6.0, "spk00", "av", (0,))]
