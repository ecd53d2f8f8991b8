"""Synthetic talking faces: drawn faces whose mouth opening follows the loudness of real speech.

Each video holds a cartoon face (skin ellipse, eyes, brows, a large dark mouth whose height follows the
per-frame loudness envelope of a speech recording) that drifts and breathes in size (head motion), over a
smooth textured background, with the speech as the audio track, optionally delayed by a known number of
frames; a distractor face beside it can listen (its mouth nearly closed, moving slowly and a little).
Faces and backgrounds vary little from video to video and the mouth is large: a strong, clean signal, so a
sync model learns it within minutes on a CPU.
Videos are H.264 (yuv420p) with 16-bit PCM audio in Matroska, written with PyAV, so stage 1 reads them like
any other video. The face boxes of the drawing are returned in syncnet_python's ``faces.pckl`` layout, to
inject where the S3FD weights are random.

Sign of the delay: ``audio_delay_frames = d`` delays the audio by d frames against the mouth (the audio
lags the video), which SyncNet reports as offset ``-d`` (syncnet_python's sign, see pipeline/sync.py).

``make_dataset`` writes videos, injects their boxes and runs stage 1, for the training test and the README run:

    python -m tests.talkingfaces --data_dir D [--num_videos 16]   # then scripts/train_sync.py --data_dir D ...
"""
from __future__ import annotations

import argparse
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

FRAME_RATE_HZ = 25
SAMPLE_RATE_HZ = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE_HZ // FRAME_RATE_HZ
REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
# Real speech for the mouths: training draws on the first group (about 95 s of speech, nine recordings),
# held-out clips on the second (other recordings and speakers): split by source.
TRAIN_SPEECH = ("tst00", "pyannote_sample", "syncnetdiar_3spk_newsmax", "gestsync_sync_offset0",
                "gestsync_sync_offset25", "retalking_talkinghead_1", "retalking_talkinghead_2",
                "retalking_talkinghead_3")
HELD_OUT_SPEECH = ("retalking_talkinghead_4", "retalking_talkinghead_5", "gestsync_asd2spk_a", "gestsync_asd2spk_b",
                   "gestsync_sync_offset-15")


@dataclass(frozen=True)
class FaceSpec:
    """One drawn face: where it is, how it moves and which speech its mouth follows."""

    centre_xy_px: tuple[float, float]
    half_height_px: float
    skin_bgr: tuple[int, int, int]
    opening: np.ndarray  # [num_frames] mouth opening 0..1, frame by frame
    motion_px: float = 6.0  # amplitude of the head's drift
    motion_period_frames: float = 60.0
    phase: float = 0.0


# ---- speech ------------------------------------------------------------------------------------
def load_speech(name: str) -> np.ndarray:
    """int16 16 kHz mono speech of a shared clip (a video's audio track or a pyannote wav)."""
    wavs = {"pyannote_sample": SHARED_DATA / "audio" / "pyannote_sample" / "sample.wav",
            "tst00": SHARED_DATA / "audio" / "pyannote_debug" / "tst00.wav"}
    if name in wavs:
        from scipy.io import wavfile

        rate, audio = wavfile.read(wavs[name])
        assert rate == SAMPLE_RATE_HZ
        if audio.dtype != np.int16:  # pyannote's debug wavs are float32
            audio = np.clip(audio * 32767, -32768, 32767).astype(np.int16)
        return audio[int(6.7 * SAMPLE_RATE_HZ):] if name == "pyannote_sample" else audio  # speech starts at 6.7 s
    from pipeline.media import decode_audio

    audio = decode_audio(SHARED_DATA / "videos" / f"{name}.mp4", SAMPLE_RATE_HZ)
    return audio[int(0.8 * SAMPLE_RATE_HZ):] if name == "gestsync_sync_offset25" else audio  # 0.79 s of zeros first


def loudness_envelope(audio: np.ndarray, num_frames: int) -> np.ndarray:
    """``[num_frames]`` mouth opening 0..1: the RMS level (dB) of each frame's 640 samples, scaled between
    the clip's 20th and 97th percentile and stretched by 1.4 (quiet frames close the mouth, loud ones open it
    fully: a crisp, high-contrast movement)."""
    samples = np.zeros(num_frames * SAMPLES_PER_FRAME, np.float64)
    usable = min(len(audio), samples.size)
    samples[:usable] = audio[:usable]
    rms = np.sqrt(np.mean(samples.reshape(num_frames, SAMPLES_PER_FRAME) ** 2, axis=1))
    level_db = 20 * np.log10(rms + 1.0)
    low, high = np.percentile(level_db, 20), np.percentile(level_db, 97)
    return np.clip(1.4 * (level_db - low) / max(high - low, 1e-6) - 0.2, 0.0, 1.0)


def listener_mouth(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """``[num_frames]`` mouth opening of a listener: nearly closed, with slow small movements (0 .. 0.15)."""
    knots = rng.uniform(0.0, 0.15, size=num_frames // 12 + 2)
    return np.interp(np.arange(num_frames) / 12.0, np.arange(knots.size), knots)


def speech_segment(audio: np.ndarray, start_s: float, num_frames: int) -> np.ndarray:
    """``num_frames`` frames of ``audio`` from ``start_s`` (zero-padded past the end)."""
    start = int(start_s * SAMPLE_RATE_HZ)
    out = np.zeros(num_frames * SAMPLES_PER_FRAME, np.int16)
    piece = audio[start:start + out.size]
    out[:piece.size] = piece
    return out


# ---- drawing -----------------------------------------------------------------------------------
def background(size_wh: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A static textured background: smooth colour blobs plus fine noise."""
    width, height = size_wh
    base = rng.integers(90, 140, size=3)
    coarse = np.clip(base + rng.integers(-25, 26, size=(height // 80 + 2, width // 80 + 2, 3)), 0, 255).astype(np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(-3, 4, size=image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def face_box(face: FaceSpec, frame_idx: int) -> tuple[float, float, float]:
    """(centre x, centre y, half height) of ``face`` at ``frame_idx``: a slow drift and a 5 % size breathing."""
    angle = 2 * np.pi * frame_idx / face.motion_period_frames + face.phase
    cx = face.centre_xy_px[0] + face.motion_px * np.sin(angle)
    cy = face.centre_xy_px[1] + 0.5 * face.motion_px * np.sin(2 * angle + 1.0)
    half_h = face.half_height_px * (1 + 0.05 * np.sin(0.5 * angle))
    return float(cx), float(cy), float(half_h)


def draw_face(image: np.ndarray, face: FaceSpec, frame_idx: int) -> list[float]:
    """Draw ``face`` at ``frame_idx`` onto ``image`` (in place); its detection box ``[x1, y1, x2, y2]``."""
    cx, cy, hh = face_box(face, frame_idx)
    hw = 0.78 * hh
    opening = float(face.opening[min(frame_idx, len(face.opening) - 1)])

    def pt(dx: float, dy: float) -> tuple[int, int]:  # face-relative units -> pixels (x16 sub-pixel precision)
        return int(round((cx + dx * hw) * 16)), int(round((cy + dy * hh) * 16))

    def axes(ax: float, ay: float) -> tuple[int, int]:
        return int(round(ax * hw * 16)), int(round(ay * hh * 16))

    draw = dict(lineType=cv2.LINE_AA, shift=4)
    cv2.ellipse(image, pt(0, 0), axes(1.0, 1.0), 0, 0, 360, face.skin_bgr, -1, **draw)
    for side in (-1, 1):
        cv2.ellipse(image, pt(0.38 * side, -0.22), axes(0.16, 0.09), 0, 0, 360, (245, 245, 245), -1, **draw)
        cv2.circle(image, pt(0.38 * side, -0.22), int(0.07 * hh * 16), (40, 30, 20), -1, **draw)
        cv2.line(image, pt(0.22 * side, -0.42), pt(0.55 * side, -0.40), (30, 30, 50), max(1, int(hh / 25)),
                 cv2.LINE_AA)
    cv2.line(image, pt(0, -0.1), pt(0.04, 0.15), tuple(int(0.7 * c) for c in face.skin_bgr), max(1, int(hh / 30)),
             cv2.LINE_AA)
    # the mouth: lips always visible, the dark opening grows with loudness (0.03 .. 0.43 of the face height):
    # a large, high-contrast mouth is a strong signal, so a sync model learns it in minutes on a CPU
    mouth_h = 0.03 + 0.45 * opening
    mouth_w = 0.55 + 0.10 * opening
    cv2.ellipse(image, pt(0, 0.45), axes(mouth_w + 0.05, mouth_h + 0.05), 0, 0, 360, (70, 60, 170), -1, **draw)
    cv2.ellipse(image, pt(0, 0.45), axes(mouth_w, mouth_h), 0, 0, 360, (25, 15, 35), -1, **draw)
    if opening > 0.3:  # upper teeth
        cv2.ellipse(image, pt(0, 0.45 - mouth_h * 0.75), axes(mouth_w * 0.7, mouth_h * 0.22), 0, 0, 360,
                    (235, 235, 235), -1, **draw)
    pad = 0.08 * hh  # a detector's box is a little larger than the skin
    return [cx - hw - pad, cy - hh - pad, cx + hw + pad, cy + hh + pad]


# ---- writing -----------------------------------------------------------------------------------
def write_video(path: Path, frames: Sequence[np.ndarray], audio: np.ndarray) -> Path:
    """H.264 yuv420p at 25 fps (crf 12) with 16-bit PCM mono audio, in Matroska."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=Fraction(FRAME_RATE_HZ), options={"crf": "12", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("pcm_s16le", rate=SAMPLE_RATE_HZ)
        sound.layout = "mono"
        for image in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        step = 4096
        for start in range(0, len(audio), step):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, start:start + step]), format="s16",
                                               layout="mono")
            chunk.sample_rate, chunk.pts = SAMPLE_RATE_HZ, start
            for packet in sound.encode(chunk):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)
    return path


def delay_audio(audio: np.ndarray, delay_frames: int) -> np.ndarray:
    """``audio`` delayed by ``delay_frames`` frames (advanced when negative), same length, zero-filled."""
    shift = delay_frames * SAMPLES_PER_FRAME
    out = np.zeros_like(audio)
    if shift >= 0:
        out[shift:] = audio[:len(audio) - shift]
    else:
        out[:shift] = audio[-shift:]
    return out


def render_talking_video(path: Path, speech: np.ndarray, faces: Sequence[FaceSpec], num_frames: int,
                         size_wh: tuple[int, int] = (320, 240), audio_delay_frames: int = 0,
                         seed: int = 0) -> list[list[dict]]:
    """Write the video of ``faces`` with ``speech`` as its audio; returns its ``faces.pckl`` detections."""
    rng = np.random.default_rng(seed)
    still = background(size_wh, rng)
    frames, detections = [], []
    for idx in range(num_frames):
        image = still.copy()
        boxes = [draw_face(image, face, idx) for face in faces]
        frames.append(image)
        detections.append([{"frame": idx, "bbox": box, "conf": 0.99} for box in boxes])
    audio = delay_audio(speech_segment(speech, 0.0, num_frames), audio_delay_frames)
    write_video(path, frames, audio)
    return detections


@dataclass(frozen=True)
class ClipPlan:
    """One synthetic clip: which speech drives the talking face, from where, and the known audio delay."""

    reference: str
    speech_name: str
    start_s: float
    audio_delay_frames: int = 0
    distractor: bool = False  # a second face, a listener whose mouth barely moves
    clip_s: float | None = None  # this clip's length, when not the dataset's


def make_clip(folder: Path, plan: ClipPlan, num_frames: int, seed: int,
              speech_cache: dict[str, np.ndarray] | None = None) -> tuple[Path, list[list[dict]]]:
    """Write one planned clip to ``folder/REF.mkv``; (video path, detections). With a distractor, the
    talking face is on the left, the distractor on the right."""
    speech_cache = speech_cache if speech_cache is not None else {}
    rng = np.random.default_rng(seed)

    def speech(name: str) -> np.ndarray:
        if name not in speech_cache:
            speech_cache[name] = load_speech(name)
        return speech_cache[name]

    talk = speech_segment(speech(plan.speech_name), plan.start_s, num_frames)
    skin = tuple(int(v) for v in rng.integers([150, 165, 195], [170, 185, 215]))  # similar faces: less to learn to ignore
    half_h = float(rng.uniform(55, 70))
    talker_x = 90.0 if plan.distractor else float(rng.uniform(140, 180))
    faces = [FaceSpec((talker_x, float(rng.uniform(105, 125))), half_h, skin, loudness_envelope(talk, num_frames),
                      motion_px=float(rng.uniform(1.5, 3.0)), motion_period_frames=float(rng.uniform(40, 90)),
                      phase=float(rng.uniform(0, 2 * np.pi)))]
    if plan.distractor:
        faces.append(FaceSpec((235.0, 120.0), half_h * 0.95, (150, 170, 200), listener_mouth(num_frames, rng),
                              motion_px=3.0, motion_period_frames=70.0, phase=1.0))
    path = folder / f"{plan.reference}.mkv"
    detections = render_talking_video(path, talk, faces, num_frames, audio_delay_frames=plan.audio_delay_frames,
                                      seed=seed)
    return path, detections


def run_stage1(videofile: Path, detections: list[list[dict]], data_dir: Path, reference: str, cfg=None):
    """Inject the drawing's boxes as ``faces.pckl`` and run stage 1 (tracks and crops) on the video."""
    from pipeline.cache import Cache
    from pipeline.config import load_config
    from pipeline.stage1 import run_pipeline

    cache = Cache(data_dir, reference)
    with open(cache.work("faces.pckl"), "wb") as handle:
        pickle.dump(detections, handle, protocol=4)
    return run_pipeline(videofile, cache, cfg or load_config())


def _start_s(rng: np.random.Generator, name: str, clip_s: float, speech_cache: dict[str, np.ndarray]) -> float:
    if name not in speech_cache:
        speech_cache[name] = load_speech(name)
    return float(rng.uniform(0.0, max(0.0, len(speech_cache[name]) / SAMPLE_RATE_HZ - clip_s)))


def training_plans(num_videos: int, clip_s: float, seed: int = 0,
                   speech_cache: dict[str, np.ndarray] | None = None) -> list[ClipPlan]:
    """``num_videos`` in-sync clips, speech drawn in turn from the training sources at seeded start times."""
    rng = np.random.default_rng(seed)
    cache = speech_cache if speech_cache is not None else {}
    return [ClipPlan(f"train{idx:02d}", TRAIN_SPEECH[idx % len(TRAIN_SPEECH)],
                     _start_s(rng, TRAIN_SPEECH[idx % len(TRAIN_SPEECH)], clip_s, cache))
            for idx in range(num_videos)]


def held_out_plans(delays_frames: Sequence[int], clip_s: float, seed: int = 0,
                   speech_cache: dict[str, np.ndarray] | None = None) -> list[ClipPlan]:
    """One held-out clip per delay (speech of the held-out sources), plus ``pair`` (twice as long): the talking
    face beside a listener."""
    rng = np.random.default_rng(seed)
    cache = speech_cache if speech_cache is not None else {}
    names = [HELD_OUT_SPEECH[i % len(HELD_OUT_SPEECH)] for i in range(len(delays_frames))]
    plans = [ClipPlan(f"held{i:02d}", name, _start_s(rng, name, clip_s, cache), int(delay))
             for i, (name, delay) in enumerate(zip(names, delays_frames))]
    pair_s = 2 * clip_s
    return plans + [ClipPlan("pair", HELD_OUT_SPEECH[2], _start_s(rng, HELD_OUT_SPEECH[2], pair_s, cache), 0,
                             distractor=True, clip_s=pair_s)]


def make_dataset(data_dir: Path, video_dir: Path, plans: Sequence[ClipPlan], clip_s: float, seed: int = 0,
                 cfg=None) -> list[list[list[dict]]]:
    """Render every planned clip into ``video_dir`` and run stage 1 on it into ``data_dir``."""
    video_dir.mkdir(parents=True, exist_ok=True)
    speech_cache: dict[str, np.ndarray] = {}
    num_frames = int(round(clip_s * FRAME_RATE_HZ))
    all_detections = []
    for idx, plan in enumerate(plans):
        frames = int(round(plan.clip_s * FRAME_RATE_HZ)) if plan.clip_s else num_frames
        path, detections = make_clip(video_dir, plan, frames, seed + idx, speech_cache)
        run_stage1(path, detections, data_dir, plan.reference, cfg)
        all_detections.append(detections)
    return all_detections


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Synthetic talking-face videos through stage 1 (for train_sync.py)")
    parser.add_argument("--data_dir", required=True, help="cache folder to fill (stage 1 of every clip)")
    parser.add_argument("--video_dir", default=None, help="where the videos go (default: DATA_DIR/videos)")
    parser.add_argument("--num_videos", type=int, default=16)
    parser.add_argument("--clip_s", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    make_dataset(data_dir, Path(args.video_dir) if args.video_dir else data_dir / "videos",
                 training_plans(args.num_videos, args.clip_s, args.seed), args.clip_s, args.seed)


if __name__ == "__main__":
    main()
