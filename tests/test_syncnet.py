"""Stage 2: the SyncNet network, MFCC windows, offset search, streaming, and the stage over a cache."""
from __future__ import annotations

import math
import os
import pickle
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import python_speech_features
import torch
import torch.nn.functional as F
from scipy.io import wavfile

from models.syncnet import SyncNet, load_syncnet
from pipeline.cache import Cache
from pipeline.config import load_config
from pipeline.errors import CacheError, CheckpointError, InputError
from pipeline.stage2 import OUTPUTS, run_stage2
from pipeline.stage3 import require_stage2
from pipeline.sync.evidence_record import SyncEvidence
from pipeline.sync.syncnet import (
    LipWindowBuffer,
    SyncSettings,
    _map_tracks,
    compute_mfcc,
    count_windows,
    lip_windows,
    mfcc_windows,
    offset_search,
    offsets_text,
    sync_clip,
    sync_track,
)
from tests import fakeweights
from tests.conftest import clip
from tests.syncnet_oracle import distance_matrix

SPF = 640  # samples per 25 fps frame at 16 kHz
pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the published")  # seeded random checkpoints


# ---- helpers shared with test_run_syncnet_cli.py ------------------------------------------------
def noise_frames(num_frames: int, seed: int = 0) -> list[np.ndarray]:
    """224 x 224 BGR noise frames."""
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 256, (num_frames, 224, 224, 3), dtype=np.uint8))


def tone(num_samples: int, freq_hz: float = 440.0, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(num_samples) / 16000
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def speechlike(num_samples: int, seed: int = 1) -> np.ndarray:
    """Noise with a syllable-rate envelope, so MFCC windows differ from each other."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t) * np.sin(2 * np.pi * 0.7 * t)
    return (6000 * env * rng.standard_normal(num_samples)).clip(-32000, 32000).astype(np.int16)


def write_clip(path: Path, frames: list[np.ndarray], audio: np.ndarray | None, codec: str = "ffv1") -> Path:
    """A 25 fps clip (FFV1 lossless by default) with 16 kHz mono PCM audio, written with PyAV."""
    out = av.open(str(path), "w")
    video = out.add_stream(codec, rate=25)
    video.width, video.height = frames[0].shape[1], frames[0].shape[0]
    video.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
    sound = None
    if audio is not None:
        sound = out.add_stream("pcm_s16le", rate=16000)
        sound.layout = "mono"
    for frame in frames:
        for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
            out.mux(packet)
    for packet in video.encode():
        out.mux(packet)
    if sound is not None and len(audio):
        chunk = av.AudioFrame.from_ndarray(audio[None, :], format="s16", layout="mono")
        chunk.sample_rate = 16000
        for packet in sound.encode(chunk):
            out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)
    out.close()
    return path


def make_stage1_cache(data_dir: Path, reference: str, crops: list[tuple[list[np.ndarray], np.ndarray]]) -> Cache:
    """A stage-1 cache as scripts/run_pipeline.py leaves it: tracks.pckl, per-track mkv + wav, manifests."""
    cache = Cache(data_dir, reference)
    tracks, first = [], 0
    for frames, _ in crops:
        n = len(frames)
        tracks.append({"track": {"frame": np.arange(first, first + n), "bbox": np.tile([10.0, 10, 110, 110], (n, 1))},
                       "proc_track": {"x": np.full(n, 60.0), "y": np.full(n, 60.0), "s": np.full(n, 50.0)}})
        first += n
    cache.save_pickle("tracks.pckl", tracks, "run_pipeline", {"test": reference})
    files = []
    for idx, (frames, audio) in enumerate(crops):
        write_clip(cache.crop_frames(idx), frames, None)
        wavfile.write(cache.crop_wav(idx), 16000, audio)
        files += [cache.crop_frames(idx), cache.crop_wav(idx)]
    cache.record("crops", "run_pipeline", {"upstream": {"tracks.pckl": cache.digest("tracks.pckl")}}, files)
    return cache


@pytest.fixture(scope="module")
def model(weights_dir) -> SyncNet:
    return load_syncnet(weights_dir, "syncnet_v2.model")


# ---- a port of syncnet_python's SyncNetInstance.evaluate, the oracle -----------------------------
def reference_evaluate(model: SyncNet, images: list[np.ndarray], audio: np.ndarray, vshift: int, metric: str,
                       batch_size: int = 20):
    """What the original computes: whole-video float tensor, 20 windows per call, per-row distances."""
    im = np.transpose(np.expand_dims(np.stack(images, axis=3), axis=0), (0, 3, 4, 1, 2))
    imtv = torch.from_numpy(im.astype(float)).float()
    mfcc = np.stack([np.array(i) for i in zip(*python_speech_features.mfcc(audio, 16000))])
    cct = torch.from_numpy(np.expand_dims(np.expand_dims(mfcc, axis=0), axis=0).astype(float)).float()
    lastframe = min(len(images), math.floor(len(audio) / 640)) - 5
    im_feat, cc_feat = [], []
    with torch.no_grad():
        for i in range(0, lastframe, batch_size):
            frames = range(i, min(lastframe, i + batch_size))
            im_feat.append(model.forward_lip(torch.cat([imtv[:, :, v:v + 5] for v in frames], 0)))
            cc_feat.append(model.forward_aud(torch.cat([cct[:, :, :, v * 4:v * 4 + 20] for v in frames], 0)))
    im_feat, cc_feat = torch.cat(im_feat, 0), torch.cat(cc_feat, 0)
    win = 2 * vshift + 1
    padded = F.pad(cc_feat, (0, 0, vshift, vshift))
    dists = []
    for i in range(len(im_feat)):
        a, b = im_feat[[i], :].repeat(win, 1), padded[i:i + win, :]
        dists.append(F.pairwise_distance(a, b) if metric == "euclidean" else 1 - F.cosine_similarity(a, b))
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    conf = float(torch.median(mdist) - minval)
    return int(vshift - minidx), float(minval), conf, np.array([d.numpy() for d in dists])


# ---- network and checkpoints ---------------------------------------------------------------------
@pytest.mark.parametrize("file", ["syncnet_v2.model", "syncnet.model"])
def test_strict_load_matches_manifest(weights_dir, file):
    net = load_syncnet(weights_dir, file)
    expected = {e["key"]: (tuple(e["shape"]), e["dtype"]) for e in fakeweights.manifest_keys("syncnet.json")}
    got = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in net.state_dict().items()}
    assert got == expected
    assert not net.training
    ckpt = torch.load(weights_dir / file, weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in ckpt.items())


def test_checkpoint_missing_key_is_named(tmp_path):
    state = fakeweights.random_state_dict("syncnet.json")
    del state["netfcaud.3.bias"]
    fakeweights.save_checkpoint(state, tmp_path / "syncnet.model")
    with pytest.raises(CheckpointError, match=r"missing keys: netfcaud\.3\.bias"):
        load_syncnet(tmp_path, "syncnet.model")


def test_checkpoint_wrong_shape_corrupt_and_absent(tmp_path):
    state = fakeweights.random_state_dict("syncnet.json")
    state["netcnnlip.0.weight"] = torch.zeros(96, 3, 5, 5, 5)
    fakeweights.save_checkpoint(state, tmp_path / "syncnet.model")
    with pytest.raises(CheckpointError, match=r"wrong shape keys: netcnnlip\.0\.weight"):
        load_syncnet(tmp_path, "syncnet.model")
    (tmp_path / "syncnet.model").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_syncnet(tmp_path, "syncnet.model")
    with pytest.raises(CheckpointError, match="not found"):
        load_syncnet(tmp_path / "empty", "syncnet_v2.model")


def test_embedding_shapes(model):
    with torch.inference_mode():
        assert model.forward_aud(torch.zeros(3, 1, 13, 20)).shape == (3, 1024)
        assert model.forward_lip(torch.zeros(2, 3, 5, 224, 224)).shape == (2, 1024)
        assert model.forward_lipfeat(torch.zeros(2, 3, 5, 224, 224)).shape == (2, 512)


# ---- MFCC and windows ----------------------------------------------------------------------------
def test_window_count_is_the_originals():
    s = SyncSettings()
    assert count_windows(30, 30 * SPF, s) == 25  # min_length - 5
    assert count_windows(30, 20 * SPF + 639, s) == 15  # audio shorter: floor(samples / 640)
    assert count_windows(12, 100 * SPF, s) == 7
    assert count_windows(5, 5 * SPF, s) == 0 and count_windows(0, 0, s) == 0
    # the last window's MFCC frames exist: N * 640 samples give 4N - 1 MFCC frames
    mfcc = compute_mfcc(tone(30 * SPF), s)
    assert mfcc.shape == (13, 4 * 30 - 1)
    assert mfcc_windows(mfcc, 0, 25, s).shape == (25, 1, 13, 20)


def test_mfcc_window_alignment_on_an_onset():
    """Frame i pairs with MFCC frames 4i..4i+19: a tone starting at video frame k appears exactly there."""
    s = SyncSettings()
    k, n = 12, 30
    audio = np.zeros(n * SPF, dtype=np.int16)
    audio[k * SPF:] = tone((n - k) * SPF)
    mfcc = compute_mfcc(audio, s)
    np.testing.assert_array_equal(mfcc, python_speech_features.mfcc(audio, 16000).T.astype(np.float32))
    windows = mfcc_windows(mfcc, 0, count_windows(n, len(audio), s), s).numpy()
    for i in range(len(windows)):
        np.testing.assert_array_equal(windows[i, 0], mfcc[:, 4 * i:4 * i + 20])
    energy = windows[:, 0, 0, :]  # log energy, [window, 20 MFCC frames]
    silent, loud = energy.min(), energy.max()
    # MFCC frame j covers samples [160 j, 160 j + 400): frame 4k - 3 ends before the onset, 4k starts on it
    assert energy[k - 1, 1] == silent and energy[k, 0] > silent + 10  # window k begins with the tone
    assert energy[k - 5, 17] == silent and energy[k - 5, 19] > silent + 10  # window k - 5 ends on it
    assert abs(energy[k, 0] - loud) < 1.0


# ---- distances and offset search -----------------------------------------------------------------
def shifted_embeddings(num_windows: int, audio_lag_frames: int, seed: int = 0):
    """Lip window i equals audio window i + lag (the audio lags the video by ``lag`` frames)."""
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(num_windows, 64, generator=gen)
    lip = torch.randn(num_windows, 64, generator=gen)
    for i in range(num_windows):
        if 0 <= i + audio_lag_frames < num_windows:
            lip[i] = audio[i + audio_lag_frames] + 0.05 * torch.randn(64, generator=gen)
    return lip, audio


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("lag", [3, -4, 0])
def test_offset_search_recovers_a_known_shift(metric, lag):
    vshift = 10
    lip, audio = shifted_embeddings(60, lag)
    dists = distance_matrix(lip, audio, vshift, metric)
    assert dists.shape == (60, 21) and dists.dtype == np.float32
    offset, min_dist, confidence = offset_search(dists, vshift)
    assert offset == -lag  # syncnet_python's sign: audio lagging by d frames reads -d
    assert confidence > 0 and min_dist == pytest.approx(dists.mean(0).min(), rel=1e-5)
    # row i, column vshift + lag is the matching pair
    assert np.argmin(dists[20]) == vshift + lag


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_distance_matrix_equals_calc_pdist(metric):
    lip, audio = shifted_embeddings(37, 2, seed=3)
    vshift = 15
    padded = F.pad(audio, (0, 0, vshift, vshift))
    rows = []
    for i in range(len(lip)):
        a, b = lip[[i], :].repeat(2 * vshift + 1, 1), padded[i:i + 2 * vshift + 1]
        rows.append((F.pairwise_distance(a, b) if metric == "euclidean" else 1 - F.cosine_similarity(a, b)).numpy())
    np.testing.assert_allclose(distance_matrix(lip, audio, vshift, metric, chunk_windows=8), np.stack(rows),
                               rtol=1e-6, atol=1e-6)


def test_offset_search_bad_shape_and_empty():
    off, dist, conf = offset_search(np.zeros((0, 21), np.float32), 10)
    assert math.isnan(off) and math.isnan(dist) and conf == 0.0
    with pytest.raises(InputError):
        offset_search(np.zeros((5, 20)), 10)


def test_reused_window_buffer_equals_fresh_windows():
    """The reused buffer gives lip_windows' values and channels-last strides, batch after batch (a shorter last
    batch included, with nothing left over from the one before), and refuses more windows than it holds."""
    frames = noise_frames(17, seed=9)
    buffer = LipWindowBuffer(max_windows=9, window_frames=5)
    for start, stop in ((0, 13), (9, 17), (3, 10)):  # 9 windows, then 4, then 3
        got = buffer.fill(frames[start:stop])
        want = lip_windows(torch.from_numpy(np.stack(frames[start:stop])), 5, channels_last=True)
        assert got.shape == want.shape == (stop - start - 4, 3, 5, 224, 224)
        assert got.stride() == want.stride() and got.is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(got, want)
    with pytest.raises(ValueError):
        buffer.fill(frames[:14])  # 10 windows


# ---- one track end to end ------------------------------------------------------------------------
@pytest.mark.parametrize("metric,vshift", [("euclidean", 15), ("cosine", 10)])
def test_batched_streaming_equals_reference_batching(model, metric, vshift):
    """Any batch size, streamed, gives the original's 20-per-call result (here with a batch of 7 and of 64)."""
    frames, audio = noise_frames(36, seed=4), speechlike(36 * SPF)
    ref_offset, ref_min, ref_conf, ref_dists = reference_evaluate(model, frames, audio, vshift, metric)
    for batch in (7, 64):
        s = SyncSettings(metric=metric, vshift_frames=vshift, batch_size=batch)
        result = sync_track(model, iter(frames), audio, s)
        assert result.distances.shape == ref_dists.shape == (31, 2 * vshift + 1)
        np.testing.assert_allclose(result.distances, ref_dists, rtol=1e-4, atol=1e-4 * np.abs(ref_dists).max())
        assert result.offset_frames == ref_offset
        assert result.min_dist == pytest.approx(ref_min, rel=1e-4)
        assert result.confidence == pytest.approx(ref_conf, rel=1e-3, abs=1e-3 * ref_min)


def test_track_shorter_than_a_window(model):
    s = SyncSettings()
    for frames, samples in ((5, 5 * SPF), (40, 5 * SPF + 600), (3, 40 * SPF), (0, 0)):
        r = sync_track(model, iter(noise_frames(frames)), speechlike(samples), s)
        assert r.distances.shape == (0, 21) and math.isnan(r.offset_frames) and math.isnan(r.min_dist)
        assert r.confidence == 0.0
    r = sync_track(model, iter(noise_frames(6)), speechlike(6 * SPF), s)  # exactly one window
    assert r.distances.shape == (1, 21) and math.isfinite(r.offset_frames)


def test_audio_shorter_than_video_uses_the_common_length(model):
    frames = noise_frames(20)
    consumed = []

    def lazy():
        for f in frames:
            consumed.append(1)
            yield f
    r = sync_track(model, lazy(), speechlike(12 * SPF + 100), SyncSettings(batch_size=4))
    assert r.num_frames == 12 and r.distances.shape == (7, 21) and len(consumed) == 12
    assert np.isfinite(r.distances).all()


def test_silent_audio_gives_distances_but_no_offset(model):
    r = sync_track(model, iter(noise_frames(14)), np.zeros(14 * SPF, np.int16), SyncSettings())
    assert r.silent and r.distances.shape == (9, 21) and np.isfinite(r.distances).all()
    assert math.isnan(r.offset_frames) and r.confidence == 0.0 and math.isfinite(r.min_dist)


def test_bad_frames_and_audio_are_refused(model):
    with pytest.raises(InputError, match="224x224"):
        sync_track(model, iter([np.zeros((100, 100, 3), np.uint8)] * 10), speechlike(10 * SPF), SyncSettings())
    with pytest.raises(InputError, match="int16"):
        sync_track(model, iter(noise_frames(10)), np.zeros((10 * SPF, 2), np.int16), SyncSettings())
    with pytest.raises(InputError, match="metric"):
        SyncSettings(metric="manhattan")


def test_real_clip_center_crop(model):
    """A real talking-head clip, centre-cropped to 224 x 224, runs through the single-clip path."""
    from pipeline import media

    path = clip("retalking_talkinghead_2")
    frames = []
    for frame in media.iter_video_frames(path):
        h, w = frame.shape[:2]
        frames.append(np.ascontiguousarray(frame[h // 2 - 112:h // 2 + 112, w // 2 - 112:w // 2 + 112]))
        if len(frames) == 30:
            break
    audio = media.decode_audio(path, 16000)[: 30 * SPF]
    r = sync_track(model, iter(frames), audio, SyncSettings.from_config(load_config(), demo=True))
    assert r.distances.shape == (25, 31) and np.isfinite(r.distances).all()
    mean_per_shift = r.distances.astype(np.float64).mean(axis=0)  # syncnet_python: offset = vshift - argmin
    assert r.offset_frames == 15 - int(np.argmin(mean_per_shift))
    assert r.min_dist == pytest.approx(mean_per_shift.min(), rel=1e-5)
    assert r.confidence == pytest.approx(np.median(mean_per_shift) - mean_per_shift.min(), rel=1e-4, abs=1e-5)


# ---- the stage over a cache ----------------------------------------------------------------------
def test_stage2_writes_reuses_and_redoes(tmp_path, weights_dir, model):
    crops = [(noise_frames(16, seed=1), speechlike(16 * SPF, seed=2)),
             (noise_frames(4, seed=3), speechlike(4 * SPF, seed=4)),  # too short for one window
             (noise_frames(12, seed=5), speechlike(9 * SPF + 10, seed=6))]  # audio shorter than video
    cache = make_stage1_cache(tmp_path, "vid", crops)
    cfg = load_config()
    out = run_stage2(cache, cfg, weights_dir)
    assert not out.reused and out.num_tracks == 3
    activesd = pickle.loads(cache.work("activesd.pckl").read_bytes())
    assert [d.shape for d in activesd] == [(11, 21), (0, 21), (4, 21)]
    assert all(d.dtype == np.float32 for d in activesd)
    sync = SyncEvidence.from_pickle(pickle.loads(cache.work("sync.pckl").read_bytes()))
    assert sync.model == "syncnet" and sync.metric == "cosine" and sync.vshift_frames == 10
    assert math.isnan(sync.offset_frames[1]) and sync.confidence[1] == 0.0
    direct = sync_track(model, iter(crops[0][0]), crops[0][1], SyncSettings.from_config(cfg))
    np.testing.assert_allclose(activesd[0], direct.distances, rtol=1e-5, atol=1e-6)
    assert sync.offset_frames[0] == direct.offset_frames
    lines = cache.work("offsets.txt").read_text().splitlines()
    assert lines[2].startswith("00000\t") and lines[3] == "00001\tnan\tnan\t0.000" and len(lines) == 5
    manifest = cache.read_manifest("activesd.pckl")
    assert manifest["key"]["upstream"] == {"tracks.pckl": cache.digest("tracks.pckl"), "crops": cache.digest("crops")}
    assert manifest["key"]["checkpoint"]["file"] == "syncnet.model"
    assert len(manifest["key"]["checkpoint"]["sha256"]) == 64
    assert cache.require_fresh("activesd.pckl", "x", {"tracks.pckl": 1, "crops": 1}) is not None

    assert run_stage2(cache, cfg, weights_dir).reused
    assert not run_stage2(cache, cfg, weights_dir, force=True).reused
    euclid = run_stage2(cache, load_config(overrides=["syncnet.metric=euclidean"]), weights_dir)
    assert not euclid.reused and euclid.sync.metric == "euclidean"
    assert cache.read_manifest("sync.pckl")["key"]["syncnet"]["metric"] == "euclidean"


def test_stage2_zero_tracks(tmp_path, weights_dir):
    cache = make_stage1_cache(tmp_path, "empty", [])
    out = run_stage2(cache, load_config(), weights_dir)
    assert out.num_tracks == 0 and out.distances == []
    assert pickle.loads(cache.work("activesd.pckl").read_bytes()) == []
    assert SyncEvidence.from_pickle(pickle.loads(cache.work("sync.pckl").read_bytes())).offset_frames == ()
    assert all(cache.read_manifest(name) for name in OUTPUTS)
    assert offsets_text(out.sync).count("\n") == 2


def test_stage2_redoes_an_older_sync_pckl_with_one_note(tmp_path, weights_dir, capsys):
    """A cache written before SyncEvidence (SyncNet's old dict, its manifest valid) is not reused: stage 2
    scores again with exactly one note on stderr and writes the typed record; stage 3 refuses the old file
    with one line naming stage 2."""
    cache = make_stage1_cache(tmp_path, "old", [(noise_frames(16, seed=1), speechlike(16 * SPF, seed=2))])
    cfg = load_config()
    first = run_stage2(cache, cfg, weights_dir)
    key = cache.read_manifest("sync.pckl")["key"]
    old = {"metric": "cosine", "vshift_frames": 10, "offset_frames": [float(first.sync.offset_frames[0])],
           "min_dist": [float(first.sync.score[0])], "confidence": [float(first.sync.confidence[0])],
           "checkpoint": "syncnet.model", "model": "syncnet"}
    cache.save_pickle("sync.pckl", old, "run_syncnet", key)
    with pytest.raises(CacheError, match="older version.*run_syncnet.py") as err:
        require_stage2(cache, 1)
    assert "\n" not in str(err.value)
    capsys.readouterr()
    again = run_stage2(cache, cfg, weights_dir)
    err_lines = capsys.readouterr().err.splitlines()
    assert not again.reused and len(err_lines) == 1 and "older version" in err_lines[0], err_lines
    typed = SyncEvidence.from_pickle(pickle.loads(cache.work("sync.pckl").read_bytes()))
    assert typed.offset_frames == first.sync.offset_frames and typed.score == first.sync.score
    assert run_stage2(cache, cfg, weights_dir).reused and capsys.readouterr().err == ""


def test_stage2_missing_and_stale_stage1(tmp_path, weights_dir):
    with pytest.raises(CacheError, match="run scripts/run_pipeline.py first"):
        run_stage2(Cache(tmp_path, "none"), load_config(), weights_dir)
    cache = make_stage1_cache(tmp_path, "vid", [(noise_frames(8), speechlike(8 * SPF))])
    run_stage2(cache, load_config(), weights_dir)
    # tracks.pckl rewritten after the crops were made: crops and stage 2 are stale
    cache.save_pickle("tracks.pckl", [], "run_pipeline", {"test": "changed"})
    with pytest.raises(CacheError, match="stale.*run scripts/run_pipeline.py again"):
        run_stage2(cache, load_config(), weights_dir)
    cache = make_stage1_cache(tmp_path, "vid2", [(noise_frames(8), speechlike(8 * SPF))])
    cache.crop_wav(0).unlink()
    with pytest.raises(CacheError, match="00000.wav is missing.*run_pipeline"):
        run_stage2(cache, load_config(), weights_dir)
    cache = make_stage1_cache(tmp_path, "vid3", [(noise_frames(8), speechlike(8 * SPF))])
    cache.crop_frames(0).write_bytes(b"garbage")
    with pytest.raises(CacheError, match="changed since stage 1"):
        run_stage2(cache, load_config(), weights_dir)
    cache.invalidate("crops")
    with pytest.raises(CacheError, match="no face-track crops.*run_pipeline"):
        run_stage2(cache, load_config(), weights_dir)


def test_stage2_bad_crop_contents(tmp_path, weights_dir):
    cache = make_stage1_cache(tmp_path, "vid", [(noise_frames(8), speechlike(8 * SPF))])
    wavfile.write(cache.crop_wav(0), 44100, speechlike(8 * SPF))
    cache.record("crops", "run_pipeline", {"upstream": {"tracks.pckl": cache.digest("tracks.pckl")}},
                 [cache.crop_frames(0), cache.crop_wav(0)])
    with pytest.raises(CacheError, match="44100 Hz.*run scripts/run_pipeline.py again"):
        run_stage2(cache, load_config(), weights_dir)
    wavfile.write(cache.crop_wav(0), 16000, speechlike(8 * SPF))
    write_clip(cache.crop_frames(0), [np.zeros((100, 100, 3), np.uint8)] * 8, None)
    cache.record("crops", "run_pipeline", {"upstream": {"tracks.pckl": cache.digest("tracks.pckl")}},
                 [cache.crop_frames(0), cache.crop_wav(0)])
    with pytest.raises(CacheError, match="track 0: .*224x224.*run_pipeline"):
        run_stage2(cache, load_config(), weights_dir)


def test_parallel_tracks_keep_order_and_raise():
    """The CUDA path runs tracks in threads: results stay in track order and a failure reaches the caller."""
    import time

    def work(idx: int) -> int:
        time.sleep(0.01 * max(0, 5 - idx))
        if idx == 7:
            raise CacheError("track 7 is broken")
        return idx * idx

    assert list(_map_tracks(work, 6, workers=3)) == [i * i for i in range(6)]
    assert list(_map_tracks(work, 6, workers=1)) == [i * i for i in range(6)]
    with pytest.raises(CacheError, match="track 7"):
        list(_map_tracks(work, 9, workers=4))


# ---- the published demo result -------------------------------------------------------------------
@pytest.mark.real_weights
def test_demo_golden_result(tmp_path):
    """syncnet_python README: example.avi with syncnet_v2.model gives offset 3, min dist 5.353, conf 10.021.

    Set SYNCNET_V2_MODEL and SYNCNET_EXAMPLE_AVI to the two files. The original reads frames back from
    ffmpeg's JPEG extraction and we decode the video directly, so the distances are compared to 0.05.
    """
    model_file, example = os.environ.get("SYNCNET_V2_MODEL"), os.environ.get("SYNCNET_EXAMPLE_AVI")
    if not (model_file and example and Path(model_file).is_file() and Path(example).is_file()):
        pytest.skip("set SYNCNET_V2_MODEL and SYNCNET_EXAMPLE_AVI to syncnet_python's files")
    shutil.copy(model_file, tmp_path / "syncnet_v2.model")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = sync_clip(example, load_config(), tmp_path, device)
    assert result.offset_frames == 3
    assert result.min_dist == pytest.approx(5.353, abs=0.05)
    assert result.confidence == pytest.approx(10.021, abs=0.05)


# ---- audio embeddings shared by a clip's tracks (issue 23) ----------------------------------------
class _CountingModel:
    """``forward_aud`` of a SyncNet, counting the windows it is asked for."""

    def __init__(self, model):
        self.model, self.windows = model, 0

    def forward_aud(self, batch):
        self.windows += int(batch.shape[0])
        return self.model.forward_aud(batch)


def test_audio_network_rows_do_not_depend_on_the_other_windows_of_the_batch(model):
    # what AudioEmbeddings relies on: at one batch size, a window's embedding is the same whatever shares its batch
    windows = torch.randn(16, 1, 13, 20, generator=torch.Generator().manual_seed(5)) * 10
    with torch.inference_mode():
        whole = model.forward_aud(windows)
        shuffled = model.forward_aud(windows[torch.arange(15, -1, -1)]).flip(0)
        padded = model.forward_aud(torch.cat([windows[:3], windows[:1].expand(13, 1, 13, 20)]))[:3]
    assert whole.numpy().tobytes() == shuffled.numpy().tobytes()
    assert whole[:3].numpy().tobytes() == padded.numpy().tobytes()


@pytest.mark.parametrize("batch", [8, 64])
def test_tracks_sharing_audio_reuse_its_embeddings_bit_for_bit(model, batch):
    from pipeline.sync.syncnet import AudioEmbeddings

    settings = SyncSettings(batch_size=batch)
    audio = speechlike(90 * SPF, seed=3)
    # three faces on screen together: track 1 starts 10 frames after track 0 and cuts the same audio from there;
    # track 2 is a second copy of track 0's span (the same windows, other frames)
    spans = [(0, 70), (10, 90), (0, 70)]
    tracks = [(noise_frames(stop - start, seed=k), audio[start * SPF: stop * SPF]) for k, (start, stop) in enumerate(spans)]
    own = [sync_track(model, iter(frames), track_audio, settings) for frames, track_audio in tracks]
    counting = _CountingModel(model)
    memo = AudioEmbeddings(counting, max_windows=10_000)
    shared = [sync_track(model, iter(frames), track_audio, settings, audio_embeddings=memo)
              for frames, track_audio in tracks]
    for a, b in zip(own, shared, strict=True):
        assert a.distances.tobytes() == b.distances.tobytes()
        assert (a.offset_frames, a.min_dist, a.confidence) == (b.offset_frames, b.min_dist, b.confidence)
    # a batch with any window unknown is computed whole (padded to its size, so no call is dearer than before);
    # with batches of 8, track 2 entirely and most of track 1 come from the memo
    total = sum(r.num_windows for r in own)
    assert counting.windows <= total and (batch != 8 or counting.windows < 0.6 * total)


def test_audio_memo_stays_within_its_bound(model):
    from pipeline.sync.syncnet import AudioEmbeddings

    memo = AudioEmbeddings(model, max_windows=20)
    windows = torch.randn(64, 1, 13, 20, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        first = memo(windows[:32])
        assert len(memo.known) == 20
        again = memo(windows[:32])  # 12 of them were dropped: computed again, in a batch of 32 as before
    assert first.numpy().tobytes() == again.numpy().tobytes() and len(memo.known) == 20
