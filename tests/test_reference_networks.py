"""Our networks against the references' own definitions (tests/reference_networks.py), same seeded weights.

Until now the networks were compared only with themselves (batched vs unbatched, pipeline vs direct call); a
wrong layer, padding or pooling there would go unseen. Each network here loads the same seeded state dict
(the published keys and shapes) into ours and into the reference's definition, strictly, and the forward
outputs must agree to 1e-5 (relative to the output's scale).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.resnetse34v2 import ResNetSE34V2
from models.s3fd import S3FD
from models.syncnet import SyncNet
from models.vggface import VGGFaceResNet50
from tests import fakespeaker, fakeweights
from tests import reference_networks as ref
from tests.syncnet_oracle import distance_matrix


def _close(ours: torch.Tensor, theirs: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(1.0, float(theirs.abs().max()))
    assert ours.shape == theirs.shape
    assert torch.isfinite(theirs).all()
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol * scale)


def _pair(ours: torch.nn.Module, theirs: torch.nn.Module, state: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    ours.load_state_dict(state, strict=True)
    theirs.load_state_dict(state, strict=True)
    return ours.eval(), theirs.eval()


@pytest.fixture(scope="module")
def syncnets():
    return _pair(SyncNet(), ref.SyncNetModel(), fakeweights.random_state_dict("syncnet.json", seed=11))


@torch.inference_mode()
def test_syncnet_streams_equal_the_reference(syncnets):
    ours, theirs = syncnets
    gen = torch.Generator().manual_seed(0)
    mfcc = torch.randn(3, 1, 13, 20, generator=gen) * 10
    lips = torch.rand(2, 3, 5, 224, 224, generator=gen) * 255
    _close(ours.forward_aud(mfcc), theirs.forward_aud(mfcc))
    _close(ours.forward_lip(lips), theirs.forward_lip(lips))
    _close(ours.forward_lipfeat(lips), theirs.forward_lipfeat(lips))


def _reference_pdist(feat1: torch.Tensor, feat2: torch.Tensor, vshift: int, metric: str) -> np.ndarray:
    """syncnet_python's ``calc_pdist`` (Euclidean) and av-diarization's cosine variant, row by row."""
    win_size = vshift * 2 + 1
    feat2p = F.pad(feat2, (0, 0, vshift, vshift))
    rows = []
    for i in range(len(feat1)):
        if metric == "euclidean":
            rows.append(F.pairwise_distance(feat1[[i], :].repeat(win_size, 1), feat2p[i:i + win_size, :]))
        else:
            rows.append(1 - F.cosine_similarity(feat1[[i], :].repeat(win_size, 1), feat2p[i:i + win_size, :]))
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_distance_matrix_equals_the_references_calc_pdist(metric):
    gen = torch.Generator().manual_seed(1)
    lip, aud = torch.randn(37, 1024, generator=gen), torch.randn(37, 1024, generator=gen)
    np.testing.assert_allclose(distance_matrix(lip, aud, 10, metric, chunk_windows=8),
                               _reference_pdist(lip, aud, 10, metric), rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_resnetse34v2_equals_the_reference():
    state = fakespeaker.resnetse34_state(seed=3)
    ours, theirs = _pair(ResNetSE34V2(n_out=512, n_mels=64, log_input=True),
                         ref.ResNetSE34V2(nOut=512, encoder_type="ASP", n_mels=64, log_input=True), state)
    audio = torch.randn(2, 16000, generator=torch.Generator().manual_seed(2)) * 0.1
    _close(ours(audio), theirs(audio))


@torch.inference_mode()
def test_vggface_resnet50_equals_the_reference():
    state = fakeweights.random_state_dict("vggface2_resnet50.json", seed=4)
    ours, theirs = _pair(VGGFaceResNet50(num_classes=8631, include_top=False),
                         ref.resnet50(num_classes=8631, include_top=False), state)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3)) * 50
    _close(ours(images), theirs(images))


@torch.inference_mode()
def test_s3fd_heads_equal_the_reference():
    state = fakeweights.random_state_dict("s3fd.json", seed=5)
    ours, theirs = _pair(S3FD(), ref.S3FDNet(device="cpu"), state)
    image = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(4)) * 50
    our_loc, our_face = ours(image)
    their_loc, their_face = theirs(image)
    _close(our_loc, their_loc)
    _close(our_face, their_face)
