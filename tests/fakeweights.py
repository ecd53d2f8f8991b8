"""Seeded random checkpoints in the published formats, made from ../shared/ckpt-manifests.

The real checkpoints cannot be downloaded in CI; these files have exactly the published keys, shapes and
dtypes, so they exercise the same loading path a user's real files take.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
MANIFEST_DIR = REPO.parent / "shared" / "ckpt-manifests"


def manifest_keys(network_json: str) -> list[dict]:
    """The manifest's entries: dicts with key, shape, dtype."""
    return json.loads((MANIFEST_DIR / network_json).read_text())["keys"]


def random_state_dict(network_json: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded state dict with the manifest's keys; scaled like a trained net so activations stay finite."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for entry in manifest_keys(network_json):
        key, shape = entry["key"], tuple(entry["shape"])
        dtype = getattr(torch, entry["dtype"])
        if dtype == torch.int64:
            value = torch.zeros(shape, dtype=dtype)
        elif key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            value = 0.01 * torch.randn(shape, generator=gen)
        elif len(shape) <= 1:  # BatchNorm / L2Norm scales, filter banks stored as vectors
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen) if shape else torch.tensor(1.0)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            value = torch.randn(shape, generator=gen) / fan_in**0.5
        state[key] = value.to(dtype).contiguous()
    return state


def save_checkpoint(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Save like the publishers did: a bare state dict through torch.save."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
