#!/usr/bin/env python3
"""Stage 2: SyncNet offset, confidence and distance curves of every face track.

    python scripts/run_syncnet.py --data_dir D --reference REF [--sync_model syncnet|wav2lip|gestsync]   # after run_pipeline.py
    python scripts/run_syncnet.py --videofile CLIP.avi [--features OUT.npz]   # one face clip, like the demo
    python scripts/run_syncnet.py --videofile FACE.avi --sync_model wav2lip   # Wav2Lip's expert on one face clip
    python scripts/run_syncnet.py --videofile PERSON.mp4 --sync_model gestsync   # GestSync on one whole-frame clip

Results on stdout (cache mode: one line saying what was written where; one clip: exactly the demo's lines, as
syncnet_python prints them, for scripts that parse them); progress and notes on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cache import Cache  # noqa: E402
from pipeline.cli import (  # noqa: E402
    Progress,
    add_cache_args,
    add_config_args,
    add_runtime_args,
    config_from_args,
    default_reference,
    existing_reference,
    info,
    input_file,
    resolve_device,
    run_main,
)
from pipeline.errors import InputError  # noqa: E402
from pipeline.formats import RUN_PIPELINE, SYNC_MODELS, TRACKS_FILE  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_syncnet.py", description=__doc__.split("\n")[0])
    parser.add_argument("--videofile", default=None,
                        help="with --data_dir: names the reference (its file stem); alone: one face-crop clip "
                             "to evaluate like syncnet_python's demo_syncnet.py")
    parser.add_argument("--features", default=None, metavar="OUT.npz",
                        help="single-clip mode: also save the per-window lip and audio embeddings")
    parser.add_argument("--sync_model", choices=SYNC_MODELS, default=None,
                        help="sync network (default: sync.model in the config, syncnet); shorthand for "
                             "--set sync.model=...")
    add_cache_args(parser, reference_required=False, data_dir_required=False)  # no --data_dir: single clip
    add_config_args(parser)
    add_runtime_args(parser)
    return parser


def run_clip(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    clip = input_file(args.videofile, "video file")
    from pipeline.evidence import configured_model  # torch and PyAV (the model's module): only after the arguments pass

    model = configured_model(cfg)
    report = model.clip_report(clip, cfg, args.weights_dir, resolve_device(args.device), features=args.features)
    for note in report.notes:
        info(note, args.quiet)
    print(report.text, flush=True)
    for note in report.after:
        info(note, args.quiet)
    return 0


def run_cache(args: argparse.Namespace) -> int:
    reference = args.reference or (default_reference(args.videofile) if args.videofile else None)
    if reference is None:
        raise InputError("--data_dir needs --reference (or --videofile to name it)")
    existing_reference(args.data_dir, reference, TRACKS_FILE, RUN_PIPELINE)
    cfg = config_from_args(args)
    cache = Cache(args.data_dir, reference)
    with cache.locked():
        from pipeline.stage2 import run_stage2  # torch: only after the arguments pass

        progress = Progress(enabled=not args.quiet)
        try:
            out = run_stage2(cache, cfg, args.weights_dir, resolve_device(args.device), args.force, progress)
        finally:
            progress.close()
    print(f"run_syncnet: {reference}: {_cache_summary(out, progress, cache.work_dir)}", flush=True)  # the result
    return 0


def _cache_summary(out, progress: Progress, where: Path) -> str:
    """What stage 2 did for the reference, and where its outputs are."""
    if out.reused:
        return f"results up to date in {where} (use --force to redo)"
    if out.num_tracks == 0:
        return f"no face tracks: wrote empty activesd.pckl, sync.pckl and offsets.txt to {where}"
    from pipeline.evidence import evidence_model

    model = evidence_model(out.sync)
    return (f"{model.summary(out.sync)} on {out.num_tracks} tracks in {progress.seconds.get(model.name, 0.0):.1f} s: "
            f"wrote activesd.pckl, sync.pckl, offsets.txt to {where}")


def main(args: argparse.Namespace) -> int:
    if args.sync_model:
        args.overrides = [*args.overrides, f"sync.model={args.sync_model}"]
    if args.data_dir:
        if args.features:
            raise InputError("--features belongs to single-clip mode (--videofile without --data_dir)")
        return run_cache(args)
    if args.videofile:
        if args.reference:
            raise InputError("--reference needs --data_dir (single-clip mode takes only --videofile)")
        return run_clip(args)
    raise InputError("give --data_dir and --reference (stage 2 of the pipeline), or --videofile CLIP (one clip)")


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
