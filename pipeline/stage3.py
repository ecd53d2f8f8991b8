"""Stage 3, ``cluster``: voice activity, speaker embeddings, face identities and the audio-visual diarisation.

Reads stage 1's ``media.pckl``, ``tracks.pckl``, crops and audio and stage 2's ``activesd.pckl`` and
``sync.pckl``; writes four intermediates (layouts: ``pipeline/formats.py``), each reused while its manifest
key still matches:

- ``vad.pckl``: the ``vad`` config and method, the sha256 of ``audio.wav``, the digests of stage 1's outputs;
  with given speech (``speech=``, ``--speech FILE``: ``pipeline/speech.py``) the file's sha256 and file id
  instead of the VAD's settings, its regions replacing the VAD's output (method ``given``) for every rule.
- ``embeddings.pckl``: the ``embed`` config, the speaker model and its checkpoint's sha256, the audio.
- ``faceid.pckl``: the ``faces`` config, the face checkpoint's sha256, ``tracks.pckl`` and crops.
- ``diarization.pckl``: the ``diarise`` config (and the expert's thresholds for Wav2Lip evidence) and the
  digests of everything above plus stage 2's outputs.
- ``sync_curves.pckl``: the confidence curves and thresholds the fusion used, for stage 4 to draw.

The decisions themselves are ``pipeline.fusion.voxconverse.diarise`` (``diarise.mode: voxconverse``) or
``pipeline.fusion.argmax.diarise_argmax`` (``argmax``) or ``pipeline.fusion.improved.diarise_improved``
(``improved``, with the ``improved`` config section); stage 2's evidence must come from ``sync.model``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.loader import checkpoint_path, find_network_checkpoint, resolve_weights_dir
from pipeline.cache import Cache, run_atomic_step, sha256_file
from pipeline.config import Config, Section
from pipeline.errors import CacheError, CheckpointError, InputError
from pipeline.evidence import (
    check_evidence_model,
    diarisation_key_extra,
    evidence_model,
    extra_tracks,
    fusion_curves,
    fusion_mode,
    read_evidence,
    vote_thresholds,
)
from pipeline.formats import (
    ACTIVESD_FILE,
    DIARISATION_FILE,
    DIARISATION_UPSTREAM,
    EMBEDDINGS_FILE,
    FACEID_FILE,
    MEDIA_FILE,
    SPEAKER_MODELS,
    SYNC_CURVES_FILE,
    SYNC_CURVES_UPSTREAM,
    SYNC_FILE,
    TRACKS_FILE,
    VAD_FILE,
    VAD_METHODS,
    Turn,
    turns_from_pickle,
)
from pipeline.formats import RUN_PIPELINE as STAGE1_SCRIPT
from pipeline.formats import RUN_SYNCNET as STAGE2_SCRIPT
from pipeline.fusion import FusionInputs, get_fusion_rule, uses_backend
from pipeline.fusion import voxconverse as fuse
from pipeline.fusion.speaker_backend import SpeakerBackend, find_backend
from pipeline.runtime import apply_runtime
from pipeline.settings import DiariseConfig
from pipeline.speech import GivenSpeech, read_speech, track_regions
from pipeline.stage1_outputs import read_wav, require_tracks_and_crops
from pipeline.sync.base import SyncEvidence, extra_identities, extra_vad

STAGE = "cluster"
# speaker models with their own voice thresholds (a config section of the same name) instead of diarise's
VOICE_THRESHOLD_SECTIONS = ("resemblyzer",)
VOICE_THRESHOLD_KEYS = ("merge_distance", "offscreen_min_similarity")
GIVEN_SPEECH = "given"  # vad.pckl's method when the speech regions come from a file, not a VAD

ProgressHook = Callable[..., None]


def _no_progress(*args: Any, **kwargs: Any) -> None:
    return None


# ---- earlier stages ------------------------------------------------------------------------------
def require_stage1(cache: Cache) -> tuple[dict, list[dict]]:
    """Stage 1's media description and tracks, after checking its crops; CacheError names run_pipeline.py."""
    media_info = cache.require(MEDIA_FILE, STAGE1_SCRIPT)
    if not isinstance(media_info, Mapping) or "num_frames" not in media_info:
        raise CacheError(f"{cache.work(MEDIA_FILE)} is not stage 1's media description: run {STAGE1_SCRIPT} again")
    tracks = require_tracks_and_crops(cache)
    return dict(media_info), tracks


def require_stage2(cache: Cache, num_tracks: int) -> tuple[list[np.ndarray], SyncEvidence]:
    """Stage 2's distance matrices and sync record, made from the current tracks and crops."""
    upstream = {TRACKS_FILE: "", "crops": ""}
    distances = cache.require_fresh(ACTIVESD_FILE, STAGE2_SCRIPT, upstream)
    sync = read_evidence(cache.require_fresh(SYNC_FILE, STAGE2_SCRIPT, upstream))
    extra = len(extra_tracks(sync))  # GestSync's faceless person tracks
    if not isinstance(distances, list) or len(distances) != num_tracks + extra:
        raise CacheError(f"{cache.work(ACTIVESD_FILE)} does not hold one distance matrix per track: "
                         f"run {STAGE2_SCRIPT} again")
    return distances, sync


def _whole_audio(cache: Cache, sample_rate_hz: int) -> tuple[np.ndarray, str]:
    """The whole-video audio (int16) and its sha256."""
    audio = read_wav(cache.audio_wav, sample_rate_hz)
    return audio, sha256_file(cache.audio_wav)


# ---- checkpoint identities -----------------------------------------------------------------------
def _weights_identity(path: Path) -> dict[str, str]:
    """sha256 of a checkpoint file, or of every file in a checkpoint folder."""
    if path.is_dir():
        return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}
    return {path.name: sha256_file(path)}


def checkpoint_identity(network: str, file: str, weights_dir: str | Path | None) -> dict[str, str] | None:
    """The hashes of the weights the loaders will use (``file``, else another published file of ``network``,
    or the ECAPA folder); None when there are none, and the loader then says what is missing."""
    if network == "ecapa":
        folder = resolve_weights_dir(weights_dir) / file
        return _weights_identity(folder) if folder.is_dir() else None
    try:
        return _weights_identity(checkpoint_path(find_network_checkpoint(network, file, weights_dir), weights_dir))
    except CheckpointError:
        return None


def _speaker_checkpoint(cfg_embed: Any, weights_dir: str | Path | None, name: str) -> dict[str, str] | None:
    if name == "ecapa":
        return checkpoint_identity("ecapa", cfg_embed.ecapa_dir, weights_dir)
    if name == "resemblyzer":
        from models.ge2e import find_weights

        try:
            return _weights_identity(find_weights(weights_dir))
        except CheckpointError:
            return None
    return checkpoint_identity("resnetse34", cfg_embed.resnetse34_checkpoint, weights_dir)


# ---- the four steps ------------------------------------------------------------------------------
def _upstream(cache: Cache, *names: str) -> dict[str, str | None]:
    return {name: cache.digest(name) for name in names}


def compute_vad(cache: Cache, cfg: Section, method: str, audio: np.ndarray, audio_id: str, num_tracks: int,
                force: bool, progress: ProgressHook) -> dict:
    """``vad.pckl``: speech segments of the whole audio and of each track's audio."""
    rate = cfg.media.sample_rate_hz
    key = {"stage": STAGE, "vad": {**cfg.vad.key_dict(), "method": method}, "sample_rate_hz": rate,
           "audio_sha256": audio_id, "upstream": _upstream(cache, MEDIA_FILE, TRACKS_FILE, "crops")}

    def produce() -> dict:
        from pipeline.vad import speech_segments

        progress("vad", 0, num_tracks + 1)
        whole = speech_segments(audio, rate, cfg.vad, method)
        per_track = []
        for idx in range(num_tracks):
            progress("vad", idx + 1, num_tracks + 1)
            track_audio = read_wav(cache.crop_wav(idx), rate)
            per_track.append([(float(s), float(e)) for s, e in speech_segments(track_audio, rate, cfg.vad, method)])
        progress("vad", num_tracks + 1, num_tracks + 1)
        return {"method": method, "audio": [(float(s), float(e)) for s, e in whole], "tracks": per_track}

    return run_atomic_step(cache, VAD_FILE, produce, STAGE, key, force)[0]


def given_vad(cache: Cache, cfg: Section, given: GivenSpeech, tracks: list[dict], audio_id: str,
              force: bool) -> dict:
    """``vad.pckl`` from given speech: its regions for the whole audio, and each track's share of them in
    seconds from the track's first frame (the span of its crop's audio)."""
    rate_hz, frame_rate_hz = cfg.media.sample_rate_hz, cfg.media.frame_rate_hz
    per_frame = rate_hz // frame_rate_hz  # stage 1 cuts a track's audio at whole frames of this many samples
    key = {"stage": STAGE, "speech": given.key(), "sample_rate_hz": rate_hz, "frame_rate_hz": frame_rate_hz,
           "audio_sha256": audio_id, "upstream": _upstream(cache, MEDIA_FILE, TRACKS_FILE, "crops")}

    def produce() -> dict:
        per_track = []
        for track in tracks:
            first, end = int(track["track"]["frame"][0]), int(track["track"]["frame"][-1]) + 1
            per_track.append(track_regions(given.regions, first * per_frame / rate_hz, end * per_frame / rate_hz))
        return {"method": GIVEN_SPEECH, "audio": list(given.regions), "tracks": per_track}

    return run_atomic_step(cache, VAD_FILE, produce, STAGE, key, force)[0]


def load_given_speech(speech: str | Path, reference: str, num_samples: int, cfg: Section) -> GivenSpeech:
    """``speech``'s regions checked against the audio's length (``vad.given_speech_tolerance_s``)."""
    return read_speech(speech, reference, num_samples / cfg.media.sample_rate_hz,
                       cfg.vad.given_speech_tolerance_s)


def compute_embeddings(cache: Cache, cfg: Section, weights_dir: str | Path | None, device: Any, name: str,
                       audio: np.ndarray, audio_id: str, force: bool, progress: ProgressHook) -> dict:
    """``embeddings.pckl``: sliding speaker embeddings of the whole audio."""
    rate = cfg.media.sample_rate_hz
    key = {"stage": STAGE, "embed": {**cfg.embed.key_dict(), "speaker_model": name}, "sample_rate_hz": rate,
           "checkpoint": _speaker_checkpoint(cfg.embed, weights_dir, name), "audio_sha256": audio_id,
           "upstream": _upstream(cache, MEDIA_FILE)}

    def produce() -> dict:
        from pipeline.embed import load_speaker_model, sliding_embeddings

        model = load_speaker_model(cfg.embed, weights_dir, device, name=name)
        feats = np.asarray(sliding_embeddings(model, audio, rate, cfg.embed, progress=progress), dtype=np.float32)
        return {"model": model.name, "window_s": cfg.embed.window_s, "hop_s": cfg.embed.hop_s,
                "embeddings": feats}

    return run_atomic_step(cache, EMBEDDINGS_FILE, produce, STAGE, key, force)[0]


def compute_face_ids(cache: Cache, cfg: Section, weights_dir: str | Path | None, device: Any, tracks: list[dict],
                     force: bool, progress: ProgressHook) -> list[int]:
    """``faceid.pckl``: one face identity per track."""
    checkpoint = checkpoint_identity("vggface2", cfg.faces.checkpoint, weights_dir) if tracks else None
    key = {"stage": STAGE, "faces": cfg.faces.key_dict(), "checkpoint": checkpoint,
           "upstream": _upstream(cache, TRACKS_FILE, "crops")}

    def produce() -> list[int]:
        if not tracks:
            return []
        from pipeline.faceid import (
            assign_face_identities,
            load_face_model,
            track_face_embeddings,
        )

        progress("face identities", 0, len(tracks))
        model = load_face_model(cfg.faces, weights_dir, device)
        features = track_face_embeddings(model, [cache.crop_frames(i) for i in range(len(tracks))], cfg.faces, device)
        frames = [np.asarray(t["track"]["frame"], dtype=np.int64) for t in tracks]
        identities = [int(i) for i in assign_face_identities(features, frames, cfg.faces)]
        progress("face identities", len(tracks), len(tracks))
        return identities

    return run_atomic_step(cache, FACEID_FILE, produce, STAGE, key, force)[0]


def track_evidence(tracks: list[dict], distances: list[np.ndarray], vad: Mapping,
                   face_ids: list[int], curves: list[np.ndarray] | None = None) -> list[fuse.TrackEvidence]:
    """Per-track inputs of the fusion rules, checked for matching lengths (``curves``: the sync model's own)."""
    if not (len(tracks) == len(distances) == len(vad["tracks"]) == len(face_ids)):
        raise CacheError(f"stage 3's inputs disagree on the number of tracks ({len(tracks)} tracks, "
                         f"{len(distances)} distance matrices, {len(vad['tracks'])} track VADs, {len(face_ids)} "
                         f"identities): re-run with --force")
    return [
        fuse.TrackEvidence(frames=np.asarray(t["track"]["frame"], dtype=np.int64), dists=np.asarray(d),
                           vad_s=list(v), identity=int(i), confidence=None if curves is None else curves[k])
        for k, (t, d, v, i) in enumerate(zip(tracks, distances, vad["tracks"], face_ids))
    ]


def diarise_settings(cfg: Config, speaker_model: str) -> DiariseConfig:
    """``cfg.diarise`` with the voice thresholds of ``speaker_model`` where it has its own config section
    (``resemblyzer:``); the ResNetSE34V2-tuned values otherwise."""
    own = cfg.get(speaker_model) if speaker_model in VOICE_THRESHOLD_SECTIONS else None
    if own is None:
        return cfg.diarise
    return dataclasses.replace(cfg.diarise, **{k: own[k] for k in VOICE_THRESHOLD_KEYS})


def speaker_backend(cfg: Section, speaker_model: str | None, embeddings: np.ndarray,
                    weights_dir: str | Path | None) -> SpeakerBackend:
    """The improved rule's transform for ``speaker_model``'s embeddings: fitted (weights folder, then the
    package) or the default, with a note once (``pipeline.fusion.speaker_backend.find_backend``)."""
    dim = int(np.shape(embeddings)[-1]) if np.ndim(embeddings) == 2 else 0
    return find_backend(speaker_model, dim, weights_dir)


def decide(cfg: Section, evidence: list[fuse.TrackEvidence], audio_vad_s: list, embeddings: np.ndarray,
           hop_s: float, num_frames: int, duration_s: float | None, sync: SyncEvidence,
           speaker_model: str | None = None, backend: SpeakerBackend | None = None) -> list[Turn]:
    """The turns by the configured fusion rule (``diarise.mode``) from stage 3's evidence; also what
    ``pipeline.simulate`` runs on simulated evidence. ``speaker_model`` (embeddings.pckl's ``model``) picks
    the voice thresholds of the reference rules (``diarise_settings``) and, without ``backend``, the improved
    rule's transform (``speaker_backend``, weights folder from the environment)."""
    mode = fusion_mode(cfg)
    if uses_backend(mode) and backend is None and np.ndim(embeddings) == 2 and np.shape(embeddings)[0]:
        backend = speaker_backend(cfg, speaker_model, embeddings, None)
    inputs = FusionInputs(tracks=evidence, audio_vad_s=audio_vad_s, embeddings=embeddings,
                          cfg_diarise=diarise_settings(cfg, str(speaker_model or "")), cfg_diarise_base=cfg.diarise,
                          cfg_improved=cfg.improved, metric=sync.metric, hop_s=hop_s, num_frames=num_frames,
                          duration_s=duration_s, thresholds=vote_thresholds(cfg, sync), backend=backend)
    return get_fusion_rule(mode)(inputs)


def compute_diarisation(cache: Cache, cfg: Section, media_info: Mapping, evidence: list[fuse.TrackEvidence],
                        sync: SyncEvidence, vad: Mapping, embeddings: Mapping, force: bool,
                        weights_dir: str | Path | None = None) -> list[Turn]:
    """``diarization.pckl``: the turns, stored as plain tuples."""
    model = str(embeddings.get("model", ""))
    cfg_diarise = diarise_settings(cfg, model)
    key = {"stage": STAGE, "diarise": cfg_diarise.key_dict(), **diarisation_key_extra(cfg, sync),
           "upstream": _upstream(cache, *DIARISATION_UPSTREAM, VAD_FILE, EMBEDDINGS_FILE)}
    backend = None
    if uses_backend(fusion_mode(cfg)):  # the improved rule's own settings (absent from the other modes' keys)
        backend = speaker_backend(cfg, model, embeddings["embeddings"], weights_dir)
        key["improved"] = cfg.improved.key_dict()
        key["speaker_backend"] = backend.sha256 or backend.source

    def produce() -> list[tuple]:
        turns = decide(cfg, evidence, vad["audio"], embeddings["embeddings"], float(embeddings["hop_s"]),
                       int(media_info["num_frames"]), media_info.get("duration_s"), sync,
                       speaker_model=model, backend=backend)
        return [tuple(turn) for turn in turns]

    rows, _ = run_atomic_step(cache, DIARISATION_FILE, produce, STAGE, key, force)
    return turns_from_pickle(rows)


def save_sync_curves(cache: Cache, cfg: Section, distances: list[np.ndarray], sync: SyncEvidence,
                     force: bool = False) -> dict:
    """``sync_curves.pckl``: the per-frame confidence of every track and the voting thresholds the fusion
    used, so that stage 4 draws exactly what was decided whatever its own config says."""
    key = {"stage": STAGE, "diarise": cfg.diarise.key_dict(), **diarisation_key_extra(cfg, sync),
           "upstream": _upstream(cache, *SYNC_CURVES_UPSTREAM)}

    def produce() -> dict:
        metric = sync.metric
        curves, sources = fusion_curves(cfg, sync, len(distances))  # the sync model's own curves, else None
        if curves is None:
            curves = [fuse.track_confidence(np.asarray(d), cfg.diarise) for d in distances]
            sources = [evidence_model(sync).name] * len(curves)
        return {"metric": metric,
                "model": evidence_model(sync).name,
                "sources": sources,
                "mode": fusion_mode(cfg),
                "thresholds": [float(t) for t in vote_thresholds(cfg, sync)],
                "frame_rate_hz": float(cfg.diarise.frame_rate_hz),
                "confidence": [np.asarray(c, dtype=np.float64) for c in curves],
                "diarise": cfg.diarise.to_dict()}

    return run_atomic_step(cache, SYNC_CURVES_FILE, produce, STAGE, key, force)[0]


# ---- the stage -----------------------------------------------------------------------------------
def run_cluster(cache: Cache, cfg: Section, weights_dir: str | Path | None = None, device: Any = "cpu",
                vad_method: str | None = None, speaker_model: str | None = None, force: bool = False,
                progress: ProgressHook | None = None, speech: str | Path | None = None) -> list[Turn]:
    """Stage 3 on one cached video: the speaker turns, reusing every valid intermediate unless ``force``.

    ``speech``: an RTTM, UEM or .lab file whose regions replace the VAD's output (``pipeline/speech.py``);
    a bad one is an InputError before anything is written. Raises CacheError when stage 1 or 2 is missing
    or stale (naming the script to run), CheckpointError
    for a missing or unusable checkpoint, InputError for an unknown VAD method or speaker model.
    """
    progress = progress or _no_progress
    apply_runtime(cfg.runtime)
    method = vad_method or cfg.vad.method
    if method not in VAD_METHODS:
        raise InputError(f"unknown VAD method {method!r}: choose one of {', '.join(VAD_METHODS)}")
    model_name = speaker_model or cfg.embed.speaker_model
    if model_name not in SPEAKER_MODELS:
        raise InputError(f"unknown speaker model {model_name!r}: choose one of {', '.join(SPEAKER_MODELS)}")

    media_info, tracks = require_stage1(cache)
    distances, sync = require_stage2(cache, len(tracks))
    check_evidence_model(cfg, sync)  # evidence of another sync model: its thresholds do not apply
    fusion_mode(cfg)
    vote_thresholds(cfg, sync)  # an unknown metric fails before any work
    curves, _ = fusion_curves(cfg, sync, len(distances))
    audio, audio_id = _whole_audio(cache, cfg.media.sample_rate_hz)
    if speech is not None:
        given = load_given_speech(speech, cache.reference, len(audio), cfg)
        vad = given_vad(cache, cfg, given, tracks, audio_id, force)
    else:
        vad = compute_vad(cache, cfg, method, audio, audio_id, len(tracks), force, progress)
    embeddings = compute_embeddings(cache, cfg, weights_dir, device, model_name, audio, audio_id, force, progress)
    face_ids = compute_face_ids(cache, cfg, weights_dir, device, tracks, force, progress)
    extra = extra_tracks(sync)  # tracks the model scored beyond the face tracks (GestSync's faceless persons)
    if extra:
        rate = float(cfg.diarise.frame_rate_hz)
        vad = {**vad, "tracks": [*vad["tracks"], *(extra_vad(vad["audio"], t, rate) for t in extra)]}
        face_ids = [*face_ids, *extra_identities(face_ids, len(extra))]
        tracks = [*tracks, *extra]
    evidence = track_evidence(tracks, distances, vad, face_ids, curves)
    turns = compute_diarisation(cache, cfg, media_info, evidence, sync, vad, embeddings, force, weights_dir)
    save_sync_curves(cache, cfg, distances, sync, force)
    return turns


def summary(turns: list[Turn]) -> dict[str, Any]:
    """Counts for a one-line report: turns, named speakers, unknown turns, speech seconds."""
    speakers = sorted({t.speaker for t in turns if t.speaker != fuse.UNKNOWN_SPEAKER})
    return {"turns": len(turns), "speakers": speakers,
            "unknown_turns": sum(t.speaker == fuse.UNKNOWN_SPEAKER for t in turns),
            "av_turns": sum(t.source == "av" for t in turns),
            "speech_s": sum(t.end_s - t.start_s for t in turns)}


__all__ = ["run_cluster", "require_stage1", "require_stage2", "save_sync_curves", "summary"]
