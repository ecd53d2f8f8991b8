"""report.html opened in a real headless browser at 1400 x 900: every row is drawn with its plots decoded at a
readable size, and every link and plot lies inside the window's width (no sideways scrolling).

Needs Chromium (Debian's `chromium`; .ci/run installs it). Skipped, saying so, where none is installed.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.corpus import VideoSummary, write_outputs
from pipeline.formats import Turn
from pipeline.plots import plot_sync, plot_timeline

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, HEIGHT = 1400, 900


def _browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium installed (apt-get install chromium); .ci/run installs it for CI")


def _outputs(folder: Path, name: str, duration_s: float) -> None:
    """The plots stage 4 draws for a two-speaker video, and its RTTM, VIA project and annotated video."""
    video_dir = folder / "videos" / name
    video_dir.mkdir(parents=True)
    turns = [Turn(0.5, 0.45 * duration_s, "spk00", "av", (0,)), Turn(0.5 * duration_s, duration_s - 1, "spk01", "av", (1,))]
    plot_timeline(video_dir / f"{name}_timeline.png", turns, duration_s, title=f"{name}: speakers")
    frames = [np.arange(int(25 * duration_s))] * 2
    curves = [np.linspace(0, 1.5, len(frames[0])), np.linspace(1.5, 0, len(frames[0]))]
    plot_sync(video_dir / f"{name}_sync.png", frames, curves, ["spk00", "spk01"], turns, 25.0, duration_s,
              thresholds=(0.5, 0.9), title=f"{name}: sync confidence per face track (shaded: speaking)")
    (video_dir / f"{name}_via.json").write_text("{}")
    (video_dir / f"{name}_annotated.mp4").write_bytes(b"")
    (folder / "rttm").mkdir(exist_ok=True)
    (folder / "rttm" / f"{name}.rttm").write_text(f"SPEAKER {name} 1 0.000 1.000 <NA> <NA> spk00 <NA> <NA>\n")


def _report(tmp_path: Path) -> Path:
    summaries = []
    for i, name in enumerate(["alpha_with_a_rather_long_reference_name", "beta", "gamma"]):
        duration_s = (20.0, 90.0, 300.0)[i]  # the widest plots stage 4 draws for these lengths
        _outputs(tmp_path, name, duration_s)
        summaries.append(VideoSummary(
            reference=name, videofile=f"/home/someone/a/long/corpus/folder/{name}.mp4", status="done",
            duration_s=duration_s, tracks=2, speakers=2, turns=7 + i, speech_s=12.0,
            stage_seconds={"stage1": 31.5, "stage2": 12.25, "stage3": 4.0, "stage4": 0.5},
            cached_stages=["stage1", "stage2", "stage3"], name=f"sub/{name}.mp4",
            score={"der": 0.12, "missed_s": 1.0, "false_alarm_s": 0.5, "confusion_s": 0.25, "jer": 0.3}))
    summaries.append(VideoSummary(reference="broken", videofile="/videos/broken.mp4", status="failed",
                                  error="cannot read /videos/broken.mp4 as a video", name="broken.mp4"))
    overall = {"der": 0.12, "missed_s": 3.0, "false_alarm_s": 1.5, "confusion_s": 0.75, "jer": 0.3}
    return write_outputs(tmp_path, summaries, overall, ["a note"], wall_s=3.0)["report.html"]


def test_report_numbers_names_and_times(tmp_path):
    page = _report(tmp_path).read_text()
    assert "12.00 %" in page and "0.12 %" not in page  # a DER is a percentage, not the fraction
    assert "/home/someone" not in page and "sub/beta.mp4" in page  # names relative to the corpus
    assert "31.5*/12.2*/4.0*/0.5" in page  # the computing run's times, cache hits marked
    assert '<td class="num">8</td>' in page  # beta's turns
    assert page.count('href="videos/beta/beta_') == 4  # VIA, video, and each plot opens at full size


def test_every_row_renders_readable_inside_1400px(tmp_path):
    browser = _browser()
    report = _report(tmp_path)
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
              "--run-all-compositor-stages-before-draw",
              "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}",
              f"--window-size={WIDTH},{HEIGHT}"]
    dom = subprocess.run(common + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', re.search(r"<body([^>]*)>", dom.stdout).group(1)))
    assert body["images-total"] == "6" and body["images-loaded"] == "6", body
    assert dom.stdout.count("<tr data-reference=") == 3 and dom.stdout.count('class="failed"') == 1
    assert int(body["window-width"]) == WIDTH
    assert int(body["page-width"]) <= WIDTH, body  # nothing off to the right
    assert body["links-count"] == "9" and 0 < int(body["links-right"]) <= WIDTH, body  # RTTM, VIA, video x 3
    assert int(body["plots-right"]) <= WIDTH, body
    # plots at a readable size: the 20 s and 90 s videos' plots at their own size, the 300 s one's at most
    # shrunk to the page (a click opens it at full size)
    assert float(body["min-plot-scale"]) >= 0.4, body

    shot = tmp_path / "report.png"
    proc = subprocess.run(common + [f"--screenshot={shot}", report.as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    import cv2

    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (HEIGHT, WIDTH)
    # the first video's plots are drawn in the first screen: its speakers' blue and orange bars (BGR)
    blue, green, red = (image[..., c].astype(int) for c in range(3))
    assert np.count_nonzero((blue > 150) & (red < 80) & (green > 80) & (green < 150)) > 2000  # tab:blue
    assert np.count_nonzero((red > 230) & (green > 100) & (green < 160) & (blue < 60)) > 2000  # tab:orange
