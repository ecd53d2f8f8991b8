"""Stage 4, visualise: the cache's final turns as RTTM, a VIA 3 project, two plots and an annotated video.

Reads (pywork/REF/): media.pckl and tracks.pckl (``scripts/run_pipeline.py``), activesd.pckl and sync.pckl
(``scripts/run_syncnet.py``), faceid.pckl and diarization.pckl (``scripts/cluster.py``), and for the video
pyavi/REF/audio.wav and the original video. Writes, all atomically, into pywork/REF/:

- ``REF.rttm``: the turns (file id REF);
- ``REF_via.json``: the VIA 3 project on the original video;
- ``REF_sync.png``: every face track's sync confidence over time, speaking spans shaded (Wav2Lip evidence or
  ``diarise.mode: argmax``: the smoothed curves with, per frame, the face with the highest shaded);
- ``REF_timeline.png``: the speakers' turns;
- ``REF_annotated.mp4`` (only when asked): the annotated 25 fps video with the audio.

With ``out_dir`` the same files are also copied there.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.cache import Cache, atomic_path
from pipeline.config import Section
from pipeline.errors import CacheError, InputError
from pipeline.evidence import evidence_model, fusion_mode, model_curves, vote_thresholds
from pipeline.export import available_writers, get_writer
from pipeline.formats import Turn, turns_from_pickle
from pipeline.plots import track_labels
from pipeline.formats import CLUSTER, RUN_PIPELINE, RUN_SYNCNET



@dataclass(frozen=True)
class Stage4Inputs:
    """What stage 4 reads from the cache."""

    media: dict
    tracks: list
    dists: list  # activesd.pckl: per track float32 [num_windows, num_shifts]
    sync: dict
    face_ids: list[int]
    turns: list[Turn]


def load_inputs(cache: Cache) -> Stage4Inputs:
    """Stage 4's inputs, checked in pipeline order so a CacheError names the earliest stage to run."""
    media = cache.require("media.pckl", RUN_PIPELINE)
    tracks = cache.require("tracks.pckl", RUN_PIPELINE)
    dists = cache.require("activesd.pckl", RUN_SYNCNET)
    sync = cache.require("sync.pckl", RUN_SYNCNET)
    face_ids = cache.require("faceid.pckl", CLUSTER)
    try:
        turns = turns_from_pickle(cache.require("diarization.pckl", CLUSTER))
    except (TypeError, ValueError, IndexError):
        raise CacheError(f"{cache.work('diarization.pckl')} is not a list of turns: run {CLUSTER} again") from None
    inputs = Stage4Inputs(media=media, tracks=list(tracks), dists=list(dists), sync=sync,
                          face_ids=[int(i) for i in face_ids], turns=turns)
    _check_consistent(inputs)
    return inputs


def _check_consistent(inputs: Stage4Inputs) -> None:
    num_tracks = len(inputs.tracks)
    if len(inputs.dists) != num_tracks:
        raise CacheError(f"activesd.pckl has {len(inputs.dists)} tracks, tracks.pckl {num_tracks}: "
                         f"run {RUN_SYNCNET} again")
    if len(inputs.face_ids) != num_tracks:
        raise CacheError(f"faceid.pckl has {len(inputs.face_ids)} tracks, tracks.pckl {num_tracks}: "
                         f"run {CLUSTER} again")
    for turn in inputs.turns:
        for track_idx in turn.track_ids:
            if not 0 <= track_idx < num_tracks:
                raise CacheError(f"diarization.pckl names track {track_idx} of {num_tracks}: run {CLUSTER} again")


def track_confidences(dists: Sequence[np.ndarray], cfg_diarise: Any) -> list[np.ndarray]:
    """Per-frame smoothed sync confidence of every track, as stage 3 computes it."""
    from pipeline.fuse import track_confidence

    return [np.asarray(track_confidence(np.asarray(d), cfg_diarise), dtype=np.float64) for d in dists]


def output_names(reference: str) -> dict[str, str]:
    """Kind of output -> its file name in pywork/REF."""
    names = {name: f"{reference}{get_writer(name)[0]}" for name in available_writers()}
    names.update(sync_plot=f"{reference}_sync.png", timeline_plot=f"{reference}_timeline.png",
                 video=f"{reference}_annotated.mp4")
    return names


def visualise(data_dir: str | Path, reference: str, cfg: Section, video: bool = False,
              out_dir: str | Path | None = None, progress: Callable[..., None] | None = None) -> dict[str, Path]:
    """Write stage 4's outputs for one cached video; returns kind -> path (in ``out_dir`` when given)."""
    cache = Cache(data_dir, reference, create=False)
    inputs = load_inputs(cache)
    source_path = str(inputs.media["source"]["path"])
    names = output_names(reference)
    confidences = model_curves(inputs.sync, len(inputs.tracks)) or track_confidences(inputs.dists, cfg.diarise)
    labels = track_labels(inputs.turns, inputs.face_ids)
    outputs: dict[str, Path] = {}
    try:
        for name in available_writers():
            outputs[name] = get_writer(name)[1](inputs.turns, cache.work(names[name]), file_id=reference,
                                                video_path=source_path)
        outputs.update(_plots(cache, inputs, cfg, names, confidences, labels))
        if video:
            outputs["video"] = _annotated_video(cache, inputs, cfg, cache.work(names["video"]), confidences, labels,
                                                progress)
    except OSError as err:
        raise InputError(f"cannot write to --data_dir {cache.data_dir}: {err.strerror or err}") from None
    if out_dir is not None:
        outputs = copy_outputs(outputs, Path(out_dir))
    return outputs


def _plots(cache: Cache, inputs: Stage4Inputs, cfg: Section, names: dict[str, str],
           confidences: list[np.ndarray], labels: list[str]) -> dict[str, Path]:
    from pipeline.plots import plot_sync, plot_sync_argmax, plot_timeline

    frame_rate_hz = float(inputs.media.get("frame_rate_hz", cfg.media.frame_rate_hz))
    duration_s = float(inputs.media.get("duration_s") or max((t.end_s for t in inputs.turns), default=0.0))
    track_frames = [np.asarray(track["track"]["frame"]) for track in inputs.tracks]
    thresholds = vote_thresholds(cfg, dict(inputs.sync, metric=inputs.sync.get("metric", cfg.syncnet.metric)))
    if evidence_model(inputs.sync) == "wav2lip" or fusion_mode(cfg) == "argmax":  # the seed project's picture
        expert = evidence_model(inputs.sync) == "wav2lip"
        sync_png = plot_sync_argmax(
            cache.work(names["sync_plot"]), track_frames, confidences, labels, frame_rate_hz, duration_s,
            thresholds if fusion_mode(cfg) == "voxconverse" else (),
            title=f"{cache.reference}: {'Wav2Lip expert smoothed score' if expert else 'SyncNet confidence'} per "
                  "face track (shaded: the face with the highest)",
            ylabel="lip-sync score (smoothed)" if expert else "sync confidence")
    else:
        sync_png = plot_sync(cache.work(names["sync_plot"]), track_frames, confidences, labels, inputs.turns,
                             frame_rate_hz, duration_s, thresholds,
                             title=f"{cache.reference}: sync confidence per face track (shaded: speaking)")
    timeline_png = plot_timeline(cache.work(names["timeline_plot"]), inputs.turns, duration_s,
                                 title=f"{cache.reference}: speakers (solid: face seen speaking; hatched: voice only)")
    return {"sync_plot": sync_png, "timeline_plot": timeline_png}


def _annotated_video(cache: Cache, inputs: Stage4Inputs, cfg: Section, out_path: Path, confidences: list[np.ndarray],
                     labels: list[str], progress: Callable[..., None] | None) -> Path:
    from pipeline.annotate import build_overlays, write_annotated_video
    from pipeline.media import iter_frames
    from pipeline.plots import label_colours, rgb_to_bgr255

    source = Path(inputs.media["source"]["path"])
    if not source.is_file():
        raise InputError(f"the video {source} that {RUN_PIPELINE} read is gone; the annotated video needs it")
    audio_path = None
    if inputs.media.get("has_audio", True):
        audio_path = cache.audio_wav
        if not audio_path.is_file():
            raise CacheError(f"{audio_path} is missing: run {RUN_PIPELINE} again")
    frame_rate_hz = float(inputs.media.get("frame_rate_hz", cfg.media.frame_rate_hz))
    colours = {label: rgb_to_bgr255(rgb) for label, rgb in label_colours(labels).items()}
    overlays = build_overlays(inputs.tracks, confidences, labels, colours, inputs.turns, frame_rate_hz)
    return write_annotated_video(iter_frames(source, frame_rate_hz=frame_rate_hz), overlays, out_path, audio_path,
                                 int(inputs.media["num_frames"]), frame_rate_hz, cfg.visualise, progress)


def copy_outputs(outputs: dict[str, Path], out_dir: Path) -> dict[str, Path]:
    """Copy every output into ``out_dir`` (atomically, created if needed); unwritable is a one-line InputError."""
    copied = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for kind, path in outputs.items():
            target = out_dir / path.name
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
            copied[kind] = target
    except OSError as err:
        raise InputError(f"cannot write to --out_dir {out_dir}: {err.strerror or err}") from None
    return copied


__all__ = ["Stage4Inputs", "copy_outputs", "load_inputs", "output_names", "track_confidences", "visualise"]
