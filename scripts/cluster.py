#!/usr/bin/env python3
"""Stage 3: voice activity, speaker embeddings, face identities and the audio-visual diarisation.

    python scripts/cluster.py --data_dir D --reference REF [--vad webrtc|silero]
                              [--speaker_model resnetse34|ecapa|resemblyzer] [--fusion voxconverse|argmax|improved]
                              [--speech FILE.rttm|.uem|.lab] [--threads N]

--speaker_model resemblyzer: Resemblyzer's GE2E encoder, no published checkpoint needed (README "Resemblyzer's
GE2E speaker model"); with a wav as stage 1's input (no faces) stage 3 diarises the voices alone.

Runs after scripts/run_pipeline.py and scripts/run_syncnet.py; writes D/pywork/REF/diarization.pckl.
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
    existing_reference,
    resolve_device,
    run_main,
)
from pipeline.formats import (  # noqa: E402
    DIARISATION_FILE,
    FUSION_MODES,
    MEDIA_FILE,
    RUN_PIPELINE,
    SPEAKER_MODELS,
    VAD_METHODS,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cluster.py", description=__doc__.split("\n")[0])
    add_cache_args(parser)
    parser.add_argument("--vad", choices=VAD_METHODS, default=None,
                        help="voice activity detector (default: vad.method in the config, webrtc)")
    parser.add_argument("--speaker_model", choices=SPEAKER_MODELS, default=None,
                        help="speaker embedding network (default: embed.speaker_model in the config, resnetse34); "
                             "resemblyzer needs no checkpoint download (Resemblyzer's GE2E weights)")
    parser.add_argument("--fusion", choices=FUSION_MODES, default=None,
                        help="fusion rule (default: diarise.mode in the config, voxconverse); shorthand for "
                             "--set diarise.mode=...")
    parser.add_argument("--speech", default=None, metavar="FILE",
                        help="speech regions to use instead of the VAD: an .rttm (union of its segments; with "
                             "several file ids, the one named as --reference), a .uem ('file chan start end') or "
                             "a .lab ('start end [label]') file")
    add_config_args(parser)
    add_runtime_args(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    existing_reference(args.data_dir, args.reference, MEDIA_FILE, RUN_PIPELINE)  # before any heavy import
    if args.fusion:
        args.overrides = [*args.overrides, f"diarise.mode={args.fusion}"]
    cfg = config_from_args(args)
    cache = Cache(args.data_dir, args.reference)
    with cache.locked():
        from pipeline.stage3 import run_cluster, summary

        progress = Progress(enabled=not args.quiet)
        try:
            turns = run_cluster(cache, cfg, args.weights_dir, resolve_device(args.device), args.vad,
                                args.speaker_model, args.force, progress, speech=args.speech)
        finally:
            progress.close()
    counts = summary(turns)
    unknown = f", {counts['unknown_turns']} unknown" if counts["unknown_turns"] else ""
    print(f"{args.reference}: {counts['turns']} turns ({counts['av_turns']} with a speaking face{unknown}), "
          f"{len(counts['speakers'])} speakers, {counts['speech_s']:.1f} s of turns in "
          f"{cache.work(DIARISATION_FILE)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
