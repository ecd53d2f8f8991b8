"""Garbage detections (issue 8, section 2): dropped when read, counted once, and crops of any box stay small."""
from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from pipeline.cache import Cache
from pipeline.config import load_config
from pipeline.crop import crop_face
from pipeline.detections import sanitize_faces
from pipeline.stage1 import run_pipeline
from tests.conftest import DETECTIONS, REPO, clip
from tests.synth import make_video

LIMITS = {"max_per_frame": 2, "max_box_side_ratio": 2.0}


def det(frame, box, conf=0.99):
    return {"frame": frame, "bbox": box, "conf": conf}


def test_unusable_boxes_are_dropped_and_counted_once():
    """On a 100 x 50 frame: one good box per kind of garbage, hand-picked; the border box stays as it was."""
    border = det(0, [-10.0, -5.0, 30.0, 40.0])  # reaches past the border: a real face, kept unchanged
    faces = [[
        border,
        det(0, [float("nan"), 0, 10, 10]),
        det(0, [0, 0, float("inf"), 10]),
        det(0, [0, 0, 10, 10], conf=float("nan")),
        det(0, [10, 10, 10, 20]),  # zero width
        det(0, [20, 10, 10, 20]),  # inverted
        det(0, [100, 0, 140, 40]),  # right of the frame (x1 == width)
        det(0, [-50, -60, -10, 0]),  # above and left (y2 == 0)
        det(0, [-1e6, -1e6, 1e6, 1e6]),  # far larger than the frame
        det(0, [0, 0, 201, 30]),  # side 201 > 2 x 100
    ], [det(1, [0, 0, 200, 30])]]  # side 200 == 2 x 100: kept
    kept, note = sanitize_faces(faces, 100, 50, LIMITS)
    assert kept == [[border], [det(1, [0, 0, 200, 30])]]
    assert note == ("dropped 9 face detections (3 not finite, 2 empty, 2 outside the frame, "
                    "2 over 2x the frame)")


def test_boxes_beyond_the_cap_keep_the_best_in_their_order():
    faces = [[det(0, [k, 0, k + 10, 10], conf=c) for k, c in enumerate([0.5, 0.9, 0.7, 0.95])]]
    kept, note = sanitize_faces(faces, 100, 50, LIMITS)
    assert [d["conf"] for d in kept[0]] == [0.9, 0.95]
    assert note == "dropped 2 face detections (2 beyond 2 per frame)"
    assert sanitize_faces([[faces[0][0]]], 100, 50, LIMITS) == ([[faces[0][0]]], None)


@pytest.mark.parametrize("x,y,s", [(0.0, 0.0, 1e6), (-1e6, -1e6, 1e6), (320, 240, 5e4), (1e9, 1e9, 3.0)])
def test_crop_of_any_box_costs_memory_bounded_by_frame_and_output(x, y, s):
    """Before the fix these padded the frame by the box size: 'array is too big' or gigabytes."""
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    tracemalloc.start()
    try:
        crop = crop_face(frame, x, y, s, 0.4, 110, 224)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert peak < 8 * frame.nbytes
    if s >= 1e6 or x >= 1e9:  # the frame is a speck (or absent) in the window: the crop is the pad value
        assert abs(float(crop.mean()) - 110) < 1


def test_huge_window_is_sampled_like_the_reference_resize():
    """A box somewhat larger than the frame: the warp path agrees with pad-then-slice-then-resize to 1 level."""
    import cv2

    import pipeline.crop as crop
    from tests.test_track_crop import reference_crop

    frame = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8), (9, 9), 3)
    x, y, s = 60.0, 50.0, 300.0  # window about 840 px square, 37x the frame: sampled, not materialised
    ours = crop.crop_face(frame, x, y, s, 0.4, 110, 224)
    diff = np.abs(ours.astype(int) - reference_crop(frame, x, y, s).astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.05


def test_user_faces_with_absurd_boxes_give_the_ordinary_tracks(tmp_path):
    """A user faces.pckl with [-1e6, -1e6, 1e6, 1e6], NaN and 300 junk boxes beside real ones on every frame:
    the garbage is dropped (one note) and the tracks are those of the clean file."""
    with open(DETECTIONS / "gestsync_asd2spk_a_faces.pckl", "rb") as handle:
        clean = pickle.load(handle)
    dirty = []
    for idx, dets in enumerate(clean):
        junk = [{"frame": idx, "bbox": [1000.0 + k, 1000.0, 1001.0 + k, 1001.0], "conf": 0.1} for k in range(300)]
        dirty.append(list(dets) + [{"frame": idx, "bbox": [-1e6, -1e6, 1e6, 1e6], "conf": 1.0},
                                   {"frame": idx, "bbox": [float("nan"), 0, 1, 1], "conf": 1.0}] + junk)
    results = {}
    for name, faces in (("clean", clean), ("dirty", dirty)):
        work = tmp_path / "pywork" / name
        work.mkdir(parents=True)
        with open(work / "faces.pckl", "wb") as handle:
            pickle.dump(faces, handle)
        cache = Cache(tmp_path, name)
        results[name] = (run_pipeline(clip("gestsync_asd2spk_a"), cache, load_config()), cache.load_pickle("tracks.pckl"))
    (clean_result, clean_tracks), (dirty_result, dirty_tracks) = results["clean"], results["dirty"]
    assert len(dirty_tracks) == len(clean_tracks) >= 1
    for ours, theirs in zip(dirty_tracks, clean_tracks):
        np.testing.assert_array_equal(ours["track"]["bbox"], theirs["track"]["bbox"])
    notes = [n for n in dirty_result.notes if n.startswith("dropped")]
    assert len(notes) == 1 and "not finite" in notes[0] and "over 2x the frame" in notes[0]
    assert not [n for n in clean_result.notes if n.startswith("dropped")]


@pytest.fixture(scope="module")
def everywhere_weights(tmp_path_factory):
    """The shared tool's published-format S3FD: fires on every anchor with boxes several frames wide."""
    tool = REPO.parent / "shared" / "tools" / "make_published_format_weights.py"
    manifest = REPO.parent / "shared" / "ckpt-manifests" / "s3fd.json"
    if not tool.is_file() or not manifest.is_file():
        pytest.skip(f"{tool} not present")
    manifests = tmp_path_factory.mktemp("manifests")
    shutil.copy(manifest, manifests / "s3fd.json")
    out = tmp_path_factory.mktemp("everywhere")
    subprocess.run([sys.executable, str(tool), str(manifests), str(out)], check=True, capture_output=True)
    return out


def test_s3fd_firing_everywhere_is_dropped_with_one_note(tmp_path, everywhere_weights):
    """Before the fix: the crops padded each frame by a box several frames wide (gigabytes per frame)."""
    video = make_video(tmp_path / "v.mp4", num_frames=25, size=(320, 240), audio_s=1.0)
    cache = Cache(tmp_path, "e")
    result = run_pipeline(video, cache, load_config(overrides=["detect.image_scale=0.6", "detect.prior_nms_top_k=300"]),
                          weights_dir=everywhere_weights)
    detected = cache.load_pickle("faces.pckl")
    notes = [n for n in result.notes if n.startswith("dropped")]
    assert len(notes) == 1 and "over 2x the frame" in notes[0], result.notes
    assert int(notes[0].split()[1]) >= 25  # it did fire on every frame; the boxes went batch by batch
    assert all(len(dets) <= 100 for dets in detected)  # faces.pckl holds only what the limits keep
    assert result.num_tracks == 0


def test_detections_are_capped_while_the_video_is_scanned(tmp_path):
    """A detector that returns 1,000 plausible boxes on every frame: what stage 1 holds and writes is at most
    ``detections.max_per_frame`` per frame (the highest-scoring), never the raw output of a whole video."""
    from pipeline.stage1 import scan_video

    class Everywhere:
        def detect_batch(self, frames):
            boxes = []
            for _ in frames:
                x = np.arange(1000, dtype=np.float64) % 200
                boxes.append(np.stack([x, x * 0.5, x + 40, x * 0.5 + 40, np.linspace(0.5, 1.0, 1000)], axis=1))
            return boxes

    video = make_video(tmp_path / "v.mp4", num_frames=30, size=(320, 240), audio_s=1.2)
    cfg = load_config(overrides=["detections.max_per_frame=7", "detect.batch_size=4"])
    num_frames, width, height, _, faces, note = scan_video(video, cfg, Everywhere(), lambda *a, **k: None)
    assert num_frames == len(faces) == 30 and (width, height) == (320, 240)
    assert all(len(dets) == 7 for dets in faces)
    assert [d["conf"] for d in faces[0]] == pytest.approx(np.linspace(0.5, 1.0, 1000)[-7:])
    assert [d["frame"] for dets in faces for d in dets] == [i for i in range(30) for _ in range(7)]
    assert note == "dropped 29790 face detections (29790 beyond 7 per frame)"


def faststart_cut(src, dst, fraction: float = 0.5):
    """``src`` remuxed with its index at the front (``movflags=faststart``), then cut to ``fraction`` of its bytes."""
    import av

    whole = dst.with_suffix(".whole.mp4")
    with av.open(str(src)) as inp, av.open(str(whole), "w", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in inp.demux():
            if packet.dts is None or packet.stream.index not in streams:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    data = whole.read_bytes()
    assert data[4:8] == b"ftyp" and b"moov" in data[:4096]  # the index sits at the front
    dst.write_bytes(data[:int(len(data) * fraction)])
    return dst


def test_faststart_video_cut_at_half_runs_on_what_is_decodable(tmp_path):
    """A faststart clip cut at 50 % with detections that fire far beyond the frame on every frame (as a broken
    S3FD gives) and the real ones: with the truncation check relaxed (``input.max_missing_s``; by default such
    a file is refused, tests/test_nothing_silent.py) stage 1 finishes on the decodable frames under a 6 GB
    address-space limit. Before the fix the huge boxes made a track whose crops padded each frame by the box
    size (out of memory)."""
    import resource

    video = faststart_cut(clip("gestsync_asd2spk_a"), tmp_path / "cut.mp4")
    with open(DETECTIONS / "gestsync_asd2spk_a_faces.pckl", "rb") as handle:
        faces = [list(dets) + [{"frame": idx, "bbox": [-2e4, -2e4, 2e4, 2e4], "conf": 1.0}]
                 for idx, dets in enumerate(pickle.load(handle))]
    work = tmp_path / "pywork" / "cut"
    work.mkdir(parents=True)
    with open(work / "faces.pckl", "wb") as handle:
        pickle.dump(faces, handle)

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "run_pipeline.py"), "--videofile", str(video),
                           "--data_dir", str(tmp_path), "--reference", "cut", "--set", "input.max_missing_s=1000"],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_memory)
    assert proc.returncode == 0, proc.stderr
    assert "cut: 118 frames, 1 shots, 2 face tracks" in proc.stdout
    assert "run_pipeline: note: dropped 118 face detections (118 over 2x the frame)" in proc.stderr
