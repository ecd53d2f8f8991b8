"""One video through the four stages from Python: ``pipeline.diarize(videofile, data_dir)``.

The scripts (``scripts/diarize.py``, the corpus runner) call this; each stage reuses what the cache in
``data_dir`` already holds for the video, exactly as running the four stage scripts one after the other.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cache import Cache
from pipeline.config import Config, Section, load_config, with_overrides
from pipeline.errors import InputError
from pipeline.formats import DIARISATION_FILE, STAGE_TIMES_FILE, SYNC_FILE, TRACKS_FILE, Turn

StageHook = Callable[[str], None]
# The output whose modification time tells whether a stage rewrote its outputs (stage 4 always does).
STAGE_OUTPUTS = {"stage1": TRACKS_FILE, "stage2": SYNC_FILE, "stage3": DIARISATION_FILE}


@dataclass
class DiarizeResult:
    """What ``diarize`` produced for one video."""

    reference: str
    turns: list[Turn]
    outputs: dict[str, Path]  # kind ('rttm', 'via', 'sync_plot', ...) -> path
    num_tracks: int
    notes: list[str] = field(default_factory=list)  # stage 1's notes (padded audio, dropped boxes, ...)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage, 'stage1' .. 'stage4'
    # per stage the wall time of the run that wrote its outputs (a stage reused from the cache: that earlier run's)
    computed_seconds: dict[str, float] = field(default_factory=dict)
    cached_stages: list[str] = field(default_factory=list)  # stages whose outputs this run reused unchanged
    file_id: str = ""  # the RTTM's and VIA project's file id (the reference unless ``file_id`` was given)

    @property
    def speakers(self) -> list[str]:
        """Speaker labels in order of first appearance."""
        return list(dict.fromkeys(turn.speaker for turn in self.turns))


def _config(config: Section | str | Path | None, overrides: Iterable[str] | Mapping[str, Any] | None) -> Config:
    """The run's config, typed and checked: a loaded one or a YAML path (None: the defaults), with the
    overrides applied."""
    if isinstance(overrides, Mapping):
        overrides = [f"{key}={value}" for key, value in overrides.items()]
    overrides = list(overrides or ())
    if isinstance(config, Section):
        return with_overrides(config, overrides)  # also types and checks a hand-made Section
    return load_config(config, overrides)


def diarize(videofile: str | Path, data_dir: str | Path, *, reference: str | None = None,
            out_dir: str | Path | None = None, config: Section | str | Path | None = None,
            overrides: Iterable[str] | Mapping[str, Any] | None = None, weights_dir: str | Path | None = None,
            device: str = "auto", force: bool = False, video: bool = False, vad: str | None = None,
            speaker_model: str | None = None, progress: Callable[..., None] | None = None,
            on_stage: StageHook | None = None, file_id: str | None = None,
            speech: str | Path | None = None) -> DiarizeResult:
    """Diarise one video: stages 1-4 with the cache in ``data_dir`` (sub-folder ``reference``, default the
    file's stem); returns the turns and where the RTTM, VIA JSON and plots (``video``: annotated video) are.

    ``config`` is a YAML path or a loaded config, ``overrides`` ``section.key=value`` strings (or a mapping);
    ``device`` 'auto', 'cpu' or 'cuda'; ``force`` redoes every stage; ``on_stage(name)`` is called as each
    stage starts ('stage1' .. 'stage4'); ``file_id`` is the RTTM's file id (default: the reference), e.g. the
    name a reference RTTM uses for this recording; ``speech`` an RTTM, UEM or .lab file of speech regions used
    instead of the VAD (``pipeline/speech.py``), checked before any stage runs. Raises
    ``pipeline.errors.PipelineError`` subclasses for anything the
    user can act on (missing file, not a video, missing checkpoint, another run holding the reference).
    """
    from pipeline.cli import default_reference, input_file, resolve_device, writable_dir
    from pipeline.export import check_file_id

    videofile = input_file(str(videofile), "video file")
    if file_id is not None:
        check_file_id(file_id, "file_id")
    cfg = _config(config, overrides)
    if out_dir is not None:
        writable_dir(str(out_dir), "out_dir")  # fail before hours of work, not after
    if video:
        from pipeline.media import probe

        if not probe(videofile).has_video:  # an audio-only input (a wav) diarises, but has no picture to annotate
            raise InputError(f"{videofile} has no video stream: the annotated video (--video) needs one")
    reference = reference or default_reference(str(videofile))
    if speech is not None:  # a bad file is one line before stage 1 writes anything
        from pipeline.media import probe
        from pipeline.speech import read_speech

        read_speech(speech, reference, probe(videofile).duration_s, cfg.vad.given_speech_tolerance_s)
    cache = Cache(data_dir, reference)
    with cache.locked(extra_dirs=[Path(out_dir)] if out_dir else []):
        return _run_stages(videofile, cache, cfg, out_dir=out_dir, weights_dir=weights_dir,
                           device=resolve_device(device), force=force, video=video, vad=vad,
                           speaker_model=speaker_model, progress=progress, on_stage=on_stage or (lambda _: None),
                           file_id=file_id, speech=speech)


def _run_stages(videofile: Path, cache: Cache, cfg: Section, *, out_dir, weights_dir, device, force: bool,
                video: bool, vad: str | None, speaker_model: str | None, progress, on_stage: StageHook,
                file_id: str | None = None, speech: str | Path | None = None) -> DiarizeResult:
    from pipeline.stage1 import run_pipeline
    from pipeline.stage2 import run_stage2
    from pipeline.stage3 import run_cluster
    from pipeline.stage4 import visualise

    seconds: dict[str, float] = {}
    started_ns = time.time_ns()

    def timed(name: str, step: Callable[[], Any]) -> Any:
        on_stage(name)
        started = time.perf_counter()
        result = step()
        seconds[name] = time.perf_counter() - started
        return result

    from pipeline.preflight import check_networks

    check_networks(cache, cfg, weights_dir, speaker_model)  # a bad checkpoint is one line now, not hours from now
    stage1 = timed("stage1", lambda: run_pipeline(videofile, cache, cfg, weights_dir, device, force, progress))
    timed("stage2", lambda: run_stage2(cache, cfg, weights_dir, device, force, progress))
    turns = timed("stage3", lambda: run_cluster(cache, cfg, weights_dir, device, vad, speaker_model, force,
                                               progress, speech=speech))
    outputs = timed("stage4", lambda: visualise(cache.data_dir, cache.reference, cfg, video=video, out_dir=out_dir,
                                                progress=progress, file_id=file_id))
    computed, cached = record_stage_seconds(cache, seconds, started_ns)
    return DiarizeResult(reference=cache.reference, turns=list(turns), outputs=dict(outputs),
                         num_tracks=stage1.num_tracks, notes=list(stage1.notes), stage_seconds=seconds,
                         computed_seconds=computed, cached_stages=cached, file_id=file_id or cache.reference)


def record_stage_seconds(cache: Cache, seconds: Mapping[str, float],
                         started_ns: int) -> tuple[dict[str, float], list[str]]:
    """Per stage, the wall time of the run that wrote its outputs, and the stages this run reused.

    A stage whose output (``STAGE_OUTPUTS``) is older than this run (``started_ns``, ``time.time_ns()``) was
    reused from the cache. ``pywork/REF/stage_seconds.json`` keeps, per stage, the seconds and the output's
    modification time of the run that wrote it; a reused stage gets those seconds instead of this run's (a
    cache hit takes a fraction of a second), or none when no record matches (a cache written before records).
    """
    import json

    from pipeline.cache import write_bytes_atomic

    path = cache.work(STAGE_TIMES_FILE)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        record = record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        record = {}
    computed, cached = {}, []
    for stage, took_s in seconds.items():
        output = cache.work(STAGE_OUTPUTS[stage]) if stage in STAGE_OUTPUTS else None
        mtime_ns = output.stat().st_mtime_ns if output is not None and output.exists() else None
        earlier = record.get(stage)
        if mtime_ns is not None and mtime_ns < started_ns:  # not written by this run
            cached.append(stage)
            if (isinstance(earlier, dict) and earlier.get("mtime_ns") == mtime_ns
                    and isinstance(earlier.get("seconds"), (int, float))):
                computed[stage] = float(earlier["seconds"])
        else:
            computed[stage] = float(took_s)
            record[stage] = {"seconds": round(float(took_s), 3), "mtime_ns": mtime_ns}
    try:
        write_bytes_atomic(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    except OSError:
        pass  # the times are a convenience: a read-only cache still diarises
    return computed, cached
