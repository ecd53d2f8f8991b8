#!/usr/bin/env python
"""Who spoke when, and which face: all four stages on one video, reusing whatever the cache holds.

    python scripts/diarize.py --videofile V --data_dir D [--out_dir O] [--video]

Runs run_pipeline, run_syncnet, cluster and visualise in order; writes REF.rttm, REF_via.json and the
plots (and with --video the annotated video) to pywork/REF/ and, with --out_dir, copies them there.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cache import Cache  # noqa: E402
from pipeline.formats import FUSION_MODES, SYNC_MODELS  # noqa: E402
from pipeline.cli import (Progress, add_config_args, add_runtime_args, config_from_args, default_reference,  # noqa: E402
                          info, input_file, resolve_device, run_main, writable_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diarize.py", description=__doc__.splitlines()[0])
    parser.add_argument("--videofile", required=True, help="input video (any container, codec and frame rate)")
    parser.add_argument("--data_dir", required=True, help="cache folder shared by all stages")
    parser.add_argument("--reference", default=None, help="name of this video in the cache (default: file name)")
    parser.add_argument("--out_dir", default=None, help="also copy the RTTM, VIA JSON, plots (and video) here")
    parser.add_argument("--video", action="store_true", help="also write the annotated video")
    parser.add_argument("--vad", choices=["webrtc", "silero"], default=None, help="voice activity detector")
    parser.add_argument("--speaker_model", choices=["resnetse34", "ecapa"], default=None, help="speaker embeddings")
    parser.add_argument("--sync_model", choices=SYNC_MODELS, default=None,
                        help="stage 2's sync network (default: sync.model, syncnet); --set sync.model=...")
    parser.add_argument("--fusion", choices=FUSION_MODES, default=None,
                        help="stage 3's rule (default: diarise.mode, voxconverse); --set diarise.mode=...")
    add_config_args(parser)
    add_runtime_args(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from pipeline.stage1 import run_pipeline
    from pipeline.stage2 import run_stage2
    from pipeline.stage3 import run_cluster, summary
    from pipeline.stage4 import visualise

    videofile = input_file(args.videofile, "video file")
    args.overrides = [*args.overrides, *([f"sync.model={args.sync_model}"] if args.sync_model else []),
                      *([f"diarise.mode={args.fusion}"] if args.fusion else [])]
    cfg = config_from_args(args)
    if args.out_dir is not None:
        writable_dir(args.out_dir, "--out_dir")  # fail before hours of work, not after
    cache = Cache(args.data_dir, args.reference or default_reference(args.videofile))
    device = resolve_device(args.device)
    progress = Progress(enabled=not args.quiet)
    try:
        info("diarize: [1/4] faces, shots and tracks", args.quiet)
        stage1 = run_pipeline(videofile, cache, cfg, args.weights_dir, device, args.force, progress)
        for note in stage1.notes:
            info(f"diarize: note: {note}", args.quiet)
        sync_name = "Wav2Lip's lip-sync expert" if cfg.sync.model == "wav2lip" else "SyncNet"
        info(f"diarize: [2/4] {sync_name} on {stage1.num_tracks} face tracks", args.quiet)
        run_stage2(cache, cfg, args.weights_dir, device, args.force, progress)
        info("diarize: [3/4] voice activity, speaker embeddings and clustering", args.quiet)
        turns = run_cluster(cache, cfg, args.weights_dir, device, args.vad, args.speaker_model, args.force, progress)
        info("diarize: [4/4] exports and plots", args.quiet)
        outputs = visualise(args.data_dir, cache.reference, cfg, video=args.video, out_dir=args.out_dir,
                            progress=progress)
    finally:
        progress.close()
    counts = summary(turns)
    print(f"diarize: {cache.reference}: {counts['turns']} turns, {len(counts['speakers'])} speakers, "
          f"{stage1.num_tracks} face tracks")
    for kind, path in outputs.items():
        print(f"  {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
