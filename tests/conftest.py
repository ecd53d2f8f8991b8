"""Shared fixtures: the real clips in ../shared/data and a folder of seeded random checkpoints."""
from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests import fakeweights

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
VIDEOS = SHARED_DATA / "videos"
DETECTIONS = SHARED_DATA / "detections"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def clip(name: str) -> Path:
    """A real clip from ../shared/data/videos; skips the test when the data folder is absent."""
    path = VIDEOS / f"{name}.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """Seeded random checkpoints under every published file name of s3fd, syncnet, resnetse34 and vggface2."""
    folder = tmp_path_factory.mktemp("weights")
    files = {
        "s3fd.json": ["s3fd.model", "sfd_face.pth"],
        "syncnet.json": ["syncnet.model", "syncnet_v2.model"],
        "resnetse34v2.json": ["speakernet.model"],
        "vggface2_resnet50.json": ["faceembedding.model"],
    }
    for seed, (manifest, names) in enumerate(files.items()):
        state = fakeweights.random_state_dict(manifest, seed=seed)
        if manifest == "resnetse34v2.json":  # real front-end constants, so embeddings stay finite
            from tests import fakespeaker

            state = fakespeaker.resnetse34_state(seed=seed)
        for name in names:
            fakeweights.save_checkpoint(state, folder / name)
    return folder


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where a CUDA GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def run_script_in_process(script: str, capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """``scripts/<script>``'s ``main`` through ``run_main``, as its ``__main__`` calls it, in this process (no second
    interpreter and its imports): the same exit code, stdout and stderr."""
    from pipeline.cli import run_main

    spec = importlib.util.spec_from_file_location(f"script_{Path(script).stem}", REPO / "scripts" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    code = run_main(module.main, module.build_parser(), list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([script, *args], code, out, err)
