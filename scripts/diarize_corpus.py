#!/usr/bin/env python
"""Diarise a whole corpus: every video through the four stages, on local workers or a Ray cluster.

    python scripts/diarize_corpus.py --videos DIR|LIST.txt --data_dir D --out_dir O [--workers N]
                                     [--ray [ADDRESS]] [--ref_dir RTTM_DIR]

Writes O/rttm/REF.rttm per video, O/all.rttm, O/summary.csv, O/summary.json and O/report.html. A video that
fails is one line of the summary; the exit status is the number of failed videos (at most 100). A rerun
reuses every finished video from D and continues the others from their last finished stage.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import add_config_args, add_runtime_args, config_from_args, info, run_main, writable_dir  # noqa: E402
from pipeline.errors import InputError  # noqa: E402
from pipeline.formats import FUSION_MODES, SPEAKER_MODELS, SYNC_MODELS, VAD_METHODS  # noqa: E402

MAX_EXIT_FAILED = 100


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diarize_corpus.py", description=__doc__.splitlines()[0])
    parser.add_argument("--videos", required=True,
                        help="a folder of videos, or a text file with one path per line (relative paths are "
                             "relative to the list's folder)")
    parser.add_argument("--data_dir", required=True, help="cache folder shared by all stages and videos")
    parser.add_argument("--out_dir", required=True, help="where the RTTMs, summaries and report.html go")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel videos (default: one per GPU on CUDA, else a worker per 2 cores and 4 GB)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run each video as a Ray task: on the cluster at ADDRESS ('auto' after `ray start "
                             "--head`), or on a local Ray instance when no address is given")
    parser.add_argument("--ref_dir", default=None,
                        help="folder of reference FILE_ID.rttm files (see --file_id): DER/JER per video")
    parser.add_argument("--faces", default=None, metavar="PATTERN",
                        help="detections to inject per video, '{stem}' replaced by the video's file stem, e.g. "
                             "'dets/{stem}_faces.pckl' (syncnet_python's faces.pckl layout); a relative pattern is "
                             "relative to the corpus folder, as the list's paths are (the list's folder, or the "
                             "folder of videos). Without '{stem}' only for a corpus of one video")
    parser.add_argument("--file_id", default="{reference}", metavar="PATTERN",
                        help="file id of each video's RTTM: '{reference}' (default, the cache name) or '{stem}' (the "
                             "file's stem), within a longer id if you like; it names the reference RTTM --ref_dir "
                             "holds (FILE_ID.rttm)")
    parser.add_argument("--speech", default=None, metavar="PATTERN",
                        help="speech regions per video instead of the VAD, '{stem}' replaced by the video's file "
                             "stem, e.g. 'rttm/{stem}.rttm' (.rttm, .uem or .lab; see diarize.py --speech), relative "
                             "to the corpus folder as --faces; a video whose file is missing fails")
    parser.add_argument("--video", action="store_true", help="also write each annotated video")
    parser.add_argument("--vad", choices=VAD_METHODS, default=None, help="voice activity detector")
    parser.add_argument("--speaker_model", choices=SPEAKER_MODELS, default=None,
                        help="speaker embeddings (resemblyzer: Resemblyzer's GE2E, no checkpoint download)")
    parser.add_argument("--sync_model", choices=SYNC_MODELS, default=None, help="stage 2's sync network")
    parser.add_argument("--fusion", choices=FUSION_MODES, default=None, help="stage 3's rule")
    add_config_args(parser)
    add_runtime_args(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from pipeline.corpus import assign_references, corpus_dir, list_videos, out_dir_locked

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    overrides = list(args.overrides) + [f"{key}={value}" for key, value in (
        ("sync.model", args.sync_model), ("diarise.mode", args.fusion), ("vad.method", args.vad),
        ("embed.speaker_model", args.speaker_model), ("runtime.threads", args.threads)) if value]
    args.overrides = overrides
    cfg = config_from_args(args)  # a bad value fails here, not in every worker
    writable_dir(args.out_dir, "--out_dir")
    writable_dir(args.data_dir, "--data_dir")
    if args.ref_dir is not None and not Path(args.ref_dir).is_dir():
        raise InputError(f"--ref_dir {args.ref_dir} is not a folder")
    if args.speech is not None and "{stem}" not in args.speech:
        raise InputError(f"--speech {args.speech!r} needs '{{stem}}' (one speech file per video)")
    items, notes = assign_references(list_videos(args.videos), args.faces, base=corpus_dir(args.videos),
                                     file_id_pattern=args.file_id, speech_pattern=args.speech)
    with out_dir_locked(args.out_dir):  # a second run on this --out_dir: one line, before anything is written
        for note in notes:
            info(f"diarize_corpus: note: {note}", args.quiet)
        return _run(args, cfg, items, notes)


def _run(args: argparse.Namespace, cfg, items, notes: list[str]) -> int:
    import os

    from pipeline.cli import resolve_device
    from pipeline.corpus import RunSettings, default_workers, run_corpus

    device = resolve_device(args.device).type
    workers = args.workers or default_workers(device)

    settings = RunSettings(data_dir=str(args.data_dir), out_dir=str(args.out_dir), config=args.config,
                           overrides=tuple(args.overrides), weights_dir=args.weights_dir, device=device,
                           force=args.force, video=args.video,
                           threads_per_worker=max(1, (os.cpu_count() or 1) // workers)
                           if workers > 1 and not cfg.runtime.threads else None)  # --threads N: N per worker
    where = f"Ray ({args.ray or 'local'})" if args.ray is not None else f"{workers} worker(s)"
    info(f"diarize_corpus: {len(items)} videos on {where}", args.quiet)
    progress = _progress(len(items), args.quiet)
    summaries, paths = run_corpus(items, settings, workers=workers, use_ray=args.ray is not None,
                                  ray_address=args.ray or None, ref_dir=args.ref_dir,
                                  collar_s=cfg.score.collar_s, skip_overlap=cfg.score.skip_overlap,
                                  notes=notes, on_done=progress)
    progress.close()
    failed = [s for s in summaries if s.status != "done"]
    for summary in failed:
        print(f"diarize_corpus: {summary.reference}: failed: {summary.error}", file=sys.stderr)
    print(f"diarize_corpus: {len(summaries) - len(failed)} of {len(summaries)} videos done, {len(failed)} failed; "
          f"RTTM file id of each video: {args.file_id} (summary.csv lists them)")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return min(len(failed), MAX_EXIT_FAILED)


class _progress:
    """tqdm over videos with media hours per wall hour; one line per finished video unless --quiet."""

    def __init__(self, total: int, quiet: bool) -> None:
        from tqdm import tqdm

        self.quiet = quiet
        self.started = time.perf_counter()
        self.media_s = 0.0
        self.bar = tqdm(total=total, unit="video", disable=quiet, file=sys.stderr, dynamic_ncols=True)

    def __call__(self, summary, done: int, total: int) -> None:
        self.media_s += summary.duration_s
        wall_h = (time.perf_counter() - self.started) / 3600
        self.bar.set_postfix_str(f"{self.media_s / 3600 / wall_h:.1f} media h per wall h" if wall_h else "")
        self.bar.update(1)
        if not self.quiet:
            state = "done" if summary.status == "done" else f"failed: {summary.error}"
            self.bar.write(f"[{done}/{total}] {summary.reference}: {state} "
                           f"({summary.duration_s:.1f} s of media, {summary.speakers} speakers)", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
