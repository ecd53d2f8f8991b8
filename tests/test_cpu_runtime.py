"""Process-wide CPU settings applied by ``import pipeline`` before torch loads (pipeline/cpu_runtime.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHOW = "import os, pipeline; print(os.environ.get('OMP_WAIT_POLICY'))"


def _policy_after_import(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_value is not None:
        env["OMP_WAIT_POLICY"] = env_value
    out = subprocess.run([sys.executable, "-c", SHOW], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_openmp_threads_sleep_unless_the_user_chose():
    assert _policy_after_import(None) == "PASSIVE"  # set by import pipeline, before torch is imported
    assert _policy_after_import("ACTIVE") == "ACTIVE"  # the environment wins
