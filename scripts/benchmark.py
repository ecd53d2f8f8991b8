#!/usr/bin/env python
"""Wall time, throughput and real-time factor of every step, and peak memory.

    python scripts/benchmark.py --videofile V [--faces faces.pckl] [--device auto] [--weights_dir W]
    python scripts/benchmark.py --fusion_hours 1 [--rttm_dir ../shared/data/voxconverse/dev]
    python scripts/benchmark.py --videofile V --faces F --compare OTHER_CHECKOUT [--loop_s 60] [--repeats 2]

Without the published checkpoints in --weights_dir, seeded random ones are written to a temporary folder
(speed does not depend on the weights). --faces injects precomputed detections so that stage 1 is timed
without the network as well. --fusion_hours H times stage 3's decision alone in each fusion mode on H hours of
evidence simulated (pipeline/simulate.py, default profile, seed 0) from the --rttm_dir references laid end to
end; with it --videofile may be left out. Prints one line per step, with the machine's load (1-minute average)
when the step ended and torch's thread count; --json FILE also saves them.

--compare OTHER_CHECKOUT runs the four stage scripts of this checkout and of another one (e.g. a `git worktree`
of an older commit) on the same clip, injected faces and seeded random weights, one process per stage, in
alternating order (--repeats runs each), and prints each stage's median CPU seconds (user + system), wall time
and peak RSS side by side, then whether every output is identical (scripts/bench_compare.py). --loop_s S first
repeats the clip and its faces until S seconds (a long clip from a short one).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import add_config_args, add_runtime_args, config_from_args, input_file, resolve_device, run_main  # noqa: E402
from pipeline.errors import InputError  # noqa: E402
from pipeline.formats import FACES_FILE  # noqa: E402


class Timer:
    """Collects (step, seconds, items, unit) rows and prints them."""

    def __init__(self, media_duration_s: float) -> None:
        self.media_duration_s = media_duration_s
        self.rows: list[dict] = []

    def add(self, step: str, seconds: float, items: float | None = None, unit: str = "") -> None:
        import torch

        load = os.getloadavg()[0]
        row = {"step": step, "seconds": round(seconds, 3),
               "x_realtime": round(self.media_duration_s / seconds, 1) if seconds > 0 else None,
               "load_1min": round(load, 2), "torch_threads": torch.get_num_threads()}
        if items is not None:
            row[f"{unit}_per_s"] = round(items / seconds, 1) if seconds > 0 else None
            row[unit] = items
        self.rows.append(row)
        rate = f"{items / seconds:10.1f} {unit}/s" if items is not None and seconds > 0 else " " * 20
        print(f"{step:<34} {seconds:9.2f} s {rate}   {row['x_realtime']:>8}x real time   load {load:4.2f}, "
              f"{row['torch_threads']} threads", flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.splitlines()[0])
    parser.add_argument("--videofile", default=None)
    parser.add_argument("--fusion_hours", type=float, default=None,
                        help="time the fusion modes on this many hours of simulated evidence")
    parser.add_argument("--rttm_dir", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"
                                                  / "voxconverse" / "dev"),
                        help="references the --fusion_hours evidence is simulated from")
    parser.add_argument("--faces", default=None, help="precomputed faces.pckl to time stage 1 without the network")
    parser.add_argument("--detect_frames", type=int, default=64, help="frames timed through the face detector")
    parser.add_argument("--skip", default="", help="comma-separated: detect,stage1,stage2,wav2lip,gestsync,stage3")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--compare", default=None, metavar="OTHER_CHECKOUT",
                        help="run the stage scripts here and in this other checkout side by side (needs --faces)")
    parser.add_argument("--loop_s", type=float, default=None,
                        help="with --compare: repeat the clip and its faces to this many seconds first")
    parser.add_argument("--repeats", type=int, default=2, help="with --compare: runs of each checkout")
    add_config_args(parser)
    add_runtime_args(parser, ignored=("--force", "--quiet"),
                     why="every step is timed from scratch in a temporary folder and printed")
    return parser


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_decode(videofile: Path, cfg, timer: Timer) -> int:
    from pipeline.media import iter_frames
    from pipeline.scenes import ShotDetector

    start = time.perf_counter()
    num_frames = sum(1 for _ in iter_frames(videofile, cfg.media.frame_rate_hz))
    timer.add("decode to 25 fps", time.perf_counter() - start, num_frames, "frames")
    shots = ShotDetector(cfg.media.frame_rate_hz, cfg.scenes.content_threshold, cfg.scenes.min_scene_len_frames)
    start = time.perf_counter()
    for frame in iter_frames(videofile, cfg.media.frame_rate_hz):
        shots.push(frame)
    shots.finish()
    timer.add("decode + shot detection", time.perf_counter() - start, num_frames, "frames")
    return num_frames


def bench_detect(videofile: Path, cfg, weights_dir, device, num: int, timer: Timer) -> None:
    from itertools import islice

    from pipeline.detect import FaceDetector
    from pipeline.media import iter_frames

    frames = list(islice(iter_frames(videofile, cfg.media.frame_rate_hz), num))
    detector = FaceDetector(cfg.detect, weights_dir, device)
    batch = int(cfg.detect.batch_size)
    detector.detect_batch(frames[:batch])  # warm-up (cuDNN autotuning, prior boxes)
    _sync(device)
    start = time.perf_counter()
    for i in range(0, len(frames), batch):
        detector.detect_batch(frames[i:i + batch])
    _sync(device)
    seconds = time.perf_counter() - start
    timer.add(f"S3FD detection (batch {batch}, {device.type})", seconds, len(frames), "frames")


def bench_stage1(videofile: Path, cfg, weights_dir, device, faces: Path | None, data_dir: Path, timer: Timer):
    from pipeline.cache import Cache
    from pipeline.stage1 import run_pipeline

    reference = "with_faces" if faces else "detect"
    cache = Cache(data_dir, reference)
    if faces:
        shutil.copy(faces, cache.work(FACES_FILE))
    start = time.perf_counter()
    result = run_pipeline(videofile, cache, cfg, weights_dir, device, force=False)
    label = "stage 1 without network (faces given)" if faces else "stage 1 total"
    timer.add(label, time.perf_counter() - start, result.num_frames, "frames")
    return cache, result


def bench_stage2(cache, cfg, weights_dir, device, timer: Timer) -> None:
    from pipeline.config import load_config
    from pipeline.stage2 import run_stage2

    for label, run_cfg in (("stage 2 SyncNet", cfg), ("stage 2 SyncNet, our code at batch 20",
                                                      load_config(overrides=["syncnet.batch_size=20"]))):
        start = time.perf_counter()
        out = run_stage2(cache, run_cfg, weights_dir, device, force=True)
        _sync(device)
        windows = sum(len(d) for d in out.distances)
        timer.add(label, time.perf_counter() - start, windows, "windows")


def bench_stage2_wav2lip(cache, cfg, weights_dir, device, timer: Timer) -> None:
    """Stage 2 with Wav2Lip's lip-sync expert on the same tracks (frames decoded and cropped, mel included)."""
    from pipeline.config import load_config
    from pipeline.stage2 import run_stage2

    start = time.perf_counter()
    out = run_stage2(cache, load_config(overrides=["sync.model=wav2lip"]), weights_dir, device, force=True)
    _sync(device)
    windows = sum(len(d) for d in out.distances)
    timer.add("stage 2 Wav2Lip expert", time.perf_counter() - start, windows, "windows")


def bench_stage2_gestsync(cache, cfg, weights_dir, device, timer: Timer) -> None:
    """Stage 2 with GestSync on the same tracks, face-derived regions (frames decoded, cropped, masked, resized,
    filterbanks included; fp16 on CUDA); one window per track frame, the offset search included."""
    from pipeline.config import load_config
    from pipeline.stage2 import run_stage2

    start = time.perf_counter()
    out = run_stage2(cache, load_config(overrides=["sync.model=gestsync"]), weights_dir, device, force=True)
    _sync(device)
    frames = sum(len(curve) for curve in out.sync.score_raw)  # one window per frame, centred on it
    timer.add("stage 2 GestSync", time.perf_counter() - start, frames, "frames")


def random_gestsync_checkpoint(weights_dir: Path, file: str) -> None:
    """A seeded random ``model_rgb.pth`` in GestSync's published layout (weights under ``state_dict``)."""
    import torch

    from models.gestsync import GestSyncRGB

    torch.manual_seed(0)
    torch.save({"state_dict": GestSyncRGB().eval().state_dict(), "optimizer": None, "global_step": 0,
                "global_epoch": 0}, weights_dir / file)


def bench_stage3(cache, cfg, weights_dir, device, timer: Timer) -> None:
    from scipy.io import wavfile

    from pipeline.embed import load_speaker_model, sliding_embeddings
    from pipeline.vad import speech_segments

    rate_hz, audio = wavfile.read(cache.audio_wav)
    for method in ("webrtc", "silero"):
        start = time.perf_counter()
        speech_segments(audio, rate_hz, cfg.vad, method)
        timer.add(f"VAD {method}", time.perf_counter() - start)
    model = load_speaker_model(cfg.embed, weights_dir, device, "resnetse34")
    start = time.perf_counter()
    embeddings = sliding_embeddings(model, audio, rate_hz, cfg.embed)
    _sync(device)
    timer.add(f"ResNetSE34 embeddings ({device.type})", time.perf_counter() - start, len(embeddings), "windows")


def bench_fusion(rttm_dir: str, hours: float, cfg, modes: tuple[str, ...] = ("voxconverse", "improved")) -> None:
    """Stage 3's decision (``stage3.decide``) in each mode on ``hours`` of simulated evidence: the reference
    files of ``rttm_dir`` (sorted) laid end to end until the length is reached, simulated as one video."""
    from pipeline.config import with_overrides
    from pipeline.score import load_rttms
    from pipeline.simulate import PROFILES, run_mode, simulate_file

    reference = load_rttms(rttm_dir, "reference")
    segments, offset_s = [], 0.0
    while offset_s < hours * 3600:
        for file_id in sorted(reference):
            segments += [(s + offset_s, e + offset_s, f"{file_id}_{spk}") for s, e, spk in reference[file_id]]
            offset_s += max(e for _, e, _ in reference[file_id]) + 1.0
            if offset_s >= hours * 3600:
                break
    segments = [(s, e, spk) for s, e, spk in segments if s < hours * 3600]
    start = time.perf_counter()
    sim = simulate_file("benchmark", segments, PROFILES["default"], 0, int(cfg.syncnet.vshift_frames))
    duration_s = float(sim.media["duration_s"])
    timer = Timer(duration_s)
    timer.add(f"simulate {duration_s / 3600:.2f} h of evidence", time.perf_counter() - start)
    print(f"benchmark: {len(sim.tracks)} face tracks, {len({spk for _, _, spk in segments})} speakers")
    import pipeline.fusion.improved as improved_rule

    vb_seconds = [0.0]
    plain_vbx = improved_rule.vbx

    def timed_vbx(*args, **kwargs):  # the VB-HMM's share of the improved rule's time
        begin = time.perf_counter()
        try:
            return plain_vbx(*args, **kwargs)
        finally:
            vb_seconds[0] += time.perf_counter() - begin

    improved_rule.vbx = timed_vbx
    try:
        for mode in modes:
            start = time.perf_counter()
            turns = run_mode(sim, with_overrides(cfg, [f"diarise.mode={mode}"]))
            timer.add(f"fusion {mode} ({len(turns)} turns)", time.perf_counter() - start)
    finally:
        improved_rule.vbx = plain_vbx
    if "improved" in modes:
        timer.add("  of which the VB-HMM (improved)", vb_seconds[0])


def run_compare(args: argparse.Namespace, videofile: Path) -> int:
    """--compare: both checkouts' stage scripts side by side (scripts/bench_compare.py)."""
    import bench_compare

    from models.random_weights import write_random_checkpoints

    other = Path(args.compare)
    if not (other / "scripts" / "cluster.py").is_file():
        raise InputError(f"--compare {other}: not a checkout of this project (no scripts/cluster.py)")
    if not args.faces:
        raise InputError("--compare needs --faces (detection is not compared)")
    if args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    faces = input_file(args.faces, "faces file")
    scratch = Path(tempfile.mkdtemp(prefix="avdiarise-compare-"))
    try:
        if args.loop_s:
            videofile, faces = bench_compare.loop_clip(videofile, faces, args.loop_s, scratch / "clip")
        weights_dir = write_random_checkpoints(scratch / "weights")
        extra = [item for pair in (("--set", o) for o in args.overrides) for item in pair]
        print(f"benchmark: {videofile.name} here ({Path(__file__).resolve().parent.parent}) and in {other.resolve()}, "
              f"{args.repeats} alternating runs each, load {os.getloadavg()[0]:.2f}", flush=True)
        lines = bench_compare.compare(Path(__file__).resolve().parent.parent, other.resolve(), videofile, faces,
                                      weights_dir, scratch, args.repeats, extra)
        print("\n".join(lines))
        if args.json:
            Path(args.json).write_text(json.dumps({"video": str(videofile), "other": str(other), "lines": lines},
                                                  indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.videofile is None and args.fusion_hours is None:
        raise InputError("give --videofile (or --fusion_hours alone)")
    videofile = input_file(args.videofile, "video file") if args.videofile is not None else None  # before torch

    from models.loader import resolve_weights_dir
    from models.random_weights import write_random_checkpoints
    from pipeline.media import probe

    if args.fusion_hours is not None:
        bench_fusion(args.rttm_dir, args.fusion_hours, cfg)
        if videofile is None:
            return 0
    if args.compare is not None:
        return run_compare(args, videofile)
    device = resolve_device(args.device)
    from pipeline.runtime import apply_threads

    print(f"benchmark: {apply_threads(int(cfg.runtime.threads))} torch threads (runtime.threads, --threads)")
    skip = set(filter(None, args.skip.split(",")))
    info = probe(videofile)
    scratch = Path(tempfile.mkdtemp(prefix="avdiarise-bench-"))
    try:
        weights_dir = resolve_weights_dir(args.weights_dir)
        if not (weights_dir / cfg.detect.checkpoint).is_file():
            weights_dir = write_random_checkpoints(scratch / "weights")
            if "gestsync" not in skip:
                random_gestsync_checkpoint(weights_dir, str(cfg.gestsync.checkpoint))
            print(f"benchmark: seeded random checkpoints in {weights_dir} (published ones not found)", file=sys.stderr)
        else:
            if not (weights_dir / cfg.wav2lip.checkpoint).is_file():
                skip.add("wav2lip")
                print(f"benchmark: no {cfg.wav2lip.checkpoint} in {weights_dir}: the Wav2Lip expert is not timed", file=sys.stderr)
            if not (weights_dir / cfg.gestsync.checkpoint).is_file():
                skip.add("gestsync")
                print(f"benchmark: no {cfg.gestsync.checkpoint} in {weights_dir}: GestSync is not timed", file=sys.stderr)
        print(f"benchmark: {videofile.name}: {info.width}x{info.height}, {info.duration_s:.2f} s, device {device}")
        timer = Timer(info.duration_s or 1.0)
        bench_decode(videofile, cfg, timer)
        if "detect" not in skip:
            bench_detect(videofile, cfg, weights_dir, device, args.detect_frames, timer)
        cache = None
        if args.faces:
            cache, _ = bench_stage1(videofile, cfg, weights_dir, device, Path(args.faces), scratch / "data", timer)
        if "stage1" not in skip:
            cache, _ = bench_stage1(videofile, cfg, weights_dir, device, None, scratch / "data", timer)
        if cache is not None and "stage2" not in skip:
            bench_stage2(cache, cfg, weights_dir, device, timer)
        if cache is not None and "wav2lip" not in skip:
            bench_stage2_wav2lip(cache, cfg, weights_dir, device, timer)
        if cache is not None and "gestsync" not in skip:
            bench_stage2_gestsync(cache, cfg, weights_dir, device, timer)
        if cache is not None and "stage3" not in skip:
            bench_stage3(cache, cfg, weights_dir, device, timer)
        print(f"{'peak RSS':<34} {peak_rss_mb():9.0f} MB")
        if args.json:
            Path(args.json).write_text(json.dumps({"video": str(videofile), "device": str(device),
                                                   "rows": timer.rows, "peak_rss_mb": peak_rss_mb()}, indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
