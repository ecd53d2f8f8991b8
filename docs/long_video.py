"""A long synthetic video through all four stages, one process per stage: wall time and peak RSS of each.

    nice -n 10 python docs/long_video.py --minutes 150 --work /tmp/long

The video is 160 x 120 at 25 fps (MPEG-4) with real speech looped from ../shared/data (16 kHz PCM in
Matroska); a drawn face moves across the frame for ``--face_s`` seconds and its detections are injected as
a user faces.pckl (S3FD is not run). Checkpoints are seeded random weights in the published formats (speed
does not depend on their values). Prints a Markdown table row per stage.
"""
from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from scipy.io import wavfile

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
WIDTH, HEIGHT, FPS, RATE_HZ = 160, 120, 25, 16000


def speech(num_samples: int) -> np.ndarray:
    """Real speech from ../shared/data looped to ``num_samples`` int16 samples."""
    parts = [wavfile.read(SHARED / "audio" / "pyannote_sample" / "sample.wav")[1]]
    for name in ("tst00.wav", "tst01.wav"):
        rate, audio = wavfile.read(SHARED / "audio" / "pyannote_debug" / name)
        if rate == RATE_HZ:
            audio = audio if audio.dtype == np.int16 else np.clip(audio * 32768, -32768, 32767).astype(np.int16)
            parts.append(audio.reshape(-1))
    loop = np.concatenate(parts)
    return np.resize(loop, num_samples)


def face_box(frame_idx: int, first: int) -> list[float]:
    """The drawn face's box on ``frame_idx`` (it drifts left and right)."""
    x = 60 + 20 * np.sin((frame_idx - first) / 50)
    return [float(x), 30.0, float(x + 48), 90.0]


def make_video(path: Path, minutes: float, face_first: int, face_frames: int) -> int:
    """Write the video; returns its number of frames."""
    num_frames = int(minutes * 60 * FPS)
    audio = speech(num_frames * RATE_HZ // FPS)
    grey = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    with av.open(str(path), "w", format="matroska") as out:
        video = out.add_stream("mpeg4", rate=Fraction(FPS))
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        sound = out.add_stream("pcm_s16le", rate=RATE_HZ)
        sound.layout = "mono"
        per_frame = RATE_HZ // FPS
        for k in range(num_frames):
            image = grey
            if face_first <= k < face_first + face_frames:
                image = grey.copy()
                x1, y1, x2, y2 = (int(v) for v in face_box(k, face_first))
                mouth = 4 + int(6 * abs(np.sin(k / 3)))
                image[y1:y2, x1:x2] = (150, 170, 210)
                image[y1 + 15:y1 + 22, x1 + 10:x1 + 18] = 30
                image[y1 + 15:y1 + 22, x2 - 18:x2 - 10] = 30
                image[y2 - 20:y2 - 20 + mouth, x1 + 14:x2 - 14] = 20
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
            chunk = av.AudioFrame.from_ndarray(audio[k * per_frame:(k + 1) * per_frame].reshape(1, -1), format="s16",
                                               layout="mono")
            chunk.sample_rate, chunk.pts = RATE_HZ, k * per_frame
            for packet in sound.encode(chunk):
                out.mux(packet)
        for stream in (video, sound):
            for packet in stream.encode():
                out.mux(packet)
    return num_frames


def make_weights(folder: Path) -> None:
    sys.path.insert(0, str(REPO))
    from tests import fakespeaker, fakeweights

    folder.mkdir(parents=True, exist_ok=True)
    for seed, (manifest, name) in enumerate([("s3fd.json", "s3fd.model"), ("syncnet.json", "syncnet.model"),
                                             ("resnetse34v2.json", "speakernet.model"),
                                             ("vggface2_resnet50.json", "faceembedding.model")]):
        state = (fakespeaker.resnetse34_state(seed=seed) if name == "speakernet.model"
                 else fakeweights.random_state_dict(manifest, seed=seed))
        fakeweights.save_checkpoint(state, folder / name)


def run_stage(label: str, args: list[str], log: Path) -> tuple[float, float, str]:
    """Run one stage script at nice 10; (wall seconds, peak RSS of that process in MB, its last output line)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(["nice", "-n", "10", sys.executable, *args, "--quiet"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (nice execs python in place)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.monotonic() - start
    lines = log.read_text().strip().splitlines() or [""]
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}): {lines[-1]}")
    return wall_s, usage.ru_maxrss / 1024, lines[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=150.0)
    parser.add_argument("--face_s", type=float, default=60.0, help="seconds with a drawn, detected face")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--stages", default="1234", help="which stages to run, e.g. 12")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    video = args.work / "long.mkv"
    face_first = int(min(60.0, args.minutes * 15) * FPS)  # one minute in, or a quarter of a short video
    face_frames = int(args.face_s * FPS)
    start = time.monotonic()
    num_frames = make_video(video, args.minutes, face_first, face_frames)
    print(f"made {video} ({num_frames} frames) in {time.monotonic() - start:.0f} s", flush=True)
    make_weights(args.work / "weights")
    data = args.work / "data"
    work = data / "pywork" / "long"
    work.mkdir(parents=True, exist_ok=True)
    faces = [[{"frame": k, "bbox": face_box(k, face_first), "conf": 0.99}]
             if face_first <= k < face_first + face_frames else [] for k in range(num_frames)]
    with open(work / "faces.pckl", "wb") as handle:
        pickle.dump(faces, handle)
    common = ["--data_dir", str(data), "--reference", "long"]
    weights = ["--weights_dir", str(args.work / "weights"), "--device", "cpu"]
    stages = [
        ("1 run_pipeline (faces injected)", ["scripts/run_pipeline.py", "--videofile", str(video), *common, *weights]),
        ("2 run_syncnet", ["scripts/run_syncnet.py", *common, *weights]),
        ("3 cluster (webrtc, ResNetSE34)", ["scripts/cluster.py", *common, *weights]),
        ("4 visualise (no video)", ["scripts/visualise.py", *common]),
    ]
    print(f"| stage ({args.minutes:g} min, {WIDTH}x{HEIGHT}, {args.face_s:g} s of face) | wall | peak RSS |")
    print("|---|---|---|")
    for label, stage_args in stages:
        if label[0] not in args.stages:
            continue
        wall_s, peak_mb, last = run_stage(label, stage_args, args.work / f"stage{label[0]}.log")
        print(f"| {label} | {wall_s:.0f} s | {peak_mb:.0f} MB |  <!-- {last} -->", flush=True)


if __name__ == "__main__":
    main()
