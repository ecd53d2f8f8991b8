"""Stage 2 with GestSync (``pipeline/sync_gestsync.py``): offset search, regions, and a real clip end to end.

The offset search runs on a stand-in network whose embeddings are built to agree when video and audio are in
sync (each frame shows one of 8 grey levels, each 40 ms of audio is one of 8 tones; both streams map the
symbol to the same unit vector), so the recovered shift is known exactly. The end-to-end test runs the real
network with seeded random weights on a short stretch of a real two-person clip with its person boxes.
"""
from __future__ import annotations

import importlib.util
import pickle
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.cli import run_main
from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.sync import gestsync as gs
from pipeline.sync.base import extra_identities, extra_vad
from pipeline.sync.evidence_record import SyncEvidence
from pipeline.sync.gestsync_frontend import filterbanks, masked_frame
from tests.conftest import DETECTIONS, REPO, clip

RATE_HZ, FPS, SYMBOLS = 16000, 25, 8
SAMPLES_PER_FRAME = RATE_HZ // FPS
TONES_HZ = [400.0 + 450.0 * k for k in range(SYMBOLS)]  # far apart in mel bands


def _tone_band(freq_hz: float) -> int:
    t = np.arange(RATE_HZ) / RATE_HZ
    return int(np.argmax(filterbanks((0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32))[50]))


class StandIn(nn.Module):
    """GestSync's interface (``net_vid``, ``pos_encoder``, ``transformer_encoder``, ``ff_vid``,
    ``forward_aud``) with embeddings made to agree in sync: trunk position p (frames p .. p + 4) carries
    frame p's grey-level symbol; a window's video embedding is the one-hot code of the symbols on its 21
    positions (every time step the same, so the time average keeps it); an audio window (25 frames of 4
    filterbank frames) is the one-hot code of the tones of its first 21 frames. In sync they are equal
    (cosine 1); shifted they agree on about 1 position in 8."""

    def __init__(self) -> None:
        super().__init__()
        self.band_symbol = {_tone_band(f): k for k, f in enumerate(TONES_HZ)}
        self.pos_encoder = self.transformer_encoder = nn.Identity()
        self.logits_scale = nn.Linear(1, 1, bias=False)
        nn.init.ones_(self.logits_scale.weight)

    @staticmethod
    def _code(symbols: torch.Tensor) -> torch.Tensor:  # [n, 21] ints -> [n, 1024]
        onehot = nn.functional.one_hot(symbols.long(), SYMBOLS).float().reshape(len(symbols), -1)
        return nn.functional.pad(onehot, (0, 1024 - onehot.shape[1]))

    def net_vid(self, clip_: torch.Tensor) -> torch.Tensor:  # [1, 3, T, 270, 480] -> [1, 512, T - 4, 1, 1]
        level = clip_[0, 0, :, -1, :].float().mean(-1) * 255.0  # the bottom row, never masked
        symbols = torch.round((level - 20.0) / 30.0).clamp(0, SYMBOLS - 1)[: clip_.shape[2] - 4]
        return symbols.reshape(1, 1, -1, 1, 1).expand(1, 512, -1, 1, 1).clone()

    def ff_vid(self, seq: torch.Tensor) -> torch.Tensor:  # [n, 21, 512] -> [n, 21, 1024]
        return self._code(seq[..., 0])[:, None, :].expand(-1, seq.shape[1], -1)

    def forward_aud(self, mels: torch.Tensor) -> torch.Tensor:  # [N, 1, 80, 100] -> [N, 1024, 1]
        bands = mels[:, 0, :, 2:84:4].argmax(1)  # [N, 21]: the centre filterbank frame of video frames 0..20
        symbols = torch.tensor([[self.band_symbol.get(int(b), 0) for b in row] for row in bands])
        return self._code(symbols)[:, :, None]


def _settings(**kw) -> gs.GestSyncSettings:
    return gs.GestSyncSettings.from_config(load_config(overrides=[f"gestsync.{k}={v}" for k, v in kw.items()]))


def _stream(num_frames: int, audio_lag_frames: int, seed: int = 0):
    """Masked frames (grey level = symbol) and int16 audio whose tones follow the same symbols
    ``audio_lag_frames`` later (positive: the audio lags)."""
    symbols = np.random.default_rng(seed).integers(0, SYMBOLS, num_frames + 40)
    frames = [masked_frame(np.full((270, 480, 3), 20 + 30 * s, np.uint8), None) for s in symbols[:num_frames]]
    t = np.arange(SAMPLES_PER_FRAME) / RATE_HZ
    audio = np.concatenate([0.5 * np.sin(2 * np.pi * TONES_HZ[symbols[k - audio_lag_frames]] * t)
                            for k in range(num_frames)])
    return frames, (audio * 20000).astype(np.int16)


@pytest.mark.parametrize("lag", [0, 10, -15])
def test_offset_search_recovers_a_known_shift_with_a_stand_in_network(lag):
    frames, audio = _stream(200, lag)
    settings = _settings(batch_size=7)  # batches that do not divide the frames: the trunk's 4-frame overlap
    result = gs.sync_regions(StandIn(), frames, audio, settings)
    assert result.num_windows == 200 - 24 and result.scores.shape == (50, 21)  # 21 candidates, 50 windows each
    assert result.offset_range_frames == (-50, 50)
    assert result.offset_frames == -lag  # SyncNet's sign: audio lagging by d frames reads -d
    column = (50 + lag) // 5  # candidate k: GestSync's offset 5 k - 50
    np.testing.assert_allclose(result.scores[:, column], 1.0, atol=1e-5)  # identical embeddings
    assert result.best_score == pytest.approx(1.0, abs=1e-5)
    assert result.confidence > 0.5  # shifted windows agree on about 1 symbol in 8
    # raw curve: the zero-shift score of the (edge-padded) window centred on each frame, on every frame
    assert np.isfinite(result.score_raw).all() and np.isfinite(result.score_smooth).all()
    assert result.score_smooth[40] == pytest.approx(np.mean(result.score_raw[28:53]), abs=1e-5)
    if lag == 0:  # the edge-padded windows at each end see repeated frames, not their audio
        assert np.min(result.score_smooth[24:-24]) > 0.99 and np.min(result.score_raw[:12]) < 0.9
    glob = gs.sync_regions(StandIn(), frames, audio, _settings(global_speaker="true"))
    np.testing.assert_allclose(glob.score_smooth, np.mean(result.score_raw), atol=1e-5)  # one score per track


def test_too_short_and_silent():
    frames, audio = _stream(24, 0)
    short = gs.sync_regions(StandIn(), frames, audio, _settings())
    assert short.num_windows == 0 and np.isnan(short.offset_frames) and np.isnan(short.score_smooth).all()
    frames, _ = _stream(30, 0)
    silent = gs.sync_regions(StandIn(), frames, np.zeros(30 * SAMPLES_PER_FRAME, np.int16), _settings())
    assert silent.silent and np.isnan(silent.offset_frames) and silent.confidence == 0.0


def test_face_region_masking_and_bad_settings():
    settings = _settings()
    # face 40 x 50 at (100, 100): 4 faces wide around its centre, from 25 px above to 200 px below it
    assert gs.face_region([100, 100, 140, 150], settings, 640, 360) == (40, 75, 200, 350)
    assert gs.face_region([0, 300, 40, 350], settings, 640, 360) == (0, 275, 100, 360)  # clipped to the frame
    frame = np.full((200, 300, 3), 200, np.uint8)
    out = gs.region_input(frame, (180.0, 110.0, 90.0), 60.0, settings.front)  # the square: rows 20 .. 200
    assert out.shape == (270, 480, 3)
    # the face bottom (frame row 60) is crop row (60 - 20) * 270 / 180 = 60: rows 0 .. 60 + 15 blacked out
    assert (out[:76] == 0).all() and (out[76:] == 200).all()
    for key, value in (("window_stride_frames", 2), ("max_offset_frames", -1), ("region_width_faces", 0.0),
                       ("person_min_face_overlap", 1.5)):
        with pytest.raises(InputError, match=key):
            _settings(**{key: value})


def _person_track(frames, box):
    return {"frame": np.asarray(frames, np.int64), "bbox": np.tile(np.asarray(box, np.float64), (len(frames), 1))}


def test_person_boxes_are_tracked_per_shot_and_matched_to_faces():
    cfg = load_config()
    left, right = [50, 40, 250, 350], [350, 30, 560, 350]
    persons = [[{"bbox": left, "conf": 0.9}, {"bbox": right, "conf": 0.9}] for _ in range(130)]
    persons[12] = [{"bbox": right, "conf": 0.9}]  # the left person is missed once: interpolated
    tracks = gs.track_persons(persons, [(0, 70), (70, 130)], cfg, 640, 360)  # shots of >= 50 frames, as faces
    assert [(int(t["frame"][0]), int(t["frame"][-1])) for t in tracks] == [(0, 69), (0, 69), (70, 129), (70, 129)]
    assert np.allclose(tracks[0]["bbox"][12], left)
    face = _person_track(range(55, 75), [120, 60, 170, 120])  # inside the left person in both shots
    assert gs.match_person(face, tracks, 0.5) in (0, 1) and np.allclose(tracks[gs.match_person(face, tracks, 0.5)]
                                                                          ["bbox"][0], left)
    regions, from_person = gs.track_regions(face, tracks[0], _settings(), 640, 360)
    assert from_person.tolist() == [True] * 15 + [False] * 5  # the person track ends with the shot
    derived = gs.face_region([120, 60, 170, 120], _settings(), 640, 360)
    assert regions[0].tolist() == [150.0, 195.0, 155.0]  # the person's square: centre, half its larger side
    assert regions[-1].tolist() == [(derived[0] + derived[2]) / 2, (derived[1] + derived[3]) / 2,
                                    max(derived[2] - derived[0], derived[3] - derived[1]) / 2]
    assert gs.match_person(_person_track(range(5), [600, 300, 630, 340]), tracks, 0.5) is None
    none, flags = gs.track_regions(face, None, _settings(), 640, 360)
    assert not flags.any() and len(none) == 20
    extra = gs.person_only_tracks(SyncEvidence("gestsync", "cosine_similarity", person_tracks=(tracks[1],)))
    assert extra[0]["proc_track"]["x"][0] == 455.0 and extra[0]["proc_track"]["s"][0] == 160.0
    assert extra_identities([0, 2, 1], 2) == [3, 4]
    vad = extra_vad([(0.0, 0.5), (0.7, 2.0)], {"track": {"frame": np.arange(10, 30)}}, 25.0)  # 0.4 .. 1.2 s
    np.testing.assert_allclose(vad, [(0.0, 0.1), (0.3, 0.8)])


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_gs", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:.*differs from the published")
def test_real_clip_with_person_boxes_through_all_four_stages(tmp_path, capsys, weights_dir):
    """gestsync_asd2spk_a (Colbert and a masked Deadpool) with GestSync's own person boxes and haar faces,
    both cut to 75 frames (3 s) so the real network (seeded random weights) scores little: Colbert's
    face track takes his person box; Deadpool, whose face the haar cascade misses, is a person track
    without a face and is scored too; every stage-4 output is written, the person boxes drawn."""
    from tests.test_gestsync import published_checkpoint

    name, keep = "gestsync_asd2spk_a", range(120, 195)  # 3 s where the haar cascade finds Colbert
    weights = tmp_path / "weights"
    weights.mkdir()
    for path in weights_dir.iterdir():
        (weights / path.name).symlink_to(path)
    published_checkpoint(weights / "model_rgb.pth")
    work = tmp_path / "data" / "pywork" / name
    work.mkdir(parents=True)
    for src, dst in ((f"{name}_haar_faces.pckl", "faces.pckl"), (f"{name}_faces.pckl", "persons.pckl")):
        with open(DETECTIONS / src, "rb") as handle:
            boxes = pickle.load(handle)
        with open(work / dst, "wb") as handle:
            pickle.dump([dets if idx in keep else [] for idx, dets in enumerate(boxes)], handle, protocol=4)
    video = tmp_path / f"{name}.mp4"
    shutil.copy(clip(name), video)
    out = tmp_path / "out"
    diarize = _script("diarize")
    code = run_main(diarize.main, diarize.build_parser(),
                    ["--videofile", str(video), "--data_dir", str(tmp_path / "data"), "--weights_dir", str(weights),
                     "--sync_model", "gestsync", "--video", "--out_dir", str(out),
                     "--set", "gestsync.conf_thresholds=[-1.0, -1.0]"])  # random weights: let every track vote
    err = capsys.readouterr().err
    assert code == 0, err
    assert "GestSync" in err
    with open(work / "sync.pckl", "rb") as handle:
        sync = SyncEvidence.from_pickle(pickle.load(handle))
    with open(work / "tracks.pckl", "rb") as handle:
        tracks = pickle.load(handle)
    assert sync.model == "gestsync" and len(tracks) == 1 and len(sync.person_tracks) == 1
    assert len(sync.score_smooth) == 2 and sync.region_from_person[0].mean() > 0.9
    face_box, region = tracks[0]["track"]["bbox"][0], sync.region_bbox[0][0]
    assert region[0] <= face_box[0] and region[2] >= face_box[2] and region[3] - region[1] > 400  # a body
    assert sync.person_tracks[0]["bbox"][0][0] > 640  # Deadpool stands on the right
    assert all(np.isfinite(c[12:-12]).all() for c in sync.score_raw)
    lines = (work / "offsets.txt").read_text().splitlines()
    assert "1 without a face track" in lines[0] and len(lines) == 4
    with open(work / "diarization.pckl", "rb") as handle:
        turns = pickle.load(handle)
    assert {1} <= {t for turn in turns for t in turn[4]}  # the faceless person speaks (thresholds at -1)
    for suffix in (".rttm", "_via.json", "_sync.png", "_timeline.png", "_annotated.mp4"):
        assert (out / f"{name}{suffix}").stat().st_size > 0
    assert "spk" in (out / f"{name}.rttm").read_text()
    import av

    first = int(sync.person_tracks[0]["frame"][0])
    with av.open(str(out / f"{name}_annotated.mp4")) as container:
        for idx, decoded in enumerate(container.decode(video=0)):
            if idx == first + 10:
                frame = decoded.to_ndarray(format="bgr24")
                break
    person = sync.person_tracks[0]["bbox"][10]
    square = sync.region_bbox[1][10]  # GestSync's crop of that person: a square around the person box
    assert square[0] <= person[0] and square[2] >= person[2] and abs((square[2] - square[0]) - (square[3] - square[1])) <= 1
    edge = frame[max(square[1], 0) + 10:min(square[3], frame.shape[0]) - 10, square[0] - 1:square[0] + 2]
    assert edge.std(axis=(0, 1)).max() < 40  # one solid colour: the crop square's left side is drawn


def test_shared_trunk_features_equal_the_network_on_each_window():
    """The CNN runs once per frame (batches overlapping by 4 frames) and the transformer once per window:
    the embeddings equal ``forward_vid`` on each whole 25-frame window, time-averaged, as the demos do."""
    from models.gestsync import GestSyncRGB
    from tests import fakeweights
    from tests.gestsync_windows import video_windows

    model = GestSyncRGB().eval()
    model.load_state_dict(fakeweights.random_state_dict("gestsync_rgb.json", seed=5))  # activations that vary
    frames = np.random.default_rng(0).integers(0, 256, (26, 270, 480, 3), dtype=np.uint8)
    audio = (np.random.default_rng(1).standard_normal(26 * SAMPLES_PER_FRAME) * 3000).astype(np.int16)
    scorer = gs.GestSyncScorer(model, audio, _settings(batch_size=7))
    for frame in frames:
        scorer.push(frame)
    scorer._trunk()  # the last partial batch, as finish() does
    features = torch.cat(scorer.features)[12:]  # after the 12 copies of frame 0: positions 0..21
    windows = video_windows(frames, [0, 1])
    with torch.inference_mode():
        for i in range(2):  # the trunk on each whole window gives its 21 positions
            alone = model.net_vid(windows[i:i + 1]).squeeze(-1).squeeze(-1)[0].T
            torch.testing.assert_close(features[i:i + 21], alone, rtol=1e-5, atol=1e-5)
        shared = gs.window_embeddings(model, features, 2, 25, 7)
        whole = model.forward_vid(windows).mean(-1)
    assert features.std(0).max() > 0.01  # the features do depend on the frames
    torch.testing.assert_close(shared, whole, rtol=1e-5, atol=1e-5)


def test_single_clip_mode_prints_offset_score_and_confidence(tmp_path, capsys):
    """``run_syncnet.py --videofile CLIP --sync_model gestsync``: the whole frame is the person, no face known.
    gestsync_sync_offset25 (139 windows) is too short for +-50: one note on stderr gives the range searched,
    which holds its -25 (GestSync's +25 in SyncNet's sign)."""
    from tests.test_gestsync import published_checkpoint

    published_checkpoint(tmp_path / "model_rgb.pth")
    script = _script("run_syncnet")
    argv = ["--videofile", str(clip("gestsync_sync_offset25")), "--sync_model", "gestsync",
            "--weights_dir", str(tmp_path)]
    assert run_main(script.main, script.build_parser(), argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["AV offset", "Best score", "Confidence"]
    offset = int(lines[0].split()[-1])
    assert -40 <= offset <= 45 and offset % 5 == 0
    notes = [line for line in captured.err.splitlines() if "offset range" in line]
    assert len(notes) == 1 and "-40 .. +45" in notes[0]
    code = run_main(script.main, script.build_parser(), [*argv, "--features", str(tmp_path / "f.npz")])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "--sync_model gestsync" in err
