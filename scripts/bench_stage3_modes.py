#!/usr/bin/env python
"""Stage 3 of one recording in each fusion mode, in CPU seconds: the whole stage from a cold stage-3 cache and the
decision step alone, and the VB-HMM's share of the improved mode's decision (issue 19's bar: stage 3 on a
one-hour recording at most 2x the faithful mode's time).

    python scripts/bench_stage3_modes.py --audiofile hour.wav [--vad webrtc] [--speaker_model resemblyzer] \
        [--repeats 3] [--json out.json]

Stages 1 and 2 run once in a temporary folder; then, for each mode, stage 3 (``pipeline.stage3.run_cluster``:
VAD, speaker embeddings, face identities, decision) runs on a fresh copy of that cache (cold), and the decision
alone (``pipeline.stage3.decide`` on the cached evidence) --repeats times, the modes alternating. CPU seconds are
this process's user + system time (every thread), so other jobs on a shared machine barely move them; wall
seconds are printed beside them. Make a one-hour recording with scripts/make_conversations.py (README,
"Improved fusion").

    python scripts/bench_stage3_modes.py --cached DATA_DIR [--repeats 3]

times the decision alone on the evidence that earlier runs cached in DATA_DIR (e.g. eval_conversations.py's
cache of the development and check conversations), laid end to end as one recording: no network runs.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import add_config_args, add_runtime_args, config_from_args, input_file, resolve_device, run_main  # noqa: E402
from pipeline.errors import InputError  # noqa: E402
from pipeline.formats import EMBEDDINGS_FILE, FACEID_FILE, MEDIA_FILE, VAD_FILE  # noqa: E402

MODES = ("voxconverse", "improved")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_stage3_modes.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audiofile", default=None, help="the recording (audio or video)")
    parser.add_argument("--cached", default=None, metavar="DATA_DIR",
                        help="instead of --audiofile: time the decision alone on the stage-3 evidence already cached "
                             "in DATA_DIR (every pywork/REF with vad.pckl and embeddings.pckl, audio only, sorted), "
                             "laid end to end as one recording")
    parser.add_argument("--vad", default="webrtc", help="VAD method (default webrtc)")
    parser.add_argument("--speaker_model", default="resemblyzer", help="speaker model (default resemblyzer)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each mode's decision (default 3)")
    parser.add_argument("--cold", default=",".join(MODES),
                        help="comma-separated modes whose whole stage 3 is timed from a cold cache (default: both; "
                             "VAD and embeddings, the bulk, are the same in every mode); the decisions run on the "
                             "cache of the last one")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    add_config_args(parser)
    add_runtime_args(parser, ignored=("--force", "--quiet"), why="every step is timed from scratch")
    return parser


def cpu_s() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(step: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, CPU seconds, wall seconds) of ``step()``."""
    cpu0, wall0 = cpu_s(), time.perf_counter()
    result = step()
    return result, cpu_s() - cpu0, time.perf_counter() - wall0


def cached_decision(cache: Any, cfg: Any) -> Callable[[], Any]:
    """The decision step alone on ``cache``'s stage-3 evidence (as ``compute_diarisation`` calls it)."""
    from pipeline import stage3
    from pipeline.fusion import uses_backend

    media_info, tracks = stage3.require_stage1(cache)
    distances, sync = stage3.require_stage2(cache, len(tracks))
    curves, _ = stage3.fusion_curves(cfg, sync, len(distances))
    vad, embeddings = cache.load_pickle(VAD_FILE), cache.load_pickle(EMBEDDINGS_FILE)
    face_ids = cache.load_pickle(FACEID_FILE)
    evidence = stage3.track_evidence(tracks, distances, vad, face_ids, curves)
    model = str(embeddings.get("model", ""))

    def decide() -> Any:
        backend = None
        if uses_backend(stage3.fusion_mode(cfg)):
            backend = stage3.speaker_backend(cfg, model, embeddings["embeddings"], None)
        return stage3.decide(cfg, evidence, vad["audio"], embeddings["embeddings"], float(embeddings["hop_s"]),
                             int(media_info["num_frames"]), media_info.get("duration_s"), sync,
                             speaker_model=model, backend=backend)

    return decide


def vbx_timer() -> tuple[list[float], Callable[[], None]]:
    """CPU seconds spent in the improved rule's VB-HMM (a running total) and a function that stops counting."""
    import pipeline.fusion.improved as improved_rule

    spent = [0.0]
    plain = improved_rule.vbx

    def counted(*args: Any, **kwargs: Any) -> Any:
        start = cpu_s()
        try:
            return plain(*args, **kwargs)
        finally:
            spent[0] += cpu_s() - start

    improved_rule.vbx = counted

    def stop() -> None:
        improved_rule.vbx = plain

    return spent, stop


def time_decisions(decisions: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Any]:
    """Each mode's decision ``repeats`` times, the modes alternating, after one warm-up each; prints every run
    and the medians; (CPU seconds per mode, the VB-HMM's CPU seconds per improved run)."""
    spent, stop = vbx_timer()
    runs: dict[str, list[float]] = {mode: [] for mode in decisions}
    vb_runs: list[float] = []
    try:
        for decide in decisions.values():
            decide()  # warm-up: imports, the back-end's note
        for _ in range(repeats):
            for mode, decide in decisions.items():
                before = spent[0]
                _, cpu, wall = timed(decide)
                runs[mode].append(cpu)
                if mode == "improved":
                    vb_runs.append(spent[0] - before)
                print(f"decision alone, {mode:<12} {cpu:8.2f} CPU s {wall:8.2f} s wall", flush=True)
    finally:
        stop()
    median = {mode: sorted(v)[len(v) // 2] for mode, v in runs.items()}
    vb = sorted(vb_runs)[len(vb_runs) // 2]
    ratio = median["improved"] / max(median["voxconverse"], 1e-9)
    print(f"decision alone (median CPU s): voxconverse {median['voxconverse']:.2f}, improved "
          f"{median['improved']:.2f} ({ratio:.1f}x), of which the VB-HMM {vb:.2f} "
          f"({100 * vb / max(median['improved'], 1e-9):.0f} %)")
    return {"decision_cpu_s": runs, "vbhmm_cpu_s": vb_runs}


def laid_end_to_end(data_dir: Path, hop_s: float) -> tuple[list, Any, int, float, list[str]]:
    """The cached audio-only evidence of every reference in ``data_dir`` as one recording: (VAD segments,
    embeddings [n, dim], frames, seconds, references). Each file starts on a multiple of the hop; the windows
    a file's end leaves uncovered repeat its last window (they lie outside its speech)."""
    import pickle

    import numpy as np

    refs = sorted(p.name for p in (data_dir / "pywork").glob("*")
                  if (p / VAD_FILE).is_file() and (p / EMBEDDINGS_FILE).is_file() and (p / MEDIA_FILE).is_file())
    if not refs:
        raise InputError(f"--cached {data_dir}: no pywork/REF folder with vad.pckl, embeddings.pckl and media.pckl")
    segments, blocks, offset_s = [], [], 0.0
    for ref in refs:
        folder = data_dir / "pywork" / ref
        with open(folder / VAD_FILE, "rb") as f:
            vad = pickle.load(f)
        with open(folder / EMBEDDINGS_FILE, "rb") as f:
            emb = pickle.load(f)
        with open(folder / MEDIA_FILE, "rb") as f:
            media = pickle.load(f)
        if vad.get("tracks") or abs(float(emb["hop_s"]) - hop_s) > 1e-9:
            raise InputError(f"--cached: {ref} has face tracks or another hop ({emb['hop_s']} s): audio only, "
                             f"{hop_s} s hop")
        windows = np.asarray(emb["embeddings"], dtype=np.float64)
        slots = int(np.ceil(float(media["duration_s"]) / hop_s))
        blocks.append(np.concatenate([windows, np.repeat(windows[-1:], max(slots - len(windows), 0), axis=0)]))
        segments += [(s + offset_s, e + offset_s) for s, e in vad["audio"]]
        offset_s += slots * hop_s
    return segments, np.concatenate(blocks), int(np.ceil(offset_s * 25)), offset_s, refs


def bench_cached(args: argparse.Namespace, cfg: Any) -> int:
    """--cached: the decision alone in each mode on the cached evidence laid end to end."""
    from pipeline.config import with_overrides
    from pipeline.stage3 import decide, speaker_backend
    from pipeline.sync.evidence_record import SyncEvidence

    hop_s = float(cfg.embed.hop_s)
    segments, embeddings, num_frames, duration_s, refs = laid_end_to_end(Path(args.cached), hop_s)
    sync = SyncEvidence(model="syncnet", metric="cosine", score_name="min_dist", vshift_frames=cfg.syncnet.vshift_frames)
    print(f"bench_stage3_modes: {len(refs)} cached recordings of {args.cached} end to end, {duration_s / 3600:.2f} h, "
          f"{len(embeddings)} windows, speaker model {args.speaker_model}", flush=True)

    def decision(mode: str) -> Callable[[], Any]:
        mode_cfg = with_overrides(cfg, [f"diarise.mode={mode}"])
        return lambda: decide(mode_cfg, [], segments, embeddings, hop_s, num_frames, duration_s, sync,
                              speaker_model=args.speaker_model,
                              backend=speaker_backend(mode_cfg, args.speaker_model, embeddings, args.weights_dir))

    figures = {"cached": str(args.cached), "references": refs, "duration_s": duration_s,
               **time_decisions({mode: decision(mode) for mode in MODES}, args.repeats)}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def main(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    if (args.audiofile is None) == (args.cached is None):
        raise InputError("give --audiofile or --cached (one of them)")
    if args.cached is not None:
        return bench_cached(args, config_from_args(args))
    audiofile = input_file(args.audiofile, "--audiofile")
    cold_modes = [m for m in args.cold.split(",") if m]
    if not cold_modes or set(cold_modes) - set(MODES):
        raise InputError(f"--cold takes one or more of {', '.join(MODES)}, got {args.cold!r}")
    cfg = config_from_args(args)
    from pipeline.cache import Cache
    from pipeline.config import with_overrides
    from pipeline.runtime import apply_threads
    from pipeline.stage1 import run_pipeline
    from pipeline.stage2 import run_stage2
    from pipeline.stage3 import run_cluster

    device = resolve_device(args.device)
    threads = apply_threads(int(cfg.runtime.threads))
    cfgs = {mode: with_overrides(cfg, [f"diarise.mode={mode}"]) for mode in MODES}
    scratch = Path(tempfile.mkdtemp(prefix="avdiarise-bench3-"))
    figures: dict[str, Any] = {"audiofile": str(audiofile), "vad": args.vad, "speaker_model": args.speaker_model,
                               "torch_threads": threads}
    try:
        base = Cache(scratch / "base", "rec")
        run_pipeline(audiofile, base, cfg, args.weights_dir, device)
        run_stage2(base, cfg, args.weights_dir, device)
        duration_s = float(base.load_pickle(MEDIA_FILE)["duration_s"])
        figures["duration_s"] = duration_s
        print(f"bench_stage3_modes: {audiofile.name}, {duration_s / 3600:.2f} h, vad {args.vad}, "
              f"{args.speaker_model}, {threads} torch threads", flush=True)
        warm = None
        for mode in cold_modes:
            folder = scratch / mode
            shutil.copytree(scratch / "base", folder)
            cache = Cache(folder, "rec")
            turns, cpu, wall = timed(lambda c=cache, m=mode: run_cluster(c, cfgs[m], args.weights_dir, device,
                                                                         args.vad, args.speaker_model))
            figures[f"cold_{mode}"] = {"cpu_s": cpu, "wall_s": wall, "turns": len(turns)}
            print(f"stage 3 cold, {mode:<12} {cpu:8.1f} CPU s {wall:8.1f} s wall  ({len(turns)} turns)", flush=True)
            warm = cache
        figures.update(time_decisions({mode: cached_decision(warm, cfgs[mode]) for mode in MODES}, args.repeats))
        if len(cold_modes) == len(MODES):
            cold = {mode: figures[f"cold_{mode}"]["cpu_s"] for mode in MODES}
            print(f"stage 3 cold (CPU s): voxconverse {cold['voxconverse']:.1f}, improved {cold['improved']:.1f} "
                  f"({cold['improved'] / max(cold['voxconverse'], 1e-9):.2f}x)")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
