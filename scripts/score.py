#!/usr/bin/env python3
"""Score diarisation RTTMs: DER (missed speech, false alarm, confusion) and JER per file and overall."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import add_config_args, add_runtime_args, config_from_args, run_main  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="score.py",
        description=__doc__,
        epilog=(
            "VoxConverse conventions (dscore/md-eval) by default: a collar of 0.25 s on EACH side of every "
            "reference boundary is not scored (pyannote.metrics gets collar=2*COLLAR), overlapping speech is "
            "scored, and each speaker's overlapping reference segments are merged. Without --uem each file is "
            "scored from the earliest to the latest segment of reference and hypothesis together (dscore's "
            "convention; md-eval would start at the first and stop at the last reference turn)."
        ),
    )
    parser.add_argument("--ref", required=True, help="reference RTTM file, or a folder of *.rttm files")
    parser.add_argument("--hyp", required=True, help="hypothesis RTTM file, or a folder of *.rttm files")
    parser.add_argument("--collar", type=float, default=None, metavar="SECONDS",
                        help="no-score zone on each side of every reference boundary (default: score.collar_s, 0.25)")
    parser.add_argument("--skip_overlap", action="store_true", default=None,
                        help="do not score overlapping speech (default: score.skip_overlap, false)")
    parser.add_argument("--uem", default=None, help="UEM file of scored regions: '<file-id> <channel> <start> <end>'")
    add_config_args(parser)
    add_runtime_args(parser, ignored=("--weights_dir", "--device", "--force", "--threads"),
                     why="scoring runs no network and caches nothing")
    return parser


build_parser = get_parser  # the name the other scripts use


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args).score
    from pipeline.score import format_report, score_paths  # pyannote: only after the arguments pass

    collar_s = cfg.collar_s if args.collar is None else args.collar
    skip_overlap = cfg.skip_overlap if args.skip_overlap is None else args.skip_overlap
    report = score_paths(args.ref, args.hyp, collar_s=collar_s, skip_overlap=skip_overlap, uem_path=args.uem)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, get_parser()))
