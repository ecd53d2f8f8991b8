#!/usr/bin/env python3
"""Stage 4: write RTTM, a VIA 3 project, sync and timeline plots and (--video) an annotated video from the cache."""
from __future__ import annotations

import argparse
import sys

from pipeline.cli import Progress, add_cache_args, add_config_args, config_from_args, info, run_main
from pipeline.stage4 import visualise


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visualise.py", description=__doc__)
    add_cache_args(parser)
    parser.add_argument("--video", action="store_true",
                        help="also write the annotated 25 fps video with audio (H.264 + AAC MP4)")
    parser.add_argument("--out_dir", default=None, help="also copy every output into this folder")
    add_config_args(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    return parser


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    progress = Progress(enabled=not args.quiet)
    try:
        outputs = visualise(args.data_dir, args.reference, cfg, video=args.video, out_dir=args.out_dir,
                            progress=progress)
    finally:
        progress.close()
    for kind, path in outputs.items():
        info(f"{kind}: {path}", quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, get_parser()))
