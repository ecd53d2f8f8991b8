"""S3FD network, checkpoint loading, box maths and the batched FaceDetector (CPU, seeded random weights)."""
from __future__ import annotations

import math

import av
import cv2
import numpy as np
import pytest
import torch
from torch import nn

from models.s3fd import S3FD, feature_map_sizes, load_s3fd, prior_boxes
from pipeline.config import load_config
from pipeline.detect import (
    FaceDetector,
    decode_boxes,
    detections_from_network,
    greedy_nms,
    postprocess_frame,
    rank_candidates,
    resize_frames,
)
from pipeline.errors import CheckpointError, InputError
from tests import fakeweights
from tests.conftest import clip

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the published")

S3FD_SEED = 0  # conftest's weights_dir makes the s3fd files with seed 0


def detect_cfg(**values):
    """The default ``detect`` section with some values changed."""
    return load_config(overrides=[f"detect.{key}={value}" for key, value in values.items()]).detect


def video_frames(name: str, indices: list[int]) -> list[np.ndarray]:
    """BGR frames of a shared clip, decoded with PyAV."""
    frames = []
    with av.open(str(clip(name))) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k in indices:
                frames.append(frame.to_ndarray(format="bgr24"))
            if k >= max(indices):
                break
    return frames


@pytest.fixture(scope="module")
def newsmax_frames() -> list[np.ndarray]:
    return video_frames("syncnetdiar_3spk_newsmax", [0, 100, 200])


# ---- (a) network definition and checkpoint loading ---------------------------------------------------


def test_state_dict_has_exactly_the_published_keys():
    expected = [(e["key"], tuple(e["shape"]), e["dtype"]) for e in fakeweights.manifest_keys("s3fd.json")]
    got = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in S3FD().state_dict().items()]
    assert got == expected


@pytest.mark.parametrize("file", ["s3fd.model", "sfd_face.pth"])
def test_load_published_file_names_strictly(weights_dir, file):
    net = load_s3fd(weights_dir, file)
    assert not net.training
    expected = fakeweights.random_state_dict("s3fd.json", seed=S3FD_SEED)
    for key, value in net.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_load_falls_back_to_the_other_published_file(tmp_path):
    state = fakeweights.random_state_dict("s3fd.json", seed=3)
    fakeweights.save_checkpoint(state, tmp_path / "sfd_face.pth")
    net = load_s3fd(tmp_path, "s3fd.model")
    assert torch.equal(net.state_dict()["vgg.0.weight"], state["vgg.0.weight"])


@pytest.mark.parametrize("change", ["missing", "extra", "wrong_shape"])
def test_bad_state_dict_names_the_key(tmp_path, change):
    state = fakeweights.random_state_dict("s3fd.json", seed=1)
    if change == "missing":
        del state["conf.0.weight"]
        key = "conf.0.weight"
    elif change == "extra":
        state["conf.6.weight"] = torch.zeros(2, 256, 3, 3)
        key = "conf.6.weight"
    else:
        state["L2Norm4_3.weight"] = torch.ones(256)
        key = "L2Norm4_3.weight"
    fakeweights.save_checkpoint(state, tmp_path / "sfd_face.pth")
    with pytest.raises(CheckpointError) as err:
        load_s3fd(tmp_path, "sfd_face.pth")
    message = str(err.value)
    assert key in message and "\n" not in message


def test_missing_checkpoint_is_one_line_naming_the_download_script(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_s3fd(tmp_path, "s3fd.model")
    message = str(err.value)
    assert "\n" not in message
    assert "s3fd.model" in message and "download_models.sh" in message


# ---- (b) anchors, decoding and NMS on hand-computed cases -----------------------------------------------


def test_feature_map_sizes_match_the_network():
    net = S3FD().eval()
    for height, width in [(45, 77), (64, 64), (97, 131)]:  # odd sizes exercise floor and ceil pooling
        with torch.inference_mode():
            sources = net._sources(torch.zeros(1, 3, height, width))
        assert [tuple(s.shape[2:]) for s in sources] == feature_map_sizes(height, width)
        with torch.inference_mode():
            loc, face_prob = net(torch.zeros(2, 3, height, width))
        assert loc.shape == (2, len(prior_boxes(height, width)), 4) and face_prob.shape == loc.shape[:2]


def test_prior_boxes_hand_computed():
    priors = prior_boxes(64, 128)  # level 0: step 4 -> 16 rows x 32 cols, anchor side 16 px
    assert priors.dtype == np.float32
    assert priors.shape[0] == sum(r * c for r, c in feature_map_sizes(64, 128))
    np.testing.assert_array_equal(priors[0], np.float32([0.5 / 32, 0.5 / 16, 16 / 128, 16 / 64]))
    np.testing.assert_array_equal(priors[33], np.float32([1.5 / 32, 1.5 / 16, 16 / 128, 16 / 64]))  # row 1, col 1
    first_of_level1 = 16 * 32  # step 8, side 32
    np.testing.assert_array_equal(priors[first_of_level1], np.float32([0.5 / 16, 0.5 / 8, 32 / 128, 32 / 64]))


def test_decode_boxes_hand_computed():
    priors = torch.tensor([[0.5, 0.5, 0.1, 0.2], [0.25, 0.75, 0.5, 0.5]])
    loc = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 5 * math.log(2.0), -5 * math.log(2.0)]])
    # anchor 0: centre moves by 0.1 * size -> (0.51, 0.48), size kept (0.1, 0.2)
    # anchor 1: centre kept, width x exp(0.2 * 5 ln 2) = x2 -> 1.0, height x 1/2 -> 0.25
    expected = torch.tensor([[0.46, 0.38, 0.56, 0.58], [-0.25, 0.625, 0.75, 0.875]])
    torch.testing.assert_close(decode_boxes(loc, priors), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype,union_style", [(np.float64, "frcnn"), (np.float32, "ssd")])
def test_greedy_nms_hand_computed(dtype, union_style):
    boxes = np.array([
        [0, 0, 10, 10],  # 0: best
        [1, 0, 11, 10],  # 1: IoU with 0 = 90 / 110 -> dropped
        [20, 20, 30, 30],  # 2: apart -> kept
        [9, 0, 10, 10],  # 3: IoU with 0 = 10 / 100 = exactly 0.1 -> kept (kept when IoU <= overlap)
        [5, 0, 15, 10],  # 4: IoU with 0 = 50 / 150 -> dropped
        [22, 20, 32, 30],  # 5: IoU with 2 = 80 / 120 -> dropped
        [40, 40, 40, 40],  # 6: zero area -> kept (first of its kind)
        [40, 40, 40, 40],  # 7: same zero-area box: 0 / 0 is NaN, which suppresses like the references
    ], dtype=dtype)
    order = np.arange(len(boxes))
    assert greedy_nms(boxes, order, 0.1, union_style).tolist() == [0, 2, 3, 6]
    assert greedy_nms(boxes, order[::-1], 0.1, union_style).tolist() == [7, 5, 4, 3]
    assert greedy_nms(boxes[:0], order[:0], 0.1, union_style).tolist() == []


def test_greedy_nms_matches_a_brute_force_greedy_pass():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, size=(300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 30, size=(300, 2))], axis=1)
    scores = rng.uniform(size=300)
    order = np.argsort(-scores, kind="stable")
    lo, hi = np.maximum(boxes[:, None, :2], boxes[None, :, :2]), np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=2)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(axis=1)
    iou = inter / (area[:, None] + area[None, :] - inter)
    for overlap in (0.1, 0.3, 0.5):
        kept: list[int] = []
        for i in order:
            if all(iou[i, k] <= overlap for k in kept):
                kept.append(int(i))
        assert greedy_nms(boxes, order, overlap).tolist() == kept


def test_rank_candidates_keeps_the_top_k_then_the_confident():
    face_prob = torch.tensor([0.95, 0.2, 0.99, 0.04, 0.91, 0.97, 0.5])
    # above 0.05: anchors 0 1 2 4 5 6; the 3 best are 2, 5, 0 (so 4 at 0.91 is cut by top_k)
    assert rank_candidates(face_prob, 0.05, 0.9, 3).tolist() == [2, 5, 0]
    assert rank_candidates(face_prob, 0.05, 0.9, 100).tolist() == [2, 5, 0, 4]
    assert rank_candidates(face_prob, 0.05, 0.96, 100).tolist() == [2, 5]
    assert rank_candidates(face_prob, 0.05, 0.999, 100).tolist() == []


# ---- (d) full-resolution coordinates -----------------------------------------------------------------


def test_postprocess_scales_to_full_resolution_pixels():
    boxes_rel = np.float32([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.7]])
    scores = np.float32([0.99, 0.95])
    dets = postprocess_frame(boxes_rel, scores, 1000, 500, detect_cfg())
    assert dets.dtype == np.float32 and dets.shape == (2, 5)
    np.testing.assert_allclose(dets, [[100, 100, 300, 200, 0.99], [500, 250, 600, 350, 0.95]], rtol=1e-6)


class CraftedNet(nn.Module):
    """Stands in for S3FD: one confident anchor per frame, and it records the input it was given."""

    def __init__(self, anchors: list[int], loc_row: list[float]) -> None:
        super().__init__()
        self.anchors, self.loc_row, self.inputs = anchors, loc_row, []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.inputs.append(x.clone())
        count = len(prior_boxes(x.shape[2], x.shape[3]))
        loc = torch.zeros(x.shape[0], count, 4)
        face_prob = torch.full((x.shape[0], count), 0.01)
        for b, anchor in enumerate(self.anchors):
            loc[b, anchor] = torch.tensor(self.loc_row)
            face_prob[b, anchor] = 0.97
        return loc, face_prob


def test_detector_maps_anchors_to_full_resolution_and_feeds_rgb_minus_mean(weights_dir):
    detector = FaceDetector(detect_cfg(image_scale=0.35), weights_dir, "cpu")
    levels = feature_map_sizes(252, 448)  # 1280 x 720 at 0.35
    level3 = sum(r * c for r, c in levels[:3])  # step 32, anchor side 128 px of the input
    anchor_a, anchor_b = level3 + 2 * levels[3][1] + 5, level3 + 3 * levels[3][1] + 9  # (row 2, col 5), (row 3, col 9)
    detector.net = CraftedNet([anchor_a, anchor_b], [1.0, 0.0, 0.0, 0.0])
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[...] = (10, 20, 30)  # B, G, R
    dets = detector.detect_batch([frame, frame])

    net_input = detector.net.inputs[0]
    assert net_input.shape == (2, 3, 252, 448) and net_input.is_contiguous()
    assert net_input[0, :, 100, 100].tolist() == [30 - 123, 20 - 117, 10 - 104]  # R, G, B minus the mean
    for det, (row, col) in zip(dets, [(2, 5), (3, 9)]):
        width_rel, height_rel = 128 / 448, 128 / 252
        cx = (col + 0.5) / (448 / 32) + 0.1 * width_rel  # loc[0] = 1 moves the centre by 0.1 anchor widths
        cy = (row + 0.5) / (252 / 32)
        expected = [(cx - width_rel / 2) * 1280, (cy - height_rel / 2) * 720,
                    (cx + width_rel / 2) * 1280, (cy + height_rel / 2) * 720, 0.97]
        assert det.shape == (1, 5) and det.dtype == np.float32
        np.testing.assert_allclose(det[0], expected, rtol=1e-5)


def test_detections_from_network_splits_frames():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]])
    loc = torch.zeros(3, 2, 4)
    face_prob = torch.tensor([[0.95, 0.1], [0.1, 0.1], [0.92, 0.99]])
    dets = detections_from_network(loc, face_prob, priors, [(100, 50), (100, 50), (200, 100)], detect_cfg())
    assert [d.shape for d in dets] == [(1, 5), (0, 5), (2, 5)]
    np.testing.assert_allclose(dets[0][0], [40, 20, 60, 30, 0.95], rtol=1e-6)
    np.testing.assert_allclose(dets[2], [[30, 15, 50, 25, 0.99], [80, 40, 120, 60, 0.92]], rtol=1e-6)


# ---- (c) batching, and (e) a real frame ----------------------------------------------------------------


def test_resize_before_colour_swap_gives_the_reference_pixels(newsmax_frames):
    frame = newsmax_frames[0]
    reference = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), dsize=(0, 0), fx=0.35, fy=0.35,
                           interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(resize_frames([frame], 0.35)[0][..., ::-1], reference)


def test_batch_gives_the_per_frame_boxes(weights_dir, newsmax_frames):
    """Random weights score anchors around 0.5; 0.6 gives some boxes away from the dense scores."""
    small = video_frames("gestsync_sync_offset0", [10])  # 480 x 270: a second frame size in the same call
    frames = [newsmax_frames[0], small[0], newsmax_frames[1], newsmax_frames[2]]
    detector = FaceDetector(detect_cfg(conf_threshold=0.6, image_scale=0.25, batch_size=2), weights_dir, "cpu")
    together = detector.detect_batch(frames)
    alone = [detector.detect_batch([frame])[0] for frame in frames]
    assert sum(len(d) for d in together) > 0
    for a, b in zip(together, alone):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)


def test_real_frame_with_default_config(weights_dir, newsmax_frames):
    detector = FaceDetector(detect_cfg(), weights_dir, "cpu")
    (dets,) = detector.detect_batch(newsmax_frames[:1])
    assert dets.dtype == np.float32 and dets.ndim == 2 and dets.shape[1] == 5
    assert detector.detect_batch([]) == []


def test_bad_frame_is_an_input_error(weights_dir):
    detector = FaceDetector(detect_cfg(), weights_dir, "cpu")
    with pytest.raises(InputError):
        detector.detect_batch([np.zeros((720, 1280), np.uint8)])
