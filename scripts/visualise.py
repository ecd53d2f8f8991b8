#!/usr/bin/env python3
"""Stage 4: write RTTM, a VIA 3 project, sync and timeline plots and (--video) an annotated video from the cache.

The outputs' paths and the RTTM's file id go to stdout; progress to stderr."""
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
    existing_reference,
    run_main,
    writable_dir,
)
from pipeline.formats import MEDIA_FILE, RUN_PIPELINE  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visualise.py", description=__doc__)
    add_cache_args(parser)
    parser.add_argument("--video", action="store_true",
                        help="also write the annotated 25 fps video with audio (H.264 + AAC MP4)")
    parser.add_argument("--out_dir", default=None, help="also copy every output into this folder")
    parser.add_argument("--file_id", default=None,
                        help="file id written in the RTTM and VIA project (default: the reference); give the name "
                             "your reference RTTM uses for this recording, so that scoring matches them")
    add_config_args(parser)
    add_runtime_args(parser, ignored=("--weights_dir", "--device", "--force", "--threads"),
                     why="stage 4 runs no network and always rewrites its outputs")
    return parser


build_parser = get_parser  # the name the other scripts use


def main(args: argparse.Namespace) -> int:
    existing_reference(args.data_dir, args.reference, MEDIA_FILE, RUN_PIPELINE)  # before any heavy import
    cfg = config_from_args(args)
    if args.file_id is not None:
        from pipeline.export import check_file_id

        check_file_id(args.file_id)
    if args.out_dir is not None:
        writable_dir(args.out_dir, "--out_dir")
    cache = Cache(args.data_dir, args.reference, create=False)
    with cache.locked(extra_dirs=[Path(args.out_dir)] if args.out_dir else []):
        from pipeline.stage4 import visualise

        progress = Progress(enabled=not args.quiet)
        try:
            outputs = visualise(args.data_dir, args.reference, cfg, video=args.video, out_dir=args.out_dir,
                                progress=progress, file_id=args.file_id)
        finally:
            progress.close()
    file_id = args.file_id or args.reference
    print(f"visualise: {args.reference}: wrote {len(outputs)} outputs, RTTM file id {file_id!r}")  # results: stdout
    for kind, path in outputs.items():
        print(f"  {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, get_parser()))
