"""Store ffmpeg 5.1's audio and autorotated frames for tests/test_media.py (needs the ffmpeg program; CI does not).

    apt-get install ffmpeg   # Debian 12: ffmpeg 5.1
    python tests/make_ffmpeg_references.py

Writes tests/data/ffmpeg51_audio.npz: per clip, ffmpeg's `-async 1 -ac 1 -ar 16000` sample count, the sha256 of
all its samples, and four 0.25 s excerpts of its samples (at 10 %, 35 %, 60 % and 85 % of the clip) to compare
sample by sample; and tests/data/ffmpeg51_rotation.json: the md5 of the first frame ffmpeg shows (autorotation on,
its default) of each rotated copy the test makes.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import VIDEOS  # noqa: E402
from tests.test_media import AUDIO_CLIPS, ROTATION_CLIP, ROTATIONS, audio_excerpt_starts, rotated_copy  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


def ffmpeg_audio(path: Path) -> np.ndarray:
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-async", "1", "-ac", "1", "-ar", "16000", "-vn",
                          "-f", "s16le", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, dtype="<i2")


def ffmpeg_first_frame_md5(path: Path) -> str:
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-pix_fmt", "bgr24", "-f",
                          "rawvideo", "-"], capture_output=True, check=True).stdout
    return hashlib.md5(out).hexdigest()


def main() -> int:
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True).stdout.split()[2]
    arrays: dict[str, np.ndarray] = {"ffmpeg_version": np.array(version)}
    for name in AUDIO_CLIPS:
        samples = ffmpeg_audio(VIDEOS / f"{name}.mp4")
        arrays[f"{name}/num_samples"] = np.array(len(samples))
        arrays[f"{name}/sha256"] = np.array(hashlib.sha256(samples.tobytes()).hexdigest())
        for i, start in enumerate(audio_excerpt_starts(len(samples))):
            arrays[f"{name}/excerpt{i}"] = samples[start:start + 4000].copy()
        print(name, len(samples))
    np.savez_compressed(DATA / "ffmpeg51_audio.npz", **arrays)
    rotation = {"ffmpeg_version": version, "clip": ROTATION_CLIP, "first_frame_md5": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for degrees in ROTATIONS:
            copy = rotated_copy(VIDEOS / f"{ROTATION_CLIP}.mp4", Path(tmp) / f"r{degrees}.mp4", degrees)
            rotation["first_frame_md5"][str(degrees)] = ffmpeg_first_frame_md5(copy)
    (DATA / "ffmpeg51_rotation.json").write_text(json.dumps(rotation, indent=1) + "\n")
    print(rotation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
