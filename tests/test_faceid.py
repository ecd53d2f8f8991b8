"""Face-track identities: VGGFace2 ResNet-50 loading, the reference's frame sampling and its grouping rule."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.vggface import VGGFaceResNet50, load_vggface
from pipeline import faceid
from pipeline.config import load_config
from pipeline.errors import CacheError, CheckpointError, InputError
from tests import fakeweights

CFG = load_config()
pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the published")


LOSSLESS_CODECS = ["libx264rgb", "ffv1"]  # stage 1 writes RGB H.264 at qp 0, or FFV1 where libx264 is missing


def _write_crop(path: Path, frames_bgr: list[np.ndarray], codec: str = "ffv1") -> Path:
    """A lossless Matroska file like stage 1's pycrop/REF/NNNNN.mkv (25 fps, decodes to the same BGR)."""
    import av

    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build has no {codec}")
    with av.open(str(path), mode="w", format="matroska") as container:
        if codec == "libx264rgb":
            stream = container.add_stream(codec, rate=25, options={"preset": "ultrafast", "qp": "0"})
            stream.pix_fmt = "bgr24"
        else:
            stream = container.add_stream(codec, rate=25)
            stream.pix_fmt = "bgr0"
        stream.width, stream.height = frames_bgr[0].shape[1], frames_bgr[0].shape[0]
        for image in frames_bgr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _numbered_frames(count: int) -> list[np.ndarray]:
    """224 x 224 frames whose blue, green and red planes hold (i, 100 + i, 200 - i) plus a gradient."""
    gradient = np.add.outer(np.arange(224), np.arange(224)) % 7
    frames = []
    for i in range(count):
        image = np.stack([i + gradient, 100 + i + gradient, 200 - i + gradient], axis=-1)
        frames.append(image.astype(np.uint8))
    return frames


# ---- checkpoint ------------------------------------------------------------------------------------------
def test_faceembedding_model_loads_strictly(weights_dir):
    model = faceid.load_face_model(CFG.faces, weights_dir, "cpu")
    saved = torch.load(weights_dir / "faceembedding.model", weights_only=True)
    state = model.state_dict()
    assert set(state) == set(saved) and len(state) == 320
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert not model.training and not model.include_top


def test_wrong_key_is_named(tmp_path):
    state = fakeweights.random_state_dict("vggface2_resnet50.json", seed=2)
    state["layer2.1.bn2.running_varr"] = state.pop("layer2.1.bn2.running_var")
    fakeweights.save_checkpoint(state, tmp_path / "faceembedding.model")
    with pytest.raises(CheckpointError, match=r"missing keys: layer2.1.bn2.running_var\b.*unexpected keys: "
                                              r"layer2.1.bn2.running_varr"):
        load_vggface(tmp_path)


def test_missing_checkpoint_names_the_download_script(tmp_path):
    with pytest.raises(CheckpointError, match=r"faceembedding.model not found .*download_models.sh"):
        faceid.load_face_model(CFG.faces, tmp_path, "cpu")


def test_output_is_the_pooled_2048_map():
    model = VGGFaceResNet50().eval()
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 2048, 1, 1)


# ---- frames of a track -----------------------------------------------------------------------------------
def test_sampled_frames_are_the_references():
    assert faceid.sample_frame_indices(100, 4) == [20, 40, 60, 80]
    assert faceid.sample_frame_indices(51, 4) == [int(51 / 5), int(102 / 5), int(153 / 5), int(204 / 5)]
    assert faceid.sample_frame_indices(3, 4) == [0, 1, 1, 2]


@pytest.mark.parametrize("codec", LOSSLESS_CODECS)
def test_crop_frames_are_read_cut_and_resized_as_the_reference(tmp_path, codec):
    frames = _numbered_frames(12)
    path = _write_crop(tmp_path / "00000.mkv", frames, codec)
    assert faceid._count_frames(path) == 12
    indices = faceid.sample_frame_indices(12, 4)  # 2, 4, 7, 9
    got = faceid.read_frames(path, indices)
    for idx, image in zip(indices, got):
        np.testing.assert_array_equal(image, frames[idx])  # lossless, BGR
    batch = faceid.face_input(got, CFG.faces)
    assert batch.dtype == torch.float32 and batch.shape == (4, 3, 224, 224)
    # the reference: image[0:160, 32:192, :], cv2.resize to 224, BGR kept, transposed to NCHW, 0-255 floats
    expected = np.stack([cv2.resize(frames[i][0:160, 32:192, :], (224, 224)) for i in indices]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(batch.numpy(), expected.astype(np.float32))
    assert batch[0, 0].mean() < batch[0, 2].mean()  # channel 0 is blue: the frames' B plane is the darkest


def test_frames_past_the_end_repeat_the_last_one(tmp_path):
    frames = _numbered_frames(5)
    path = _write_crop(tmp_path / "00001.mkv", frames)
    got = faceid.read_frames(path, [1, 3, 8, 9])
    np.testing.assert_array_equal(got[2], frames[4])
    np.testing.assert_array_equal(got[3], frames[4])


def test_frames_reached_by_seeking_equal_a_decode_from_the_start(tmp_path):
    """Stage 1's writer with a keyframe every 3 frames: any order, repeats and indices past the end."""
    import av

    from pipeline import crop

    frames = _numbered_frames(20)
    path = tmp_path / "00000.mkv"
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = crop._add_lossless_stream(container, 25, 224, keyframe_interval_frames=3)
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    times, keyframes = faceid._frame_index(path)
    assert len(times) == 20 and keyframes == list(range(0, 20, 3))  # the writer's interval is what seeking uses
    indices = [19, 4, 4, 7, 8, 0, 13, 25, 2]
    got = faceid.read_frames(path, indices)
    for idx, image in zip(indices, got):
        np.testing.assert_array_equal(image, frames[min(idx, 19)])
    assert [f.tobytes() for f in faceid.read_sampled_frames(path, 4)] == \
        [frames[i].tobytes() for i in faceid.sample_frame_indices(20, 4)]


def test_track_embeddings_end_to_end(weights_dir, tmp_path):
    model = faceid.load_face_model(CFG.faces, weights_dir, "cpu")
    paths = [_write_crop(tmp_path / f"{i:05d}.mkv", _numbered_frames(n), codec)
             for i, (n, codec) in enumerate(zip((10, 7), LOSSLESS_CODECS))]
    features = faceid.track_face_embeddings(model, paths, CFG.faces, "cpu")
    assert [f.shape for f in features] == [(4, 2048), (4, 2048)]
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in features)
    with torch.inference_mode():
        frames = faceid.read_frames(paths[0], faceid.sample_frame_indices(10, 4))
        direct = model(faceid.face_input(frames, CFG.faces)).reshape(4, -1).numpy()
    np.testing.assert_allclose(features[0], direct, rtol=1e-5, atol=1e-5)


def test_missing_or_broken_crop_is_a_cache_error(tmp_path, weights_dir):
    model = VGGFaceResNet50().eval()
    with pytest.raises(CacheError, match="00003.mkv"):
        faceid.track_face_embeddings(model, [tmp_path / "00003.mkv"], CFG.faces, "cpu")
    (tmp_path / "00004.mkv").write_bytes(b"not a video")
    with pytest.raises(CacheError, match="00004.mkv.*run scripts/run_pipeline.py again"):
        faceid.track_face_embeddings(model, [tmp_path / "00004.mkv"], CFG.faces, "cpu")


# ---- grouping ----------------------------------------------------------------------------------------------
def _unit(angle_deg: float, rng=None, noise: float = 0.0) -> np.ndarray:
    """Four copies of a 3-d unit vector at ``angle_deg`` in the x-y plane, optionally jittered."""
    vec = np.array([np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg)), 0.0])
    feats = np.tile(vec, (4, 1))
    if rng is not None:
        feats = feats + noise * rng.standard_normal(feats.shape)
    return feats


def _frames(first: int, last: int) -> np.ndarray:
    return np.arange(first, last + 1)


def test_same_face_in_turns_merges():
    rng = np.random.default_rng(0)
    ids = faceid.assign_face_identities([_unit(0, rng, 0.01), _unit(0, rng, 0.01)],
                                        [_frames(0, 99), _frames(150, 260)], CFG.faces)
    assert ids == [0, 0]


def test_co_occurring_tracks_never_merge():
    """Even identical features stay apart when the two tracks share a frame."""
    ids = faceid.assign_face_identities([_unit(0), _unit(0), _unit(0)],
                                        [_frames(0, 99), _frames(99, 180), _frames(181, 300)], CFG.faces)
    # track 2 overlaps neither group and is equally close to both: it joins the first, as np.argmin picks
    assert ids == [0, 1, 0]


def test_distant_faces_split():
    ids = faceid.assign_face_identities([_unit(0), _unit(90), _unit(180)],
                                        [_frames(0, 50), _frames(60, 110), _frames(120, 170)], CFG.faces)
    assert ids == [0, 1, 2]


def test_threshold_is_inclusive_of_the_configured_distance():
    # cosine distance 1 - cos(angle): 53.13 deg gives 0.40, so 52 deg joins and 54.5 deg does not
    near = np.degrees(np.arccos(1 - 0.39))
    far = np.degrees(np.arccos(1 - 0.41))
    frames = [_frames(0, 10), _frames(20, 30)]
    assert faceid.assign_face_identities([_unit(0), _unit(near)], frames, CFG.faces) == [0, 0]
    assert faceid.assign_face_identities([_unit(0), _unit(far)], frames, CFG.faces) == [0, 1]
    looser = load_config(overrides=["faces.max_cosine_distance=0.5"]).faces
    assert faceid.assign_face_identities([_unit(0), _unit(far)], frames, looser) == [0, 0]


def test_track_joins_the_closest_group_it_does_not_overlap():
    feats = [_unit(0), _unit(30), _unit(25), _unit(5)]
    frames = [_frames(0, 10), _frames(0, 10), _frames(20, 30), _frames(25, 40)]
    # 0 and 1 co-occur: two groups. 2 is closest to group 1 (5 deg) -> joins it. 3 overlaps track 2
    # (now in group 1), so group 0 is its only candidate, at 5 deg.
    assert faceid.assign_face_identities(feats, frames, CFG.faces) == [0, 1, 1, 0]


def test_group_distance_is_the_median_over_all_its_features():
    """A group grows with each track; the median over the whole group decides, not the first track."""
    feats = [_unit(0), _unit(40), _unit(80)]
    frames = [_frames(0, 10), _frames(20, 30), _frames(40, 50)]
    # 40 deg from 0 deg is 0.234 -> joins. 80 deg: distances to the group's 8 features are 0.826 (x4) and
    # 0.234 (x4): median 0.53 > 0.40 -> new group (against track 1 alone it would have joined)
    assert faceid.assign_face_identities(feats, frames, CFG.faces) == [0, 0, 1]


def test_no_tracks_and_mismatched_inputs():
    assert faceid.assign_face_identities([], [], CFG.faces) == []
    with pytest.raises(InputError):
        faceid.assign_face_identities([_unit(0)], [], CFG.faces)
