"""GestSync as its authors run it: the person crop, the learnt score scale, the offset search and the
active-speaker curve against transcriptions of Sindhu-Hegde/gestsync (``tests/gestsync_reference.py``), on the
shared clips, with seeded weights whose ``logits_scale`` is non-trivial (negative and positive).

The curve and offset comparisons run the whole chain twice (ours: frames streamed through
``GestSyncScorer``; upstream's: ``forward_vid`` on each edge-padded or plain window, then upstream's
functions) with a small network of GestSync's shape (``TinyGestSync``: the real transformer, ``ff_vid``,
``ff_aud`` and ``logits_scale``, with cheap trunks), so whole clips fit in seconds; the real trunk on padded
windows is checked separately (``test_padded_windows_of_the_real_network``)."""
from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from models.gestsync import GestSyncRGB
from pipeline import media
from pipeline.config import load_config
from pipeline.sync import gestsync as gs
from pipeline.sync import gestsync_frontend as gf
from tests import gestsync_reference as ref
from tests.conftest import DETECTIONS, clip

SYNC_CLIPS = ("gestsync_sync_offset0", "gestsync_sync_offset25", "gestsync_sync_offset-15")
SCALES = (-2.5, 3.0)


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
                              ("numpy._core.multiarray", "_reconstruct")}:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


def _person_tracks(name: str) -> list[dict]:
    data = _NumpyOnly(io.BytesIO((DETECTIONS / f"{name}_tracks.pckl").read_bytes())).load()
    return [t["track"] for scene in data for t in scene]


def _settings(**kw) -> gs.GestSyncSettings:
    return gs.GestSyncSettings.from_config(load_config(overrides=[f"gestsync.{k}={v}" for k, v in kw.items()]))


# ---- the person crop -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def asd_frames() -> list[np.ndarray]:
    return list(media.iter_frames(clip("gestsync_asd2spk_a"), 25.0))[:273]


def test_person_crops_equal_crop_video_on_gestsyncs_own_person_tracks(asd_frames):
    """Every frame of both person tracks of gestsync_asd2spk_a (546 crops): the same pixels as upstream's
    ``crop_video``, as person-only tracks (stage 2 crops those from the person track alone) and as the
    person matched to a face track that it holds throughout."""
    settings = _settings()
    height, width = asd_frames[0].shape[:2]
    compared = 0
    for track in _person_tracks("gestsync_asd2spk_a"):
        expected, dets = ref.crop_video(track, asd_frames)
        squares = gf.crop_squares(track["bbox"])
        np.testing.assert_array_equal(squares, np.stack([dets["x"], dets["y"], dets["s"]], axis=1))
        boxes = np.asarray(track["bbox"])
        face = {"frame": track["frame"], "bbox": np.stack([boxes[:, 0] + 10, boxes[:, 1] + 10,
                                                           boxes[:, 0] + 60, boxes[:, 1] + 70], axis=1)}
        matched, from_person = gs.track_regions(face, track, settings, width, height)
        assert from_person.all()
        np.testing.assert_array_equal(matched, squares)
        for frame_idx, square, want in zip(track["frame"], squares, expected):
            got = gf.square_crop(asd_frames[int(frame_idx)], square)
            np.testing.assert_array_equal(got, want)
            compared += 1
    assert compared == 546


def test_face_derived_regions_are_cropped_as_crop_video_crops_a_box_track(asd_frames):
    """A face track's derived regions go through the same crop: equal to ``crop_video`` on a track whose
    boxes are those regions (squares leaving the frame: grey 110 there)."""
    settings = _settings()
    height, width = asd_frames[0].shape[:2]
    person = _person_tracks("gestsync_asd2spk_a")[0]
    frames = person["frame"][:60]
    jitter = np.random.default_rng(0).normal(0, 4, (60, 4))
    faces = np.asarray(person["bbox"])[:60, :2].repeat(2, axis=1) + [60, 20, 150, 130] + jitter
    squares, from_person = gs.track_regions({"frame": frames, "bbox": faces}, None, settings, width, height)
    assert not from_person.any()
    derived = np.asarray([gs.face_region(b, settings, width, height) for b in faces], dtype=np.float64)
    expected, _ = ref.crop_video({"frame": frames, "bbox": derived}, asd_frames)
    for frame_idx, square, want in zip(frames, squares, expected):
        np.testing.assert_array_equal(gf.square_crop(asd_frames[int(frame_idx)], square), want)
    frame = np.full((100, 160, 3), 7, np.uint8)
    corner = [[100, 60, 160, 100]] * 7  # a box in the corner, kept by the median (7 of 13 values)
    edge, _ = ref.crop_video({"frame": [0] * 7, "bbox": corner}, [frame])
    got = gf.square_crop(frame, gf.crop_squares(np.asarray(corner, np.float64))[0])
    assert gf.crop_squares(np.asarray(corner, np.float64))[0].tolist() == [130.0, 80.0, 30.0]
    np.testing.assert_array_equal(got, edge[0])
    assert (got[-10:, -10:] == 110).all() and (got[:100, :100] == 7).all()


def test_face_mask_is_drawn_on_the_crop():
    """The face box's bottom, mapped onto the 480 x 270 crop, + 15 rows are black; the rows below are not."""
    frame = np.full((400, 600, 3), 200, np.uint8)
    square = (300.0, 200.0, 100.0)  # rows 100 .. 300 of the frame, 200 rows onto 270
    out = gs.region_input(frame, square, 160.0, _settings().front)  # face bottom at frame row 160
    row = int(np.floor((160 - 100) * 270 / 200))  # 81
    assert gf.face_row_in_crop(160.0, square, 600, 400) == row
    assert (out[:row + 16] == 0).all() and (out[row + 16:] == 200).all()
    no_face = gs.region_input(frame, square, None, _settings().front)
    assert (no_face[:111] == 0).all() and (no_face[111:] == 200).all()


# ---- a small network of GestSync's shape ----------------------------------------------------------
class TinyGestSync(GestSyncRGB):
    """``GestSyncRGB`` made cheap (these tests are about what surrounds the network): the video trunk pools
    each frame to 6 x 8 before one 5-frame convolution (so it still mixes 5 frames and gives
    ``[N, 512, T - 4, 1, 1]``), the audio trunk pools the window before one convolution, no transformer;
    the positional encoding, ``ff_vid``, ``ff_aud`` and ``logits_scale`` are GestSync's own, seeded."""

    def __init__(self, scale: float, seed: int = 0) -> None:
        torch.manual_seed(seed)
        super().__init__()
        self.net_vid = nn.Sequential(nn.AvgPool3d((1, 45, 60)), nn.Conv3d(3, 512, (5, 6, 8)), nn.ReLU())
        self.net_aud = nn.Sequential(nn.AvgPool2d((8, 10)), nn.Conv2d(1, 512, (10, 10)), nn.ReLU())
        self.transformer_encoder = nn.Identity()
        with torch.no_grad():
            self.logits_scale.weight.fill_(scale)
        self.eval()


def _clip_inputs(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The clip's 25 fps frames, whole, masked as with no face (upstream's fallback), and its audio."""
    frames = np.stack([gf.masked_frame(f[:, :, ::-1].copy(), None) for f in media.iter_frames(clip(name), 25.0)])
    return frames, media.decode_audio(clip(name), 16000)


def _pooled(frames: np.ndarray) -> np.ndarray:
    """``[T, 270, 480, 3]`` uint8 -> ``[T, 6, 8, 3]`` float in [0, 1]: ``TinyGestSync``'s per-frame pooling done
    once, so upstream's windows (of 25 whole frames each) need not be built at full size."""
    return np.asarray(frames).reshape(len(frames), 6, 45, 8, 60, 3).mean(axis=(2, 4), dtype=np.float64) / 255.


def _without_pooling(model: TinyGestSync) -> TinyGestSync:
    """The same network for pooled frames: its video trunk without the per-frame pooling."""
    pooled = copy.deepcopy(model)
    pooled.net_vid = model.net_vid[1:]
    return pooled


def _reference_embeddings(model, windows_of, count: int, batch: int = 12) -> torch.Tensor:
    """``get_embeddings``: ``forward_vid`` on each window, time-averaged, ``[count, 1024]``."""
    out = []
    with torch.no_grad():
        for start in range(0, count, batch):
            video_inp = torch.FloatTensor(np.stack([windows_of(i) for i in range(start, min(start + batch, count))]))
            video_inp = video_inp.permute(0, 4, 1, 2, 3)  # [n, 3, 25, 270, 480], as np.transpose(..., (4, 0, 1, 2, 3))
            out.append(torch.mean(model.forward_vid(video_inp), axis=-1))
    return torch.cat(out)


def _reference_audio(model, fbanks: np.ndarray, spec_windows: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        mels = torch.FloatTensor(spec_windows).permute(0, 2, 1)[:, None]  # [n, 1, 80, 100]
        return model.forward_aud(mels)  # [n, 1024, 1]


@pytest.fixture(scope="module")
def clip_inputs() -> dict:
    return {name: _clip_inputs(name) for name in SYNC_CLIPS}


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", SYNC_CLIPS)
def test_offset_and_curves_equal_upstreams_on_the_shared_clips(clip_inputs, name, scale):
    """Ours (stage 2's streaming scorer) against upstream's chain on the same frames, audio and weights:
    the offset (negated: SyncNet's sign) and its range equal ``calc_optimal_av_offset``'s; the raw curve
    equals ``predict_active_speaker``'s scaled cosine on every frame (edges included), the smoothed one its
    25-frame average wherever upstream has one, within 1e-5."""
    frames, audio = clip_inputs[name]
    model = TinyGestSync(scale)
    ours = gs.sync_regions(model, list(frames), audio, _settings(batch_size=9))
    fbanks = gf.filterbanks(audio)
    # inference_syncoffset.py: plain windows, audio windows cut to their count
    plain = len(frames) - 24
    pooled, small = _pooled(frames), _without_pooling(model)
    video = _reference_embeddings(small, lambda i: pooled[i:i + 25], plain)
    spec = np.array([fbanks[i:i + 100] for i in range(0, len(fbanks), 4) if i + 100 <= len(fbanks)])
    vid_emb, aud_emb = ref.syncoffset_embeddings(video, _reference_audio(model, fbanks, spec[:plain])[:, :, 0], plain)
    offset, _, offset_range = ref.calc_optimal_av_offset(vid_emb, aud_emb, model.logits_scale)
    assert ours.offset_frames == -offset
    assert ours.offset_range_frames == (-offset_range[1], -offset_range[0])
    # inference_activespeaker.py: edge-padded frames and audio windows
    padded = ref.pad_video_frames(pooled)
    spec_pad = ref.load_spectrogram_windows(fbanks)
    count = min(len(frames), len(spec_pad))  # load_masked_input_frames cuts the video to the spectrogram
    video_pad = _reference_embeddings(small, lambda i: padded[i:i + 25], count)
    output, score = ref.predict_active_speaker_scores(video_pad, _reference_audio(model, fbanks, spec_pad[:count]),
                                                      model.logits_scale, "False")
    np.testing.assert_allclose(ours.score_raw[:count], output, atol=1e-5)
    assert np.isnan(ours.score_raw[count:]).all()
    np.testing.assert_allclose(ours.score_smooth[12:12 + len(score)], score, atol=1e-5)
    assert (ours.score_smooth[:12] == ours.score_smooth[12]).all()  # upstream's first decision, held
    np.testing.assert_allclose(ours.score_smooth[12 + len(score):count], score[-1], atol=1e-5)
    _, whole = ref.predict_active_speaker_scores(video_pad, _reference_audio(model, fbanks, spec_pad[:count]),
                                                 model.logits_scale, "True")
    np.testing.assert_allclose(gs.smooth_scores(ours.score_raw[:count], 25, global_speaker=True), whole, atol=1e-5)


# ---- the offset search on the same embeddings -----------------------------------------------------
@pytest.mark.parametrize("windows,audio_lag", [(139, 25), (139, -15), (198, 40), (101, 0), (60, 5), (45, 0), (200, -50)])
@pytest.mark.parametrize("scale", SCALES)
def test_offset_search_equals_calc_optimal_av_offset_on_the_same_embeddings(windows, audio_lag, scale):
    """Random unit embeddings where the audio window ``i + lag`` repeats video window ``i`` (GestSync's +:
    the audio lags): both rules pick the same candidate; ours reads ``-lag`` where the range holds it (139
    windows: gestsync_sync_offset25's length, whose +25 is representable), and a negative scale makes
    both pick the least similar candidate alike."""
    gen = torch.Generator().manual_seed(windows + audio_lag)
    video = nn.functional.normalize(torch.randn(windows, 64, generator=gen), dim=1)
    audio = nn.functional.normalize(torch.randn(windows, 64, generator=gen), dim=1)
    lo, hi = max(0, -audio_lag), min(windows, windows - audio_lag)
    audio[lo + audio_lag:hi + audio_lag] = video[lo:hi]
    settings = _settings()
    ours = gs.offset_search(video, audio, scale, settings.offset_stride_frames, settings.max_offset_frames,
                            settings.offset_avg_frames)
    linear = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        linear.weight.fill_(scale)
    vid_emb, aud_emb = ref.syncoffset_embeddings(video, audio, windows)
    upstream = ref.calc_optimal_av_offset(vid_emb, aud_emb, linear)
    if windows < 50:  # fewer windows than one block: upstream cannot unfold them
        assert ours is None and upstream is None
        return
    offset, scores, offset_range = upstream
    assert ours.offset_frames == -offset and ours.range_frames == (-offset_range[1], -offset_range[0])
    np.testing.assert_allclose(ours.block.mean(0), scores[0].detach().numpy(), atol=1e-6)
    if scale > 0 and offset_range[0] <= audio_lag <= offset_range[1]:
        assert ours.offset_frames == -audio_lag
    if windows == 139:
        assert ours.range_frames == (-40, 45)  # -25 (the +25 clip in SyncNet's sign) is one of the candidates


def test_offset_search_settings_reach_and_refuse():
    video = nn.functional.normalize(torch.randn(300, 8), dim=1)
    full = gs.offset_search(video, video, 1.0, 5, 50, 50)
    assert full.range_frames == (-50, 50) and full.block.shape == (50, 21) and full.offset_frames == 0
    assert gs.offset_search(video, video, 1.0, 10, 30, 25).range_frames == (-30, 30)
    assert gs.offset_search(video[:73], video[:73], 1.0, 5, 50, 50).range_frames == (-10, 10)  # 5 candidates
    assert gs.offset_search(video[:49], video[:49], 1.0, 5, 50, 50) is None  # fewer windows than one block
    with pytest.raises(Exception, match="multiple"):
        _settings(max_offset_frames=52)


def test_smoothing_holds_the_edges_and_leaves_missing_frames_missing():
    raw = np.arange(30, dtype=np.float32)
    out = gs.smooth_scores(raw, 25)
    np.testing.assert_allclose(out[12:18], np.arange(12, 18))  # the centred mean of a ramp is the ramp
    assert (out[:12] == 12).all() and (out[18:] == 17).all()
    assert np.isnan(gs.smooth_scores(raw[:24], 25)).all()
    np.testing.assert_allclose(gs.smooth_scores(raw, 25, global_speaker=True), 14.5)


def test_padded_windows_of_the_real_network():
    """The real network, seeded, with a negative scale: the streamed trunk on the edge-padded frames gives
    the first and last frames' scores that ``forward_vid`` on upstream's padded windows gives."""
    from tests import fakeweights

    model = GestSyncRGB().eval()
    state = fakeweights.random_state_dict("gestsync_rgb.json", seed=5)
    state["logits_scale.weight"] = torch.tensor([[-1.7]])
    model.load_state_dict(state)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (27, 270, 480, 3), dtype=np.uint8)
    audio = (rng.standard_normal(27 * 640) * 3000).astype(np.int16)
    ours = gs.sync_regions(model, list(frames), audio, _settings(batch_size=7))
    fbanks = gf.filterbanks(audio)
    spec_pad = ref.load_spectrogram_windows(fbanks)
    padded = ref.pad_video_frames(frames / 255.)
    picks = [0, 26]  # the first and last frames: windows of 12 copies of the edge frame and 13 real frames
    video = _reference_embeddings(model, lambda i: padded[picks[i]:picks[i] + 25], len(picks))
    audio_emb = _reference_audio(model, fbanks, spec_pad[picks])
    output, _ = ref.predict_active_speaker_scores(video, audio_emb, model.logits_scale, "True")
    np.testing.assert_allclose(ours.score_raw[picks], output, atol=1e-5)
