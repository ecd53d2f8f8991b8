#!/usr/bin/env python
"""Who spoke when, and which face: all four stages on one video, reusing whatever the cache holds.

    python scripts/diarize.py --videofile V --data_dir D [--out_dir O] [--video] [--speech FILE] [--threads N]

Runs run_pipeline, run_syncnet, cluster and visualise in order; writes REF.rttm, REF_via.json and the
plots (and with --video the annotated video) to pywork/REF/ and, with --out_dir, copies them there. The result
(counts, the RTTM's file id, the output paths) goes to stdout; progress and notes to stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cache import check_reference  # noqa: E402
from pipeline.cli import (  # noqa: E402
    Progress,
    add_config_args,
    add_runtime_args,
    config_from_args,
    default_reference,
    info,
    input_file,
    run_main,
    writable_dir,
)
from pipeline.formats import FUSION_MODES, SPEAKER_MODELS, SYNC_MODELS, VAD_METHODS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diarize.py", description=__doc__.splitlines()[0])
    parser.add_argument("--videofile", required=True,
                        help="input video (any container, codec and frame rate), or an audio-only file "
                             "(a wav: no faces, the voices alone; no --video)")
    parser.add_argument("--data_dir", required=True, help="cache folder shared by all stages")
    parser.add_argument("--reference", default=None, help="name of this video in the cache (default: file name)")
    parser.add_argument("--file_id", default=None,
                        help="file id written in the RTTM and VIA project (default: the reference); give the name "
                             "your reference RTTM uses for this recording, so that scoring matches them")
    parser.add_argument("--out_dir", default=None, help="also copy the RTTM, VIA JSON, plots (and video) here")
    parser.add_argument("--video", action="store_true", help="also write the annotated video")
    parser.add_argument("--vad", choices=VAD_METHODS, default=None, help="voice activity detector")
    parser.add_argument("--speaker_model", choices=SPEAKER_MODELS, default=None,
                        help="speaker embeddings (resemblyzer: Resemblyzer's GE2E, no checkpoint download)")
    parser.add_argument("--sync_model", choices=SYNC_MODELS, default=None,
                        help="stage 2's sync network (default: sync.model, syncnet); --set sync.model=...")
    parser.add_argument("--fusion", choices=FUSION_MODES, default=None,
                        help="stage 3's rule (default: diarise.mode, voxconverse); --set diarise.mode=...")
    parser.add_argument("--speech", default=None, metavar="FILE",
                        help="speech regions to use instead of the VAD: an .rttm (union of its segments; with "
                             "several file ids, the one named as --reference), a .uem ('file chan start end') or "
                             "a .lab ('start end [label]') file")
    add_config_args(parser)
    add_runtime_args(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    input_file(args.videofile, "video file")  # arguments first: no heavy import before they pass
    args.overrides = [*args.overrides, *([f"sync.model={args.sync_model}"] if args.sync_model else []),
                      *([f"diarise.mode={args.fusion}"] if args.fusion else [])]
    cfg = config_from_args(args)
    if args.out_dir is not None:
        writable_dir(args.out_dir, "--out_dir")  # fail before hours of work, not after
    check_reference(args.reference or default_reference(args.videofile))
    if args.file_id is not None:
        from pipeline.export import check_file_id

        check_file_id(args.file_id)
    from pipeline.api import diarize  # torch: only after the arguments pass
    from pipeline.evidence import configured_model
    from pipeline.stage3 import summary

    messages = {"stage1": "[1/4] faces, shots and tracks", "stage2": f"[2/4] {configured_model(cfg).stage2_what}",
                "stage3": "[3/4] voice activity, speaker embeddings and clustering", "stage4": "[4/4] exports and plots"}
    progress = Progress(enabled=not args.quiet)
    try:
        result = diarize(args.videofile, args.data_dir, reference=args.reference, out_dir=args.out_dir, config=cfg,
                         weights_dir=args.weights_dir, device=args.device, force=args.force, video=args.video,
                         vad=args.vad, speaker_model=args.speaker_model, progress=progress, speech=args.speech,
                         on_stage=lambda stage: info(f"diarize: {messages[stage]}", args.quiet),
                         file_id=args.file_id)
    finally:
        progress.close()
    for note in result.notes:
        info(f"diarize: note: {note}", args.quiet)
    counts = summary(result.turns)
    print(f"diarize: {result.reference}: {counts['turns']} turns, {len(counts['speakers'])} speakers, "
          f"{result.num_tracks} face tracks; RTTM file id {result.file_id!r}")
    for kind, path in result.outputs.items():
        print(f"  {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
