"""Reintroduce, one at a time, the small bugs issue 13 listed, and check that the fast tests catch each.

Run by hand from the repository root (not collected by pytest: its name does not start with ``test_``):

    python tests/mutations.py

Each mutation edits one file, runs the listed tests, and restores the file whatever happens.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_reference_values.py", "tests/test_fuse.py", "tests/test_track_crop.py", "tests/test_fuse_improved.py"]

# (file, text to find, replacement)
MUTATIONS = [
    ("pipeline/fuse.py", "votes[confidence > threshold] += 1", "votes[confidence >= threshold] += 1"),
    ("pipeline/fuse.py", "if v > 0 and n > min_utterance_frames", "if v > 0 and n >= min_utterance_frames"),
    ("pipeline/fuse.py", "np.where(best >= min_similarity,", "np.where(best > min_similarity,"),
    ("pipeline/track.py", 'box_iou(det["bbox"], track[-1]["bbox"]) > iou_threshold',
     'box_iou(det["bbox"], track[-1]["bbox"]) >= iou_threshold'),
    ("configs/default.yaml", "iou_threshold: 0.5 ", "iou_threshold: 0.7 "),
    ("configs/default.yaml", "max_gap_frames: 25 ", "max_gap_frames: 20 "),
    ("configs/default.yaml", "min_utterance_frames: 15 ", "min_utterance_frames: 12 "),
    ("configs/default.yaml", "offscreen_min_similarity: 0.6 ", "offscreen_min_similarity: 0.3 "),
    ("configs/default.yaml", "conf_medfilt_frames: 25 ", "conf_medfilt_frames: 9 "),
    ("configs/default.yaml", "closing_frames: 12 ", "closing_frames: 10 "),
    ("configs/default.yaml", "majority_filter_frames: 25 ", "majority_filter_frames: 15 "),
    # issue 19 / 22: the improved rule's face and minimum-speech lines
    ("pipeline/fuse_improved.py", "seconds = np.bincount(labels, weights=step_s, minlength=gamma.shape[1])",
     "seconds = np.bincount(labels, minlength=gamma.shape[1]).astype(float)"),  # windows, not seconds
    ("pipeline/fuse_improved.py", "curves, max(thresholds), speech", "curves, min(thresholds), speech"),
    ("pipeline/fuse_improved.py", "    bias[np.flatnonzero(anchored.any(axis=1)), :] = -np.inf", "    pass"),
    ("pipeline/fuse_improved.py", "if float(cluster_mean @ step_points[face_of == face].mean(axis=0)) > threshold:",
     "if True:"),  # a stray anchored step hands a whole cluster to the face
]


def run(file: str, old: str, new: str) -> bool:
    """True when the tests fail with the mutation in place (the bug is caught)."""
    path = ROOT / file
    original = path.read_text(encoding="utf-8")
    if original.count(old) != 1:
        raise SystemExit(f"{file}: expected exactly one {old!r}")
    try:
        path.write_text(original.replace(old, new), encoding="utf-8")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TESTS],
                              cwd=ROOT, capture_output=True, text=True)
        return proc.returncode != 0
    finally:
        path.write_text(original, encoding="utf-8")


def main() -> int:
    missed = 0
    for file, old, new in MUTATIONS:
        caught = run(file, old, new)
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}  {file}: {old.strip()!r} -> {new.strip()!r}", flush=True)
    print(f"{len(MUTATIONS) - missed} of {len(MUTATIONS)} caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
