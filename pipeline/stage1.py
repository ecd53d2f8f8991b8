"""Stage 1, ``run_pipeline``: normalise a video, detect faces and shots, build face tracks and crops.

Each step reuses its cached result when the manifest says it was made from the same input, config and
upstream results, so a re-run does only what changed. A ``faces.pckl`` placed in the cache by the user
(syncnet_python's layout, no manifest) is adopted and stage 1 resumes from tracking.
"""
from __future__ import annotations

import contextlib
import hashlib
import pickle
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.io import wavfile

from pipeline import media
from pipeline.cache import Cache, atomic_path, content_identity, sha256_file, write_bytes_atomic
from pipeline.config import Config
from pipeline.crop import smooth_track, write_track_crops
from pipeline.detections import drop_note, drop_unusable, sanitize_faces
from pipeline.errors import InputError
from pipeline.formats import AUDIO_FILE, FACES_FILE, MEDIA_FILE, SCENE_FILE, TRACKS_FILE, validate_faces
from pipeline.prefetch import prefetch
from pipeline.runtime import apply_runtime
from pipeline.scenes import ShotDetector
from pipeline.stage1_outputs import read_wav
from pipeline.track import track_faces

STAGE = "run_pipeline"
Progress = Callable[..., None]


@dataclass
class Stage1Result:
    """What stage 1 produced, for the script's summary."""

    num_frames: int
    num_shots: int
    num_tracks: int
    reused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    audio_only: bool = False  # the input had no video stream (a wav): no faces, stage 2 has nothing to do


def _noop(*_args, **_kwargs) -> None:
    return None


# ---- audio -----------------------------------------------------------------------------------
def write_wav(path: Path, samples: np.ndarray, sample_rate_hz: int) -> None:
    """Atomically write 16-bit mono PCM."""
    with atomic_path(path, suffix=".part.wav") as tmp:
        wavfile.write(tmp, sample_rate_hz, samples.astype(np.int16, copy=False))


def normalise_audio(videofile: Path, cache: Cache, cfg: Config, identity: dict, force: bool) -> tuple[np.ndarray, bool]:
    """16 kHz mono audio of the video at pyavi/REF/audio.wav; (samples, reused)."""
    key = {"input": identity, "media": cfg.media.key_dict()}
    if not force and cache.is_valid(AUDIO_FILE, key):
        return read_wav(cache.audio_wav, cfg.media.sample_rate_hz), True
    cache.invalidate(AUDIO_FILE)
    samples = media.decode_audio(videofile, cfg.media.sample_rate_hz, max_missing_s=cfg.input.max_missing_s)
    if samples.size == 0:
        raise InputError(f"{videofile} has an audio stream with no decodable samples")
    write_wav(cache.audio_wav, samples, cfg.media.sample_rate_hz)
    cache.record(AUDIO_FILE, STAGE, key, [cache.audio_wav])
    return samples, False


# ---- faces and shots ---------------------------------------------------------------------------
def _media_key(cfg: Config, identity: dict) -> dict:
    """What media.pckl and scene.pckl are made from (every setting but the speed-only ones, as every key)."""
    return {"input": identity, "media": cfg.media.key_dict(), "scenes": cfg.scenes.key_dict()}


def _detect_key(cfg: Config, identity: dict) -> dict:
    """What faces.pckl is made from; it holds what the ``detections`` limits keep."""
    return {"input": identity, "media": cfg.media.key_dict(), "detect": cfg.detect.key_dict(),
            "detections": cfg.detections.key_dict()}


# Beside faces.pckl's manifest: the sha256 of the last faces.pckl the pipeline wrote, written before the file.
# A faces.pckl with no valid manifest is the user's unless it is that file (a run killed after writing it,
# or during a --force rerun that had dropped its manifest), so S3FD is never skipped for our own detections.
PIPELINE_FACES_MARK = "faces.pckl.pipeline"


def _pipeline_mark(cache: Cache) -> Path:
    return cache.manifest_dir / PIPELINE_FACES_MARK


def save_detections(cache: Cache, faces: list[list[dict]], key: dict) -> None:
    """faces.pckl as the pipeline's own: the mark first, then the file (atomically) and its manifest."""
    data = pickle.dumps(faces, protocol=4)
    cache.manifest_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(_pipeline_mark(cache), hashlib.sha256(data).hexdigest().encode())
    cache.invalidate(FACES_FILE)
    write_bytes_atomic(cache.work(FACES_FILE), data)
    cache.record(FACES_FILE, STAGE, key, [cache.work(FACES_FILE)])


def _written_by_pipeline(cache: Cache) -> bool:
    """faces.pckl is the pipeline's own detections (by its manifest, or by the mark when it has none)."""
    path = cache.work(FACES_FILE)
    manifest = cache.read_manifest(FACES_FILE)
    if manifest is not None and cache.files_intact(manifest):
        return manifest.get("key", {}).get("source") != "user"
    try:
        mark = _pipeline_mark(cache).read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return path.is_file() and sha256_file(path) == mark


def _user_faces(cache: Cache, identity: dict) -> list[list[dict]] | None:
    """A faces.pckl the user placed (no manifest, or one whose hash no longer matches, and not the file the
    pipeline last wrote), validated."""
    path = cache.work(FACES_FILE)
    if not path.is_file() or _written_by_pipeline(cache):
        return None
    manifest = cache.read_manifest(FACES_FILE)
    if manifest is not None and cache.files_intact(manifest):
        key = manifest.get("key", {})
        if key.get("source") != "user":
            return None  # made by the pipeline: trusted only through its key
        recorded = key.get("input") or {}
        if recorded != identity and "sha256" in recorded:  # never overwrite the user's own detections
            raise InputError(f"{path} holds detections you placed for another video (the content of the input "
                             f"changed): delete it to detect again, or use another --reference")
        faces = validate_faces(cache.load_pickle(FACES_FILE), str(path))
        if recorded != identity:  # recorded by an older version, by path and modification time
            cache.record(FACES_FILE, STAGE, {"source": "user", "input": identity}, [path])
        return faces
    faces = validate_faces(cache.load_pickle(FACES_FILE), str(path))
    cache.record(FACES_FILE, STAGE, {"source": "user", "input": identity}, [path])
    return faces


def _fit_faces(faces: list[list[dict]], num_frames: int, notes: list[str]) -> list[list[dict]]:
    """User detections on another frame count: pad or cut to the video's frames, and say so."""
    if len(faces) != num_frames:
        notes.append(f"faces.pckl has {len(faces)} frames, the 25 fps video {num_frames}: "
                      f"{'missing frames count as no face' if len(faces) < num_frames else 'extra frames ignored'}")
    faces = faces[:num_frames] + [[] for _ in range(num_frames - len(faces))]
    return [[dict(det, frame=idx) for det in dets] for idx, dets in enumerate(faces)]


def scan_video(videofile: Path, cfg: Config, detector, progress: Progress
               ) -> tuple[int, int, int, list, list, str | None]:
    """One pass over the 25 fps frames: shots, and detections when ``detector`` is given.

    Unusable boxes (``pipeline.detections``, ``cfg.detections``) are dropped batch by batch, so a checkpoint
    that fires everywhere costs memory bounded by ``max_per_frame`` per frame, not by its raw output.
    Returns (num_frames, width, height, shots, faces, note on dropped boxes or None).
    """
    shots = ShotDetector(cfg.media.frame_rate_hz, cfg.scenes.content_threshold, cfg.scenes.min_scene_len_frames)
    faces: list[list[dict]] = []
    batch: list[np.ndarray] = []
    batch_size = max(1, cfg.detect.batch_size)
    width = height = 0
    dropped: Counter = Counter()

    def flush() -> None:
        first = len(faces)
        detected = [[{"frame": first + k, "bbox": [float(v) for v in box[:4]], "conf": float(box[4])} for box in boxes]
                    for k, boxes in enumerate(detector.detect_batch(batch))]
        kept, counts = drop_unusable(detected, width, height, cfg.detections)
        faces.extend(kept)
        dropped.update(counts)
        batch.clear()

    num_frames = 0
    frames = media.iter_frames(videofile, cfg.media.frame_rate_hz, max_missing_s=cfg.input.max_missing_s)
    for frame in prefetch(frames, depth=2 * batch_size):
        height, width = frame.shape[:2]
        shots.push(frame)
        num_frames += 1
        if detector is not None:
            batch.append(frame)
            if len(batch) == batch_size:
                flush()
        progress("detect" if detector is not None else "scan", num_frames, None)
    if detector is not None and batch:
        flush()
    if num_frames == 0:
        raise InputError(f"{videofile} has no decodable video frames")
    return num_frames, width, height, shots.finish(), faces, drop_note(dropped)


def faces_and_shots(videofile: Path, cache: Cache, cfg: Config, identity: dict, weights_dir, device,
                    force: bool, progress: Progress, result: Stage1Result) -> tuple[dict, list, list]:
    """media.pckl, faces.pckl and scene.pckl, reused where valid; (media_info, faces, shots)."""
    media_key = _media_key(cfg, identity)
    detect_key = _detect_key(cfg, identity)
    info = None if force else cache.load_valid(MEDIA_FILE, media_key)
    shots = None if force else cache.load_valid(SCENE_FILE, media_key)
    faces = None if force else cache.load_valid(FACES_FILE, detect_key)
    # detections the user brought are kept, even with --force (delete faces.pckl to detect again)
    user_faces = _user_faces(cache, identity) if faces is None else None

    need_detection = faces is None and user_faces is None
    if info is None or shots is None or need_detection:
        detector = None
        if need_detection:
            from pipeline.detect import (
                FaceDetector,  # torch is imported only when detection runs
            )

            detector = FaceDetector(cfg.detect, weights_dir, device)
        for name in (MEDIA_FILE, SCENE_FILE) + ((FACES_FILE,) if need_detection else ()):
            cache.invalidate(name)
        if need_detection:  # the pipeline's old detections (_user_faces said so): gone before S3FD starts
            with contextlib.suppress(FileNotFoundError):
                cache.work(FACES_FILE).unlink()
        num_frames, width, height, shots, detected, drop_message = scan_video(videofile, cfg, detector, progress)
        info = {
            "source": identity,
            "num_frames": num_frames,
            "frame_rate_hz": cfg.media.frame_rate_hz,
            "width": width,
            "height": height,
            "duration_s": num_frames / cfg.media.frame_rate_hz,
        }
        if need_detection:
            faces = detected
            save_detections(cache, faces, detect_key)
            if drop_message is not None:
                result.notes.append(drop_message)
        cache.save_pickle(SCENE_FILE, shots, STAGE, media_key)
    else:
        result.reused += ["scenes"]
    if faces is None:
        faces = _fit_faces(user_faces, info["num_frames"], result.notes)
        result.notes.append("using the face detections found in faces.pckl (delete it to detect again)")
    elif not need_detection:
        result.reused.append("faces")
    faces, note = sanitize_faces(faces, info["width"], info["height"], cfg.detections)
    if note is not None:
        result.notes.append(note)
    return info, faces, shots


# ---- tracks and crops --------------------------------------------------------------------------
def _track_settings(cfg: Config) -> dict:
    """The settings tracks.pckl is made from (its key also holds the digests of faces.pckl and scene.pckl)."""
    return {"track": cfg.track.key_dict(), "crop": cfg.crop.key_dict(), "detections": cfg.detections.key_dict()}


def _crop_settings(cfg: Config) -> dict:
    """The settings the crops are made from (their key also holds the input and the digests they are cut from)."""
    return {"crop": cfg.crop.key_dict(), "media": cfg.media.key_dict()}


def build_tracks(cache: Cache, cfg: Config, faces: list, shots: list, force: bool) -> tuple[list[dict], bool]:
    """tracks.pckl in syncnet_python's layout; (tracks, reused)."""
    key = {
        "upstream": {FACES_FILE: cache.digest(FACES_FILE), SCENE_FILE: cache.digest(SCENE_FILE)},
        **_track_settings(cfg),
    }
    if not force:
        tracks = cache.load_valid(TRACKS_FILE, key)
        if tracks is not None:
            return tracks, True
    cache.invalidate(TRACKS_FILE)
    tracks = []
    for dense in track_faces(faces, shots, cfg.track):
        tracks.append({"track": dense, "proc_track": smooth_track(dense, cfg.crop.smooth_kernel_frames)})
    cache.save_pickle(TRACKS_FILE, tracks, STAGE, key)
    return tracks, False


def _remove_old_crops(cache: Cache) -> None:
    for pattern in ("[0-9]*.avi", "[0-9]*.mkv", "[0-9]*.wav"):
        for path in cache.crop_dir.glob(pattern):
            path.unlink()


def write_crops(videofile: Path, cache: Cache, cfg: Config, tracks: list[dict], audio: np.ndarray,
                identity: dict, force: bool, progress: Progress) -> bool:
    """Crops of every track (pycrop/REF/%05d.{mkv,avi,wav}) under the 'crops' manifest; True if reused."""
    key = {
        "input": identity,
        "upstream": {TRACKS_FILE: cache.digest(TRACKS_FILE), AUDIO_FILE: cache.digest(AUDIO_FILE)},
        **_crop_settings(cfg),
    }
    if not force and cache.is_valid("crops", key):
        return True
    cache.invalidate("crops")
    _remove_old_crops(cache)
    rate_hz, sr_hz = cfg.media.frame_rate_hz, cfg.media.sample_rate_hz
    per_frame = sr_hz // rate_hz
    files: list[Path] = []
    for idx, track in enumerate(tracks):
        first, end = int(track["track"]["frame"][0]), int(track["track"]["frame"][-1]) + 1
        write_wav(cache.crop_wav(idx), audio[first * per_frame:end * per_frame], sr_hz)
        files += [cache.crop_frames(idx), cache.crop_avi(idx), cache.crop_wav(idx)]
    if tracks:
        write_track_crops(
            prefetch(media.iter_frames(videofile, rate_hz), depth=16),
            [t["track"] for t in tracks], [t["proc_track"] for t in tracks], audio,
            [cache.crop_frames(i) for i in range(len(tracks))], [cache.crop_avi(i) for i in range(len(tracks))],
            cfg.crop, rate_hz, sr_hz, progress,
        )
    cache.record("crops", STAGE, key, files)
    return False


def run_pipeline(videofile: str | Path, cache: Cache, cfg: Config, weights_dir=None, device="cpu",
                 force: bool = False, progress: Progress | None = None) -> Stage1Result:
    """Stage 1 on one video: audio.wav, media/faces/scene/tracks pickles and crops in ``cache``."""
    progress = progress or _noop
    apply_runtime(cfg.runtime)
    videofile = Path(videofile)
    probed = media.check_video_input(videofile, need_audio=True, allow_audio_only=True)
    identity = content_identity(videofile)  # by content: a moved or touched video keeps its cache
    cache.record_source(videofile, identity)
    result = Stage1Result(num_frames=0, num_shots=0, num_tracks=0)

    audio, reused = normalise_audio(videofile, cache, cfg, identity, force)
    if reused:
        result.reused.append("audio")
    if not probed.has_video:
        return audio_only_outputs(videofile, cache, cfg, identity, audio, force, result)
    info, faces, shots = faces_and_shots(videofile, cache, cfg, identity, weights_dir, device, force, progress, result)
    info = dict(info, num_samples=int(audio.size), sample_rate_hz=cfg.media.sample_rate_hz, has_audio=True)
    media_key = _media_key(cfg, identity)
    if cache.load_valid(MEDIA_FILE, media_key) != info:
        cache.save_pickle(MEDIA_FILE, info, STAGE, media_key)
    if info["duration_s"] - audio.size / cfg.media.sample_rate_hz > cfg.media.audio_short_note_s:
        result.notes.append(f"the audio ({audio.size / cfg.media.sample_rate_hz:.2f} s) is shorter than the video "
                            f"({info['duration_s']:.2f} s); the rest counts as silence")

    tracks, reused = build_tracks(cache, cfg, faces, shots, force)
    if reused:
        result.reused.append("tracks")
    if write_crops(videofile, cache, cfg, tracks, audio, identity, force, progress):
        result.reused.append("crops")
    if not tracks:
        result.notes.append("no face track found: later stages fall back to audio-only diarisation")
    result.num_frames, result.num_shots, result.num_tracks = info["num_frames"], len(shots), len(tracks)
    return result


def audio_only_outputs(audio_file: Path, cache: Cache, cfg: Config, identity: dict, audio: np.ndarray, force: bool,
                       result: Stage1Result) -> Stage1Result:
    """Stage 1 of an input without a video stream (a wav): a video without faces as long as the audio.

    media.pckl (``has_video`` False, no picture size), one shot, no detections, no tracks and no crops, written
    under the same keys as for a video, so stage 3 runs its audio-only fallback on the whole audio.
    """
    fps = cfg.media.frame_rate_hz
    num_frames = max(1, int(round(audio.size * fps / cfg.media.sample_rate_hz)))
    info = {"source": identity, "num_frames": num_frames, "frame_rate_hz": cfg.media.frame_rate_hz, "width": 0,
            "height": 0, "duration_s": num_frames / fps, "num_samples": int(audio.size),
            "sample_rate_hz": cfg.media.sample_rate_hz, "has_audio": True, "has_video": False}
    media_key = _media_key(cfg, identity)
    detect_key = _detect_key(cfg, identity)
    shots = [(0, num_frames)]
    faces: list[list[dict]] = [[] for _ in range(num_frames)]
    if cache.load_valid(MEDIA_FILE, media_key) != info:
        cache.save_pickle(MEDIA_FILE, info, STAGE, media_key)
    if force or cache.load_valid(SCENE_FILE, media_key) != shots:
        cache.save_pickle(SCENE_FILE, shots, STAGE, media_key)
    if force or cache.load_valid(FACES_FILE, detect_key) != faces:
        save_detections(cache, faces, detect_key)
    tracks, _ = build_tracks(cache, cfg, faces, shots, force)
    write_crops(audio_file, cache, cfg, tracks, audio, identity, force, _noop)
    result.audio_only = True
    result.notes.append("audio-only input (no video stream): no faces; stage 3 diarises the voices alone")
    result.num_frames, result.num_shots, result.num_tracks = num_frames, len(shots), len(tracks)
    return result


__all__ = ["Stage1Result", "audio_only_outputs", "run_pipeline", "write_wav"]
