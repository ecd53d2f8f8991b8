"""Lip and gesture evidence for the same person (``gestsync.lip_model``, ``gestsync.prefer``;
``pipeline/lip_gesture.py``): the map onto GestSync's scale by hand, the choice per track, the decisions it
changes on hand-made curves, and a real clip through all four stages with SyncNet's lips beside GestSync.

Voices are unit vectors A, B; embeddings every 0.2 s, as in test_fuse.
"""
from __future__ import annotations

import pickle
import shutil
from dataclasses import replace

import numpy as np
import pytest

from pipeline import evidence
from pipeline.cli import run_main
from pipeline.config import load_config
from pipeline.errors import CacheError, InputError
from pipeline.formats import Turn
from pipeline.fusion import voxconverse as fuse
from pipeline.sync.evidence_record import LipEvidence, SyncEvidence
from pipeline.sync.lip_gesture import choose_curves, scale_map
from tests.conftest import DETECTIONS, clip
from tests.test_fuse_argmax import expert_track, steps, voices
from tests.test_sync_gestsync import _script

HOP_S = 0.2
A, B = np.eye(4, dtype=np.float32)[:2]
NAN = float("nan")


def test_scale_map_by_hand():
    """SyncNet's cosine thresholds [0.5, 0.9] onto GestSync's [0.1, 0.3]: slope 0.5 everywhere (two
    thresholds: one line), so 0.7 -> 0.2, 1.3 -> 0.5, 0.1 -> -0.1; the thresholds land exactly on each other."""
    mapped = scale_map(np.array([0.5, 0.9, 0.7, 1.3, 0.1, NAN]), [0.5, 0.9], [0.1, 0.3])
    np.testing.assert_allclose(mapped[2:5], [0.2, 0.5, -0.1], atol=1e-12)
    assert mapped[0] == 0.1 and mapped[1] == 0.3 and np.isnan(mapped[5])
    # three thresholds: piecewise, with the end pieces' slopes outside (1 -> 10, 2 -> 12, 4 -> 13)
    np.testing.assert_allclose(scale_map(np.array([0.0, 1.5, 3.0, 6.0]), [1, 2, 4], [10, 12, 13]),
                               [8.0, 11.0, 12.5, 14.0])
    np.testing.assert_allclose(scale_map(np.array([2.0]), [1.0], [5.0]), [6.0])  # one threshold: a shift
    with pytest.raises(InputError, match="as many"):
        scale_map(np.zeros(2), [0.5, 0.9], [0.1])
    with pytest.raises(InputError, match="strictly increasing"):
        scale_map(np.zeros(2), [0.5, 0.5], [0.1, 0.3])


def test_a_mapped_curve_gets_the_votes_it_gets_on_its_own_scale():
    rng = np.random.default_rng(0)
    for lip_thresholds, gesture_thresholds in (([0.5, 0.9], [0.1, 0.3]), ([1.5, 3.0], [0.1, 0.3]),
                                               ([0.5, 0.75], [-0.2, 0.9]), ([0.0, 1.0, 2.0], [0.1, 0.2, 0.7])):
        values = rng.normal(1.0, 2.0, 5000)
        mapped = scale_map(values, lip_thresholds, gesture_thresholds)
        for lip_t, gesture_t in zip(lip_thresholds, gesture_thresholds):
            assert np.array_equal(values > lip_t, mapped > gesture_t)
        assert np.all(np.diff(mapped[np.argsort(values)]) >= 0)  # increasing


def test_choose_curves_by_preference():
    """Two face tracks and a person track without a face. Track 0 has both kinds; track 1's lips were not
    scored (too short for SyncNet: NaN offset); the person track has gestures only."""
    gestures = [np.array([0.2, 0.0, 0.4]), np.array([0.3, 0.3]), np.array([0.5])]
    lips = [np.array([0.1, 0.6, 0.2, 0.9]), np.array([NAN, NAN])]
    got, sources = choose_curves(gestures, [0.0, 1.0, 2.0], lips, [3.0, NAN], "lips")
    assert sources == ["lips", "gestures", "gestures"]
    assert got[0] is not None and np.array_equal(got[0], lips[0]) and np.array_equal(got[1], gestures[1])
    got, sources = choose_curves(gestures, [0.0, 1.0, 2.0], lips, [3.0, NAN], "gestures")
    assert sources == ["gestures", "gestures", "gestures"] and np.array_equal(got[0], gestures[0])
    got, sources = choose_curves(gestures, [NAN, 1.0, 2.0], lips, [3.0, NAN], "gestures")
    assert sources[0] == "lips"  # GestSync could not score track 0: its lips decide
    got, sources = choose_curves(gestures, [0.0, 1.0, 2.0], lips, [3.0, NAN], "stronger")
    assert sources == ["lips+gestures", "gestures", "gestures"]
    np.testing.assert_array_equal(got[0], [0.2, 0.6, 0.4, 0.9])  # frame by frame, the longer curve's tail kept


def _gestsync_sync(gesture_curves, lip_curves, lip_offsets=(0.0, 0.0)) -> SyncEvidence:
    """GestSync's sync.pckl with the Wav2Lip expert's evidence as its lips (thresholds [0.5, 0.75])."""
    lips = SyncEvidence("wav2lip", "cosine_similarity", offset_frames=tuple(lip_offsets),
                        score=(0.0,) * len(lip_offsets), confidence=(0.0,) * len(lip_offsets),
                        score_smooth=tuple(lip_curves))
    return SyncEvidence("gestsync", "cosine_similarity", offset_frames=(0.0,) * len(gesture_curves),
                        score=(0.0,) * len(gesture_curves), confidence=(0.0,) * len(gesture_curves),
                        score_smooth=tuple(gesture_curves),
                        lips=LipEvidence("wav2lip", (np.zeros((0, 21), np.float32),) * len(lip_curves), lips))


@pytest.mark.parametrize("prefer, speaking_tracks", [("lips", {1}), ("gestures", {0}), ("stronger", {0, 1})])
def test_the_preference_decides_who_speaks(prefer, speaking_tracks):
    """Two faces on screen for 12 s (300 frames), each track's VAD on throughout, speech 2-5 s (voice A) and
    7-10 s (voice B). Face 0 is seen from the side: its lips say nothing (expert score 0.3, under 0.5) but
    its gestures do (0.2 > 0.1: one vote, two with its VAD) in 2-5 s. Face 1's lips speak in 7-10 s (0.6 >
    0.5), its gestures never (0.0). ``lips`` hears face 1 only, ``gestures`` face 0 only, ``stronger`` both;
    whatever no face explains is labelled by voice."""
    cfg = load_config(overrides=[f"gestsync.prefer={prefer}", "gestsync.lip_model=wav2lip"])
    gesture = [steps(300, [(50, 125, 0.2)], base=0.0), np.zeros(300)]
    lip = [np.full(300, 0.3), steps(300, [(175, 250, 0.6)], base=0.3)]
    sync = _gestsync_sync(gesture, lip)
    curves, sources = evidence.fusion_curves(cfg, sync, 2)
    assert len(curves) == 2 and len(sources) == 2
    tracks = [expert_track(0, curves[k], identity=k, vad_s=[(0.0, 12.0)]) for k in range(2)]
    emb = voices(55, [(5, 20, A), (30, 45, B)])
    turns = fuse.diarise(tracks, [(2.0, 5.0), (7.0, 10.0)], emb, cfg.diarise, "cosine_similarity", HOP_S, 300,
                         12.0, thresholds=evidence.vote_thresholds(cfg, sync))
    av = {t for turn in turns if turn.source == "av" for t in turn.track_ids}
    assert av == speaking_tracks
    spans = {(turn.start_s, turn.end_s) for turn in turns}
    assert spans == {(2.0, 5.0), (7.0, 10.0)}  # every second of speech is labelled, by face or by voice
    if prefer == "stronger":
        assert turns == [Turn(2.0, 5.0, "spk00", "av", (0,)), Turn(7.0, 10.0, "spk01", "av", (1,))]


def test_lips_fall_back_to_gestures_where_the_lip_model_scored_nothing():
    cfg = load_config(overrides=["gestsync.prefer=lips", "gestsync.lip_model=wav2lip"])
    sync = _gestsync_sync([np.full(5, 0.2), np.full(5, 0.2)], [np.full(5, 0.9), np.full(5, NAN)], (1.0, NAN))
    curves, sources = evidence.fusion_curves(cfg, sync, 2)
    assert sources == ["lips", "gestures"]
    np.testing.assert_allclose(curves[0], 0.1 + (0.9 - 0.5) * (0.3 - 0.1) / (0.75 - 0.5))  # 0.42
    np.testing.assert_array_equal(curves[1], np.full(5, 0.2))


def test_settings_are_checked_and_read_by_stage_3_only():
    with pytest.raises(InputError, match="gestsync.prefer"):
        load_config(overrides=["gestsync.prefer=loudest"])
    with pytest.raises(InputError, match="gestsync.lip_model"):
        load_config(overrides=["gestsync.lip_model=vocalist"])
    sync = _gestsync_sync([np.zeros(3)], [np.zeros(3)])
    keys = {p: evidence.diarisation_key_extra(load_config(overrides=[f"gestsync.prefer={p}"]), sync)
            for p in ("lips", "gestures")}
    assert keys["lips"] != keys["gestures"]  # stage 3 decides again when the preference changes
    from pipeline.sync.gestsync import STAGE3_ONLY_KEYS

    assert "prefer" in STAGE3_ONLY_KEYS  # ... and stage 2 does not run again
    broken = dict(sync.to_pickle(), lips={"model": "wav2lip", "distances": [], "sync": {}})
    with pytest.raises(CacheError, match="malformed.*run scripts/run_syncnet.py"):
        SyncEvidence.from_pickle(broken)
    mislabelled = replace(sync, lips=LipEvidence("syncnet", sync.lips.distances, sync.lips.sync))
    with pytest.raises(CacheError, match="malformed lip evidence.*run scripts/run_syncnet.py"):
        evidence.fusion_curves(load_config(), mislabelled, 1)


@pytest.mark.filterwarnings("ignore:.*differs from the published")
def test_real_clip_with_lips_beside_gestures_through_all_four_stages(tmp_path, capsys, weights_dir):
    """gestsync_asd2spk_a's haar faces cut to 3.2 s (Colbert; tracks need more than 50 frames, GestSync's
    offset search 74, for a track to count as scored by gestures), seeded random
    SyncNet and GestSync weights. Stage 2 with ``gestsync.lip_model=syncnet`` keeps exactly the distances
    SyncNet's own stage 2 writes; stage 3 with ``stronger`` fuses the frame-wise maximum; a change of
    preference reruns stage 3 alone and, with ``lips``, the curve is SyncNet's smoothed confidence mapped onto
    GestSync's scale."""
    from tests.test_gestsync import published_checkpoint

    name, keep = "gestsync_asd2spk_a", range(120, 200)
    weights = tmp_path / "weights"
    weights.mkdir()
    for path in weights_dir.iterdir():
        (weights / path.name).symlink_to(path)
    published_checkpoint(weights / "model_rgb.pth")
    data = tmp_path / "data"
    work = data / "pywork" / name
    work.mkdir(parents=True)
    with open(DETECTIONS / f"{name}_haar_faces.pckl", "rb") as handle:
        boxes = pickle.load(handle)
    with open(work / "faces.pckl", "wb") as handle:
        pickle.dump([dets if idx in keep else [] for idx, dets in enumerate(boxes)], handle, protocol=4)
    video = tmp_path / f"{name}.mp4"
    shutil.copy(clip(name), video)
    common = ["--data_dir", str(data), "--weights_dir", str(weights)]
    ref = ["--reference", name]

    def run(script: str, *args: str) -> None:
        module = _script(script)
        code = run_main(module.main, module.build_parser(), [*args])
        err = capsys.readouterr().err
        assert code == 0, err

    def load(file: str):
        with open(work / file, "rb") as handle:
            return pickle.load(handle)

    run("run_pipeline", "--videofile", str(video), *common, *ref)
    run("run_syncnet", *common, *ref)  # SyncNet alone, for comparison
    syncnet_dists, syncnet_sync = load("activesd.pckl"), SyncEvidence.from_pickle(load("sync.pckl"))
    assert len(syncnet_dists) == 1 and syncnet_sync.model == "syncnet"

    lips_on = ["--set", "gestsync.lip_model=syncnet"]
    run("run_syncnet", *common, *ref, "--sync_model", "gestsync", *lips_on)
    sync = SyncEvidence.from_pickle(load("sync.pckl"))
    assert sync.model == "gestsync" and sync.lips.model == "syncnet"
    assert np.array_equal(sync.lips.distances[0], syncnet_dists[0])
    assert sync.lips.sync.offset_frames == syncnet_sync.offset_frames
    stage2_mtime = (work / "sync.pckl").stat().st_mtime_ns

    on_gestsync = ["--set", "sync.model=gestsync", *lips_on]
    run("cluster", *common, *ref, "--speaker_model", "resemblyzer", *on_gestsync, "--set", "gestsync.prefer=stronger")
    curves = load("sync_curves.pckl")
    assert curves["sources"] == ["lips+gestures"]
    cfg = load_config()
    lip_curve = scale_map(fuse.track_confidence(syncnet_dists[0], cfg.diarise), [0.5, 0.9], [0.1, 0.3])
    gesture_curve = np.asarray(sync.score_smooth[0], dtype=np.float64)
    n = min(lip_curve.size, gesture_curve.size)
    np.testing.assert_array_equal(curves["confidence"][0][:n], np.maximum(lip_curve[:n], gesture_curve[:n]))

    run("cluster", *common, *ref, "--speaker_model", "resemblyzer", *on_gestsync, "--set", "gestsync.prefer=lips")
    assert (work / "sync.pckl").stat().st_mtime_ns == stage2_mtime  # stage 2 not redone
    curves = load("sync_curves.pckl")
    assert curves["sources"] == ["lips"] and curves["thresholds"] == [0.1, 0.3]
    np.testing.assert_array_equal(curves["confidence"][0], lip_curve)

    out = tmp_path / "out"
    run("visualise", *common, *ref, "--out_dir", str(out))
    for suffix in (".rttm", "_via.json", "_sync.png", "_timeline.png"):
        assert (out / f"{name}{suffix}").stat().st_size > 0
