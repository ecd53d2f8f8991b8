"""The GPU paths give the CPU's results (run only where a CUDA GPU is present)."""
from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from models.random_weights import write_random_checkpoints
from pipeline import media
from pipeline.config import load_config
from tests.conftest import clip

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    return write_random_checkpoints(tmp_path_factory.mktemp("weights"))


def test_detector_on_cuda_matches_cpu(random_weights):
    from pipeline.detect import FaceDetector

    cfg = load_config(overrides=["detect.conf_threshold=0.5"]).detect  # random weights: keep some boxes
    frames = list(islice(media.iter_frames(clip("syncnetdiar_3spk_newsmax")), 8))
    on_cpu = FaceDetector(cfg, random_weights, torch.device("cpu")).detect_batch(frames)
    on_gpu = FaceDetector(cfg, random_weights, torch.device("cuda")).detect_batch(frames)
    assert sum(len(boxes) for boxes in on_cpu) > 0, "no boxes at all: the comparison would be empty"
    for cpu_boxes, gpu_boxes in zip(on_cpu, on_gpu):
        assert cpu_boxes.shape == gpu_boxes.shape
        np.testing.assert_allclose(cpu_boxes, gpu_boxes, atol=0.05)  # px; scores within 1e-4 of each other


def test_syncnet_on_cuda_matches_cpu(random_weights):
    from models.syncnet import load_syncnet
    from pipeline.sync.syncnet import SyncSettings, sync_track

    cfg = load_config()
    settings = SyncSettings.from_config(cfg)
    frames = [np.ascontiguousarray(f[200:424, 500:724]) for f in islice(media.iter_frames(clip("syncnetdiar_3spk_newsmax")), 60)]
    audio = media.decode_audio(clip("syncnetdiar_3spk_newsmax"))[: 60 * 640]
    results = [sync_track(load_syncnet(random_weights, "syncnet.model", device), iter(frames), audio, settings,
                          torch.device(device)) for device in ("cpu", "cuda")]
    np.testing.assert_allclose(results[0].distances, results[1].distances, atol=1e-3)


def test_speaker_embeddings_on_cuda_match_cpu(random_weights):
    from pipeline.embed import load_speaker_model, sliding_embeddings

    cfg = load_config()
    audio = media.decode_audio(clip("syncnetdiar_3spk_newsmax"))
    cpu = sliding_embeddings(load_speaker_model(cfg.embed, random_weights, "cpu", "resnetse34"), audio, 16000, cfg.embed)
    gpu = sliding_embeddings(load_speaker_model(cfg.embed, random_weights, "cuda", "resnetse34"), audio, 16000, cfg.embed)
    cosine = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert cosine.min() > 0.999


def test_wav2lip_expert_on_cuda_matches_cpu(random_weights):
    from models.wav2lip import load_lipsync_expert
    from pipeline.sync.wav2lip import ExpertSettings, face_crop, sync_faces

    settings = ExpertSettings.from_config(load_config())
    faces = [face_crop(f, [540, 200, 700, 380], settings.box_expand)
             for f in islice(media.iter_frames(clip("syncnetdiar_3spk_newsmax")), 80)]
    audio = media.decode_audio(clip("syncnetdiar_3spk_newsmax"))[: 80 * 640]
    results = [sync_faces(load_lipsync_expert(random_weights, "lipsync_expert.pth", device), faces, audio, settings,
                          torch.device(device)) for device in ("cpu", "cuda")]
    np.testing.assert_allclose(results[0].scores, results[1].scores, atol=1e-3)
    assert results[0].offset_frames == results[1].offset_frames


@pytest.mark.filterwarnings("ignore:.*differs from the published")
def test_gestsync_on_cuda_in_fp16_matches_cpu(tmp_path, device="cuda"):
    """GestSync runs in fp16 on CUDA (stage 2 and the single-clip mode): its scores stay within 0.02 of the CPU's
    float32 ones (default-initialised weights, whose activations stay in fp16's range like trained ones)."""
    import cv2

    from models.gestsync import GestSyncRGB, load_gestsync
    from pipeline.sync.gestsync import GestSyncSettings, sync_regions
    from pipeline.sync.gestsync_frontend import masked_frame

    torch.manual_seed(0)
    torch.save({"state_dict": GestSyncRGB().eval().state_dict(), "global_step": 0}, tmp_path / "model_rgb.pth")
    settings = GestSyncSettings.from_config(load_config())
    name = "gestsync_asd2spk_a"
    frames = [masked_frame(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), None, settings.front)
              for f in islice(media.iter_frames(clip(name)), 40)]
    audio = media.decode_audio(clip(name))[: 40 * 640]
    results = []
    for where in ("cpu", device):
        model = load_gestsync(tmp_path, "model_rgb.pth", torch.device(where))
        if where == "cuda":
            model = model.half()
        results.append(sync_regions(model, iter(frames), audio, settings, torch.device(where)))
    assert results[0].num_windows == 16 and np.isfinite(results[1].score_raw).all()  # every frame scored
    np.testing.assert_allclose(results[0].score_raw, results[1].score_raw, atol=0.02)
