"""Stage 2, ``run_syncnet``: SyncNet offset, confidence and distance curves of every face track in the cache.

Reads stage 1's ``tracks.pckl`` and crops (``pycrop/REF/%05d.mkv`` frames, ``%05d.wav`` audio) and writes
``activesd.pckl``, ``sync.pckl`` and ``offsets.txt`` (layouts: ``pipeline/formats.py``), each with a manifest
whose key holds the ``syncnet`` config, the checkpoint file and its sha256, and the digests of
``tracks.pckl`` and ``crops``. A valid earlier result is reused unless ``force``.

Also the single-clip mode of syncnet_python's demo (``sync_clip``), with the ``syncnet_demo`` settings.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.loader import checkpoint_path
from models.syncnet import load_syncnet, syncnet_checkpoint
from pipeline import media
from pipeline.cache import Cache, atomic_path, sha256_file, write_bytes_atomic
from pipeline.config import Section
from pipeline.errors import CacheError, InputError
from pipeline.evidence import configured_model
from pipeline.formats import RUN_PIPELINE as STAGE1_SCRIPT
from pipeline.runtime import apply_threads
from pipeline.stage1_outputs import read_wav, require_tracks_and_crops
from pipeline.sync import SyncResult, SyncSettings, summarise, sync_track

STAGE = "run_syncnet"
OUTPUTS = ("activesd.pckl", "sync.pckl", "offsets.txt")
SPEED_ONLY_KEYS = ("batch_size", "parallel_tracks")  # left out of the cache key: results do not depend on them

ProgressHook = Callable[..., None]


@dataclass
class Stage2Output:
    """What stage 2 wrote (or found valid): per-track distance matrices and the ``sync.pckl`` dict."""

    distances: list[np.ndarray]
    sync: dict[str, Any]
    reused: bool

    @property
    def num_tracks(self) -> int:
        return len(self.distances)


# ---- stage 1 inputs ------------------------------------------------------------------------------
def require_stage1(cache: Cache) -> list[dict]:
    """Stage 1's tracks, after checking that its crops exist and were made from those tracks."""
    return require_tracks_and_crops(cache)


def stage2_key(cache: Cache, cfg: Section, checkpoint_file: str | None,
               checkpoint_sha256: str | None) -> dict[str, Any]:
    """What stage 2's outputs depend on."""
    return {
        "stage": STAGE,
        "syncnet": {k: v for k, v in cfg.syncnet.to_dict().items() if k not in SPEED_ONLY_KEYS},
        "media": {"frame_rate_hz": cfg.media.frame_rate_hz, "sample_rate_hz": cfg.media.sample_rate_hz},
        "checkpoint": {"file": checkpoint_file, "sha256": checkpoint_sha256},
        "upstream": {"tracks.pckl": cache.digest("tracks.pckl"), "crops": cache.digest("crops")},
    }


def _sync_crop(cache: Cache, idx: int, model, settings: SyncSettings, device: torch.device) -> SyncResult:
    audio = read_wav(cache.crop_wav(idx), settings.sample_rate_hz)
    frames_path = cache.crop_frames(idx)
    with contextlib.closing(media.iter_video_frames(frames_path)) as frames:
        try:
            return sync_track(model, frames, audio, settings, device)
        except InputError as err:  # undecodable or wrong-size crop: stage 1's output is broken
            raise CacheError(f"track {idx}: {err}; run {STAGE1_SCRIPT} again") from None


def _map_tracks(work: Callable[[int], SyncResult], num_tracks: int, workers: int) -> Iterator[SyncResult]:
    """``work(idx)`` for every track, in order; on CUDA several at once so their decoding overlaps.

    PyAV releases the GIL while decoding, so threads decode in parallel and keep the GPU fed; each track
    still holds at most one batch of windows. On the CPU the network already uses every core: one at a time.
    """
    if workers <= 1:
        yield from (work(idx) for idx in range(num_tracks))
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="syncnet")
    try:
        yield from pool.map(work, range(num_tracks))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---- outputs -------------------------------------------------------------------------------------
def _fmt(value: float, spec: str) -> str:
    return "nan" if not math.isfinite(value) else format(value, spec)


def offsets_text(sync: Mapping[str, Any]) -> str:
    """``offsets.txt``: a '#' header, then ``track offset_frames min_dist confidence`` per line, tab-separated."""
    lines = [f"# metric {sync['metric']}, vshift {sync['vshift_frames']} frames; nan: too short or silent",
             "# track\toffset_frames\tmin_dist\tconfidence"]
    for idx, (off, dist, conf) in enumerate(zip(sync["offset_frames"], sync["min_dist"], sync["confidence"])):
        lines.append(f"{idx:05d}\t{_fmt(off, '.0f')}\t{_fmt(dist, '.3f')}\t{_fmt(conf, '.3f')}")
    return "\n".join(lines) + "\n"


def write_outputs(cache: Cache, distances: list[np.ndarray], sync: dict, key: Mapping, offsets: str) -> None:
    """``activesd.pckl``, ``sync.pckl`` and ``offsets.txt`` (text ``offsets``), each atomically with its manifest."""
    cache.save_pickle("activesd.pckl", distances, STAGE, key)
    cache.save_pickle("sync.pckl", sync, STAGE, key)
    path = cache.work("offsets.txt")
    write_bytes_atomic(path, offsets.encode())
    cache.record("offsets.txt", STAGE, key, [path])


def load_valid(cache: Cache, key: Mapping) -> Stage2Output | None:
    """Stage 2's outputs when all three were written with ``key``, else None."""
    if not all(cache.is_valid(name, key) for name in OUTPUTS):
        return None
    distances, sync = cache.load_valid("activesd.pckl", key), cache.load_valid("sync.pckl", key)
    if distances is None or sync is None:
        return None
    return Stage2Output(distances, sync, reused=True)


def prepare_rerun(cache: Cache, has_tracks: bool) -> None:
    """Invalidate stage 2's outputs before writing new ones; CacheError when stage 1's crops changed since."""
    for name in OUTPUTS:
        cache.invalidate(name)
    if has_tracks and not cache.files_intact(cache.read_manifest("crops") or {}):
        raise CacheError(f"the crops in {cache.crop_dir} changed since stage 1 wrote them: run {STAGE1_SCRIPT} again")


# ---- the stage -----------------------------------------------------------------------------------
def run_stage2(cache: Cache, cfg: Section, weights_dir: str | Path | None = None,
               device: torch.device | str = "cpu", force: bool = False,
               progress: ProgressHook | None = None) -> Stage2Output:
    """SyncNet (or the ``sync.model`` stage 2 is set to) on every track of ``cache``; reuses a valid earlier
    result unless ``force``.

    Raises CacheError when stage 1's output is missing or stale, CheckpointError for a bad checkpoint.
    """
    apply_threads(int(cfg.runtime.threads))
    if configured_model(cfg) == "wav2lip":  # Wav2Lip's lip-sync expert: pipeline/sync_wav2lip.py
        from pipeline.sync_wav2lip import run_stage2_wav2lip

        return run_stage2_wav2lip(cache, cfg, weights_dir, device, force, progress)
    if configured_model(cfg) == "gestsync":  # GestSync's gesture sync: pipeline/sync_gestsync.py
        from pipeline.sync_gestsync import run_stage2_gestsync

        return run_stage2_gestsync(cache, cfg, weights_dir, device, force, progress)
    progress = progress or (lambda *args, **kwargs: None)
    tracks = require_stage1(cache)
    SyncSettings.from_config(cfg)  # a bad syncnet section fails here, before the checkpoint is looked for
    if tracks:
        ckpt_file = syncnet_checkpoint(weights_dir, cfg.syncnet.checkpoint)
        ckpt_sha256 = sha256_file(checkpoint_path(ckpt_file, weights_dir))
    else:  # no face track (no faces, or an audio-only input): nothing to sync, so no checkpoint is needed
        ckpt_file, ckpt_sha256 = None, None
    key = stage2_key(cache, cfg, ckpt_file, ckpt_sha256)
    reused = None if force else load_valid(cache, key)
    if reused is not None:
        return reused
    prepare_rerun(cache, bool(tracks))
    distances, sync = syncnet_evidence(cache, cfg, len(tracks), ckpt_file, weights_dir, device, progress)
    write_outputs(cache, distances, sync, key, offsets_text(sync))
    return Stage2Output(distances, sync, reused=False)


def syncnet_evidence(cache: Cache, cfg: Section, num_tracks: int, ckpt_file: str | None,
                     weights_dir: str | Path | None, device: torch.device | str,
                     progress: ProgressHook) -> tuple[list[np.ndarray], dict[str, Any]]:
    """SyncNet's distance matrices and ``sync.pckl`` dict for the first ``num_tracks`` crops of ``cache``,
    written nowhere (stage 2 writes them; GestSync's stage 2 keeps them as its lip evidence)."""
    settings = SyncSettings.from_config(cfg)
    device = torch.device(device)
    results: list[SyncResult] = []
    if num_tracks:
        model = load_syncnet(weights_dir, ckpt_file, device)
        workers = int(cfg.syncnet.parallel_tracks) if device.type == "cuda" else 1
        progress("syncnet", 0, num_tracks)
        for result in _map_tracks(lambda idx: _sync_crop(cache, idx, model, settings, device), num_tracks, workers):
            results.append(result)
            progress("syncnet", len(results), num_tracks)
    sync = summarise(results, settings)
    sync["checkpoint"] = ckpt_file
    sync["model"] = "syncnet"
    return [r.distances for r in results], sync


# ---- single clip (syncnet_python's demo_syncnet.py / demo_feature.py) ---------------------------
def sync_clip(videofile: str | Path, cfg: Section, weights_dir: str | Path | None = None,
              device: torch.device | str = "cpu", keep_embeddings: bool = False) -> SyncResult:
    """Offset, min dist and confidence of one face-crop clip with the ``syncnet_demo`` settings.

    Every decoded frame is used as is (no frame-rate conversion), with the clip's audio at 16 kHz mono,
    as the original extracts them with ffmpeg. InputError when the clip has no usable window.
    """
    apply_threads(int(cfg.runtime.threads))
    settings = SyncSettings.from_config(cfg, demo=True)
    media.check_video_input(videofile, need_audio=True)  # a bad clip is reported before a missing checkpoint
    ckpt_file = syncnet_checkpoint(weights_dir, cfg.syncnet_demo.checkpoint)
    audio = media.decode_audio(videofile, settings.sample_rate_hz)
    device = torch.device(device)
    model = load_syncnet(weights_dir, ckpt_file, device)
    with contextlib.closing(media.iter_video_frames(videofile)) as frames:
        result = sync_track(model, frames, audio, settings, device, keep_embeddings=keep_embeddings)
    if result.num_windows == 0:
        raise InputError(
            f"{videofile} is too short for SyncNet: it needs more than {settings.window_frames} frames with audio "
            f"(audio {len(audio) / settings.sample_rate_hz:.2f} s, {result.num_frames} frames used)")
    return result


def demo_report(result: SyncResult) -> str:
    """The three lines syncnet_python's demo prints."""
    offset = "nan" if not math.isfinite(result.offset_frames) else f"{int(result.offset_frames):d}"
    return (f"AV offset: \t{offset}\n"
            f"Min dist: \t{_fmt(result.min_dist, '.3f')}\n"
            f"Confidence: \t{_fmt(result.confidence, '.3f')}")


def save_features(path: str | Path, result: SyncResult, settings: SyncSettings) -> Path:
    """Write the per-window embeddings of a clip to an ``.npz`` (atomically).

    Arrays: ``lip`` [W, 1024] and ``audio`` [W, 1024] embeddings, ``lip_conv`` [W, 512] (the output of
    syncnet_python's ``forward_lipfeat``, what its demo_feature.py saves), ``window_start_frame`` [W],
    ``distances`` [W, 2 * vshift + 1], and the scalars ``offset_frames``, ``min_dist``, ``confidence``, ``metric``.
    """
    final = Path(path)
    if not result.embeddings:
        raise InputError("no embeddings to save: run sync_clip with keep_embeddings=True")
    try:
        with atomic_path(final, suffix=".part.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **result.embeddings, window_start_frame=np.arange(result.num_windows),
                         distances=result.distances, offset_frames=result.offset_frames,
                         min_dist=result.min_dist, confidence=result.confidence, metric=settings.metric,
                         vshift_frames=settings.vshift_frames)
    except OSError as err:
        raise InputError(f"cannot write --features {final}: {err.strerror or err}") from None
    return final

