#!/usr/bin/env python
"""Stage 1: normalise a video to 25 fps + 16 kHz mono, detect faces (S3FD) and shots, build face tracks and crops.

    python scripts/run_pipeline.py --videofile V --reference REF --data_dir D
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
    info,
    input_file,
    resolve_device,
    run_main,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_pipeline.py", description=__doc__.splitlines()[0])
    parser.add_argument("--videofile", required=True,
                        help="input video (any container, codec and frame rate); an audio-only file (a wav) is a "
                             "video without faces: stage 3 then diarises the voices alone")
    add_cache_args(parser, reference_required=False)
    add_config_args(parser)
    add_runtime_args(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    videofile = input_file(args.videofile, "video file")  # arguments first: no heavy import before they pass
    cfg = config_from_args(args)
    cache = Cache(args.data_dir, args.reference or default_reference(args.videofile))
    with cache.locked():
        from pipeline.stage1 import run_pipeline

        progress = Progress(enabled=not args.quiet)
        try:
            result = run_pipeline(videofile, cache, cfg, args.weights_dir, resolve_device(args.device), args.force,
                                  progress)
        finally:
            progress.close()
    for note in result.notes:
        info(f"run_pipeline: note: {note}", args.quiet)
    reused = f" (reused: {', '.join(result.reused)})" if result.reused else ""
    print(f"run_pipeline: {cache.reference}: {result.num_frames} frames, {result.num_shots} shots, "
          f"{result.num_tracks} face tracks{reused} -> {cache.work_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
