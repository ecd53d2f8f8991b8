"""Seeded random checkpoints of our own networks, saved under the published file names.

For benchmarks and smoke runs where the published weights are out of reach (like demucs' ``demucs_unittest``):
the networks' default initialisation gives finite activations, the files load through exactly the code
path of the real ones, and speed does not depend on the values. Results made with them mean nothing.
"""
from __future__ import annotations

from pathlib import Path

import torch

from models.loader import resolve_weights_dir


def _networks() -> dict[str, torch.nn.Module]:
    from models.resnetse34v2 import ResNetSE34V2
    from models.s3fd import S3FD
    from models.syncnet import SyncNet
    from models.vggface import VGGFaceResNet50
    from models.wav2lip import LipSyncExpert

    return {
        "s3fd.model": S3FD(),
        "syncnet.model": SyncNet(),
        "speakernet.model": ResNetSE34V2(),
        "faceembedding.model": VGGFaceResNet50(),
        "lipsync_expert.pth": LipSyncExpert(),
    }


# Files published as training checkpoints: the weights sit under 'state_dict' (Wav2Lip's save_checkpoint).
_TRAINING_CHECKPOINTS = ("lipsync_expert.pth",)


def write_random_checkpoints(weights_dir: str | Path | None, seed: int = 0, overwrite: bool = False) -> Path:
    """Write seeded random ``s3fd.model``, ``syncnet.model``, ``speakernet.model``, ``faceembedding.model`` and
    Wav2Lip's ``lipsync_expert.pth`` (in its training-checkpoint layout)."""
    folder = resolve_weights_dir(weights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for name, module in _networks().items():
        path = folder / name
        if overwrite or not path.exists():
            module.eval()
            state = module.state_dict()
            if name in _TRAINING_CHECKPOINTS:
                state = {"state_dict": state, "optimizer": None, "global_step": 0, "global_epoch": 0}
            torch.save(state, path)
    return folder
