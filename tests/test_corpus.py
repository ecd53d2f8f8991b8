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
from pipeline.corpus import (
    CorpusVideo,
    RunSettings,
    assign_references,
    default_workers,
    list_videos,
    out_dir_locked,
    run_corpus,
)
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
    # the stage times shown are those of the first run, which computed stages 1-3, not the cache hits'
    first = {v["reference"]: v for v in json.loads((root / "out" / "summary.json").read_text())["videos"]}
    for video in summary["videos"]:
        if video["status"] == "done":
            assert video["cached_stages"] == ["stage1", "stage2", "stage3"]
            assert first[video["reference"]]["cached_stages"] == []
            for stage in ("stage1", "stage2", "stage3"):
                assert video["stage_seconds"][stage] == first[video["reference"]]["stage_seconds"][stage]


def test_ray_gives_the_same_rttms(local_run, weights, tmp_path):
    """Two of the four clips (the two shortest), one Ray task each on two workers: every clip takes the same
    path through the tasks, so two show whether Ray's results equal the local workers'."""
    pytest.importorskip("ray")
    root, _ = local_run
    ray_clips = CLIPS[1:3]
    items, _ = assign_references([VIDEOS / f"{name}.mp4" for name in ray_clips], FACES)
    settings = RunSettings(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"), weights_dir=str(weights),
                           device="cpu", threads_per_worker=1)
    summaries, _ = run_corpus(items, settings, workers=2, use_ray=True)
    assert sorted(s.reference for s in summaries if s.status == "done") == sorted(ray_clips)
    for name in ray_clips:
        assert (tmp_path / "out" / "rttm" / f"{name}.rttm").read_text() == \
            (root / "out" / "rttm" / f"{name}.rttm").read_text()


def test_killed_run_completes_redoing_only_the_unfinished(tmp_path, weights):
    first, second = CLIPS[2], CLIPS[1]  # the two shortest clips (5.0 s and 6.5 s)
    listing = tmp_path / "two.txt"
    listing.write_text("\n".join(str(VIDEOS / f"{name}.mp4") for name in (first, second)) + "\n")
    args = ["--videos", str(listing), "--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "out"),
            "--workers", "1", "--weights_dir", str(weights), "--faces", FACES, "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], stderr=subprocess.PIPE, text=True)
    first_done = False
    deadline = time.monotonic() + 600
    for line in proc.stderr:  # the per-video line says the first video is finished
        if f"[1/2] {first}: done" in line:
            first_done = True
            break
        assert time.monotonic() < deadline
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first_done
    finished = tmp_path / "data" / "pywork" / first / "diarization.pckl"
    before = finished.stat().st_mtime_ns
    again = corpus(*args, "--quiet")
    assert again.returncode == 0, again.stderr
    assert finished.stat().st_mtime_ns == before  # the finished video was reused
    assert (tmp_path / "out" / "rttm" / f"{second}.rttm").is_file()


def test_reference_names_from_file_names_with_clashes_reported(tmp_path):
    paths = [tmp_path / "a" / "talk.mp4", tmp_path / "b" / "talk.mp4", tmp_path / "a" / "my clip.mp4",
             tmp_path / "c" / "talk.mp4"]
    items, notes = assign_references(paths, base=tmp_path)
    assert [i.reference for i in items] == ["talk", "talk-2", "my_clip", "talk-3"]  # no two share a cache
    assert len(notes) == 2 and "talk-2" in notes[0] and "talk-3" in notes[1]
    assert [i.name for i in items] == ["a/talk.mp4", "b/talk.mp4", "a/my clip.mp4", "c/talk.mp4"]
    # a list naming absolute paths elsewhere: relative to the folder that holds them all
    elsewhere, _ = assign_references(paths[:2], base=tmp_path / "lists")
    assert [i.name for i in elsewhere] == ["a/talk.mp4", "b/talk.mp4"]


def test_default_workers_take_the_smaller_of_cores_and_memory(monkeypatch):
    gib = 2**30
    for cores, memory_gib, expected in ((16, 128, 8), (64, 16, 4), (2, 128, 1), (1, 1, 1)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        monkeypatch.setattr(os, "sysconf", lambda name, m=memory_gib: 4096 if name == "SC_PAGE_SIZE" else m * gib // 4096)
        assert default_workers("cpu") == expected, (cores, memory_gib)


def test_faces_pattern_relative_to_the_corpus_folder_and_one_file_per_video(tmp_path):
    (tmp_path / "dets").mkdir()
    (tmp_path / "dets" / "a_faces.pckl").write_bytes(b"x")
    paths = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    items, notes = assign_references(paths, "dets/{stem}_faces.pckl", base=tmp_path)
    assert items[0].faces == tmp_path / "dets" / "a_faces.pckl" and items[1].faces is None
    assert notes == [f"no detections {tmp_path / 'dets' / 'b_faces.pckl'} for b: S3FD detects its faces"]
    with pytest.raises(Exception, match="one file for all 2 videos"):
        assign_references(paths, "dets/a_faces.pckl", base=tmp_path)
    single, _ = assign_references(paths[:1], "dets/a_faces.pckl", base=tmp_path)  # one video: one file is right
    assert single[0].faces == tmp_path / "dets" / "a_faces.pckl"
    with pytest.raises(Exception, match="matches no file"):
        assign_references(paths, "elsewhere/{stem}.pckl", base=tmp_path)
    with pytest.raises(Exception, match="only '{stem}'"):
        assign_references(paths, "dets/{name}.pckl", base=tmp_path)
    with pytest.raises(Exception, match="the same detections"):  # two talk.mp4 in different folders
        assign_references([tmp_path / "x" / "a.mp4", tmp_path / "y" / "a.mp4"], "dets/{stem}_faces.pckl", base=tmp_path)


def test_faces_without_stem_for_a_list_is_one_line_and_nothing_written(tmp_path):
    listing = tmp_path / "list" / "videos.txt"
    listing.parent.mkdir()
    listing.write_text(f"{VIDEOS / (CLIPS[0] + '.mp4')}\n{VIDEOS / (CLIPS[3] + '.mp4')}\n")
    faces = str(DETECTIONS / f"{CLIPS[0]}_haar_faces.pckl")  # one clip's detections for both
    proc = corpus("--videos", str(listing), "--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "out"),
                  "--faces", faces)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "one file for all 2 videos" in proc.stderr and "{stem}" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "data" / "pywork").exists() and not (tmp_path / "out" / "summary.csv").exists()


def test_second_run_on_one_out_dir_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("the first run's\n")
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{VIDEOS / (CLIPS[0] + '.mp4')}\n")
    with out_dir_locked(out):  # the first run, still working
        proc = corpus("--videos", str(listing), "--data_dir", str(tmp_path / "data"), "--out_dir", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "another corpus run is writing to --out_dir" in proc.stderr
    assert f"process {os.getpid()}" in proc.stderr
    assert (out / "summary.csv").read_text() == "the first run's\n"
    assert not (out / "report.html").exists() and not (tmp_path / "data" / "pywork").exists()
    with out_dir_locked(out), out_dir_locked(out):  # free again once the first ends; re-entrant in one process
        pass


def test_bad_video_list_is_one_line(tmp_path):
    proc = corpus("--videos", str(tmp_path / "missing"), "--data_dir", str(tmp_path / "d"), "--out_dir",
                  str(tmp_path / "o"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no videos"):
        list_videos(tmp_path / "empty")
    assert isinstance(CorpusVideo("x", tmp_path), CorpusVideo)


def test_file_id_pattern_per_video_and_never_shared(tmp_path):
    paths = [tmp_path / "a" / "talk.mp4", tmp_path / "b" / "talk.mp4"]
    items, _ = assign_references(paths, file_id_pattern="show_{reference}")
    assert [i.file_id for i in items] == ["show_talk", "show_talk-2"]
    assert [i.file_id for i in assign_references(paths[:1], file_id_pattern="{stem}")[0]] == ["talk"]
    with pytest.raises(Exception, match="several videos the file id 'talk'"):
        assign_references(paths, file_id_pattern="{stem}")
    with pytest.raises(Exception, match="only '{stem}' and '{reference}'"):
        assign_references(paths, file_id_pattern="{name}")
    with pytest.raises(Exception, match="one word"):
        assign_references(paths, file_id_pattern="my {reference}")


def test_stage_times_of_the_run_that_computed_them(tmp_path):
    from pipeline.api import STAGE_TIMES_FILE, record_stage_seconds
    from pipeline.cache import Cache

    cache = Cache(tmp_path, "v")
    tracks = cache.work("tracks.pckl")
    started = time.time_ns()
    tracks.write_bytes(b"first")
    assert record_stage_seconds(cache, {"stage1": 12.0, "stage4": 1.0}, started) == ({"stage1": 12.0, "stage4": 1.0}, [])
    # a rerun that reuses tracks.pckl reports the 12 s of the run that wrote it, not its own cache hit
    assert record_stage_seconds(cache, {"stage1": 0.01, "stage4": 0.9}, time.time_ns()) == (
        {"stage1": 12.0, "stage4": 0.9}, ["stage1"])
    started = time.time_ns()
    time.sleep(0.01)
    tracks.write_bytes(b"second")  # redone
    assert record_stage_seconds(cache, {"stage1": 5.0}, started) == ({"stage1": 5.0}, [])
    cache.work(STAGE_TIMES_FILE).unlink()  # a cache from before the records: reused, time unknown
    assert record_stage_seconds(cache, {"stage1": 0.02}, time.time_ns()) == ({}, ["stage1"])
