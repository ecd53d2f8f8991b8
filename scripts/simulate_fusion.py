#!/usr/bin/env python3
"""Stage 3's fusion modes on evidence simulated from ground-truth RTTMs: DER and JER per mode.

    python scripts/simulate_fusion.py --rttm_dir ../shared/data/voxconverse/dev --profile default --seed 0
                                      [--modes voxconverse,improved] [--limit N] [--set improved.KEY=VALUE]

For every reference file, pipeline/simulate.py draws the evidence stages 1-3 would have cached for its
video (the formats of pipeline/formats.py), runs each mode through stage 3's own decision
(``pipeline.stage3.decide``: ``pipeline.fusion.voxconverse`` and the improved rule) and scores the turns with
``pipeline.score`` (VoxConverse convention: 0.25 s collar each side, overlap scored). Prints one row per mode:
DER, missed speech, false alarm, confusion, JER (percent of scored speech), plus the DER on files with at
most one and with two or more off-screen speakers, and any file where a mode raised.

Noise models (per file, seeded by ``(seed, crc32(file id))``; parameters of the default profile, easy/hard
in ``pipeline.simulate.PROFILES``):

- Off-screen speakers: each speaker is never on screen with probability ``p_offscreen`` 0.25.
- Shots: exponential lengths, mean ``shot_mean_s`` 6 s (at least 1 s). In each shot, an on-screen speaker
  who speaks >= 30 % of it has a face track spanning the shot with probability ``p_visible_speaking`` 0.8,
  one who does not with ``p_visible_silent`` 0.3; Poisson(``bystanders_per_shot`` 0.3) faces of people who
  never speak (three recurring bystander identities per file).
- Face identities: a track's identity is its speaker's, split into a new identity with ``p_split`` 0.1.
- SyncNet distances (cosine scale, 21 shifts): per track a per-shift mean of 1 + N(0, ``shift_profile_noise``
  0.05), per window and shift N(0, ``dist_noise`` 0.3) noise; where the track's face speaks (window centre
  frame), the distance at its offset shift (uniform in +-``max_offset_frames`` 3) dips by a per-track depth
  U(``dip_range`` 0.5, 1.3) times 1 + N(0, 0.2), half of it at the neighbouring shifts; with
  ``p_silent_face`` 0.1 a speaking face gives no dip at all (profile view, occlusion). Clipped to [0, 2].
- VAD (whole audio): true speech runs shorter than 1 s missed with ``vad_miss_short_p`` 0.2, every boundary
  displaced by N(0, ``vad_edge_s`` 0.1 s), gaps shorter than ``vad_bridge_s`` 0.3 s bridged, and
  Poisson(``vad_fa_per_min`` 3 per minute of silence) false alarms of 0.3-2 s in silence. Each track's VAD
  is the whole-audio VAD over the track's frames (its audio is the same audio).
- Speaker embeddings (128-d, 2 s windows every 0.2 s): speaker voices are unit vectors with expected
  pairwise cosine ``speaker_similarity`` 0.3 (a common component); window k is the unit mix of the voices in
  it weighted by speaking time plus a background vector for its silent share, plus noise of relative size
  ``emb_noise`` 0.8 correlated over ``emb_noise_smooth_windows`` 5 windows (overlapping windows share audio)
  and a channel drift of relative size ``emb_drift`` 0.3 (random walk, knots every 30 s, interpolated).

Profiles (easy / default / hard; the parameters not listed are the default profile's in all three, and
``pipeline.simulate.PROFILES`` is the source, checked against this table by tests/test_fuse_improved.py):

    p_offscreen             0.15 / 0.25 / 0.4
    p_visible_speaking      0.9 / 0.8 / 0.65
    bystanders_per_shot     0.1 / 0.3 / 0.6
    p_split                 0.05 / 0.1 / 0.2
    p_silent_face           0.05 / 0.1 / 0.2
    dip_range               (0.7, 1.5) / (0.5, 1.3) / (0.35, 1.1)
    dist_noise              0.2 / 0.3 / 0.4
    vad_miss_short_p        0.1 / 0.2 / 0.35
    vad_edge_s              0.1 / 0.1 / 0.15
    vad_fa_per_min          1.0 / 3.0 / 6.0
    emb_noise               0.6 / 0.8 / 1.0
    emb_drift               0.2 / 0.3 / 0.4
    speaker_similarity      0.25 / 0.3 / 0.35

Nothing in the evidence is made for one mode: both read the same tracks, distances, VADs, identities and
embeddings, the faithful mode exactly as av-diarization would.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import add_config_args, add_runtime_args, config_from_args, run_main  # noqa: E402
from pipeline.errors import InputError  # noqa: E402
from pipeline.formats import FUSION_MODES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simulate_fusion.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rttm_dir", required=True, help="folder of reference RTTMs (or one RTTM file)")
    parser.add_argument("--profile", default="default", choices=("easy", "default", "hard"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="voxconverse,improved", help="comma-separated fusion modes")
    parser.add_argument("--limit", type=int, default=None, help="only the first N files (sorted by id)")
    parser.add_argument("--per_file", action="store_true", help="also print each file's DER per mode")
    add_runtime_args(parser, ignored=("--weights_dir", "--device", "--force", "--threads"),
                     why="the simulator runs no network and caches nothing")
    add_config_args(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from pipeline.config import with_overrides
    from pipeline.score import load_rttms, score
    from pipeline.simulate import PROFILES, run_modes

    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        if mode not in FUSION_MODES:
            raise InputError(f"unknown fusion mode {mode!r}: choose from {', '.join(FUSION_MODES)}")
    cfg = config_from_args(args)
    reference = load_rttms(args.rttm_dir, "reference")
    if args.limit is not None:
        reference = {k: reference[k] for k in sorted(reference)[:args.limit]}
    cfgs = {mode: with_overrides(cfg, [f"diarise.mode={mode}"]) for mode in modes}
    start = time.perf_counter()
    hyps, offscreen, failures = run_modes(reference, PROFILES[args.profile], args.seed, cfgs,
                                          cfg.syncnet.vshift_frames)
    elapsed = time.perf_counter() - start
    collar = cfg.score.collar_s
    few = {k: v for k, v in reference.items() if offscreen[k] <= 1}
    many = {k: v for k, v in reference.items() if offscreen[k] >= 2}
    print(f"# {len(reference)} files from {args.rttm_dir}, profile {args.profile}, seed {args.seed}; "
          f"simulation + fusion {elapsed:.1f} s; {len(many)} files with >= 2 off-screen speakers")
    print(f"{'mode':<12} {'DER%':>7} {'miss%':>7} {'FA%':>7} {'conf%':>7} {'JER%':>7} "
          f"{'DER<=1off%':>11} {'DER>=2off%':>11}")
    for mode in modes:
        report = score(reference, hyps[mode], collar_s=collar, skip_overlap=cfg.score.skip_overlap)
        o = report.overall
        parts = [100 * o.der, 100 * o.missed_s / o.scored_s, 100 * o.false_alarm_s / o.scored_s,
                 100 * o.confusion_s / o.scored_s, 100 * o.jer]
        groups = []
        for subset in (few, many):
            groups.append(100 * score(subset, {k: hyps[mode][k] for k in subset}, collar_s=collar).overall.der
                          if subset else float("nan"))
        print(f"{mode:<12} " + " ".join(f"{v:7.2f}" for v in parts) + f" {groups[0]:11.2f} {groups[1]:11.2f}")
        if args.per_file:
            for row in report.files:
                print(f"  {mode:<10} {row.file_id:<8} DER {100 * row.der:6.2f} off-screen {offscreen[row.file_id]}")
    for line in failures:
        print(f"# CRASH {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
