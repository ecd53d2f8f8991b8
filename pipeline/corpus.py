"""A whole corpus: every video through ``pipeline.diarize``, on local worker processes or as Ray tasks.

Each video keeps the cache layout of ``scripts/diarize.py`` (``data_dir/pywork/REF`` ...), so a rerun reuses
finished videos and continues half-done ones from their last finished stage. One failing video never stops the
others: its error becomes one line of the summary.

Outputs under ``out_dir``: ``rttm/REF.rttm`` (VoxConverse's layout, one file per video), ``all.rttm`` (every
video), ``videos/REF/`` (VIA project, plots, annotated video), ``summary.csv``, ``summary.json`` and
``report.html`` (self-contained: the plots are embedded).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import InputError, first_line

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".ts", ".wmv")
SUMMARY_FIELDS = ("reference", "videofile", "status", "duration_s", "tracks", "speakers", "turns", "speech_s",
                  "stage1_s", "stage2_s", "stage3_s", "stage4_s", "der", "missed_s", "false_alarm_s",
                  "confusion_s", "jer", "error")


@dataclass(frozen=True)
class CorpusVideo:
    """One video of the corpus and the cache name it gets."""

    reference: str
    videofile: Path
    faces: Path | None = None  # a faces.pckl to inject (user detections), or None
    speech: Path | None = None  # speech regions to use instead of the VAD (--speech), or None


@dataclass
class VideoSummary:
    """What one video gave (or why it failed)."""

    reference: str
    videofile: str
    status: str  # 'done' or 'failed'
    duration_s: float = 0.0
    tracks: int = 0
    speakers: int = 0
    turns: int = 0
    speech_s: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    error: str = ""
    score: dict[str, float] = field(default_factory=dict)  # with --ref_dir: der, missed_s, ...

    def row(self) -> dict[str, Any]:
        """One flat row of summary.csv."""
        row = {key: value for key, value in asdict(self).items() if key not in ("stage_seconds", "score")}
        row.update({f"{stage}_s": round(self.stage_seconds.get(stage, 0.0), 3)
                    for stage in ("stage1", "stage2", "stage3", "stage4")})
        row.update(self.score)
        return {key: row.get(key, "") for key in SUMMARY_FIELDS}


@dataclass(frozen=True)
class RunSettings:
    """Everything a worker needs to diarise one video (picklable for processes and Ray)."""

    data_dir: str
    out_dir: str
    config: str | None = None
    overrides: tuple[str, ...] = ()
    weights_dir: str | None = None
    device: str = "cpu"
    force: bool = False
    video: bool = False
    threads_per_worker: int | None = None


# ---- the list of videos -------------------------------------------------------------------------------
def list_videos(videos: str | Path) -> list[Path]:
    """The videos of a folder (by suffix, sorted) or of a text file listing one path per line (``#`` comments;
    relative paths are relative to the list's folder)."""
    source = Path(videos)
    if source.is_dir():
        found = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not found:
            raise InputError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {source}")
        return found
    if not source.is_file():
        raise InputError(f"--videos must be a folder or a text file listing videos: {source} not found")
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the video list {source}: {first_line(err)}") from None
    paths = [Path(line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]
    if not paths:
        raise InputError(f"the video list {source} names no videos")
    return [path if path.is_absolute() else source.parent / path for path in paths]


def assign_references(paths: Sequence[Path], faces_pattern: str | None = None,
                      speech_pattern: str | None = None) -> tuple[list[CorpusVideo], list[str]]:
    """A cache name per video from its file name (``stem``; clashes get ``stem-2``, ``stem-3``... in list
    order) and the notes saying which were renamed. ``faces_pattern`` (``{stem}`` is replaced by the file's
    stem) names detections to inject where that file exists; ``speech_pattern`` names each video's speech
    file (``--speech``): a video whose file is missing fails with that error, it never falls back to the VAD."""
    videos, notes, taken = [], [], set()
    for path in paths:
        stem = re.sub(r"[^\w.+-]", "_", path.stem) or "video"
        reference, n = stem, 1
        while reference in taken:
            n += 1
            reference = f"{stem}-{n}"
        if reference != stem:
            notes.append(f"{path} is named {reference!r} in the cache ({stem!r} was taken)")
        taken.add(reference)
        faces = Path(faces_pattern.format(stem=path.stem)) if faces_pattern else None
        speech = Path(speech_pattern.format(stem=path.stem)) if speech_pattern else None
        videos.append(CorpusVideo(reference, path, faces if faces is not None and faces.is_file() else None, speech))
    return videos, notes


# ---- one video ------------------------------------------------------------------------------------------
def diarise_one(item: CorpusVideo, settings: RunSettings) -> VideoSummary:
    """``pipeline.diarize`` on one video; any failure becomes the summary's one-line error."""
    import warnings

    warnings.formatwarning = lambda message, category, *rest: f"{item.reference}: warning: {message}\n"
    overrides = list(settings.overrides)
    if settings.threads_per_worker:  # applied by each stage after its imports (pipeline/runtime.py)
        overrides.append(f"runtime.threads={settings.threads_per_worker}")
    from pipeline.api import diarize
    from pipeline.cache import Cache

    summary = VideoSummary(reference=item.reference, videofile=str(item.videofile), status="failed")
    try:
        if item.faces is not None:
            cache = Cache(settings.data_dir, item.reference)
            target = cache.work("faces.pckl")
            if not target.exists():  # adopted like a user's own detections
                shutil.copyfile(item.faces, target)
        out_dir = Path(settings.out_dir) / "videos" / item.reference
        result = diarize(item.videofile, settings.data_dir, reference=item.reference, out_dir=out_dir,
                         config=settings.config, overrides=overrides, weights_dir=settings.weights_dir,
                         device=settings.device, force=settings.force, video=settings.video, speech=item.speech)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - one bad video must not stop the corpus
        summary.error = f"{type(err).__name__}: {first_line(err, 300)}" if not hasattr(err, "exit_code") \
            else first_line(err, 300)
        return summary
    rttm_dir = Path(settings.out_dir) / "rttm"
    rttm_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.outputs["rttm"], rttm_dir / f"{item.reference}.rttm")
    media = Cache(settings.data_dir, item.reference, create=False).load_pickle("media.pckl")
    summary.status = "done"
    summary.duration_s = float(media.get("duration_s") or 0.0)
    summary.tracks = result.num_tracks
    summary.speakers = len([s for s in result.speakers if s != "unknown"])
    summary.turns = len(result.turns)
    summary.speech_s = round(sum(t.end_s - t.start_s for t in result.turns), 3)
    summary.stage_seconds = {k: round(v, 3) for k, v in result.stage_seconds.items()}
    return summary


# ---- schedulers ---------------------------------------------------------------------------------------
def default_workers(device: str) -> int:
    """One worker per GPU on CUDA; on CPU what fits: a worker per 2 cores and per 4 GB of memory."""
    if device == "cuda":
        import torch

        return max(1, torch.cuda.device_count())
    cores = os.cpu_count() or 1
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gb = 8.0
    return max(1, min(cores // 2, int(memory_gb // 4)))


def _pin_gpu(counter: Any) -> None:
    """Process-pool initializer: each worker sees one GPU (round robin)."""
    import torch

    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if torch.cuda.device_count():
        torch.cuda.set_device(index % torch.cuda.device_count())


def run_local(items: Sequence[CorpusVideo], settings: RunSettings, workers: int) -> Iterator[VideoSummary]:
    """Summaries as videos finish, on ``workers`` processes (in this process when 1)."""
    if workers <= 1:
        for item in items:
            yield diarise_one(item, settings)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # torch and threads: never fork
    counter = context.Value("i", 0)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_pin_gpu,
                             initargs=(counter,)) as pool:
        futures = {pool.submit(diarise_one, item, settings): item for item in items}
        for future in as_completed(futures):
            item = futures[future]
            try:
                yield future.result()
            except Exception as err:  # a worker that died (killed, out of memory)
                yield VideoSummary(reference=item.reference, videofile=str(item.videofile), status="failed",
                                   error=f"worker died: {first_line(err, 300)}")


def run_ray(items: Sequence[CorpusVideo], settings: RunSettings, address: str | None,
            num_cpus: int | None = None) -> Iterator[VideoSummary]:
    """Summaries as videos finish, each video a Ray task (one GPU each on CUDA) on the cluster at ``address``
    ('auto' for ``ray start --head``) or on a local Ray instance when ``address`` is None."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs the ray package: pip install 'ray[default]'") from None
    repo_root = str(Path(__file__).resolve().parent.parent)
    init_args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
    if address:
        init_args["address"] = address
    else:
        init_args["num_cpus"] = num_cpus
        init_args["runtime_env"] = {"env_vars": {"PYTHONPATH": repo_root}}
    started_here = not ray.is_initialized()
    try:
        ray.init(**init_args)
    except Exception as err:  # no cluster at that address, ...
        raise InputError(f"cannot start or reach Ray ({address or 'local'}): {first_line(err, 200)}") from None
    try:
        task = ray.remote(num_cpus=1, num_gpus=1 if settings.device == "cuda" else 0)(diarise_one)
        pending = {task.remote(item, settings): item for item in items}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(done[0])
            try:
                yield ray.get(done[0])
            except Exception as err:  # the task's worker died
                yield VideoSummary(reference=item.reference, videofile=str(item.videofile), status="failed",
                                   error=f"Ray task failed: {first_line(err, 300)}")
    finally:
        if started_here:
            ray.shutdown()


# ---- outputs --------------------------------------------------------------------------------------------
def score_summaries(summaries: list[VideoSummary], out_dir: Path, ref_dir: Path, collar_s: float,
                    skip_overlap: bool) -> dict[str, float] | None:
    """DER parts and JER per video (into each summary) and overall, against ``ref_dir/REF.rttm``."""
    from pipeline.export import read_rttm
    from pipeline.score import score

    reference, hypothesis = {}, {}
    for summary in summaries:
        ref_file = ref_dir / f"{summary.reference}.rttm"
        if summary.status != "done" or not ref_file.is_file():
            continue
        reference.update(read_rttm(ref_file))
        hypothesis.update(read_rttm(out_dir / "rttm" / f"{summary.reference}.rttm"))
        hypothesis.setdefault(summary.reference, [])
    reference = {k: v for k, v in reference.items() if v}
    if not reference:
        return None
    report = score(reference, hypothesis, collar_s=collar_s, skip_overlap=skip_overlap)
    by_file = {f.file_id: f for f in report.files}
    for summary in summaries:
        if summary.reference in by_file:
            summary.score = _score_fields(by_file[summary.reference])
    return _score_fields(report.overall)


def _score_fields(file_score: Any) -> dict[str, float]:
    return {"der": round(file_score.der, 5), "missed_s": round(file_score.missed_s, 3),
            "false_alarm_s": round(file_score.false_alarm_s, 3), "confusion_s": round(file_score.confusion_s, 3),
            "jer": round(file_score.jer, 5)}


def write_outputs(out_dir: Path, summaries: list[VideoSummary], overall: dict[str, float] | None,
                  notes: Sequence[str], wall_s: float) -> dict[str, Path]:
    """all.rttm, summary.csv, summary.json and report.html; returns their paths."""
    from pipeline.cache import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("all.rttm", "summary.csv", "summary.json", "report.html")}
    ordered = sorted(summaries, key=lambda s: s.reference)
    with atomic_path(paths["all.rttm"]) as tmp:
        with open(tmp, "w", encoding="utf-8") as combined:
            for summary in ordered:
                rttm = out_dir / "rttm" / f"{summary.reference}.rttm"
                if summary.status == "done" and rttm.is_file():
                    combined.write(rttm.read_text(encoding="utf-8"))
    with atomic_path(paths["summary.csv"]) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
            writer.writeheader()
            for summary in ordered:
                writer.writerow(summary.row())
    document = {"videos": [asdict(s) for s in ordered], "overall": overall, "notes": list(notes),
                "failed": sum(s.status != "done" for s in ordered), "wall_s": round(wall_s, 3),
                "media_hours": round(sum(s.duration_s for s in ordered) / 3600, 5)}
    with atomic_path(paths["summary.json"]) as tmp:
        Path(tmp).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    from pipeline.report import corpus_report_html

    with atomic_path(paths["report.html"]) as tmp:
        Path(tmp).write_text(corpus_report_html(out_dir, ordered, overall, notes), encoding="utf-8")
    return paths


def run_corpus(items: Sequence[CorpusVideo], settings: RunSettings, *, workers: int, ray_address: str | None = None,
               use_ray: bool = False, ref_dir: str | Path | None = None, collar_s: float = 0.25,
               skip_overlap: bool = False, notes: Sequence[str] = (),
               on_done: Callable[[VideoSummary, int, int], None] | None = None) -> tuple[list[VideoSummary],
                                                                                         dict[str, Path]]:
    """Every video of ``items`` through the four stages; writes the corpus outputs and returns the summaries."""
    started = time.perf_counter()
    runner: Iterable[VideoSummary] = (run_ray(items, settings, ray_address, num_cpus=workers) if use_ray
                                      else run_local(items, settings, workers))
    summaries = []
    for summary in runner:
        summaries.append(summary)
        if on_done is not None:
            on_done(summary, len(summaries), len(items))
    overall = None
    if ref_dir is not None:
        overall = score_summaries(summaries, Path(settings.out_dir), Path(ref_dir), collar_s, skip_overlap)
    paths = write_outputs(Path(settings.out_dir), summaries, overall, notes, time.perf_counter() - started)
    return summaries, paths
