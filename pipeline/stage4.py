"""Stage 4, visualise: the cache's final turns as RTTM, a VIA 3 project, two plots and an annotated video.

Reads (pywork/REF/): media.pckl and tracks.pckl (``scripts/run_pipeline.py``), activesd.pckl and sync.pckl
(``scripts/run_syncnet.py``), faceid.pckl, diarization.pckl and sync_curves.pckl (``scripts/cluster.py``),
and for the video pyavi/REF/audio.wav and the original video. The confidence curves and thresholds drawn
are those stage 3 decided with (sync_curves.pckl), never recomputed with stage 4's own ``diarise`` config,
and each of stage 3's outputs must have been made from the current upstream outputs. Writes, all atomically, into pywork/REF/:

- ``REF.rttm``: the turns (file id REF, or ``file_id``: the name a reference RTTM gives the recording);
- ``REF_via.json``: the VIA 3 project on the original video (named after the same file id);
- ``REF_sync.png``: every face track's sync confidence over time, speaking spans shaded (Wav2Lip evidence or
  ``diarise.mode: argmax``: the smoothed curves with, per frame, the face with the highest shaded);
- ``REF_timeline.png``: the speakers' turns;
- ``REF_annotated.mp4`` (only when asked): the annotated 25 fps video with the audio (GestSync evidence: each
  track's person region is drawn too).

With ``out_dir`` the same files are also copied there.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cache import Cache, atomic_path
from pipeline.config import Section
from pipeline.errors import CacheError, InputError
from pipeline.evidence import extra_tracks, model_named, read_evidence
from pipeline.export import available_writers, get_writer
from pipeline.formats import (
    ACTIVESD_FILE,
    CLUSTER,
    DIARISATION_FILE,
    DIARISATION_UPSTREAM,
    FACEID_FILE,
    MEDIA_FILE,
    RUN_PIPELINE,
    RUN_SYNCNET,
    SYNC_CURVES_FILE,
    SYNC_CURVES_UPSTREAM,
    SYNC_FILE,
    TRACKS_FILE,
    Turn,
    turns_from_pickle,
)
from pipeline.plots import track_labels
from pipeline.sync.base import SyncEvidence, extra_identities


@dataclass(frozen=True)
class Stage4Inputs:
    """What stage 4 reads from the cache."""

    media: dict
    tracks: list
    dists: list  # activesd.pckl: per track float32 [num_windows, num_shifts]
    sync: SyncEvidence
    face_ids: list[int]
    turns: list[Turn]
    confidences: list  # sync_curves.pckl: per track float64 [num_frames], as stage 3 computed them
    thresholds: tuple[float, ...]  # the voting thresholds stage 3 used
    model: str = "syncnet"  # the sync model whose evidence stage 3 fused
    mode: str = "voxconverse"  # the fusion rule stage 3 used
    num_face_tracks: int | None = None  # tracks.pckl's; the rest are GestSync's person tracks without a face
    sources: tuple[str, ...] = ()  # per track the evidence its curve came from (GestSync with lip evidence)


def load_inputs(cache: Cache) -> Stage4Inputs:
    """Stage 4's inputs, checked in pipeline order so a CacheError names the earliest stage to run."""
    media = cache.require(MEDIA_FILE, RUN_PIPELINE)
    tracks = cache.require(TRACKS_FILE, RUN_PIPELINE)
    dists = cache.require(ACTIVESD_FILE, RUN_SYNCNET)
    sync = read_evidence(cache.require(SYNC_FILE, RUN_SYNCNET))
    face_ids = cache.require_fresh(FACEID_FILE, CLUSTER, {TRACKS_FILE: ""})
    try:
        turns = turns_from_pickle(cache.require_fresh(DIARISATION_FILE, CLUSTER, dict.fromkeys(DIARISATION_UPSTREAM)))
    except (TypeError, ValueError, IndexError):
        raise CacheError(f"{cache.work(DIARISATION_FILE)} is not a list of turns: run {CLUSTER} again") from None
    curves = cache.require_fresh(SYNC_CURVES_FILE, CLUSTER, dict.fromkeys(SYNC_CURVES_UPSTREAM))
    try:
        confidences = [np.asarray(c, dtype=np.float64) for c in curves["confidence"]]
        thresholds = tuple(float(t) for t in curves["thresholds"])
        model, mode = str(curves.get("model", "syncnet")), str(curves.get("mode", "voxconverse"))
        sources = tuple(str(v) for v in curves.get("sources") or ())
    except (TypeError, ValueError, KeyError):
        raise CacheError(f"{cache.work(SYNC_CURVES_FILE)} is not stage 3's curves: run {CLUSTER} again") from None
    face_ids = [int(i) for i in face_ids]
    extra = extra_tracks(sync)  # GestSync's person tracks without a face
    face_ids = [*face_ids, *extra_identities(face_ids, len(extra))]
    inputs = Stage4Inputs(media=media, tracks=[*tracks, *extra], dists=list(dists), sync=sync,
                          face_ids=face_ids, turns=turns, confidences=confidences,
                          thresholds=thresholds, model=model, mode=mode, num_face_tracks=len(tracks),
                          sources=sources)
    _check_consistent(inputs)
    return inputs


def _check_consistent(inputs: Stage4Inputs) -> None:
    num_tracks = len(inputs.tracks)
    if len(inputs.dists) != num_tracks:
        raise CacheError(f"activesd.pckl has {len(inputs.dists)} tracks, tracks.pckl {num_tracks}: "
                         f"run {RUN_SYNCNET} again")
    if len(inputs.confidences) != num_tracks:
        raise CacheError(f"sync_curves.pckl has {len(inputs.confidences)} tracks, tracks.pckl {num_tracks}: "
                         f"run {CLUSTER} again")
    if len(inputs.face_ids) != num_tracks:
        raise CacheError(f"faceid.pckl has {len(inputs.face_ids)} tracks, tracks.pckl {num_tracks}: "
                         f"run {CLUSTER} again")
    for turn in inputs.turns:
        for track_idx in turn.track_ids:
            if not 0 <= track_idx < num_tracks:
                raise CacheError(f"diarization.pckl names track {track_idx} of {num_tracks}: run {CLUSTER} again")


def output_names(reference: str) -> dict[str, str]:
    """Kind of output -> its file name in pywork/REF."""
    names = {name: f"{reference}{get_writer(name)[0]}" for name in available_writers()}
    names.update(sync_plot=f"{reference}_sync.png", timeline_plot=f"{reference}_timeline.png",
                 video=f"{reference}_annotated.mp4")
    return names


def visualise(data_dir: str | Path, reference: str, cfg: Section, video: bool = False,
              out_dir: str | Path | None = None, progress: Callable[..., None] | None = None,
              file_id: str | None = None) -> dict[str, Path]:
    """Write stage 4's outputs for one cached video; returns kind -> path (in ``out_dir`` when given).
    ``file_id`` is the RTTM's and VIA project's file id (default: ``reference``)."""
    from pipeline.export import check_file_id

    file_id = reference if file_id is None else check_file_id(file_id)
    cache = Cache(data_dir, reference, create=False)
    inputs = load_inputs(cache)
    source_path = str(cache.source_video(inputs.media))
    names = output_names(reference)
    confidences = inputs.confidences
    labels = track_labels(inputs.turns, inputs.face_ids)
    outputs: dict[str, Path] = {}
    try:
        for name in available_writers():
            outputs[name] = get_writer(name)[1](inputs.turns, cache.work(names[name]), file_id=file_id,
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
    thresholds = inputs.thresholds
    model = model_named(inputs.model)
    if model.own_curves or inputs.mode == "argmax":  # the seed project's picture
        what, ylabel = model.plot_what, model.plot_ylabel
        title = f"{cache.reference}: {what} per face track (shaded: the face with the highest)"
        if any(source.startswith("lips") for source in inputs.sources):  # GestSync with lip evidence
            lips = ", ".join(str(i) for i, source in enumerate(inputs.sources) if source.startswith("lips"))
            title = f"{cache.reference}: gestures, and lips of track(s) {lips} mapped onto their scale"
            ylabel = "sync score (GestSync's scale)"
        sync_png = plot_sync_argmax(
            cache.work(names["sync_plot"]), track_frames, confidences, labels, frame_rate_hz, duration_s,
            thresholds if inputs.mode == "voxconverse" else (), title=title, ylabel=ylabel)
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

    source = cache.source_video(inputs.media)
    if not source.is_file():
        raise InputError(f"the video {source} that {RUN_PIPELINE} read is gone; the annotated video needs it")
    audio_path = None
    if inputs.media.get("has_audio", True):
        audio_path = cache.audio_wav
        if not audio_path.is_file():
            raise CacheError(f"{audio_path} is missing: run {RUN_PIPELINE} again")
    frame_rate_hz = float(inputs.media.get("frame_rate_hz", cfg.media.frame_rate_hz))
    colours = {label: rgb_to_bgr255(rgb) for label, rgb in label_colours(labels).items()}
    faces = len(inputs.tracks) if inputs.num_face_tracks is None else inputs.num_face_tracks
    overlays = build_overlays(inputs.tracks[:faces], confidences[:faces], labels[:faces], colours, inputs.turns,
                              frame_rate_hz)
    # what the model scored beyond the face boxes (GestSync: a person region per track), drawn too
    model_named(inputs.model).add_overlays(overlays, inputs.tracks, inputs.sync, labels, colours, inputs.turns,
                                           frame_rate_hz)
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


__all__ = ["Stage4Inputs", "copy_outputs", "load_inputs", "output_names", "visualise"]
