#!/usr/bin/env python
"""Mix single-speaker recordings into conversations with an exact reference RTTM (test diarisation on your voices).

    python scripts/make_conversations.py --audio_dir DIR [--list FILES.txt] --out_dir OUT --num_files N --seed S
                                         [--speakers 2 6] [--overlap_files 0.5] [--noisy_files 0.33]
                                         [--snr_db 15 25] [--duration_s 60 150] [--name PREFIX]

DIR holds the recordings: one sub-folder per speaker, or files named SPEAKER-anything (LibriSpeech's
'19-198-0000.flac' is speaker 19). OUT gets wav/NAME.wav (16 kHz mono), rttm/NAME.rttm, list.txt (the wav
paths), conversations.tsv (speakers, overlap yes/no, noisy yes/no, SNR, speech and overlap seconds) and
settings.json. The same inputs, settings and seed give the same files, sample for sample.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import (  # noqa: E402
    add_config_args,
    add_runtime_args,
    config_from_args,
    info,
    run_main,
    writable_dir,
)
from pipeline.errors import InputError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_conversations.py", description=__doc__.splitlines()[0],
        epilog="What is labelled as speech, and how turns, gaps, overlaps, back-channels and noise are drawn: "
               "pipeline/conversations.py's docstring; every setting is in configs/default.yaml's "
               "'conversations' section (--set conversations.KEY=VALUE).")
    parser.add_argument("--audio_dir", required=True, help="folder of single-speaker recordings")
    parser.add_argument("--list", default=None, metavar="FILE",
                        help="use only the recordings named in FILE (one file name, or path under --audio_dir, "
                             "per line)")
    parser.add_argument("--out_dir", required=True, help="where the set goes (wav/, rttm/, list.txt, "
                                                         "conversations.tsv)")
    parser.add_argument("--num_files", type=int, required=True, help="number of conversations")
    parser.add_argument("--seed", type=int, required=True, help="seed of every random draw")
    parser.add_argument("--name", default="conv", help="file name prefix: NAME_000.wav, ... (default: conv)")
    parser.add_argument("--speakers", type=int, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="speakers per file, cycled over LOW..HIGH (default: conversations.speakers, 2 6)")
    parser.add_argument("--overlap_files", type=float, default=None, metavar="FRACTION",
                        help="fraction of files with overlapping turns (default: conversations.overlap_files, 0.5)")
    parser.add_argument("--noisy_files", type=float, default=None, metavar="FRACTION",
                        help="fraction of files with added noise (default: conversations.noisy_files, 0.33)")
    parser.add_argument("--snr_db", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="SNR range of noisy files (default: conversations.snr_db, 15 25)")
    parser.add_argument("--duration_s", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="target length range (default: conversations.duration_s, 60 150)")
    add_config_args(parser)
    add_runtime_args(parser, ignored=("--weights_dir", "--device", "--force", "--threads"),
                     why="mixing runs no network and caches nothing")
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    pairs = {"speakers": args.speakers, "overlap_files": args.overlap_files, "noisy_files": args.noisy_files,
             "snr_db": args.snr_db, "duration_s": args.duration_s}
    return [f"conversations.{key}={list(value) if isinstance(value, list) else value}"
            for key, value in pairs.items() if value is not None]


def main(args: argparse.Namespace) -> int:
    if args.num_files < 1:
        raise InputError(f"--num_files must be at least 1, got {args.num_files}")
    if args.seed < 0:
        raise InputError(f"--seed must be at least 0, got {args.seed}")
    args.overrides = [*args.overrides, *_overrides(args)]
    cfg = config_from_args(args).conversations
    out_dir = writable_dir(args.out_dir, "--out_dir")
    from pipeline.cli import input_file
    from pipeline.conversations import choose_speakers, list_recordings, make_conversation, plan_set, write_set

    allowed = None
    if args.list is not None:
        allowed = input_file(args.list, "file list").read_text(encoding="utf-8").splitlines()
    recordings = list_recordings(args.audio_dir, allowed)
    plans = plan_set(args.num_files, cfg.speakers, cfg.overlap_files, cfg.noisy_files, args.seed)
    chosen = choose_speakers(plans, sorted(recordings), args.seed)
    rate = cfg.sample_rate_hz
    conversations = []
    for plan in sorted(plans, key=lambda p: p.index):
        name = f"{args.name}_{plan.index:03d}"
        conv = make_conversation(name, plan, recordings, chosen[plan.index], cfg, rate, args.seed)
        noise = "clean" if conv.snr_db is None else f"SNR {conv.snr_db:.1f} dB"
        info(f"make_conversations: {name}: {conv.samples.size / rate:.1f} s, {len(conv.speakers)} speakers, "
             f"overlap {conv.properties['overlap_s']:.1f} s, {noise}", args.quiet)
        conversations.append(conv)
    settings = {"seed": args.seed, "num_files": args.num_files, "name": args.name,
                "audio_dir": str(args.audio_dir), "list": args.list, "conversations": cfg.to_dict()}
    tsv = write_set(out_dir, conversations, rate, settings)
    print(f"make_conversations: {len(conversations)} conversations in {out_dir} (list: {tsv})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
