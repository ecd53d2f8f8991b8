"""download_models.sh without a network: one clear line per file on stderr, no progress meter or retry noise,
and a final line saying what to do next (the folder to fill, or --weights_dir / AVDIARISE_WEIGHTS_DIR)."""
from __future__ import annotations

import os
import subprocess

from tests.conftest import REPO


def test_unreachable_files_are_one_line_each(tmp_path):
    registry = tmp_path / "registry.tsv"
    registry.write_text(f"a\tone.model\t{'0' * 64}\t1\thttp://127.0.0.1:9/one.model\n"  # connection refused
                        f"b\ttwo.model\t-\t1\tfile://{tmp_path}/absent/two.model\n")  # nothing there
    dest = tmp_path / "weights"
    proc = subprocess.run(["bash", str(REPO / "download_models.sh"), str(dest)], capture_output=True, text=True,
                          env=dict(os.environ, AVDIARISE_REGISTRY=str(registry)), timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, proc.stderr
    assert lines[2].startswith(f"error: 2 file(s) missing from {dest} (the folder this script fills)")
    assert "--weights_dir DIR" in lines[2] and "AVDIARISE_WEIGHTS_DIR=DIR" in lines[2]
    for line, (file, url) in zip(lines, [("one.model", "http://127.0.0.1:9/one.model"),
                                         ("two.model", f"file://{tmp_path}/absent/two.model")]):
        assert line.startswith(f"error: could not download {file} from {url} (") and "check the network" in line
    assert "%" not in proc.stderr and "retry" not in proc.stderr.lower()
    assert list(dest.iterdir()) == []  # no partial file
