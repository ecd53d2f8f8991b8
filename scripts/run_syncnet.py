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
from pipeline.formats import RUN_PIPELINE, SYNC_MODELS  # noqa: E402


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


def run_clip_wav2lip(args: argparse.Namespace, cfg) -> int:
    if args.features:
        raise InputError("--features saves SyncNet's embeddings (syncnet_python's demo_feature.py); "
                         "it does not apply to --sync_model wav2lip")
    clip = input_file(args.videofile, "video file")
    from pipeline import sync_wav2lip  # torch: only after the arguments pass

    result = sync_wav2lip.sync_clip(clip, cfg, args.weights_dir, resolve_device(args.device))
    if result.silent:
        info(f"{clip}: the audio is silent, no offset can be measured", args.quiet)
    print(sync_wav2lip.demo_report(result), flush=True)
    return 0


def run_clip_gestsync(args: argparse.Namespace, cfg) -> int:
    if args.features:
        raise InputError("--features saves SyncNet's embeddings (syncnet_python's demo_feature.py); "
                         "it does not apply to --sync_model gestsync")
    clip = input_file(args.videofile, "video file")
    from pipeline import sync_gestsync  # torch: only after the arguments pass

    result = sync_gestsync.sync_clip(clip, cfg, args.weights_dir, resolve_device(args.device))
    note = sync_gestsync.range_note(result, sync_gestsync.GestSyncSettings.from_config(cfg))
    if note:
        info(f"{clip}: {note}", args.quiet)
    if result.silent:
        info(f"{clip}: the audio is silent, no offset can be measured", args.quiet)
    print(sync_gestsync.demo_report(result), flush=True)
    return 0


def run_clip(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from pipeline.evidence import configured_model

    if configured_model(cfg) == "wav2lip":
        return run_clip_wav2lip(args, cfg)
    if configured_model(cfg) == "gestsync":
        return run_clip_gestsync(args, cfg)
    clip = input_file(args.videofile, "video file")
    from pipeline.stage2 import demo_report, save_features, sync_clip  # torch: only after the arguments pass
    from pipeline.sync import SyncSettings

    result = sync_clip(clip, cfg, args.weights_dir, resolve_device(args.device), keep_embeddings=bool(args.features))
    if result.silent:
        info(f"{clip}: the audio is silent, no offset can be measured", args.quiet)
    print(demo_report(result), flush=True)
    if args.features:
        path = save_features(args.features, result, SyncSettings.from_config(cfg, demo=True))
        info(f"saved {result.num_windows} windows of lip and audio embeddings to {path}", args.quiet)
    return 0


def run_cache(args: argparse.Namespace) -> int:
    reference = args.reference or (default_reference(args.videofile) if args.videofile else None)
    if reference is None:
        raise InputError("--data_dir needs --reference (or --videofile to name it)")
    existing_reference(args.data_dir, reference, "tracks.pckl", RUN_PIPELINE)
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
    model = out.sync.get("model", "syncnet")
    what = {"wav2lip": "Wav2Lip expert", "gestsync": f"GestSync ({out.sync.get('persons')} regions)"}.get(
        model, f"SyncNet ({out.sync.get('metric')})")
    return (f"{what} on {out.num_tracks} tracks in {progress.seconds.get(model, 0.0):.1f} s: "
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
