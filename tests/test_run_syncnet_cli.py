"""scripts/run_syncnet.py: the demo's three lines, --features, the cache mode, and one-line errors."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import run_main
from tests.conftest import REPO
from tests.test_syncnet import SPF, make_stage1_cache, noise_frames, speechlike, write_clip

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the published")
SCRIPT = REPO / "scripts" / "run_syncnet.py"
DEMO_LINES = re.compile(r"\AAV offset: \t-?\d+\nMin dist: \t\d+\.\d{3}\nConfidence: \t-?\d+\.\d{3}\n\Z")


def _script():
    spec = importlib.util.spec_from_file_location("run_syncnet_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT_MODULE = _script()


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_main(SCRIPT_MODULE.main, SCRIPT_MODULE.build_parser(), argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    assert code != 0
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert re.search(pattern, err), err


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    return write_clip(folder / "clip.avi", noise_frames(24, seed=7), speechlike(24 * SPF), codec="mpeg4")


def test_single_clip_prints_the_three_lines(demo_clip, weights_dir, tmp_path, capsys):
    features = tmp_path / "feats.npz"
    code, out, err = run(["--videofile", str(demo_clip), "--weights_dir", str(weights_dir),
                          "--features", str(features)], capsys)
    assert code == 0, err
    assert DEMO_LINES.match(out), out
    offset = int(out.split("\n")[0].split("\t")[1])
    assert -15 <= offset <= 15  # the demo's vshift
    data = np.load(features)
    assert data["lip"].shape == (19, 1024) and data["audio"].shape == (19, 1024)
    assert data["lip_conv"].shape == (19, 512) and data["distances"].shape == (19, 31)
    assert str(data["metric"]) == "euclidean" and int(data["offset_frames"]) == offset
    assert list(features.parent.iterdir()) == [features]  # no temporary left behind


def test_script_runs_as_a_command(demo_clip, weights_dir):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--videofile", str(demo_clip), "--weights_dir",
                           str(weights_dir), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert DEMO_LINES.match(proc.stdout), proc.stdout


def test_single_clip_bad_inputs(tmp_path, weights_dir, demo_clip, capsys):
    w = ["--weights_dir", str(weights_dir)]
    assert_one_line_error(*run([], capsys)[::2], r"give --data_dir and --reference.*or --videofile")
    assert_one_line_error(*run(["--videofile", str(tmp_path / "nope.avi")] + w, capsys)[::2], "not found")
    big = write_clip(tmp_path / "big.mkv", [np.zeros((120, 160, 3), np.uint8)] * 10, speechlike(10 * SPF))
    assert_one_line_error(*run(["--videofile", str(big)] + w, capsys)[::2], "224x224")
    short = write_clip(tmp_path / "short.mkv", noise_frames(5), speechlike(5 * SPF))
    assert_one_line_error(*run(["--videofile", str(short)] + w, capsys)[::2], "too short for SyncNet")
    mute = write_clip(tmp_path / "mute.mkv", noise_frames(10), None)
    assert_one_line_error(*run(["--videofile", str(mute)] + w, capsys)[::2], "no audio")
    text = tmp_path / "notvideo.avi"
    text.write_text("hello")
    assert_one_line_error(*run(["--videofile", str(text)] + w, capsys)[::2], "error: ")
    assert_one_line_error(*run(["--videofile", str(demo_clip), "--weights_dir", str(tmp_path / "none")], capsys)[::2],
                          r"checkpoint syncnet_v2.model not found")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "syncnet_v2.model").write_bytes(b"\x00" * 100)
    assert_one_line_error(*run(["--videofile", str(demo_clip), "--weights_dir", str(corrupt)], capsys)[::2],
                          "cannot be read")
    assert_one_line_error(*run(["--videofile", str(demo_clip), "--reference", "x"] + w, capsys)[::2],
                          "--reference needs --data_dir")
    assert_one_line_error(*run(["--videofile", str(demo_clip), "--set", "syncnet_demo.metric=l1"] + w, capsys)[::2],
                          "metric must be one of")
    if not torch.cuda.is_available():
        assert_one_line_error(*run(["--videofile", str(demo_clip), "--device", "cuda"] + w, capsys)[::2],
                              "no CUDA GPU")


def test_silent_clip_reports_nan(tmp_path, weights_dir, capsys):
    silent = write_clip(tmp_path / "silent.mkv", noise_frames(10), np.zeros(10 * SPF, np.int16))
    code, out, err = run(["--videofile", str(silent), "--weights_dir", str(weights_dir)], capsys)
    assert code == 0 and out.startswith("AV offset: \tnan\n") and "Confidence: \t0.000" in out
    assert "silent" in err


def test_cache_mode(tmp_path, weights_dir, capsys):
    make_stage1_cache(tmp_path, "vid", [(noise_frames(10), speechlike(10 * SPF))])
    args = ["--data_dir", str(tmp_path), "--reference", "vid", "--weights_dir", str(weights_dir)]
    code, out, err = run(args, capsys)  # the result on stdout, once; stderr for progress and notes only
    assert code == 0 and err == "" and out.count("\n") == 1 and out.startswith("run_syncnet: vid: SyncNet (cosine) on 1 tracks")
    assert out.rstrip().endswith(f"offsets.txt to {tmp_path / 'pywork' / 'vid'}")
    assert (tmp_path / "pywork" / "vid" / "offsets.txt").is_file()
    code, out, err = run(args, capsys)
    assert code == 0 and "up to date" in out and err == ""
    code, out, err = run(args + ["--force", "--quiet"], capsys)  # --quiet: no progress, the result still
    assert code == 0 and err == "" and "on 1 tracks" in out
    # --videofile names the reference, as in syncnet_python's run_syncnet.py
    code, out, _ = run(["--data_dir", str(tmp_path), "--videofile", "some/where/vid.mp4",
                        "--weights_dir", str(weights_dir)], capsys)
    assert code == 0 and "up to date" in out


def test_cache_mode_errors_and_zero_tracks(tmp_path, weights_dir, capsys):
    w = ["--weights_dir", str(weights_dir)]
    assert_one_line_error(*run(["--data_dir", str(tmp_path), "--reference", "missing"] + w, capsys)[::2],
                          r"no tracks.pckl .* run scripts/run_pipeline.py first")
    assert_one_line_error(*run(["--data_dir", str(tmp_path)] + w, capsys)[::2], "needs --reference")
    assert_one_line_error(*run(["--data_dir", str(tmp_path), "--reference", "../x"] + w, capsys)[::2],
                          "plain name")
    assert_one_line_error(*run(["--data_dir", str(tmp_path), "--reference", "x", "--features", "f.npz"] + w,
                               capsys)[::2], "single-clip mode")
    make_stage1_cache(tmp_path, "empty", [])
    code, out, err = run(["--data_dir", str(tmp_path), "--reference", "empty"] + w, capsys)
    assert code == 0 and "no face tracks" in out and err == ""
    text = (tmp_path / "pywork" / "empty" / "offsets.txt").read_text()
    assert text.startswith("# metric cosine") and text.count("\n") == 2
