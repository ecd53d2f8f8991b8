"""What every sync model gives the stages (``SyncModel``), and the plumbing the models share.

A sync model scores how well each face track's picture matches its audio. Stage 2 (``pipeline/stage2.py``)
keeps reuse, invalidation and writing and asks the model for its key and its evidence; stage 3 asks it for
per-track curves, vote thresholds, its part of the diarisation key and any tracks beyond the face tracks;
stage 4 for its plot labels and overlays; ``preflight`` for the networks it will load; ``run_syncnet.py
--videofile`` for its one-clip report. The models never import a stage. Walk-through:
``docs/adding_a_sync_model.md``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache import Cache, content_identity
from pipeline.errors import CacheError
from pipeline.formats import RUN_PIPELINE as STAGE1_SCRIPT
from pipeline.formats import RUN_SYNCNET
from pipeline.settings import SECTIONS
from pipeline.sync.evidence_record import SyncEvidence

STAGE = "run_syncnet"  # the stage name in stage 2's manifests

ProgressHook = Callable[..., None]


@dataclass(frozen=True)
class Network:
    """A checkpoint a model will load: its file (under the weights folder) and how to load it on the CPU."""

    file: str
    load: Callable[[], Any]


@dataclass
class Evidence:
    """A model's stage-2 evidence: per scored track a matrix (``activesd.pckl``) and the ``sync.pckl`` record."""

    distances: list[np.ndarray]
    sync: SyncEvidence


@dataclass
class TrackResult:
    """One track's (or clip's) result of a model with its own per-frame curves (Wav2Lip's expert, GestSync)."""

    scores: np.ndarray  # float32: the matrix or block the offset search read (activesd.pckl)
    offset_frames: float  # SyncNet's sign; NaN when not measurable
    best_score: float  # the winning offset's mean score; NaN when too short
    confidence: float  # best_score minus the median of the candidates' means; 0.0 when undefined
    num_frames: int  # frames received
    score_raw: np.ndarray  # float32 [num_frames]: the per-frame score; NaN where there is none
    score_smooth: np.ndarray  # float32 [num_frames]: what stage 3 fuses
    silent: bool = False
    num_windows: int = 0  # windows with audio (what the offset search saw)
    offset_range_frames: tuple[int, int] | None = None  # offsets searched (SyncNet's sign); None: not recorded


def curve_evidence(model: str, metric: str, results: Sequence[TrackResult], checkpoint: str | None,
                   **params: Any) -> SyncEvidence:
    """The ``sync.pckl`` record of a model with its own curves: per track offset, best score, confidence and
    both curves from ``results``; ``params`` the settings it records (``SyncEvidence``'s fields)."""
    return SyncEvidence(model=model, metric=metric, checkpoint=checkpoint, score_name="best_score",
                        offset_frames=tuple(float(r.offset_frames) for r in results),
                        score=tuple(float(r.best_score) for r in results),
                        confidence=tuple(float(r.confidence) for r in results),
                        score_raw=tuple(r.score_raw for r in results),
                        score_smooth=tuple(r.score_smooth for r in results), **params)


@dataclass
class ClipReport:
    """The one-clip mode's result: ``text`` on stdout (the demo's lines), ``notes`` on stderr before it and
    ``after`` (what else was written where) after it."""

    text: str
    notes: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)


class SyncModel(ABC):
    """One sync model, as the stages use it. Subclasses set the class attributes and the abstract methods."""

    name: str  # sync.model / --sync_model
    section: str  # its config section
    stage3_only_keys: tuple[str, ...] = ()  # settings of ``section`` only stage 3 reads (thresholds): not in stage 2's key
    own_curves: bool = False  # gives per-frame curves with thresholds in ``section`` (else: distances)
    input_files: tuple[str, ...] = ()  # the cache files its evidence reads (their digests are in its stage-2 key)
    channel_order: str = "BGR"  # the colour order its reference feeds the network ('BGR': as cv2 reads)
    stage2_what: str = ""  # diarize.py's stage-2 progress line
    plot_what: str = ""  # stage 4's sync plot: what the curve is, and its y label
    plot_ylabel: str = ""

    # ---- settings and networks ----
    @abstractmethod
    def settings(self, cfg: Any) -> Any:
        """The model's typed settings from the config; InputError for a bad value."""

    @abstractmethod
    def checkpoint_file(self, cfg: Any, weights_dir: str | Path | None) -> str:
        """The checkpoint file stage 2 loads (CheckpointError when it cannot be chosen)."""

    @abstractmethod
    def networks(self, cfg: Any, weights_dir: str | Path | None) -> list[Network]:
        """Every network the model's evidence step will load (preflight loads and tries each)."""

    @property
    def stage2_excluded_keys(self) -> tuple[str, ...]:
        """Settings of ``section`` outside stage 2's key: the fields marked speed-only in pipeline/settings.py
        and ``stage3_only_keys``."""
        return SECTIONS[self.section].speed_only_fields() + self.stage3_only_keys

    def section_key(self, cfg: Any) -> dict[str, Any]:
        """The model's config section as stage 2's key holds it: every field but ``stage2_excluded_keys``."""
        return {k: v for k, v in cfg[self.section].key_dict().items() if k not in self.stage3_only_keys}

    # ---- stage 2 ----
    @abstractmethod
    def stage2_key(self, cache: Cache, cfg: Any, tracks: Sequence[Mapping], weights_dir: str | Path | None
                   ) -> dict[str, Any]:
        """What the model's stage-2 outputs depend on (settings, checkpoint sha256, upstream digests)."""

    @abstractmethod
    def evidence(self, cache: Cache, cfg: Any, tracks: Sequence[Mapping], weights_dir: str | Path | None,
                 device: Any, progress: ProgressHook) -> Evidence:
        """The model's evidence for ``tracks`` of ``cache``, written nowhere (stage 2 writes it)."""

    @abstractmethod
    def offsets_text(self, sync: SyncEvidence) -> str:
        """``offsets.txt`` of the model's ``sync.pckl``."""

    def summary(self, sync: SyncEvidence) -> str:
        """A few words for ``run_syncnet.py``'s line: which model, on what."""
        return self.name

    # ---- stage 3 ----
    @abstractmethod
    def vote_thresholds(self, cfg: Any, sync: SyncEvidence) -> tuple[float, ...]:
        """The VoxConverse rule's thresholds on the scale of the model's curves."""

    def fusion_curves(self, cfg: Any, sync: SyncEvidence, num_tracks: int
                      ) -> tuple[list[np.ndarray] | None, list[str] | None]:
        """Per-track curves stage 3 fuses and what each came from; (None, None): stage 3 computes SyncNet's
        confidence from the distances."""
        return None, None

    def stage3_key(self, cfg: Any, sync: SyncEvidence) -> dict[str, Any]:
        """What stage 3's decisions read of the model's settings beyond ``diarise``."""
        return {}

    def threshold_key(self, cfg: Any) -> dict[str, Any]:
        """The model's own vote thresholds, for stage 3's keys (none when they live in ``diarise``)."""
        return {f"{self.section}_conf_thresholds": list(cfg[self.section].conf_thresholds)} if self.own_curves else {}

    def extra_tracks(self, sync: SyncEvidence) -> list[dict]:
        """Tracks the evidence scores beyond tracks.pckl's face tracks, after them, in tracks.pckl's layout."""
        return []

    # ---- stage 4 ----
    def add_overlays(self, overlays: dict[int, list], tracks: Sequence[Mapping], sync: SyncEvidence,
                     labels: Sequence[str], colours_bgr: Mapping[str, tuple[int, int, int]],
                     turns: Sequence[Any], frame_rate_hz: float) -> None:
        """Add what the model scored beyond the face boxes to stage 4's per-frame overlays (default: nothing)."""
        return None

    # ---- one clip ----
    @abstractmethod
    def clip_report(self, videofile: str | Path, cfg: Any, weights_dir: str | Path | None, device: Any,
                    features: str | None = None) -> ClipReport:
        """``run_syncnet.py --videofile``: the model on one clip, as its reference's demo reports it."""


# ---- shared plumbing -----------------------------------------------------------------------------
def fmt(value: float, spec: str) -> str:
    """``value`` formatted, or 'nan' when it is not finite."""
    return "nan" if not math.isfinite(value) else format(value, spec)


def offsets_table(header: str, sync: SyncEvidence, extra: tuple[str, Callable[[int], str]] | None = None) -> str:
    """``offsets.txt``: a '#' header line, a '#' column line, then per track ``track offset_frames <score_name>
    confidence`` (and ``extra``'s column), tab-separated."""
    columns = ["track", "offset_frames", sync.score_name, "confidence"] + ([extra[0]] if extra else [])
    lines = [header, "# " + "\t".join(columns)]
    for idx, (off, score, conf) in enumerate(zip(sync.offset_frames, sync.score, sync.confidence)):
        row = [f"{idx:05d}", fmt(off, ".0f"), fmt(score, ".3f"), fmt(conf, ".3f")] + ([extra[1](idx)] if extra else [])
        lines.append("\t".join(row))
    return "\n".join(lines) + "\n"


def score_in_one_pass(frames: Iterable[np.ndarray], firsts: Sequence[int], lengths: Sequence[int],
                      feed: Callable[[int, int, np.ndarray], None], finish: Callable[[int], TrackResult],
                      progress: ProgressHook, what: str) -> list[TrackResult]:
    """Every track's result from one pass over the video's frames: ``feed(track, offset, frame)`` for each
    frame ``firsts[track] + offset`` of a track (``lengths[track]`` consecutive frames), ``finish(track)`` after
    its last one (and, for a video shorter than its tracks, which should not happen, after the pass). Decoding
    stops after the last frame any track needs. ``progress(what, done, total)`` as tracks finish."""
    last_frame = max(f + n - 1 for f, n in zip(firsts, lengths))
    results: list[TrackResult | None] = [None] * len(firsts)
    done = 0
    progress(what, 0, len(firsts))
    for frame_idx, frame in enumerate(frames):
        for idx, (first, length) in enumerate(zip(firsts, lengths)):
            offset = frame_idx - first
            if 0 <= offset < length:
                feed(idx, offset, frame)
                if offset == length - 1:
                    results[idx], done = finish(idx), done + 1
                    progress(what, done, len(firsts))
        if frame_idx >= last_frame:
            break
    return [finish(idx) if result is None else result for idx, result in enumerate(results)]


def demo_report(offset_frames: float, score_label: str, score: float, confidence: float) -> str:
    """The three lines syncnet_python's demo prints (``score_label``: 'Min dist' or 'Best score')."""
    offset = "nan" if not math.isfinite(offset_frames) else f"{int(offset_frames):d}"
    return (f"AV offset: \t{offset}\n"
            f"{score_label}: \t{fmt(score, '.3f')}\n"
            f"Confidence: \t{fmt(confidence, '.3f')}")


def silent_note(videofile: str | Path, silent: bool) -> list[str]:
    """The one-clip note for a silent clip."""
    return [f"{videofile}: the audio is silent, no offset can be measured"] if silent else []


def source_video(cache: Cache, media_info: Mapping, model_what: str) -> Path:
    """The video stage 1 read (where it is now), checked unchanged: models that cut their own crops need it."""
    source = dict(media_info.get("source") or {})
    path = cache.source_video(media_info)
    if not path.is_file():
        raise CacheError(f"the video {path} that {STAGE1_SCRIPT} read is gone; {model_what} from its frames")
    if content_identity(path) != {k: v for k, v in source.items() if k != "path"}:
        raise CacheError(f"the video {path} changed since {STAGE1_SCRIPT} read it: run {STAGE1_SCRIPT} again")
    return path


def own_curves(sync: SyncEvidence, num_tracks: int, model: str) -> list[np.ndarray]:
    """The per-track smoothed curves (``score_smooth``) a model with its own curves keeps in ``sync.pckl``."""
    curves = sync.score_smooth
    if len(curves) != num_tracks:
        raise CacheError(f"sync.pckl lacks one smoothed {model} score curve per track: run {RUN_SYNCNET} again")
    return [np.asarray(c, dtype=np.float64) for c in curves]


def extra_identities(face_ids: Sequence[int], count: int) -> list[int]:
    """Identities of ``count`` extra (faceless) tracks: new ones after the face identities, one each (no face to
    compare; stage 3 may still merge them with faces by voice)."""
    first = max((int(i) for i in face_ids), default=-1) + 1
    return list(range(first, first + count))


def extra_vad(audio_vad_s: Sequence[tuple[float, float]], track: Mapping[str, Any],
              frame_rate_hz: float) -> list[tuple[float, float]]:
    """The whole audio's speech segments within an extra track's span, in seconds from its first frame
    (what a face track's own VAD gives, since its audio is the same span of the same audio)."""
    frames = np.asarray(track["track"]["frame"])
    start_s, end_s = int(frames[0]) / frame_rate_hz, (int(frames[-1]) + 1) / frame_rate_hz
    return [(max(s, start_s) - start_s, min(e, end_s) - start_s) for s, e in audio_vad_s
            if min(e, end_s) > max(s, start_s)]


__all__ = ["ClipReport", "Evidence", "Network", "STAGE", "SyncEvidence", "SyncModel", "TrackResult", "curve_evidence",
           "demo_report", "extra_identities", "score_in_one_pass", "extra_vad",
           "fmt", "offsets_table", "own_curves", "silent_note", "source_video"]
