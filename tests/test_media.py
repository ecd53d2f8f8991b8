"""The normaliser: ffmpeg 5.1's `-r 25` frames and `-async 1 -ac 1 -ar 16000` audio, from PyAV."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline import media
from pipeline.errors import InputError
from tests.conftest import DETECTIONS, VIDEOS, clip
from tests.synth import make_video, make_wav

REFERENCE = json.loads((Path(__file__).parent / "data" / "ffmpeg51_reference.json").read_text())["clips"]
CLIPS = sorted(REFERENCE)


@pytest.mark.parametrize("name", CLIPS)
def test_frames_are_byte_identical_to_ffmpeg(name):
    """Edit lists, 29.97/30 fps, VFR: every 25 fps frame equals the one ffmpeg 5.1 outputs at that index."""
    frames_md5 = [hashlib.md5(frame.tobytes()).hexdigest() for frame in media.iter_frames(clip(name))]
    assert frames_md5 == REFERENCE[name]["frame_md5"]


@pytest.mark.parametrize("name", CLIPS)
def test_frame_count_matches_the_precomputed_detections(name):
    """The shared haar detections index the direct 25 fps sequence: same number of frames."""
    path = DETECTIONS / f"{name}_haar_faces.pckl"
    if not path.is_file():
        pytest.skip("detections not present")
    with open(path, "rb") as handle:
        faces = pickle.load(handle)
    assert len(faces) == len(REFERENCE[name]["frame_md5"])


AUDIO_CLIPS = ["gestsync_asd2spk_a", "gestsync_sync_offset25", "retalking_talkinghead_1", "syncnetdiar_3spk_newsmax"]
FFMPEG_AUDIO_PATH = Path(__file__).parent / "data" / "ffmpeg51_audio.npz"


def audio_excerpt_starts(num_samples: int) -> list[int]:
    """Where the stored 0.25 s excerpts of ffmpeg's audio start: at 10, 35, 60 and 85 % of the clip."""
    return [int(num_samples * fraction) for fraction in (0.10, 0.35, 0.60, 0.85)]


@pytest.mark.parametrize("name", AUDIO_CLIPS)
def test_audio_matches_ffmpeg(name):
    """44.1 kHz stereo and 16 kHz mono AAC with priming: ffmpeg 5.1's `-async 1 -ac 1 -ar 16000` to one LSB.

    tests/make_ffmpeg_references.py stored ffmpeg's sample count, the sha256 of all its samples and four
    0.25 s excerpts; ours must have the same length, every excerpt within one LSB, and the same per-second
    loudness over the whole clip.
    """
    audio = media.decode_audio(clip(name), 16000)
    expected = REFERENCE[name]
    assert audio.dtype == np.int16
    with np.load(FFMPEG_AUDIO_PATH) as stored:
        assert len(audio) == int(stored[f"{name}/num_samples"]) == expected["num_samples"]
        for i, start in enumerate(audio_excerpt_starts(len(audio))):
            theirs = stored[f"{name}/excerpt{i}"].astype(np.int32)
            ours = audio[start:start + len(theirs)].astype(np.int32)
            assert np.abs(ours - theirs).max() <= 1, f"excerpt {i} of {name} differs from ffmpeg by more than 1 LSB"
        identical = hashlib.sha256(audio.astype("<i2").tobytes()).hexdigest() == str(stored[f"{name}/sha256"])
    samples = audio.astype(float)
    rms = [float(np.sqrt(np.mean(samples[i:i + 16000] ** 2))) for i in range(0, len(samples), 16000)]
    np.testing.assert_allclose(rms, expected["rms_per_s"], rtol=0.01, atol=1.0)
    if not identical:  # within one LSB is the promise; say when it is not bit-exact
        print(f"{name}: within one LSB of ffmpeg, not bit-identical")


def test_digital_silence_at_the_start_is_kept():
    """gestsync_sync_offset25's audio is zero for its first 0.788 s (MANIFEST)."""
    audio = media.decode_audio(clip("gestsync_sync_offset25"), 16000)
    assert np.abs(audio[: int(0.75 * 16000)]).max() <= 1
    assert np.abs(audio[int(0.85 * 16000): int(1.5 * 16000)]).max() > 100


# ---- the frame-rate conversion on exact, hand-computed cases -----------------------------------
def _schedule(pts_s, durations_s, rate_hz=25.0):
    """Indices of input frames shown at each output frame, by CfrSchedule (as iter_frames drives it)."""
    schedule = media.CfrSchedule()
    shown, last = [], None
    for idx, (pts, dur) in enumerate(zip(pts_s, durations_s)):
        ticks = pts * rate_hz
        ticks += (1 if ticks > 0 else -1) / (1 << 17)
        repeats, copies = schedule.push(ticks, max(1, round(dur * rate_hz)))
        shown += [idx if last is None else last] * repeats + [idx] * copies
        last = idx
    shown += [last] * schedule.flush()
    return shown


def test_same_rate_is_identity():
    assert _schedule([k / 25 for k in range(10)], [0.04] * 10) == list(range(10))


def test_30_to_25_lets_the_output_drift_before_dropping():
    """30 fps -> 25 fps: ffmpeg shows every frame until the output is 1.1 frames ahead, then drops one.

    One second of 30 fps gives 27 frames, as ffmpeg 5.1 gives for tests/synth.make_video(30 frames, 30 fps).
    """
    shown = _schedule([k / 30 for k in range(30)], [1 / 30] * 30)
    assert len(shown) == 27
    assert shown[:13] == list(range(13))
    assert 13 not in shown  # the first drop: frame 13 would put the output more than 1.1 frames behind
    assert shown == sorted(shown)


def test_12_5_to_25_shows_each_frame_twice():
    shown = _schedule([k / 12.5 for k in range(6)], [0.08] * 6)
    assert shown == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_late_first_frame_is_repeated_from_time_zero():
    """A video starting 0.2 s after the file's start: 5 copies of its first frame fill the gap (+1 itself)."""
    shown = _schedule([0.2 + k / 25 for k in range(3)], [0.04] * 3)
    assert shown == [0] * 6 + [1, 2]


def test_synthetic_30fps_video_decodes_to_25fps(tmp_path):
    """60 frames at 30 fps: ffmpeg 5.1 `-r 25` gives 52 frames."""
    path = make_video(tmp_path / "v30.mp4", num_frames=60, fps=30, audio_s=2.0)
    assert len(list(media.iter_frames(path))) == 52
    lossless = make_video(tmp_path / "v30.mkv", num_frames=60, fps=30, audio_s=2.0, codec="ffv1")
    levels = [int(frame[0, 0, 0]) for frame in media.iter_frames(lossless)]
    assert len(levels) == 52 and levels == sorted(levels)  # never shows an earlier frame after a later one


ROTATION_CLIP = "syncnetdiar_3spk_newsmax"
ROTATIONS = (90, -90, 180)


def rotated_copy(source: Path, target: Path, degrees: int) -> Path:
    """The same coded video with a display rotation, as phones write it (no audio)."""
    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        stream_in = src.streams.video[0]
        stream_out = out.add_stream_from_template(stream_in)
        stream_out.set_display_rotation(degrees)
        for packet in src.demux(stream_in):
            if packet.dts is not None:
                packet.stream = stream_out
                out.mux(packet)
    return target


@pytest.mark.parametrize("degrees", ROTATIONS)
def test_display_rotation_is_applied_like_ffmpeg_autorotate(tmp_path, degrees):
    """ffmpeg rotates such videos upright by default: our first frame's bytes equal the md5 of ffmpeg 5.1's
    autorotated first frame (tests/data/ffmpeg51_rotation.json, made by tests/make_ffmpeg_references.py)."""
    stored = json.loads((Path(__file__).parent / "data" / "ffmpeg51_rotation.json").read_text())
    assert stored["clip"] == ROTATION_CLIP
    rotated = next(media.iter_frames(rotated_copy(clip(ROTATION_CLIP), tmp_path / "rotated.mp4", degrees)))
    assert rotated.flags["C_CONTIGUOUS"]
    assert hashlib.md5(rotated.tobytes()).hexdigest() == stored["first_frame_md5"][str(degrees)]


# ---- bad inputs ---------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        media.probe(tmp_path / "nope.mp4")


def test_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 100)
    with pytest.raises(InputError, match="cannot read"):
        media.check_video_input(path)


def test_audio_only_file(tmp_path):
    with pytest.raises(InputError, match="no video stream"):
        media.check_video_input(make_wav(tmp_path / "a.wav"))


def test_video_without_audio(tmp_path):
    path = make_video(tmp_path / "silent.mp4", audio_s=None)
    with pytest.raises(InputError, match="no audio stream"):
        media.check_video_input(path)


def test_truncated_file(tmp_path):
    data = (VIDEOS / "retalking_talkinghead_2.mp4").read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        media.check_video_input(path)
    with pytest.raises(InputError, match="truncated"):  # decoding it directly says the same
        list(media.iter_frames(path))


@pytest.mark.parametrize("width,height", [(224, 224), (170, 98)])  # 170: rows padded beyond the width
def test_lossless_rgb_crops_decode_to_the_frames_written(tmp_path, width, height):
    # stage 1 writes crops as H.264 RGB (libx264rgb, qp 0): they decode to planar G, B, R, which to_bgr
    # interleaves itself; the bytes must be those written and those of swscale's conversion
    if "libx264rgb" not in av.codecs_available:
        pytest.skip("this FFmpeg build has no libx264rgb")
    rng = np.random.default_rng(width)
    written = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(5)]
    path = tmp_path / "crop.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=25, options={"preset": "ultrafast", "qp": "0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "bgr24"
        for image in written:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    assert decoded[0].format.name == "gbrp"
    for image, frame in zip(written, decoded, strict=True):
        bgr = media.to_bgr(frame)
        assert bgr.dtype == np.uint8 and bgr.flags.c_contiguous
        assert np.array_equal(bgr, image)
        assert np.array_equal(bgr, frame.reformat(format="bgr24", interpolation="POINT").to_ndarray())
    assert all(np.array_equal(a, b) for a, b in zip(media.iter_video_frames(path), written, strict=True))
