"""Find, verify and load published checkpoints.

``models/checkpoints.tsv`` is the one registry of checkpoint files (network, file name, sha256, URL); this
module and ``download_models.sh`` both read it. A URL ``ARCHIVE#MEMBER`` names a file inside a zip or wheel
(Resemblyzer's ``pretrained.pt`` inside its PyPI wheel); its sha256 is the extracted member's. The weights
folder is ``--weights_dir``, else ``$AVDIARISE_WEIGHTS_DIR``, else ``~/.cache/av-diarise/weights`` (``$XDG_CACHE_HOME`` respected).

A file that ``download_models.sh`` fetched was hash-checked when it arrived. Here, a file whose registry
hash is known is checked again, and a mismatch only warns (once per file): users may bring their own or
retrained checkpoints under a registry name. Every load is ``weights_only=True`` and strict, and every
loaded network is run once on a tiny seeded input (``check_finite``): a checkpoint whose network gives NaN
or infinity (a diverged fine-tune, a damaged file) is one line naming the file when it is loaded, not
after hours of stages that feed on its output.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.errors import CheckpointError, first_line

REGISTRY_PATH = Path(__file__).resolve().parent / "checkpoints.tsv"
WEIGHTS_ENV = "AVDIARISE_WEIGHTS_DIR"
_warned_hashes: set[Path] = set()
_checked_finite: set[tuple] = set()


@dataclass(frozen=True)
class CheckpointEntry:
    """One published checkpoint file."""

    network: str
    file: str
    sha256: str | None
    default: bool  # fetched by a plain `bash download_models.sh` (the default config's files)
    url: str  # the file itself, or for a manual entry the page that links it
    manual: bool = False  # no stable direct URL (registry column `default` is `manual`): the user fetches it

    @property
    def archive_member(self) -> str | None:
        """For a url ``ARCHIVE#MEMBER``: the file's path inside the zip/wheel at ARCHIVE (sha256 is the member's)."""
        return self.url.split("#", 1)[1] if "#" in self.url and not self.manual else None  # manual: a page anchor


def read_registry(path: Path = REGISTRY_PATH) -> list[CheckpointEntry]:
    """All registry rows, in file order."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        network, file, sha256, default, url = line.split("\t")
        entries.append(CheckpointEntry(network, file, None if sha256 == "-" else sha256, default == "1", url,
                                       manual=default == "manual"))
    return entries


def registry_entry(file: str) -> CheckpointEntry | None:
    """The registry row of a file name, or None for a file the registry does not know."""
    return next((entry for entry in read_registry() if entry.file == file), None)


def default_weights_dir() -> Path:
    """``$AVDIARISE_WEIGHTS_DIR``, else the per-user cache folder."""
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "av-diarise" / "weights"


def resolve_weights_dir(weights_dir: str | Path | None) -> Path:
    """The folder checkpoints are read from: the argument, else the environment, else the user cache."""
    return Path(weights_dir).expanduser() if weights_dir else default_weights_dir()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_path(file: str, weights_dir: str | Path | None) -> Path:
    """Where ``file`` is, or a one-line CheckpointError saying where it was looked for and how to get it."""
    folder = resolve_weights_dir(weights_dir)
    path = folder / file
    if path.is_file():
        return path
    entry = registry_entry(file)
    fetch = f"; `bash download_models.sh {folder}` fetches it" if entry else ""
    if entry is not None and entry.manual:
        fetch = f"; it has no direct download: get it from {entry.url} and save it there as {file}"
    raise CheckpointError(f"checkpoint {file} not found in {folder} (set --weights_dir or ${WEIGHTS_ENV}){fetch}")


def verify_hash(path: Path) -> bool:
    """Compare a file with its registry hash; warn once on a mismatch. True when it matches or none is known."""
    entry = registry_entry(path.name)
    if entry is None or entry.sha256 is None:
        return True
    if _sha256(path) == entry.sha256:
        return True
    if path not in _warned_hashes:
        _warned_hashes.add(path)
        warnings.warn(
            f"{path} differs from the published {entry.file} (sha256 mismatch); loading it as a user-supplied checkpoint",
            stacklevel=2,
        )
    return False


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, loaded on the CPU with ``weights_only=True``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle of arbitrary objects, wrong format...
        raise CheckpointError(f"checkpoint {path} cannot be read ({first_line(err, 200)}); download it again") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} is not a state dict of tensors")
    return dict(state)


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Path | str) -> torch.nn.Module:
    """Load ``state`` into ``module`` with exact keys and shapes, naming what differs."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{label} keys: {shown}")
        raise CheckpointError(f"checkpoint {source} does not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
    return module


def probe_input(*shape: int, scale: float = 1.0) -> torch.Tensor:
    """A seeded standard-normal tensor (times ``scale``): the tiny input ``check_finite`` runs a network on."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)) * scale


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def check_finite(module: torch.nn.Module, source: Path | str, probe: Callable[[torch.nn.Module], Any]) -> None:
    """Check the weights are finite and ``probe(module)`` (the network on a tiny input) gives finite output;
    else a one-line CheckpointError naming ``source``. Runs in eval mode without gradients."""
    bad = [name for name, tensor in module.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise CheckpointError(f"checkpoint {source} holds non-finite weights (NaN or infinity in {bad[0]}"
                              f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); download it again or "
                              f"use another checkpoint")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            outputs = _tensors(probe(module))
    finally:
        module.train(was_training)
    if not all(bool(torch.isfinite(out).all()) for out in outputs if out.is_floating_point()):
        raise CheckpointError(f"checkpoint {source} loads but its {type(module).__name__} gives non-finite output "
                              f"(NaN or infinity) on a test input; download it again or use another checkpoint")


def load_checkpoint(
    module: torch.nn.Module,
    file: str,
    weights_dir: str | Path | None,
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    probe: Callable[[torch.nn.Module], Any] | None = None,
) -> torch.nn.Module:
    """Find ``file``, check its hash, convert its keys if needed and load it strictly into ``module``;
    with ``probe`` (the network run on a tiny input), check the result is finite (``check_finite``)."""
    path = checkpoint_path(file, weights_dir)
    verify_hash(path)
    state = read_state_dict(path)
    if convert is not None:
        state = convert(state)
    load_strict(module, state, path)
    if probe is not None:
        stat = path.stat()
        seen = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, type(module).__name__)
        if seen not in _checked_finite:  # once per file and process: loading again gives the same network
            check_finite(module, path, probe)
            _checked_finite.add(seen)
    return module


def find_network_checkpoint(network: str, preferred: str, weights_dir: str | Path | None) -> str:
    """``preferred`` if present, else any other registry file of the same network that is present.

    Raises the missing-checkpoint error for ``preferred`` when none is there.
    """
    folder = resolve_weights_dir(weights_dir)
    if (folder / preferred).is_file():
        return preferred
    for entry in read_registry():
        if entry.network == network and entry.file != preferred and (folder / entry.file).is_file():
            return entry.file
    checkpoint_path(preferred, weights_dir)  # raises the one-line error
    return preferred
