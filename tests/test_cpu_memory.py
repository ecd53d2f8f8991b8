"""Issue 23's memory reuse on the CPU: same values, fewer fresh pages (``runtime.heap_reuse_mb``, ``run_in_place``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.syncnet import SyncNet, run_in_place
from pipeline.sync.syncnet import SyncSettings, chunk_bounds, sync_track

REPO = Path(__file__).resolve().parent.parent

# SyncNet's lip network on 12 windows, five times (its first activation, 55 MB, is above glibc's largest mmap
# threshold); prints the page faults of the last two passes.
FAULTS_OF_REUSE = """
import resource, sys, torch
from pipeline.runtime import apply_heap_reuse
from models.syncnet import SyncNet
print(apply_heap_reuse(int(sys.argv[1])))
torch.set_num_threads(1)
model = SyncNet().eval()
lips = torch.rand(12, 3, 5, 224, 224).contiguous(memory_format=torch.channels_last_3d)
with torch.inference_mode():
    for _ in range(3):
        model.forward_lipfeat(lips)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        model.forward_lipfeat(lips)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_of_reuse(heap_reuse_mb: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS_OF_REUSE, str(heap_reuse_mb)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_heap_reuse_keeps_freed_activations_for_the_next_batch():
    applied, faults = _faults_of_reuse(0)
    assert applied == 0 and faults > 10_000  # glibc's default: fresh mappings, one fault per 4 KiB page (~27k here)
    applied, faults = _faults_of_reuse(1024)
    assert applied == 1024 and faults < 2_000  # the freed blocks are reused: their pages are already there


# 200 MB allocated and freed under heap reuse: kept by the process until release_heap; prints RSS (MB) after each.
KEPT_UNTIL_RELEASED = """
import sys
import numpy as np
from pipeline.runtime import apply_heap_reuse, release_heap
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
apply_heap_reuse(int(sys.argv[1]))
block = np.ones(200 * 2**20 // 8)
del block
kept = rss_mb()
print(kept, release_heap(), rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and malloc_trim: Linux only")
def test_release_heap_returns_the_kept_blocks():
    out = subprocess.run([sys.executable, "-c", KEPT_UNTIL_RELEASED, "1024"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    kept, released, after = float(out[0]), out[1], float(out[2])
    assert released == "True" and kept - after > 150  # the freed 200 MB left the process
    out = subprocess.run([sys.executable, "-c", KEPT_UNTIL_RELEASED, "0"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[1] == "False"  # nothing kept, nothing to release


def _with_batch_norm_statistics(model: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            for tensor in (module.running_mean, module.weight, module.bias):
                tensor.data.copy_(torch.randn(tensor.shape, generator=generator))
            module.running_var.data.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def test_in_place_layers_give_the_same_bits_as_the_modules():
    torch.manual_seed(0)
    model = _with_batch_norm_statistics(SyncNet())
    lips = (torch.rand(3, 3, 5, 224, 224) * 255).contiguous(memory_format=torch.channels_last_3d)
    mfcc = torch.randn(3, 1, 13, 20) * 10
    with torch.inference_mode():
        assert torch.equal(model.forward_lipfeat(lips), model.netcnnlip(lips).reshape(3, -1))
        assert torch.equal(model.forward_aud(mfcc), model.netfcaud(model.netcnnaud(mfcc).reshape(3, -1)))
        kept = lips.clone()
        model.forward_lipfeat(lips)
        assert torch.equal(lips, kept)  # the caller's input is never written over, only the layers' outputs


def test_in_place_layers_leave_training_and_autograd_to_the_modules():
    torch.manual_seed(0)
    model = _with_batch_norm_statistics(SyncNet())
    mfcc = torch.randn(4, 1, 13, 20, requires_grad=True)
    out = run_in_place(model.netcnnaud, mfcc)  # grad enabled: the modules themselves, so backward works
    out.sum().backward()
    assert mfcc.grad is not None and torch.isfinite(mfcc.grad).all()
    model.train()
    before = model.netcnnaud[1].running_mean.clone()
    with torch.no_grad():
        run_in_place(model.netcnnaud, mfcc.detach())
    assert not torch.equal(model.netcnnaud[1].running_mean, before)  # training mode: batch norm updates its stats


def test_lip_chunks_give_the_batch_its_own_features():
    """``syncnet.cpu_lip_chunk_windows``: the lip network sees a batch a chunk at a time (uneven chunks included),
    and every window keeps its features and distances (a chunk read from the wrong frames would move them, and so
    would a chunk of a single window: 8 windows in chunks of 7 are 7 + 1 unless the 1 joins the 7)."""
    torch.manual_seed(0)
    model = _with_batch_norm_statistics(SyncNet())
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(13)]
    audio = (rng.standard_normal(13 * 640) * 3000).astype(np.int16)
    results = {chunk: sync_track(model, iter(frames), audio, SyncSettings(batch_size=8, cpu_lip_chunk_windows=chunk),
                                 keep_embeddings=True) for chunk in (8, 7, 2)}
    whole = results[8]
    assert whole.distances.shape == (8, 21)
    for chunk in (7, 2):
        np.testing.assert_allclose(results[chunk].embeddings["lip_conv"], whole.embeddings["lip_conv"],
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(results[chunk].distances, whole.distances, rtol=1e-6, atol=1e-6)


def test_chunk_bounds_never_leave_one_window_alone():
    assert chunk_bounds(64, 16) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert chunk_bounds(17, 16) == [(0, 17)]
    assert chunk_bounds(33, 16) == [(0, 16), (16, 33)]
    assert chunk_bounds(18, 16) == [(0, 16), (16, 18)]
    assert chunk_bounds(1, 16) == [(0, 1)]  # a track of one window: one window whatever the chunk
    assert chunk_bounds(5, 2) == [(0, 2), (2, 5)]


@pytest.mark.parametrize("kernel,stride,padding", [((3, 3), (1, 2), (0, 0)), ((3, 3), (2, 2), (0, 0)),
                                                   ((3, 3), (2, 2), (1, 1)), ((2, 3), (1, 1), (1, 0))])
def test_separable_max_pool_gives_max_pool2d_bits(kernel, stride, padding):
    from models.syncnet import separable_max_pool2d

    x = torch.randn(4, 5, 13, 20, generator=torch.Generator().manual_seed(1))
    x[0, 0, 3, 4] = float("nan")  # NaN wins its windows in both
    layer = torch.nn.MaxPool2d(kernel, stride, padding)
    expected, got = layer(x), separable_max_pool2d(x, layer)
    assert got.shape == expected.shape and got.is_contiguous()
    assert torch.equal(got.isnan(), expected.isnan())  # NaN wherever max_pool2d has one (its bit pattern may differ)
    finite = ~expected.isnan()
    assert got[finite].numpy().tobytes() == expected[finite].numpy().tobytes()


def test_resnetse34_in_place_blocks_give_the_same_bits_as_the_modules():
    from models.resnetse34v2 import ResNetSE34V2

    torch.manual_seed(0)
    model = _with_batch_norm_statistics(ResNetSE34V2()).to(memory_format=torch.channels_last)
    waveforms = torch.randn(3, 16000, generator=torch.Generator().manual_seed(2)) * 0.1
    with torch.inference_mode():
        in_place = model(waveforms)  # SEBasicBlock._forward_in_place
    with torch.enable_grad():
        modules = model(waveforms).detach()  # autograd on: the modules, as written in voxceleb_trainer
    assert in_place.numpy().tobytes() == modules.numpy().tobytes()
