"""scripts/diarize_corpus.py: four shared clips (injected detections, seeded random weights) on two local
workers and as Ray tasks, a broken file among them, a resumed run, scoring against references, the report."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.random_weights import write_random_checkpoints
from pipeline.corpus import CorpusVideo, RunSettings, assign_references, list_videos, run_corpus
from tests.conftest import DETECTIONS, REPO, VIDEOS

SCRIPT = REPO / "scripts" / "diarize_corpus.py"
CLIPS = ["gestsync_sync_offset0", "gestsync_sync_offset25", "gestsync_sync_offset-15", "retalking_talkinghead_1"]
FACES = str(DETECTIONS / "{stem}_haar_faces.pckl")


def corpus(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_random_checkpoints(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def video_list(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("list")
    (folder / "broken.mp4").write_text("not a video")
    lines = [str(VIDEOS / f"{name}.mp4") for name in CLIPS[:2]] + ["broken.mp4", "# a comment"]
    lines += [str(VIDEOS / f"{name}.mp4") for name in CLIPS[2:]]
    (folder / "videos.txt").write_text("\n".join(lines) + "\n")
    return folder / "videos.txt"


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, weights, video_list):
    root = tmp_path_factory.mktemp("local")
    proc = corpus("--videos", str(video_list), "--data_dir", str(root / "data"), "--out_dir", str(root / "out"),
                  "--workers", "2", "--weights_dir", str(weights), "--faces", FACES, "--device", "cpu")
    return root, proc


def test_two_workers_finish_every_good_video_and_report_the_broken_one(local_run):
    root, proc = local_run
    assert proc.returncode == 1, proc.stderr  # one video failed
    assert "Traceback" not in proc.stderr
    assert "broken: failed: cannot read" in proc.stderr
    rows = {row["reference"]: row for row in csv.DictReader((root / "out" / "summary.csv").open())}
    assert set(rows) == set(CLIPS) | {"broken"}
    assert rows["broken"]["status"] == "failed" and "not a media file" in rows["broken"]["error"]
    for name in CLIPS:
        assert rows[name]["status"] == "done" and float(rows[name]["duration_s"]) >= 5
        assert (root / "out" / "rttm" / f"{name}.rttm").is_file()
        assert (root / "out" / "videos" / name / f"{name}_via.json").is_file()
    combined = (root / "out" / "all.rttm").read_text()
    assert combined == "".join((root / "out" / "rttm" / f"{name}.rttm").read_text() for name in sorted(CLIPS))
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["failed"] == 1 and len(summary["videos"]) == 5
    html = (root / "out" / "report.html").read_text()
    assert html.count("<tr data-reference=") + html.count('<tr class="failed"') == 5
    assert html.count("data:image/png;base64,") == 2 * len(CLIPS)  # timeline + sync plot per video
    assert "http://" not in html and "https://" not in html  # self-contained


def test_rerun_resumes_from_the_cache_and_scores_zero_against_its_own_rttms(local_run, weights, video_list):
    root, _ = local_run
    decided = {name: (root / "data" / "pywork" / name / "diarization.pckl").stat().st_mtime_ns for name in CLIPS}
    proc = corpus("--videos", str(video_list), "--data_dir", str(root / "data"), "--out_dir", str(root / "out2"),
                  "--workers", "1", "--weights_dir", str(weights), "--faces", FACES, "--device", "cpu",
                  "--ref_dir", str(root / "out" / "rttm"), "--quiet")
    assert proc.returncode == 1, proc.stderr
    for name in CLIPS:  # nothing redone
        assert (root / "data" / "pywork" / name / "diarization.pckl").stat().st_mtime_ns == decided[name]
    summary = json.loads((root / "out2" / "summary.json").read_text())
    assert summary["overall"]["der"] == 0.0 and summary["overall"]["jer"] == 0.0
    scored = [v for v in summary["videos"] if v["score"]]
    assert scored and all(v["score"]["der"] == 0.0 for v in scored)
    assert "DER 0.00 %" in (root / "out2" / "report.html").read_text()


def test_ray_gives_the_same_rttms(local_run, weights, tmp_path):
    pytest.importorskip("ray")
    root, _ = local_run
    items, _ = assign_references([VIDEOS / f"{name}.mp4" for name in CLIPS], FACES)
    settings = RunSettings(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"), weights_dir=str(weights),
                           device="cpu", threads_per_worker=1)
    summaries, _ = run_corpus(items, settings, workers=2, use_ray=True)
    assert sorted(s.reference for s in summaries if s.status == "done") == sorted(CLIPS)
    for name in CLIPS:
        assert (tmp_path / "out" / "rttm" / f"{name}.rttm").read_text() == \
            (root / "out" / "rttm" / f"{name}.rttm").read_text()


def test_killed_run_completes_redoing_only_the_unfinished(tmp_path, weights):
    listing = tmp_path / "two.txt"
    listing.write_text("\n".join(str(VIDEOS / f"{name}.mp4") for name in (CLIPS[0], CLIPS[3])) + "\n")
    args = ["--videos", str(listing), "--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "out"),
            "--workers", "1", "--weights_dir", str(weights), "--faces", FACES, "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], stderr=subprocess.PIPE, text=True)
    first_done = False
    deadline = time.monotonic() + 600
    for line in proc.stderr:  # the per-video line says the first video is finished
        if f"[1/2] {CLIPS[0]}: done" in line:
            first_done = True
            break
        assert time.monotonic() < deadline
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first_done
    finished = tmp_path / "data" / "pywork" / CLIPS[0] / "diarization.pckl"
    before = finished.stat().st_mtime_ns
    again = corpus(*args, "--quiet")
    assert again.returncode == 0, again.stderr
    assert finished.stat().st_mtime_ns == before  # the finished video was reused
    assert (tmp_path / "out" / "rttm" / f"{CLIPS[3]}.rttm").is_file()


def test_reference_names_from_file_names_with_clashes_reported(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [tmp_path / "a" / "talk.mp4", tmp_path / "b" / "talk.mp4", tmp_path / "a" / "my clip.mp4"]
    items, notes = assign_references(paths)
    assert [i.reference for i in items] == ["talk", "talk-2", "my_clip"]
    assert len(notes) == 1 and "talk-2" in notes[0]


def test_bad_video_list_is_one_line(tmp_path):
    proc = corpus("--videos", str(tmp_path / "missing"), "--data_dir", str(tmp_path / "d"), "--out_dir",
                  str(tmp_path / "o"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no videos"):
        list_videos(tmp_path / "empty")
    assert isinstance(CorpusVideo("x", tmp_path), CorpusVideo)
