"""Training a sync model end to end on synthetic talking faces, through stage 1's real crops.

The key test trains SyncNet from random weights on drawn faces whose mouths follow real speech
(tests/talkingfaces.py), then runs the real stage 2 on held-out clips whose audio is delayed by known
amounts, and the real stage 3 on a clip with a talking face beside a distractor face: the trained model
must recover the delays within one frame in at least 90 % of the clips and the fusion must give the
speech to the talking face, while the same checks with the untrained weights fail.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.syncnet import SyncNet
from pipeline.cache import Cache
from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.stage2 import run_stage2
from pipeline.stage3 import run_cluster
from pipeline.train.trainer import LAST_FILE, train_sync_model
from tests import fakeweights
from tests import talkingfaces as tf
from tests.conftest import REPO, run_script_in_process

SEED = 0
CLIP_S = 4.0
HELD_OUT_S = 3.0
NUM_TRAIN_VIDEOS = 16
# delays (frames) of the held-out clips' audio; SyncNet's sign reads -delay
HELD_OUT_DELAYS = (-6, -4, -3, -1, 0, 2, 3, 5, 6, 0)
# the quick run the tests share: SyncNet's heads learn on top of its random, frozen convolutions (whose
# features are computed once per window), in about a minute on a 2-core CPU
TRAIN_SETTINGS = ["train.freeze_convolutions=true", "train.lr=1.0e-3", "train.lr_final=1.0e-3", "train.batch_size=32",
                  "train.negatives_per_window=8", "train.val_windows=64", "train.val_every_steps=50",
                  "train.bn_recalibration_windows=32"]
TRAIN_STEPS = 150
VAL_EVERY = 50


def _sync_cfg():
    return load_config(overrides=TRAIN_SETTINGS)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, shared_data):
    """Training videos and held-out clips through stage 1 (boxes of the drawing injected)."""
    root = tmp_path_factory.mktemp("talking")
    speech: dict = {}
    tf.make_dataset(root / "train", root / "videos", tf.training_plans(NUM_TRAIN_VIDEOS, CLIP_S, SEED, speech), CLIP_S,
                    SEED)
    held = tf.held_out_plans(HELD_OUT_DELAYS, HELD_OUT_S, SEED + 7, speech)
    tf.make_dataset(root / "held", root / "videos", held, HELD_OUT_S, seed=100)
    return root, held


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    root, _ = synthetic
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(SEED)
    result = train_sync_model(root / "train", out, _sync_cfg(), steps=TRAIN_STEPS)
    return result


@pytest.fixture(scope="module")
def untrained_dir(tmp_path_factory) -> Path:
    """The weights training starts from (same seed), saved like a trained model."""
    folder = tmp_path_factory.mktemp("untrained")
    torch.manual_seed(SEED)
    torch.save(SyncNet().state_dict(), folder / "syncnet.model")
    return folder


def _offsets(data_dir: Path, plans, weights: Path) -> list[tuple[int, float]]:
    cfg = load_config()
    found = []
    for plan in plans:
        if plan.distractor:
            continue
        out = run_stage2(Cache(data_dir, plan.reference), cfg, weights, "cpu", force=True)
        found.append((plan.audio_delay_frames, out.sync.offset_frames[0]))
    return found


def _share_recovered(found) -> float:
    return float(np.mean([abs(offset + delay) <= 1 for delay, offset in found]))


def _av_tracks(data_dir: Path, sync_weights: Path, other_weights: Path, tmp: Path) -> set[int]:
    """Tracks that stage 3 (VoxConverse's rules, default config) gives speech to on the two-face clip (track 0
    talks, track 1 listens)."""
    folder = tmp / f"weights_{sync_weights.name}"
    shutil.copytree(other_weights, folder, dirs_exist_ok=True)
    shutil.copy(sync_weights / "syncnet.model", folder / "syncnet.model")
    cfg = load_config()
    cache = Cache(data_dir, "pair")
    run_stage2(cache, cfg, folder, "cpu", force=True)
    turns = run_cluster(cache, cfg, folder, "cpu", force=True)
    return {idx for turn in turns if turn.source == "av" for idx in turn.track_ids}


def test_trained_syncnet_recovers_shifts_and_finds_the_talking_face(synthetic, trained, untrained_dir, weights_dir,
                                                                    tmp_path):
    root, plans = synthetic
    found = _offsets(root / "held", plans, trained.out_dir)
    assert _share_recovered(found) >= 0.9, found
    assert _av_tracks(root / "held", trained.out_dir, weights_dir, tmp_path) == {0}

    found_untrained = _offsets(root / "held", plans, untrained_dir)
    assert _share_recovered(found_untrained) < 0.9, found_untrained
    assert _av_tracks(root / "held", untrained_dir, weights_dir, tmp_path) != {0}


def test_run_outputs_published_format_curves_and_split(synthetic, trained, untrained_dir):
    root, _ = synthetic
    out = trained.out_dir
    state = torch.load(out / "syncnet.model", map_location="cpu", weights_only=True)
    manifest = {e["key"]: tuple(e["shape"]) for e in fakeweights.manifest_keys("syncnet.json")}
    assert {k: tuple(v.shape) for k, v in state.items()} == manifest  # a bare state dict with the published keys
    start = torch.load(untrained_dir / "syncnet.model", weights_only=True)
    assert torch.equal(state["netcnnlip.0.weight"], start["netcnnlip.0.weight"])  # frozen convolutions
    assert not torch.equal(state["netfclip.0.weight"], start["netfclip.0.weight"])  # the heads learnt
    with open(out / "losses.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, TRAIN_STEPS + 1))
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert len(val) == TRAIN_STEPS // VAL_EVERY and min(val) == pytest.approx(trained.best_val_loss, rel=1e-5)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert (out / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((out / "train.json").read_text())
    assert not set(info["train_references"]) & set(info["val_references"])  # split by video
    assert sorted(info["train_references"] + info["val_references"]) == [f"train{i:02d}" for i in range(NUM_TRAIN_VIDEOS)]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.mark.filterwarnings("ignore:.*differs from the published")  # the trained model, loaded in this process
def test_script_trains_resumes_and_its_model_loads_in_run_syncnet(synthetic, tmp_path, capsys):
    """The first run as a command (what --quiet prints); the refusal, --resume, --force/--init and stage 2 on the
    trained model through the scripts' main functions in this process."""
    root, _ = synthetic
    run = tmp_path / "run"
    common = ["--data_dir", str(root / "train"), "--references", "train00", "train01", "train02", "--out_dir", str(run),
              "--quiet", "--set", "train.batch_size=2", "--set", "train.bn_recalibration_windows=2",
              "--set", "train.val_windows=2", "--set", "train.val_every_steps=1"]
    done = _run("train_sync.py", *common, "--steps", "1")
    assert done.returncode == 0, done.stderr
    # --quiet: no progress, but the result, where the model went, on stdout
    assert done.stderr == "" and done.stdout.startswith("train_sync: trained 1 steps")
    assert f"-> {run / 'syncnet.model'} (use --weights_dir {run})" in done.stdout
    again = run_script_in_process("train_sync.py", capsys, *common, "--steps", "1")  # a finished run is not overwritten
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--resume continues it" in again.stderr
    done = run_script_in_process("train_sync.py", capsys, *common, "--steps", "2", "--resume")
    assert done.returncode == 0, done.stderr
    with open(run / "losses.csv", newline="") as handle:
        assert [r["step"] for r in csv.DictReader(handle)] == ["1", "2"]
    shutil.copy(run / "syncnet.model", tmp_path / "trained.model")
    stage2 = run_script_in_process("run_syncnet.py", capsys, "--data_dir", str(root / "held"), "--reference", "held00",
                             "--weights_dir", str(run), "--force", "--quiet")
    assert stage2.returncode == 0, stage2.stderr
    lines = [x for x in (root / "held" / "pywork" / "held00" / "offsets.txt").read_text().splitlines() if x[0] != "#"]
    assert len(lines) == 1
    # --force starts over in the same folder; a bare --init name is found in --weights_dir
    done = run_script_in_process("train_sync.py", capsys, *common, "--steps", "1", "--force", "--init", "trained.model",
                           "--weights_dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    with open(run / "losses.csv", newline="") as handle:
        assert [r["step"] for r in csv.DictReader(handle)] == ["1"]
    assert json.loads((run / "train.json").read_text())["init"] == str(tmp_path / "trained.model")


def test_interrupt_saves_a_checkpoint_that_resumes_exactly(synthetic, tmp_path):
    """Ctrl-C at step 2 then --resume to step 3 gives the same weights as 3 uninterrupted steps (seeded)."""
    root, _ = synthetic
    cfg = load_config(overrides=["train.batch_size=2", "train.val_windows=2", "train.val_every_steps=10",
                                 "train.bn_recalibration_windows=2"])
    refs = ["train00", "train01", "train02"]

    def interrupt(step, total, loss, rate):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sync_model(root / "train", tmp_path / "a", cfg, refs, steps=3, progress=interrupt)
    assert torch.load(tmp_path / "a" / LAST_FILE, weights_only=True)["step"] == 2
    resumed = train_sync_model(root / "train", tmp_path / "a", cfg, refs, steps=3, resume=True)
    straight = train_sync_model(root / "train", tmp_path / "b", cfg, refs, steps=3)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    a = torch.load(tmp_path / "a" / "syncnet.model", weights_only=True)
    b = torch.load(tmp_path / "b" / "syncnet.model", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_too_little_data_is_one_line(synthetic, tmp_path):
    root, _ = synthetic
    one = tmp_path / "one"
    for sub in ("pywork", "pycrop", "pyavi"):
        shutil.copytree(root / "train" / sub / "train00", one / sub / "train00")
    done = _run("train_sync.py", "--data_dir", str(one), "--out_dir", str(tmp_path / "r"), "--quiet")
    assert done.returncode == 2 and "at least two videos" in done.stderr and len(done.stderr.splitlines()) == 1
    done = _run("train_sync.py", "--data_dir", str(root / "train"), "--references", "train00", "train01", "--out_dir",
                str(tmp_path / "r"), "--quiet", "--set", "train.min_shift_frames=200", "--set",
                "train.max_shift_frames=200")
    assert done.returncode == 2 and "long enough" in done.stderr and len(done.stderr.splitlines()) == 1
    done = _run("train_sync.py", "--data_dir", str(tmp_path / "empty"), "--out_dir", str(tmp_path / "r"), "--quiet")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1


def test_init_fine_tunes_from_a_published_checkpoint(synthetic, tmp_path):
    root, _ = synthetic
    published = fakeweights.save_checkpoint(fakeweights.random_state_dict("syncnet.json", seed=3), tmp_path / "s.model")
    cfg = load_config(overrides=["train.batch_size=2", "train.val_windows=2", "train.val_every_steps=1",
                                 "train.lr=1.0e-12", "train.lr_final=1.0e-12", "train.bn_recalibration_windows=2"])
    train_sync_model(root / "train", tmp_path / "run", cfg, ["train00", "train01"], init=published, steps=1)
    start = torch.load(published, weights_only=True)
    tuned = torch.load(tmp_path / "run" / "syncnet.model", weights_only=True)
    assert torch.allclose(start["netfcaud.3.weight"], tuned["netfcaud.3.weight"], atol=1e-6)
    with pytest.raises(InputError):
        train_sync_model(root / "train", tmp_path / "x", cfg, ["train00", "train01"], steps=1, model="nosuchmodel")


def test_losses_on_hand_computed_cases():
    from pipeline.train.adapters import bce_on_cosine, contrastive_loss

    lip = torch.tensor([[0.0, 0.0]])
    audio = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 3.0]]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    # positive: d = 5 -> 25; negatives: d = 1 -> (2 - 1)^2 = 1, d = 3 -> 0 (beyond the margin); halves weigh the same
    assert float(contrastive_loss(lip, audio, labels, margin=2.0)) == pytest.approx(0.5 * (25 + 0.5), rel=1e-5)
    face = torch.tensor([[1.0, 0.0]])
    audio = torch.tensor([[[0.6, 0.8], [0.0, 1.0]]])
    # in sync with cosine 0.6: -ln 0.6; off sync with cosine 0: -ln 1 = 0
    assert float(bce_on_cosine(face, audio, torch.tensor([[1.0, 0.0]]))) == pytest.approx(0.5 * -np.log(0.6), rel=1e-5)


@pytest.mark.filterwarnings("ignore:.*differs from the published")  # the trained model, loaded in this process
def test_wav2lip_expert_trains_in_its_published_format_and_loads_in_stage2(synthetic, tmp_path, capsys):
    root, _ = synthetic
    run = tmp_path / "run"
    done = _run("train_sync.py", "--model", "wav2lip", "--data_dir", str(root / "train"), "--references", "train00",
                "train01", "--out_dir", str(run),
                "--steps", "2", "--quiet", "--set", "train.batch_size=2", "--set", "train.val_windows=2",
                "--set", "train.val_every_steps=1", "--set", "train.bn_recalibration_windows=2")
    assert done.returncode == 0, done.stderr
    saved = torch.load(run / "lipsync_expert.pth", map_location="cpu", weights_only=True)
    assert set(saved) == {"state_dict", "optimizer", "global_step", "global_epoch"}  # Wav2Lip's save_checkpoint
    manifest = {e["key"]: tuple(e["shape"]) for e in fakeweights.manifest_keys("wav2lip_lipsync_expert.json")}
    assert {k: tuple(v.shape) for k, v in saved["state_dict"].items()} == manifest
    stage2 = run_script_in_process("run_syncnet.py", capsys, "--data_dir", str(root / "held"), "--reference", "held01",
                             "--weights_dir", str(run), "--sync_model", "wav2lip", "--force", "--quiet")
    assert stage2.returncode == 0, stage2.stderr
    assert "wav2lip" in (root / "held" / "pywork" / "held01" / "offsets.txt").read_text()
