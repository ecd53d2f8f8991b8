"""Reintroduce, one at a time, the small bugs issues 13 and 22 listed, and check that the tests catch each.

Run by hand from the repository root (not collected by pytest: its name does not start with ``test_``):

    python tests/mutations.py

Each mutation edits one file, runs its tests (``TESTS``, or the list given with the mutation), and restores the
file whatever happens. ``python tests/mutations.py WORD`` runs only the mutations whose file or text holds WORD.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_reference_values.py", "tests/test_fuse.py", "tests/test_track_crop.py"]

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
]

# Issue 22: bugs the whole suite missed, each with the tests that now catch it (file, find, replace, tests).
SILENT = "tests/test_nothing_silent.py"
MUTATIONS_22 = [
    ("pipeline/fuse_argmax.py", "turns_from_activities(tracks, activities, 0,",  # a minimum length on won runs
     "turns_from_activities(tracks, activities, int(cfg_diarise.min_utterance_frames),", ["tests/test_fuse_argmax.py"]),
    ("pipeline/config.py", "            raise _unknown_key(base, key, where)",  # an unknown key ignored
     "            continue", [SILENT + "::test_misspelt_config_key_is_one_line_naming_the_closest_key"]),
    ("pipeline/lip_gesture.py", '        extra["wav2lip_conf_thresholds"] = [float(v) for v in cfg.wav2lip.conf_thresholds]',
     "        pass", [SILENT + "::test_stage3_reruns_when_wav2lips_thresholds_change_under_gestsync_with_wav2lip_lips"]),
    ("pipeline/sync_gestsync.py", '        "persons.pckl": persons_sha256,\n', "",
     [SILENT + "::test_gestsync_stage2_key_changes_when_persons_pckl_is_edited"]),
    ("pipeline/sync_wav2lip.py", "    return resize_face(frame_bgr[top:bottom, left:right])",  # RGB to the BGR expert
     "    return resize_face(frame_bgr[top:bottom, left:right, ::-1])",
     [SILENT + "::test_wav2lip_expert_sees_bgr_as_wav2lip_reads_with_cv2"]),
    ("pipeline/sync_gestsync.py", "cv2.cvtColor(np.ascontiguousarray(frame_bgr[y1:y2, x1:x2]), cv2.COLOR_BGR2RGB)",
     "np.ascontiguousarray(frame_bgr[y1:y2, x1:x2])", [SILENT + "::test_gestsync_sees_rgb_as_gestsync_reads_its_frames"]),
    ("pipeline/preflight.py", '    names = [model] + ([lip_model(cfg)] if model == "gestsync" and lip_model(cfg) else [])',
     "    names = [model]", [SILENT + "::test_preflight_tries_gestsyncs_lip_model"]),
    ("models/wav2lip.py", "load_checkpoint(model, file, weights_dir, convert=strip_module_prefix, probe=_probe)",
     "load_checkpoint(model, file, weights_dir, convert=strip_module_prefix)",
     [SILENT + "::test_preflight_tries_gestsyncs_lip_model"]),
    ("pipeline/stage1.py", "    if not path.is_file() or _written_by_pipeline(cache):", "    if not path.is_file():",
     [SILENT + "::test_faces_pckl_written_but_not_yet_recorded_is_the_pipelines"]),
    ("pipeline/media.py", "        if bad:\n", "        if False:\n", [SILENT + "::test_float_wav_with_nan_samples_is_one_line"]),
    ("pipeline/stage1.py", "max_missing_s=float(cfg.input.max_missing_s))\n    if samples.size",
     "max_missing_s=None)\n    if samples.size", [SILENT + "::test_faststart_mp4_cut_short_is_one_line_and_nothing_written"]),
]


def run(file: str, old: str, new: str, tests: list[str] | None = None) -> bool:
    """True when the tests fail with the mutation in place (the bug is caught)."""
    path = ROOT / file
    original = path.read_text(encoding="utf-8")
    if original.count(old) != 1:
        raise SystemExit(f"{file}: expected exactly one {old!r}")
    try:
        path.write_text(original.replace(old, new), encoding="utf-8")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *(tests or TESTS)],
                              cwd=ROOT, capture_output=True, text=True)
        return proc.returncode != 0
    finally:
        path.write_text(original, encoding="utf-8")


def main() -> int:
    word = sys.argv[1] if len(sys.argv) > 1 else ""
    chosen = [(file, old, new, None) for file, old, new in MUTATIONS] + MUTATIONS_22
    chosen = [m for m in chosen if word in m[0] or word in m[1]]
    missed = 0
    for file, old, new, tests in chosen:
        caught = run(file, old, new, tests)
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}  {file}: {old.strip()!r} -> {new.strip()!r}", flush=True)
    print(f"{len(chosen) - missed} of {len(chosen)} caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
