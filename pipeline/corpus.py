"""A whole corpus: every video through ``pipeline.diarize``, on local worker processes or as Ray tasks.

Each video keeps the cache layout of ``scripts/diarize.py`` (``data_dir/pywork/REF`` ...), so a rerun reuses
finished videos and continues half-done ones from their last finished stage. One failing video never stops the
others: its error becomes one line of the summary.

Outputs under ``out_dir``: ``rttm/REF.rttm`` (VoxConverse's layout, one file per video), ``all.rttm`` (every
video), ``videos/REF/`` (VIA project, plots, annotated video), ``summary.csv``, ``summary.json`` and
``report.html`` (the plots are embedded; its links to the RTTMs, VIA projects and videos are relative). One
corpus run at a time writes to an ``out_dir`` (``out_dir_locked``): a second gets one line and writes nothing.

Relative paths, in a list of videos and in the ``--faces`` pattern alike, are relative to the corpus folder
(``corpus_dir``): the list file's folder, or the folder of videos.
"""
from __future__ import annotations

import contextlib
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
from pipeline.formats import FACES_FILE, MEDIA_FILE

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".ts", ".wmv")
SUMMARY_FIELDS = ("reference", "videofile", "status", "duration_s", "tracks", "speakers", "turns", "speech_s",
                  "stage1_s", "stage2_s", "stage3_s", "stage4_s", "der", "missed_s", "false_alarm_s",
                  "confusion_s", "jer", "error", "cached_stages", "file_id")
CORPUS_LOCK = ".corpus.lock"  # in out_dir: held by the one corpus run writing there
_HELD_OUT_DIRS: set[str] = set()  # the out_dir locks this process holds (out_dir_locked is re-entrant)


@dataclass(frozen=True)
class CorpusVideo:
    """One video of the corpus and the cache name it gets."""

    reference: str
    videofile: Path
    faces: Path | None = None  # a faces.pckl to inject (user detections), or None
    name: str = ""  # the video's path as the report shows it: relative to the corpus folder (``_shown_names``)
    file_id: str = ""  # the RTTM's file id (default: the reference)
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
    # wall time per stage of the run that computed its outputs (a stage reused from the cache: the earlier run's)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    error: str = ""
    score: dict[str, float] = field(default_factory=dict)  # with --ref_dir: der, missed_s, ...
    cached_stages: list[str] = field(default_factory=list)  # stages this run reused from the cache
    name: str = ""  # the video's path relative to the corpus folder (CorpusVideo.name)
    file_id: str = ""  # the file id its RTTM was written with (CorpusVideo.file_id)

    def row(self) -> dict[str, Any]:
        """One flat row of summary.csv."""
        row = {key: value for key, value in asdict(self).items() if key not in ("stage_seconds", "score")}
        row.update({f"{stage}_s": round(self.stage_seconds[stage], 3) if stage in self.stage_seconds else ""
                    for stage in ("stage1", "stage2", "stage3", "stage4")})
        row["cached_stages"] = " ".join(self.cached_stages)
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
def corpus_dir(videos: str | Path) -> Path:
    """The folder relative paths of a corpus are relative to: a folder of videos itself, or a list's folder."""
    source = Path(videos)
    return source if source.is_dir() else source.parent


def list_videos(videos: str | Path) -> list[Path]:
    """The videos of a folder (by suffix, sorted) or of a text file listing one path per line (``#`` comments;
    relative paths are relative to the list's folder, ``corpus_dir``)."""
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


def _faces_files(paths: Sequence[Path], pattern: str, base: Path) -> list[Path]:
    """The detections file ``pattern`` names for each video (``{stem}``: the video's file stem), relative to
    ``base``; a pattern that would give several videos one file, or names a field other than ``{stem}``, is an
    InputError."""
    try:
        files = [Path(pattern.format(stem=path.stem)) for path in paths]
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(f"--faces {pattern!r}: only '{{stem}}' can be replaced ({type(err).__name__}: "
                         f"{first_line(err)}); write a literal brace as '{{{{' or '}}}}'") from None
    if len(paths) > 1 and "{stem}" not in pattern:
        raise InputError(f"--faces {pattern!r} names one file for all {len(paths)} videos, which would give every "
                         f"video the same detections: put '{{stem}}' in it (the video's file stem), e.g. "
                         f"'dets/{{stem}}_faces.pckl'")
    files = [file if file.is_absolute() else base / file for file in files]
    for i, file in enumerate(files):
        if file in files[:i] and paths[i] != paths[files.index(file)]:
            raise InputError(f"--faces {pattern!r} gives {paths[files.index(file)]} and {paths[i]} the same "
                             f"detections {file} (their file stems are equal): rename one, or list them separately")
    return files


def _shown_names(paths: Sequence[Path], base: Path | None) -> list[str]:
    """The videos' paths relative to the corpus folder when all lie inside it, else relative to the deepest
    folder that holds them all (a list naming absolute paths elsewhere), never absolute unless nothing is shared."""
    absolute = [os.path.abspath(path) for path in paths]
    folders = [os.path.abspath(base)] if base is not None else []
    folders.append(os.path.commonpath([os.path.dirname(path) for path in absolute]))
    for folder in folders:
        if folder != os.sep and all(os.path.commonpath([folder, path]) == folder for path in absolute):
            return [Path(os.path.relpath(path, folder)).as_posix() for path in absolute]
    return [str(path) for path in paths]


def assign_references(paths: Sequence[Path], faces_pattern: str | None = None, base: str | Path | None = None,
                      file_id_pattern: str = "{reference}",
                      speech_pattern: str | None = None) -> tuple[list[CorpusVideo], list[str]]:
    """A cache name per video from its file name (``stem``; clashes get ``stem-2``, ``stem-3``... in list
    order) and the notes saying which were renamed. ``faces_pattern`` (``{stem}`` is replaced by the file's
    stem; relative to ``base``, the corpus folder, default the working directory) names detections to inject
    where that file exists; a note names each video without one, and a pattern that matches no file at all is
    an InputError. ``file_id_pattern`` gives each RTTM's file id (``{reference}``: the cache name, ``{stem}``:
    the file's stem); two videos with one file id are an InputError. ``speech_pattern`` names each video's
    speech file (``--speech``, ``{stem}`` replaced, relative to ``base`` as the detections): a video whose file
    is missing fails with that error, it never falls back to the VAD."""
    base_dir = Path(base) if base is not None else Path(".")
    faces_files = _faces_files(paths, faces_pattern, base_dir) if faces_pattern else [None] * len(paths)
    if faces_pattern and not any(file.is_file() for file in faces_files):
        raise InputError(f"--faces {faces_pattern!r} matches no file for any of the {len(paths)} videos (e.g. "
                         f"{faces_files[0]}); relative paths are relative to the corpus folder {base_dir}")
    videos, notes, taken = [], [], set()
    for path, faces, name in zip(paths, faces_files, _shown_names(paths, base)):
        stem = re.sub(r"[^\w.+-]", "_", path.stem) or "video"
        reference, n = stem, 1
        while reference in taken:
            n += 1
            reference = f"{stem}-{n}"
        if reference != stem:
            notes.append(f"{path} is named {reference!r} in the cache ({stem!r} was taken)")
        taken.add(reference)
        if faces is not None and not faces.is_file():
            notes.append(f"no detections {faces} for {reference}: S3FD detects its faces")
            faces = None
        speech = Path(speech_pattern.format(stem=path.stem)) if speech_pattern else None
        speech = base_dir / speech if speech is not None and not speech.is_absolute() else speech
        videos.append(CorpusVideo(reference, path, faces, name=name,
                                  file_id=_file_id(file_id_pattern, path, reference), speech=speech))
    clashes = sorted({v.file_id for v in videos if sum(w.file_id == v.file_id for w in videos) > 1})
    if clashes:
        raise InputError(f"--file_id {file_id_pattern!r} gives several videos the file id {clashes[0]!r}: use "
                         f"'{{reference}}' (unique per video) in it")
    return videos, notes


def _file_id(pattern: str, path: Path, reference: str) -> str:
    """The RTTM file id ``pattern`` gives one video; a bad pattern is a one-line InputError."""
    from pipeline.export import check_file_id

    try:
        file_id = pattern.format(stem=path.stem, reference=reference)
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(f"--file_id {pattern!r}: only '{{stem}}' and '{{reference}}' can be replaced "
                         f"({type(err).__name__}: {first_line(err)})") from None
    return check_file_id(file_id)


@contextlib.contextmanager
def out_dir_locked(out_dir: str | Path) -> Iterator[None]:
    """Hold ``out_dir``'s corpus lock (``fcntl.flock`` on ``out_dir/.corpus.lock``, released by the kernel
    however the run ends) for the block; a second corpus run on the same folder gets a one-line BusyError
    before it writes anything, so two runs never overwrite each other's summary and report. Re-entrant within
    one process."""
    from pipeline.cache import claim_lock

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    key = str((folder / CORPUS_LOCK).resolve())
    if key in _HELD_OUT_DIRS:
        yield
        return
    with open(folder / CORPUS_LOCK, "a+", encoding="utf-8") as handle:
        claim_lock(handle, lambda holder: f"another corpus run is writing to --out_dir {folder}{holder}: wait for "
                                          f"it to finish, or use another --out_dir")
        _HELD_OUT_DIRS.add(key)
        try:
            yield
        finally:
            _HELD_OUT_DIRS.discard(key)
            with contextlib.suppress(OSError):
                handle.truncate(0)


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

    summary = VideoSummary(reference=item.reference, videofile=str(item.videofile), status="failed",
                           name=item.name or str(item.videofile), file_id=item.file_id or item.reference)
    try:
        if item.faces is not None:
            cache = Cache(settings.data_dir, item.reference)
            target = cache.work(FACES_FILE)
            if not target.exists():  # adopted like a user's own detections
                shutil.copyfile(item.faces, target)
        out_dir = Path(settings.out_dir) / "videos" / item.reference
        result = diarize(item.videofile, settings.data_dir, reference=item.reference, out_dir=out_dir,
                         config=settings.config, overrides=overrides, weights_dir=settings.weights_dir,
                         device=settings.device, force=settings.force, video=settings.video,
                         file_id=item.file_id or None, speech=item.speech)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - one bad video must not stop the corpus
        summary.error = f"{type(err).__name__}: {first_line(err, 300)}" if not hasattr(err, "exit_code") \
            else first_line(err, 300)
        return summary
    rttm_dir = Path(settings.out_dir) / "rttm"
    rttm_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.outputs["rttm"], rttm_dir / f"{item.reference}.rttm")
    media = Cache(settings.data_dir, item.reference, create=False).load_pickle(MEDIA_FILE)
    summary.status = "done"
    summary.duration_s = float(media.get("duration_s") or 0.0)
    summary.tracks = result.num_tracks
    summary.speakers = len([s for s in result.speakers if s != "unknown"])
    summary.turns = len(result.turns)
    summary.speech_s = round(sum(t.end_s - t.start_s for t in result.turns), 3)
    summary.stage_seconds = {k: round(v, 3) for k, v in result.computed_seconds.items()}
    summary.cached_stages = list(result.cached_stages)
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
                                   error=f"worker died: {first_line(err, 300)}", name=item.name)


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
                                   error=f"Ray task failed: {first_line(err, 300)}", name=item.name)
    finally:
        if started_here:
            ray.shutdown()


# ---- outputs --------------------------------------------------------------------------------------------
def score_summaries(summaries: list[VideoSummary], out_dir: Path, ref_dir: Path, collar_s: float,
                    skip_overlap: bool) -> dict[str, float] | None:
    """DER parts and JER per video (into each summary) and overall, against ``ref_dir/FILE_ID.rttm`` (the file
    id is the reference unless ``--file_id`` says otherwise)."""
    from pipeline.export import read_rttm
    from pipeline.score import score

    reference, hypothesis, by_id = {}, {}, {}
    for summary in summaries:
        file_id = summary.file_id or summary.reference
        ref_file = ref_dir / f"{file_id}.rttm"
        if summary.status != "done" or not ref_file.is_file():
            continue
        reference.update(read_rttm(ref_file))
        hypothesis.update(read_rttm(out_dir / "rttm" / f"{summary.reference}.rttm"))
        hypothesis.setdefault(file_id, [])
        by_id[file_id] = summary
    reference = {k: v for k, v in reference.items() if v}
    if not reference:
        return None
    report = score(reference, hypothesis, collar_s=collar_s, skip_overlap=skip_overlap)
    for file_score in report.files:
        if file_score.file_id in by_id:
            by_id[file_score.file_id].score = _score_fields(file_score)
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
    """Every video of ``items`` through the four stages; writes the corpus outputs and returns the summaries.
    Holds ``out_dir_locked`` throughout: a second run on the same ``out_dir`` is a BusyError, nothing written."""
    with out_dir_locked(settings.out_dir):
        return _run_corpus(items, settings, workers=workers, ray_address=ray_address, use_ray=use_ray,
                           ref_dir=ref_dir, collar_s=collar_s, skip_overlap=skip_overlap, notes=notes, on_done=on_done)


def _run_corpus(items: Sequence[CorpusVideo], settings: RunSettings, *, workers: int, ray_address: str | None,
                use_ray: bool, ref_dir: str | Path | None, collar_s: float, skip_overlap: bool, notes: Sequence[str],
                on_done: Callable[[VideoSummary, int, int], None] | None) -> tuple[list[VideoSummary],
                                                                                   dict[str, Path]]:
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
