"""Tracking and cropping on exact cases, checked against the references' formulas."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.crop import crop_face, smooth_track
from pipeline.track import box_iou, interpolate_track, link_detections, track_faces


def det(frame, box):
    return {"frame": frame, "bbox": list(map(float, box)), "conf": 1.0}


def test_iou_hand_computed():
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [10, 10, 20, 20]) == 0.0
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0


def test_two_faces_make_two_tracks_and_a_gap_ends_a_track():
    left, right = [0, 0, 10, 10], [100, 0, 110, 10]
    frames = [[det(f, left), det(f, right)] for f in range(5)]
    frames += [[] for _ in range(3)]  # frames 5-7 empty: 8 - 4 = 4 frames apart
    frames += [[det(f, left)] for f in range(8, 10)]
    tracks = link_detections(frames, iou_threshold=0.5, max_gap_frames=4)
    assert sorted(len(t) for t in tracks) == [5, 7]
    tracks = link_detections([list(f) for f in frames], iou_threshold=0.5, max_gap_frames=3)
    assert sorted(len(t) for t in tracks) == [2, 5, 5]


def test_moving_box_stays_one_track_while_iou_exceeds_threshold():
    frames = [[det(f, [2 * f, 0, 2 * f + 10, 10])] for f in range(10)]  # IoU of 2-px steps: 8/12 > 0.5
    assert [len(t) for t in link_detections(frames, 0.5, 25)] == [10]
    jumps = [[det(f, [6 * f, 0, 6 * f + 10, 10])] for f in range(4)]  # IoU 4/16 < 0.5
    assert [len(t) for t in link_detections(jumps, 0.5, 25)] == [1, 1, 1, 1]


def test_interpolation_over_a_gap_is_linear():
    dense = interpolate_track([det(0, [0, 0, 10, 10]), det(4, [8, 0, 18, 10])])
    assert dense["frame"].tolist() == [0, 1, 2, 3, 4]
    assert dense["bbox"][:, 0].tolist() == [0, 2, 4, 6, 8]


def test_track_filters_length_and_size():
    cfg = load_config().track
    big = [[det(f, [0, 0, 50, 50])] for f in range(51)]  # 51 detections > 50, 50 px > 40
    assert len(track_faces(big, [(0, 51)], cfg)) == 1
    assert len(track_faces(big[:50], [(0, 50)], cfg)) == 0  # 50 detections is not more than 50
    small = [[det(f, [0, 0, 40, 40])] for f in range(60)]  # mean side 40 is not above 40
    assert len(track_faces(small, [(0, 60)], cfg)) == 0
    assert len(track_faces(big, [(0, 30), (30, 51)], cfg)) == 0  # shots shorter than min_track are skipped


def reference_crop(frame, x, y, s, cs=0.4, pad_value=110):
    """syncnet_python's crop_video, for one frame (pads the whole frame, then slices)."""
    import cv2

    bsi = int(s * (1 + 2 * cs))
    padded = np.pad(frame, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(pad_value, pad_value))
    my, mx = y + bsi, x + bsi
    face = padded[int(my - s):int(my + s * (1 + 2 * cs)), int(mx - s * (1 + cs)):int(mx + s * (1 + cs))]
    return cv2.resize(face, (224, 224))


@pytest.mark.parametrize("x,y,s", [(320, 240, 60.3), (5, 5, 40.0), (630, 470, 80.7), (100.6, 300.2, 21.9), (320, 10, 200)])
def test_crop_equals_the_reference_pad_and_slice(x, y, s):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crop_face(frame, x, y, s, 0.4, 110, 224), reference_crop(frame, x, y, s))


def test_smoothing_is_scipy_medfilt_of_centre_and_half_size():
    boxes = np.array([[0, 0, 10, 20]] * 5 + [[100, 100, 110, 120]] + [[0, 0, 10, 20]] * 7, dtype=float)
    smoothed = smooth_track({"frame": np.arange(13), "bbox": boxes}, 13)
    # the outlier at frame 5 is removed; the zero padding of medfilt pulls the ends down
    assert smoothed["x"][6] == 5.0 and smoothed["s"][6] == 10.0
    assert smoothed["y"][0] == 10.0
