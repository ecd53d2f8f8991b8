"""report.html opened in a real headless browser: every row is drawn with its plots decoded.

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

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium installed (apt-get install chromium); .ci/run installs it for CI")


def _plot(path: Path, colour: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4, 1.5), dpi=60)
    ax.fill_between([0, 1, 2], [0, 1, 0], color=colour)
    fig.savefig(path)
    plt.close(fig)


def _report(tmp_path: Path) -> Path:
    summaries = []
    for i, name in enumerate(["alpha", "beta", "gamma"]):
        for kind, colour in (("timeline", "tab:red"), ("sync", "tab:blue")):
            _plot(tmp_path / "videos" / name / f"{name}_{kind}.png", colour)
        (tmp_path / "rttm").mkdir(exist_ok=True)
        (tmp_path / "rttm" / f"{name}.rttm").write_text(f"SPEAKER {name} 1 0.000 1.000 <NA> <NA> spk00 <NA> <NA>\n")
        summaries.append(VideoSummary(reference=name, videofile=f"/videos/{name}.mp4", status="done",
                                      duration_s=10.0 + i, tracks=1, speakers=1, turns=1, speech_s=1.0,
                                      stage_seconds={"stage1": 1.0}))
    summaries.append(VideoSummary(reference="broken", videofile="/videos/broken.mp4", status="failed",
                                  error="cannot read /videos/broken.mp4 as a video"))
    return write_outputs(tmp_path, summaries, None, ["a note"], wall_s=3.0)["report.html"]


def test_every_row_renders_with_its_plots(tmp_path):
    browser = _browser()
    report = _report(tmp_path)
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(common + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    assert 'data-images-total="6"' in body and 'data-images-loaded="6"' in body, body
    assert dom.stdout.count("<tr data-reference=") == 3 and dom.stdout.count('class="failed"') == 1

    shot = tmp_path / "report.png"
    proc = subprocess.run(common + [f"--screenshot={shot}", "--window-size=1600,1200", report.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    import cv2

    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (1200, 1600)
    # the plots are drawn: red and blue filled areas (BGR), not just text on white
    blue, green, red = (image[..., c].astype(int) for c in range(3))
    assert np.count_nonzero((red > 150) & (blue < 100) & (green < 100)) > 500
    assert np.count_nonzero((blue > 150) & (red < 100)) > 500
