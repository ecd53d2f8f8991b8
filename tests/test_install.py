"""The installed package set imports every stage, and torchaudio's compiled library stays off the default path.

CI installs from scratch (README's test command), so these fail when a fresh install resolves to a set that
cannot run a stage, as torch 2.11.0 with torchaudio 2.11.1 did.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
STAGE_MODULES = ["pipeline.stage1", "pipeline.stage2", "pipeline.stage3", "pipeline.stage4",
                 "models.s3fd", "models.syncnet", "models.resnetse34v2", "models.vggface"]


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_every_stage_imports(module):
    importlib.import_module(module)


def test_default_stages_do_not_load_torchaudio():
    """A broken torchaudio may cost ECAPA, never the default ResNetSE34V2 path."""
    code = ("import sys; " + "; ".join(f"import {m}" for m in STAGE_MODULES)
            + "; import pipeline.embed; print('torchaudio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_torch_and_torchaudio_are_the_pinned_pair():
    torch_version = version("torch").split("+")[0]
    torchaudio_version = version("torchaudio").split("+")[0]
    assert torch_version.split(".")[:2] == torchaudio_version.split(".")[:2]
    import torchaudio  # the pair must load together: speechbrain (ECAPA) imports it

    assert torchaudio.__version__.split("+")[0] == torchaudio_version


def test_speechbrain_imports_with_the_installed_pair():
    from pipeline.embed import _import_speechbrain

    classifier, _, _ = _import_speechbrain()
    assert classifier.__name__ == "EncoderClassifier"


def test_mel_front_end_equals_torchaudio():
    """ResNetSE34V2's torch-only front end gives torchaudio's MelSpectrogram (voxceleb_trainer's settings)."""
    torchaudio = pytest.importorskip("torchaudio")
    from models.resnetse34v2 import MelSpectrogram

    ours = MelSpectrogram(16000, n_fft=512, win_length=400, hop_length=160, n_mels=64)
    theirs = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=512, win_length=400, hop_length=160,
                                                  window_fn=torch.hamming_window, n_mels=64)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=1e-6)
    audio = torch.Generator().manual_seed(0)
    waveforms = torch.randn(3, 32000, generator=audio) * 0.1
    torch.testing.assert_close(ours(waveforms), theirs(waveforms), rtol=1e-5, atol=1e-6)


def test_broken_torchaudio_is_one_line_naming_the_versions(monkeypatch):
    """When speechbrain cannot import (torchaudio's library does not load), ECAPA says which versions clash."""
    import builtins

    from pipeline import embed
    from pipeline.errors import CheckpointError
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name.startswith("speechbrain"):
            raise OSError("Could not load this library: libtorchaudio.so\nundefined symbol")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(CheckpointError) as err:
        embed._import_speechbrain()
    message = str(err.value)
    assert "\n" not in message
    assert f"torch {version('torch')}" in message and f"torchaudio {version('torchaudio')}" in message
    assert "Could not load this library" in message


def test_decision_frame_rate_must_equal_the_media_frame_rate():
    from pipeline.config import load_config
    from pipeline.errors import InputError

    assert load_config(overrides=["media.frame_rate_hz=30", "diarise.frame_rate_hz=30"]).diarise.frame_rate_hz == 30
    with pytest.raises(InputError, match="diarise.frame_rate_hz .* must equal media.frame_rate_hz"):
        load_config(overrides=["diarise.frame_rate_hz=30"])


def test_models_do_not_import_pipeline():
    """``models`` is the network package: it must load without anything from ``pipeline``."""
    code = ("import sys; import models.loader, models.s3fd, models.syncnet, models.resnetse34v2, models.vggface, "
            "models.wav2lip; print(sorted(m for m in sys.modules if m == 'pipeline' or m.startswith('pipeline.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return next(line for line in text.splitlines() if "python -m pytest -q" in line and "pip install -e" in line)


def test_ci_runs_the_readme_test_command_with_resemblyzer_without_its_dependencies():
    """CI installs what the README says, and Resemblyzer only with --no-deps (its `webrtcvad` source package
    would need a compiler and overwrite webrtcvad-wheels' module)."""
    command = _readme_test_command()
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install --no-deps 'Resemblyzer==0.1.4'" in command


def test_resemblyzer_weights_are_installed_without_its_declared_dependencies():
    """After the README's test command: the GE2E weights are found (the real-speech tests do not skip), and
    neither the `webrtcvad` source package nor the `typing` backport came with them."""
    from importlib.metadata import PackageNotFoundError, distribution

    from models.ge2e import find_weights, packaged_weights

    assert packaged_weights() is not None, "pip install --no-deps 'Resemblyzer==0.1.4' (README's test command)"
    assert find_weights(None).is_file()
    for name in ("webrtcvad", "typing"):
        with pytest.raises(PackageNotFoundError):
            distribution(name)
    assert distribution("webrtcvad-wheels") is not None
