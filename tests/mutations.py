"""Reintroduce, one at a time, the small bugs issues 13 and 22 listed, and check that the fast tests catch each.

Run by hand from the repository root (not collected by pytest: its name does not start with ``test_``):

    python tests/mutations.py [WORD ...]    # WORD: only the mutations of files whose path contains it

Each mutation edits one file, runs its tests (``TESTS``, or the list given with the mutation), and restores the
file whatever happens.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_reference_values.py", "tests/test_fuse.py", "tests/test_track_crop.py",
         "tests/test_fuse_improved.py"]

# Issue 22's corpus and report bugs, with the fast tests that catch them (a few seconds, no video decoded).
CORPUS_TESTS = ["tests/test_corpus.py", "-k", "reference_names or default_workers or faces or second_run or file_id"]
REPORT_TESTS = ["tests/test_corpus_report_browser.py", "-k", "numbers"]
PLOT_TESTS = ["tests/test_plots_legible.py"]

# (file, text to find, replacement[, tests to run instead of TESTS])
MUTATIONS = [
    ("pipeline/fusion/voxconverse.py", "votes[confidence > threshold] += 1", "votes[confidence >= threshold] += 1"),
    ("pipeline/fusion/voxconverse.py", "if v > 0 and n > min_utterance_frames", "if v > 0 and n >= min_utterance_frames"),
    ("pipeline/fusion/voxconverse.py", "np.where(best >= min_similarity,", "np.where(best > min_similarity,"),
    ("pipeline/track.py", 'box_iou(det["bbox"], track[-1]["bbox"]) > iou_threshold',
     'box_iou(det["bbox"], track[-1]["bbox"]) >= iou_threshold'),
    ("configs/default.yaml", "iou_threshold: 0.5 ", "iou_threshold: 0.7 "),
    ("configs/default.yaml", "max_gap_frames: 25 ", "max_gap_frames: 20 "),
    ("configs/default.yaml", "min_utterance_frames: 15 ", "min_utterance_frames: 12 "),
    ("configs/default.yaml", "offscreen_min_similarity: 0.6 ", "offscreen_min_similarity: 0.3 "),
    ("configs/default.yaml", "conf_medfilt_frames: 25 ", "conf_medfilt_frames: 9 "),
    ("configs/default.yaml", "closing_frames: 12 ", "closing_frames: 10 "),
    ("configs/default.yaml", "majority_filter_frames: 25 ", "majority_filter_frames: 15 "),
    # a third clashing video name gets the second one's name again: two videos share a cache
    ("pipeline/corpus.py", "        while reference in taken:", "        if reference in taken:", CORPUS_TESTS),
    # 32 workers on a 16-core 128 GB machine
    ("pipeline/corpus.py", "return max(1, min(cores // 2, int(memory_gb // 4)))",
     "return max(1, max(cores // 2, int(memory_gb // 4)))", CORPUS_TESTS),
    # --faces without {stem}: every video gets the same detections
    ("pipeline/corpus.py", """    if len(paths) > 1 and "{stem}" not in pattern:""", "    if False:", CORPUS_TESTS),
    # two corpus runs on one out_dir
    ("pipeline/corpus.py", "        claim_lock(handle, lambda holder:", "        (lambda handle, *_: None)(handle, lambda holder:",
     CORPUS_TESTS),
    # a rerun that reused the cache reports its own cache hits' times (0.0/0.1/0.2 s)
    ("pipeline/api.py", 'computed[stage] = float(earlier["seconds"])', "computed[stage] = float(took_s)",
     CORPUS_TESTS[:2] + [CORPUS_TESTS[2] + " or stage_times"]),
    # a per-video DER shown as the fraction (0.12 % for 12 %)
    ("pipeline/report.py", 'return f"{100 * fraction:.2f} %"', 'return f"{fraction:.2f} %"', REPORT_TESTS),
    # the sync plots: Wav2Lip/GestSync legend inside the axes, thresholds without a legend entry, a title past
    # the figure's edge, threshold lines across the audio-only text
    ("pipeline/plots.py", "    _legend_beside(axes, len(curves))", '    axes.legend(loc="upper right", fontsize="small")',
     PLOT_TESTS),
    ("pipeline/plots.py", 'label="vote thresholds" if k == 0 else None)', "label=None)", PLOT_TESTS),
    ("pipeline/plots.py", "        if box.width <= room:", "        if True:", PLOT_TESTS),
    ("pipeline/plots.py", "_thresholds(axes, thresholds if len(curves) else ())", "_thresholds(axes, thresholds)",
     PLOT_TESTS),
    ("pipeline/plots.py", "_thresholds(axes, thresholds if len(confidences) else ())", "_thresholds(axes, thresholds)",
     PLOT_TESTS),
    # issue 19 / 22: the improved rule's face and minimum-speech lines
    ("pipeline/fusion/improved.py", "seconds = np.bincount(labels, weights=step_s, minlength=gamma.shape[1])",
     "seconds = np.bincount(labels, minlength=gamma.shape[1]).astype(float)"),  # windows, not seconds
    ("pipeline/fusion/improved.py", "curves, max(thresholds), speech", "curves, min(thresholds), speech"),
    ("pipeline/fusion/improved.py", "    bias[np.flatnonzero(anchored.any(axis=1)), :] = -np.inf", "    pass"),
    ("pipeline/fusion/improved.py", "if float(cluster_mean @ step_points[face_of == face].mean(axis=0)) > threshold:",
     "if True:"),  # a stray anchored step hands a whole cluster to the face
]

# Issue 22: bugs the whole suite missed, each with the tests that now catch it (file, find, replace, tests).
SILENT = "tests/test_nothing_silent.py"
MUTATIONS_22 = [
    ("pipeline/fusion/argmax.py", "turns_from_activities(tracks, activities, 0,",  # a minimum length on won runs
     "turns_from_activities(tracks, activities, int(cfg_diarise.min_utterance_frames),", ["tests/test_fuse_argmax.py"]),
    ("pipeline/config.py", "            raise _unknown_key(base, key, where)",  # an unknown key ignored
     "            continue", [SILENT + "::test_misspelt_config_key_is_one_line_naming_the_closest_key"]),
    ("pipeline/sync/lip_gesture.py", "            **(model.threshold_key(cfg) if model is not None else {})}",
     "            }", [SILENT + "::test_stage3_reruns_when_wav2lips_thresholds_change_under_gestsync_with_wav2lip_lips"]),
    ("pipeline/sync/gestsync.py", '        PERSONS_FILE: persons_sha256,\n', "",
     [SILENT + "::test_gestsync_stage2_key_changes_when_persons_pckl_is_edited"]),
    ("pipeline/sync/wav2lip.py", "    return resize_face(frame_bgr[top:bottom, left:right])",  # RGB to the BGR expert
     "    return resize_face(frame_bgr[top:bottom, left:right, ::-1])",
     [SILENT + "::test_wav2lip_expert_sees_bgr_as_wav2lip_reads_with_cv2"]),
    ("pipeline/sync/gestsync_regions.py", "crop = cv2.cvtColor(square_crop(frame_bgr, square, settings), cv2.COLOR_BGR2RGB)",
     "crop = square_crop(frame_bgr, square, settings)", [SILENT + "::test_gestsync_sees_rgb_as_gestsync_reads_its_frames"]),
    ("pipeline/sync/gestsync.py", "                *(lips.networks(cfg, weights_dir) if lips is not None else [])]",
     "                ]", [SILENT + "::test_preflight_tries_gestsyncs_lip_model"]),
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


def main(words: list[str]) -> int:
    missed = 0
    every = [(file, old, new, *tests) for file, old, new, *tests in MUTATIONS] + MUTATIONS_22
    chosen = [m for m in every if not words or any(word in m[0] or word in m[1] for word in words)]
    for file, old, new, *tests in chosen:
        caught = run(file, old, new, *tests)
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}  {file}: {old.strip()!r} -> {new.strip()!r}", flush=True)
    print(f"{len(chosen) - missed} of {len(chosen)} caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
