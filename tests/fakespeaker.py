"""Seeded random speaker-model files in the published formats, for tests that run the networks.

- ResNetSE34V2 states whose learned tensors are random but whose front-end constants (``torchfb.*``: the
  pre-emphasis filter, Hamming window and mel filter bank, which the published files hold) are the real ones,
  so log-mel features stay finite. fakeweights.random_state_dict randomises those too (negative mel weights
  give NaN logs): fine for load tests, not for inference.
- A folder laid out like ``speechbrain/spkrec-ecapa-voxceleb`` with random ECAPA-TDNN weights and a
  hyperparams.yaml equivalent to the published one (its ``pretrained_path`` still names the hub repository,
  as the published file does, so loading it proves the loader never goes there).
"""
from __future__ import annotations

from pathlib import Path

import torch

from tests import fakeweights

ECAPA_CHANNELS = [1024, 1024, 1024, 1024, 3072]
ECAPA_KERNELS = [5, 3, 3, 3, 1]
ECAPA_DILATIONS = [1, 2, 3, 4, 1]
ECAPA_EMBEDDING_DIM = 192
ECAPA_CLASSES = 7205  # VoxCeleb1 + 2 training speakers of the published classifier

# Equivalent of the published spkrec-ecapa-voxceleb hyperparams.yaml (same modules, sizes and pretrainer).
ECAPA_HYPERPARAMS = """\
# ############################################################################
# Model: ECAPA big for Speaker verification (test copy with random weights)
# ############################################################################

# Feature parameters
n_mels: 80

# Pretrain folder (HuggingFace)
pretrained_path: speechbrain/spkrec-ecapa-voxceleb

# Output parameters
out_n_neurons: 7205

# Model params
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [1024, 1024, 1024, 1024, 3072]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 128
    lin_neurons: 192

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: 192
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""


def resnetse34_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Bare ResNetSE34V2 keys (speakernet.model format): random weights, real front-end constants."""
    from models.resnetse34v2 import ResNetSE34V2

    state = fakeweights.random_state_dict("resnetse34v2.json", seed=seed)
    real = ResNetSE34V2().state_dict()
    for key in state:
        if key.startswith("torchfb."):
            state[key] = real[key].clone()
    return state


def voxceleb_trainer_state(bare: dict[str, torch.Tensor], module_prefix: bool = False,
                           seed: int = 0) -> dict[str, torch.Tensor]:
    """``bare`` in baseline_v2_ap.model's layout: ``__S__.`` model keys beside AAM-softmax ``__L__.`` keys."""
    gen = torch.Generator().manual_seed(seed)
    prefix = "module." if module_prefix else ""
    state = {f"{prefix}__S__.{key}": value for key, value in bare.items()}
    state[f"{prefix}__L__.fc.weight"] = torch.randn(5994, 512, generator=gen)  # VoxCeleb2 dev speakers
    return state


def build_ecapa_folder(folder: Path, seed: int = 0) -> Path:
    """Write a spkrec-ecapa-voxceleb-like folder with seeded random weights; returns ``folder``."""
    from speechbrain.dataio.encoder import CategoricalEncoder
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hyperparams.yaml").write_text(ECAPA_HYPERPARAMS, encoding="utf-8")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        embedding_model = ECAPA_TDNN(80, channels=ECAPA_CHANNELS, kernel_sizes=ECAPA_KERNELS,
                                     dilations=ECAPA_DILATIONS, attention_channels=128,
                                     lin_neurons=ECAPA_EMBEDDING_DIM)
        classifier = Classifier(input_size=ECAPA_EMBEDDING_DIM, out_neurons=ECAPA_CLASSES)
        stats = {"count": 1000, "glob_mean": 0.01 * torch.randn(ECAPA_EMBEDDING_DIM),
                 "glob_std": torch.ones(ECAPA_EMBEDDING_DIM)}
    torch.save(embedding_model.state_dict(), folder / "embedding_model.ckpt")
    torch.save(classifier.state_dict(), folder / "classifier.ckpt")
    torch.save(stats, folder / "mean_var_norm_emb.ckpt")
    encoder = CategoricalEncoder()
    encoder.update_from_iterable([f"id{10001 + i:05d}" for i in range(ECAPA_CLASSES)])
    encoder.save(folder / "label_encoder.txt")
    return folder
