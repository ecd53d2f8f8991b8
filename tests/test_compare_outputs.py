"""scripts/compare_outputs.py's own logic: which differences count, and bad input in one line (no diarize.py run)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "compare_outputs.py"


def _load():
    spec = importlib.util.spec_from_file_location("compare_outputs_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare_outputs = _load()

VIA = '{\n "project": {\n  "pname": "x diarisation",\n  "created": %d,\n  "vid_list": []\n },\n "metadata": {}\n}'


def test_only_the_via_run_time_may_differ(tmp_path):
    base, current = tmp_path / "base", tmp_path / "current"
    base.mkdir()
    current.mkdir()
    (base / "x_via.json").write_text(VIA % 1796606506643)
    (current / "x_via.json").write_text(VIA % 1796606999999)
    assert compare_outputs.first_difference(base / "x_via.json", current / "x_via.json") is None
    (current / "x_via.json").write_text((VIA % 1).replace("x diarisation", "y diarisation"))
    assert compare_outputs.first_difference(base / "x_via.json", current / "x_via.json") == (
        "x_via.json line 3: base '  \"pname\": \"x diarisation\",' current '  \"pname\": \"y diarisation\",'")
    for name in ("x.rttm", "offsets.txt"):  # the run-time rule is the VIA's alone
        (base / name).write_text('  "created": 1,\n')
        (current / name).write_text('  "created": 2,\n')
        assert compare_outputs.first_difference(base / name, current / name).startswith(f"{name} line 1:")


def test_a_missing_or_shorter_file_is_a_difference(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    (tmp_path / "b" / "offsets.txt").write_text("# header\n00000\t-7\t0.995\t0.000\n")
    (tmp_path / "c" / "offsets.txt").write_text("# header\n")
    assert compare_outputs.first_difference(tmp_path / "b" / "offsets.txt", tmp_path / "c" / "offsets.txt") == (
        "offsets.txt: current ends at line 1 of 2")
    assert compare_outputs.first_difference(tmp_path / "b" / "x.rttm", tmp_path / "c" / "x.rttm") == (
        "x.rttm: missing in base")


def test_a_failed_run_is_a_difference(tmp_path, capsys):
    (tmp_path / "base" / "syncnet" / "clip").mkdir(parents=True)
    (tmp_path / "current" / "syncnet" / "clip").mkdir(parents=True)
    for tree in ("base", "current"):
        for name in compare_outputs.outputs("clip"):
            (tmp_path / tree / "syncnet" / "clip" / name).write_text("same\n")
    jobs = [("syncnet", "clip")]
    assert compare_outputs.compare(jobs, tmp_path / "base", tmp_path / "current", {}, {}) == 0
    failed = {("syncnet", "clip"): "diarize.py exit 1: boom"}
    assert compare_outputs.compare(jobs, tmp_path / "base", tmp_path / "current", {}, failed) == 1
    assert capsys.readouterr().out.splitlines()[-1].endswith("DIFFERENT (run failed: current diarize.py exit 1: boom)")


@pytest.mark.parametrize("args, message", [
    ([], "give --base COMMIT, or --reuse_base DIR"),
    (["--base", "no-such-commit"], "--base no-such-commit: not a commit of this repository"),
    (["--base", "HEAD", "--clips", "nope"], "--clips: unknown nope; choose from"),
    (["--base", "HEAD", "--configs", "syncnet,nope"], "--configs: unknown nope; choose from syncnet,"),
    (["--base", "HEAD", "--tree", str(REPO / "tests")], "no scripts/diarize.py there"),
])
def test_bad_input_is_one_line(args, message):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_reused_base_outputs_must_cover_every_run(tmp_path):
    """--reuse_base refuses, in one line, a kept folder without outputs for a requested run or of another commit."""
    import json

    kept = tmp_path / "kept"
    (kept / "base" / "syncnet" / "retalking_talkinghead_5").mkdir(parents=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (kept / "meta.json").write_text(json.dumps({
        "base_commit": commit, "clips": ["retalking_talkinghead_5"], "configs": compare_outputs.CONFIGS,
        "threads": compare_outputs.THREADS, "weights_sha256": {}, "base_failures": {}}))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--reuse_base", str(kept), "--clips", "retalking_talkinghead_5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "has no base outputs for wav2lip_argmax/retalking_talkinghead_5, gestsync/" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--reuse_base", str(kept), "--base", "HEAD~1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"holds outputs of {commit[:12]}, not of --base" in proc.stderr


def test_the_curves_dump_pins_every_value_at_full_precision(tmp_path):
    """A change in the last bit of one frame's confidence changes the dump (offsets.txt's three decimals and a
    one-speaker RTTM would not see it); NaN frames are counted."""
    import pickle

    import numpy as np

    def dump(values: list[float]) -> str:
        pywork, dest = tmp_path / "pywork", tmp_path / "dest"
        pywork.mkdir(exist_ok=True)
        dest.mkdir(exist_ok=True)
        curves = {"metric": "cosine", "model": "syncnet", "mode": "voxconverse", "frame_rate_hz": 25.0,
                  "thresholds": [0.5, 0.9], "sources": ["syncnet", "syncnet"],
                  "confidence": [np.array(values), np.array([1.0, np.nan])]}
        (pywork / "sync_curves.pckl").write_bytes(pickle.dumps(curves))
        compare_outputs.dump_curves(pywork, dest)
        return (dest / compare_outputs.CURVES_DUMP).read_text()

    first = dump([0.25, 0.5, 0.75])
    assert "track 1 syncnet frames 2 nan 1" in first
    assert "thresholds 0.5 0.9" in first
    assert dump([0.25, 0.5, 0.75]) == first
    assert dump([0.25, float(np.nextafter(0.5, 1.0)), 0.75]) != first
