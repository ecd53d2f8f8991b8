"""The checkpoint registry, weights folder, strict loading and download_models.sh."""
from __future__ import annotations

import hashlib
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from models import loader
from pipeline.errors import CheckpointError
from tests.conftest import REPO


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, 3)
        self.bn = torch.nn.BatchNorm1d(3)


def test_registry_lists_every_published_file_with_url():
    entries = loader.read_registry()
    files = {entry.file for entry in entries}
    assert {"s3fd.model", "sfd_face.pth", "syncnet.model", "syncnet_v2.model", "speakernet.model",
            "baseline_v2_ap.model", "faceembedding.model"} <= files
    for entry in entries:
        # a manual entry (no stable direct URL) names the page that links the file instead
        if entry.archive_member is not None:  # a file inside a published wheel: the member's own sha256
            assert entry.url.startswith("https://files.pythonhosted.org/") and ".whl#" in entry.url
            assert entry.sha256 is not None and len(entry.sha256) == 64
            continue
        assert entry.url.startswith("http") and (entry.manual or entry.url.endswith(Path(entry.file).name))
        assert entry.sha256 is None or (len(entry.sha256) == 64 and entry.sha256 in entry.url)
    assert [entry.file for entry in entries if entry.manual] == ["lipsync_expert.pth", "model_rgb.pth"]


def test_weights_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv(loader.WEIGHTS_ENV, str(tmp_path / "env"))
    assert loader.resolve_weights_dir(None) == tmp_path / "env"
    assert loader.resolve_weights_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(loader.WEIGHTS_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loader.resolve_weights_dir(None) == tmp_path / "xdg" / "av-diarise" / "weights"


def test_missing_checkpoint_is_one_line_naming_file_folder_and_script(tmp_path):
    with pytest.raises(CheckpointError) as err:
        loader.checkpoint_path("syncnet.model", tmp_path)
    message = str(err.value)
    assert "\n" not in message and "syncnet.model" in message and str(tmp_path) in message
    assert "download_models.sh" in message


def test_strict_load_names_missing_unexpected_and_misshapen_keys(tmp_path):
    state = Tiny().state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["bn.weight"] = torch.zeros(4)
    with pytest.raises(CheckpointError) as err:
        loader.load_strict(Tiny(), state, "x.model")
    message = str(err.value)
    assert "missing keys: fc.bias" in message and "unexpected keys: extra.weight" in message
    assert "wrong shape keys: bn.weight" in message


def test_truncated_or_foreign_checkpoint(tmp_path):
    path = tmp_path / "syncnet.model"
    torch.save(Tiny().state_dict(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be read"):
        loader.read_state_dict(path)
    path.write_text("<html>not found</html>")
    with pytest.raises(CheckpointError, match="cannot be read"):
        loader.read_state_dict(path)


def test_user_checkpoint_with_other_hash_warns_once_and_loads(tmp_path):
    torch.save(Tiny().state_dict(), tmp_path / "s3fd.model")  # a registry name with a published hash
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader.load_checkpoint(Tiny(), "s3fd.model", tmp_path)
        loader.load_checkpoint(Tiny(), "s3fd.model", tmp_path)
    assert len([w for w in caught if "sha256 mismatch" in str(w.message)]) == 1


def test_network_fallback_to_the_other_published_file(tmp_path):
    (tmp_path / "sfd_face.pth").write_bytes(b"x")
    assert loader.find_network_checkpoint("s3fd", "s3fd.model", tmp_path) == "sfd_face.pth"
    with pytest.raises(CheckpointError, match="s3fd.model"):
        loader.find_network_checkpoint("s3fd", "s3fd.model", tmp_path / "empty")


def _script(registry: Path, dest: Path, *networks: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, AVDIARISE_REGISTRY=str(registry))
    return subprocess.run(["bash", str(REPO / "download_models.sh"), str(dest), *networks], capture_output=True,
                          text=True, env=env, timeout=60)


def test_download_script_checks_hashes_and_keeps_no_partial_file(tmp_path):
    good = tmp_path / "src" / "good.model"
    good.parent.mkdir()
    good.write_bytes(b"published bytes")
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    registry = tmp_path / "registry.tsv"
    registry.write_text(
        "# network\tfile\tsha256\tdefault\turl\n"
        f"net\tgood.model\t{digest}\t1\tfile://{good}\n"
        f"net\tbad.model\t{'0' * 64}\t0\tfile://{good}\n"
        f"other\tskipped.model\t-\t0\tfile://{good}\n"
    )
    dest = tmp_path / "weights"
    proc = _script(registry, dest, "net")
    assert proc.returncode == 1  # bad.model's hash differs: reported, not kept
    assert (dest / "good.model").read_bytes() == b"published bytes"
    assert not (dest / "bad.model").exists() and not list(dest.glob("*.part"))
    assert not (dest / "skipped.model").exists()
    assert "does not match its published sha256" in proc.stderr
    again = _script(registry, dest, "other")
    assert again.returncode == 0 and (dest / "skipped.model").exists()


def test_download_script_without_networks_fetches_the_default_files(tmp_path):
    source = tmp_path / "published.model"
    source.write_bytes(b"weights")
    registry = tmp_path / "registry.tsv"
    registry.write_text(f"a\tdefault.model\t-\t1\tfile://{source}\nb\toptional.model\t-\t0\tfile://{source}\n")
    assert _script(registry, tmp_path / "w").returncode == 0
    assert (tmp_path / "w" / "default.model").exists() and not (tmp_path / "w" / "optional.model").exists()
    assert _script(registry, tmp_path / "w", "all").returncode == 0
    assert (tmp_path / "w" / "optional.model").exists()


def test_registry_default_files_are_the_default_config_files():
    from pipeline.config import load_config

    cfg = load_config()
    defaults = {entry.file for entry in loader.read_registry() if entry.default}
    assert defaults == {cfg.detect.checkpoint, cfg.syncnet.checkpoint, cfg.embed.resnetse34_checkpoint,
                        cfg.faces.checkpoint}


def test_python_and_shell_read_the_same_registry():
    """download_models.sh reads models/checkpoints.tsv, the file models.loader reads."""
    text = (REPO / "download_models.sh").read_text()
    assert "models/checkpoints.tsv" in text
    assert loader.REGISTRY_PATH == REPO / "models" / "checkpoints.tsv"
