"""Side by side: the four stage scripts of two checkouts on the same clip, faces and weights, in alternating order.

Used by ``benchmark.py --compare OTHER_CHECKOUT``. Each stage runs as its own process (as a user runs it), so
its CPU seconds (user + system), wall time and peak RSS come from ``os.wait4``; run k starts with this checkout
when k is even and with the other when k is odd, so slow spells of a shared machine fall on both. After the
runs, every output file of the two checkouts is compared byte for byte, and the pickled intermediates value
for value (``embeddings``, ``faceid``, ``vad``, ``diarization``, ``sync``, ``activesd``); ``sync.pckl`` by its
evidence record's values, so that a checkout writing the typed record and one writing an older dict compare
equal when their numbers are (``pipeline.sync.evidence_record.SyncEvidence.from_legacy``).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.formats import (
    ACTIVESD_FILE,
    DIARISATION_FILE,
    EMBEDDINGS_FILE,
    FACEID_FILE,
    FACES_FILE,
    OFFSETS_FILE,
    SYNC_FILE,
    VAD_FILE,
)
from pipeline.sync.evidence_record import SyncEvidence

STAGES = ("stage1", "stage2", "stage3", "stage4")
REFERENCE = "clip"
# Outputs compared between the checkouts: files byte for byte, pickles value for value.
COMPARED_FILES = (OFFSETS_FILE, f"{REFERENCE}.rttm", f"{REFERENCE}_via.json")
COMPARED_PICKLES = (ACTIVESD_FILE, SYNC_FILE, VAD_FILE, EMBEDDINGS_FILE, FACEID_FILE, DIARISATION_FILE)


def loop_clip(videofile: Path, faces: Path, seconds: float, out_dir: Path) -> tuple[Path, Path]:
    """The clip's 25 fps frames and 16 kHz audio repeated until ``seconds`` (H.264 crf 18 + PCM in Matroska),
    with its detections repeated alike; the same files serve both checkouts."""
    import av

    from pipeline.media import decode_audio, iter_frames

    frames = list(iter_frames(videofile, 25.0))
    audio = decode_audio(videofile, 16000)
    detections = pickle.loads(faces.read_bytes())
    copies = max(1, int(np.ceil(seconds * 25 / len(frames))))
    out_dir.mkdir(parents=True, exist_ok=True)
    video_out, faces_out = out_dir / f"looped_{copies}x.mkv", out_dir / f"looped_{copies}x_faces.pckl"
    looped_faces = [[dict(det, frame=k * len(frames) + i) for det in (detections[i] if i < len(detections) else [])]
                    for k in range(copies) for i in range(len(frames))]
    faces_out.write_bytes(pickle.dumps(looped_faces, protocol=4))
    per_frame = 16000 // 25
    audio = np.resize(audio, len(frames) * per_frame)
    with av.open(str(video_out), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=Fraction(25), options={"crf": "18", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        sound = out.add_stream("pcm_s16le", rate=16000)
        sound.layout = "mono"
        for k in range(copies):
            for i, image in enumerate(frames):
                for packet in video.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                    out.mux(packet)
                chunk = av.AudioFrame.from_ndarray(audio[i * per_frame:(i + 1) * per_frame].reshape(1, -1),
                                                   format="s16", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, (k * len(frames) + i) * per_frame
                for packet in sound.encode(chunk):
                    out.mux(packet)
        for stream in (video, sound):
            for packet in stream.encode():
                out.mux(packet)
    return video_out, faces_out


def stage_commands(checkout: Path, videofile: Path, data_dir: Path, weights_dir: Path, out_dir: Path,
                   extra: list[str]) -> dict[str, list[str]]:
    """The command line of each stage script of ``checkout``."""
    common = ["--data_dir", str(data_dir), "--reference", REFERENCE, "--weights_dir", str(weights_dir),
              "--device", "cpu", "--quiet", *extra]
    scripts = checkout / "scripts"
    return {
        "stage1": [sys.executable, str(scripts / "run_pipeline.py"), "--videofile", str(videofile), *common],
        "stage2": [sys.executable, str(scripts / "run_syncnet.py"), *common],
        "stage3": [sys.executable, str(scripts / "cluster.py"), *common],
        "stage4": [sys.executable, str(scripts / "visualise.py"), *common, "--out_dir", str(out_dir)],
    }


# Runs one stage script and prints its rusage. A process's peak RSS counts the memory image it was forked from
# (Linux carries the forked copy's high-water mark over the exec), and this process holds the looped clip, so
# each stage is started from this small launcher instead: its own peak is then what ru_maxrss reports.
LAUNCHER = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"status": status, "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "maxrss_kb": usage.ru_maxrss}))
"""


def run_measured(command: list[str], cwd: Path) -> dict[str, float]:
    """Run one stage script; its user and system CPU seconds, wall seconds, peak RSS (MB) and the load before."""
    from pipeline.cpu_runtime import APPLIED

    env = {k: v for k, v in os.environ.items() if k not in APPLIED}  # the user's environment, not our defaults
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], cwd=str(cwd), env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    usage = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else {"status": -1}
    if usage["status"] != 0:
        errors = [line for line in done.stderr.splitlines() if "warning:" not in line] or done.stderr.splitlines()
        raise RuntimeError(f"{Path(command[1]).name} failed in {cwd}: {' / '.join(errors)[-400:]}")
    return {"user_s": usage["user_s"], "sys_s": usage["sys_s"], "cpu_s": usage["user_s"] + usage["sys_s"],
            "wall_s": wall, "peak_rss_mb": usage["maxrss_kb"] / 1024, "load_1min": load}


def one_run(checkout: Path, videofile: Path, faces: Path, weights_dir: Path, work: Path,
            extra: list[str]) -> dict[str, dict[str, float]]:
    """All four stages of ``checkout`` from an empty cache (faces injected); per-stage measurements."""
    shutil.rmtree(work, ignore_errors=True)
    data_dir, out_dir = work / "data", work / "out"
    (data_dir / "pywork" / REFERENCE).mkdir(parents=True)
    shutil.copy(faces, data_dir / "pywork" / REFERENCE / FACES_FILE)
    commands = stage_commands(checkout, videofile, data_dir, weights_dir, out_dir, extra)
    return {stage: run_measured(commands[stage], checkout) for stage in STAGES}


def _same(a, b) -> bool:
    """Equal values, NaN equal to NaN, arrays by dtype, shape and bytes."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return type(a) is type(b) and bool(a == b)


def _values(name: str, data: object) -> object:
    """What is compared of a pickled intermediate: ``sync.pckl`` as its record's plain data (read from either
    layout), the others as loaded."""
    if name != SYNC_FILE:
        return data
    typed = isinstance(data, dict) and "schema" in data
    return (SyncEvidence.from_pickle(data) if typed else SyncEvidence.from_legacy(data)).to_pickle()


def _content(path: Path) -> bytes:
    """The file's bytes; for a VIA project, without its creation time (``project.created``, the clock's)."""
    if path.name.endswith("_via.json"):
        project = json.loads(path.read_text())
        project.get("project", {}).pop("created", None)
        return json.dumps(project, sort_keys=True).encode()
    return path.read_bytes()


def compare_outputs(work_a: Path, work_b: Path) -> list[str]:
    """One line per compared output: 'same' or 'DIFFERENT' (missing on both sides counts as same)."""
    lines = []
    for name in COMPARED_FILES:
        found = [next(iter(sorted(w.rglob(name))), None) for w in (work_a, work_b)]
        same = found[0] is None and found[1] is None or (
            None not in found and _content(found[0]) == _content(found[1]))
        lines.append(f"{name:<20} {'same' if same else 'DIFFERENT'}")
    for name in COMPARED_PICKLES:
        paths = [w / "data" / "pywork" / REFERENCE / name for w in (work_a, work_b)]
        if not paths[0].is_file() and not paths[1].is_file():
            continue
        same = all(p.is_file() for p in paths) and _same(*(_values(name, pickle.loads(p.read_bytes())) for p in paths))
        lines.append(f"{name:<20} {'same' if same else 'DIFFERENT'}")
    return lines


def summarise(runs: dict[str, list[dict]], threads: int) -> list[str]:
    """Per stage and checkout: median CPU, user, system, wall seconds and peak RSS, the load; and the ratio."""
    lines = [f"torch threads per process: {threads}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
             f"{'stage':<8} {'checkout':<8} {'cpu s':>8} {'user s':>8} {'sys s':>7} {'wall s':>8} {'peak MB':>8} "
             f"{'load':>5}   cpu s of each run"]
    for stage in [*STAGES, "total"]:
        medians = {}
        for side, results in runs.items():
            rows = [({k: sum(r[s][k] for s in STAGES) for k in ("cpu_s", "user_s", "sys_s", "wall_s")}
                     | {"peak_rss_mb": max(r[s]["peak_rss_mb"] for s in STAGES),
                        "load_1min": float(np.mean([r[s]["load_1min"] for s in STAGES]))})
                    if stage == "total" else r[stage] for r in results]
            med = {k: float(np.median([row[k] for row in rows])) for k in rows[0]}
            medians[side] = med["cpu_s"]
            lines.append(f"{stage:<8} {side:<8} {med['cpu_s']:8.2f} {med['user_s']:8.2f} {med['sys_s']:7.2f} "
                         f"{med['wall_s']:8.2f} {med['peak_rss_mb']:8.0f} {med['load_1min']:5.2f}   "
                         + " ".join(f"{row['cpu_s']:.2f}" for row in rows))
        if medians.get("other"):
            lines.append(f"{stage:<8} ratio    {medians['this'] / medians['other']:8.3f} (this / other, CPU s)")
    return lines


def compare(this: Path, other: Path, videofile: Path, faces: Path, weights_dir: Path, scratch: Path,
            repeats: int, extra: list[str]) -> list[str]:
    """Alternating runs of both checkouts; the summary lines and the output comparison."""
    import torch

    runs: dict[str, list[dict]] = {"this": [], "other": []}
    for k in range(repeats):
        order = [("this", this), ("other", other)] if k % 2 == 0 else [("other", other), ("this", this)]
        for side, checkout in order:
            result = one_run(checkout, videofile, faces, weights_dir, scratch / side, extra)
            runs[side].append(result)
            print(f"run {k + 1}/{repeats} {side:<5} " + "  ".join(
                f"{s} {result[s]['cpu_s']:.2f} cpu-s (sys {result[s]['sys_s']:.2f}, {result[s]['peak_rss_mb']:.0f} MB, "
                f"load {result[s]['load_1min']:.2f})" for s in STAGES), flush=True)
    return summarise(runs, torch.get_num_threads()) + compare_outputs(scratch / "this", scratch / "other")
