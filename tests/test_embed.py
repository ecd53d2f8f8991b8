"""Speaker embeddings: ResNetSE34V2 checkpoint formats, av-diarization's windows, batching, and ECAPA folders."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.resnetse34v2 import load_resnetse34
from pipeline import embed
from pipeline.config import load_config, with_overrides
from pipeline.errors import CheckpointError, InputError
from tests import fakespeaker, fakeweights

CFG = load_config()  # float32 by default: the bfloat16 test asks for it
RATE_HZ = 16000
WINDOW = 32000  # 200 frames * 160 samples, as av-diarization's SpeakerNet
HOP = 3200


# random test checkpoints carry the published names but not the published hashes
pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the published")


@pytest.fixture(scope="module")
def speaker_dir(tmp_path_factory):
    """speakernet.model with random weights and the real front-end constants, so embeddings are finite."""
    folder = tmp_path_factory.mktemp("speaker")
    fakeweights.save_checkpoint(fakespeaker.resnetse34_state(seed=3), folder / "speakernet.model")
    return folder


@pytest.fixture(scope="module")
def resnet_fp32(speaker_dir):
    cfg = load_config(overrides=["embed.cpu_precision=float32"])
    return embed.load_speaker_model(cfg.embed, speaker_dir, "cpu")


@pytest.fixture(scope="module")
def speech(shared_data):
    from scipy.io import wavfile

    rate_hz, samples = wavfile.read(shared_data / "audio" / "pyannote_sample" / "sample.wav")
    assert rate_hz == RATE_HZ and samples.dtype == np.int16
    return samples


# ---- ResNetSE34V2 checkpoints ------------------------------------------------------------------------------
def test_speakernet_model_loads_strictly(weights_dir):
    model = load_resnetse34(weights_dir, "speakernet.model")
    saved = torch.load(weights_dir / "speakernet.model", weights_only=True)
    state = model.state_dict()
    assert set(state) == set(saved) and len(state) == 295
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert not model.training


@pytest.mark.parametrize("module_prefix", [False, True])
def test_voxceleb_trainer_file_loads(tmp_path, module_prefix):
    bare = fakespeaker.resnetse34_state(seed=5)
    state = fakespeaker.voxceleb_trainer_state(bare, module_prefix=module_prefix)
    assert any(k.startswith(("__L__.", "module.__L__.")) for k in state)
    fakeweights.save_checkpoint(state, tmp_path / "baseline_v2_ap.model")
    model = load_resnetse34(tmp_path, "baseline_v2_ap.model")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in bare.items())


def test_configured_file_falls_back_to_the_other_published_file(tmp_path):
    """A folder with only baseline_v2_ap.model serves the default speakernet.model request."""
    bare = fakespeaker.resnetse34_state(seed=6)
    fakeweights.save_checkpoint(fakespeaker.voxceleb_trainer_state(bare), tmp_path / "baseline_v2_ap.model")
    model = embed.load_speaker_model(CFG.embed, tmp_path, "cpu")
    assert model.name == "resnetse34" and model.dim == 512
    assert torch.equal(model.module.fc.weight, bare["fc.weight"])


def test_wrong_key_and_shape_are_named(tmp_path):
    state = fakespeaker.resnetse34_state(seed=1)
    state["layer3.2.se.fc.0.weights"] = state.pop("layer3.2.se.fc.0.weight")
    state["fc.weight"] = state["fc.weight"][:256]
    fakeweights.save_checkpoint(state, tmp_path / "speakernet.model")
    with pytest.raises(CheckpointError) as caught:
        load_resnetse34(tmp_path, "speakernet.model")
    message = str(caught.value)
    assert "\n" not in message
    assert "missing keys: layer3.2.se.fc.0.weight" in message
    assert "unexpected keys: layer3.2.se.fc.0.weights" in message
    assert "wrong shape keys: fc.weight" in message


def test_missing_checkpoint_names_the_download_script(tmp_path):
    with pytest.raises(CheckpointError, match=r"speakernet.model not found .*download_models.sh"):
        embed.load_speaker_model(CFG.embed, tmp_path, "cpu")


def test_broken_front_end_is_reported_not_returned_as_nan(tmp_path, speech):
    """A checkpoint whose mel filter bank has negative weights gives NaN logs: an error, not NaN embeddings."""
    fakeweights.save_checkpoint(fakeweights.random_state_dict("resnetse34v2.json", seed=2), tmp_path / "speakernet.model")
    with pytest.raises(CheckpointError, match="gives non-finite output"):  # found when loaded, not hours later
        embed.load_speaker_model(CFG.embed, tmp_path, "cpu")


def test_unknown_model_name():
    with pytest.raises(InputError, match="unknown speaker model 'xvector'"):
        embed.load_speaker_model(CFG.embed, None, "cpu", name="xvector")


# ---- windows -----------------------------------------------------------------------------------------------
class _Probe(embed.SpeakerModel):
    """Records each batch; 'embeds' a window as (first sample, last sample, length)."""

    name, dim = "probe", 3

    def __init__(self) -> None:
        self.batches: list[int] = []

    def embed(self, waveforms: torch.Tensor) -> np.ndarray:
        self.batches.append(waveforms.shape[0])
        n = waveforms.shape[1]
        return torch.stack([waveforms[:, 0], waveforms[:, -1], torch.full_like(waveforms[:, 0], n)], 1).numpy()


@pytest.mark.parametrize("num_samples, expected", [
    (WINDOW + 1, 1), (WINDOW + HOP, 1), (WINDOW + HOP + 1, 2), (10 * RATE_HZ, 40), (10 * RATE_HZ + 1, 41),
])
def test_window_count_matches_av_diarization(num_samples, expected):
    assert len(range(0, num_samples - WINDOW, HOP)) == expected  # SpeakerNet.run_resnetse34's loop
    assert embed.window_starts(num_samples, WINDOW, HOP).tolist() == list(range(0, num_samples - WINDOW, HOP))


def test_window_positions_and_batches():
    num_samples = 10 * RATE_HZ + 123
    ramp = (np.arange(num_samples) / 2**20).astype(np.float32)  # sample i holds i / 2**20, exact in float32
    probe = _Probe()
    calls = []
    out = embed.sliding_embeddings(probe, ramp, RATE_HZ, CFG.embed, progress=lambda *a: calls.append(a))
    starts = np.arange(41) * HOP
    assert out.dtype == np.float32 and out.shape == (41, 3)
    np.testing.assert_array_equal(out[:, 0] * 2**20, starts)
    np.testing.assert_array_equal(out[:, 1] * 2**20, starts + WINDOW - 1)
    assert (out[:, 2] == WINDOW).all()
    assert probe.batches == [CFG.embed.batch_size] * (41 // CFG.embed.batch_size) + [41 % CFG.embed.batch_size]
    assert calls[0] == (embed.PROGRESS_STEP, 0, 41) and calls[-1] == (embed.PROGRESS_STEP, 41, 41)


@pytest.mark.parametrize("num_samples, seen", [(WINDOW, WINDOW), (8000, 8000), (100, 512), (0, 512)])
def test_audio_no_longer_than_a_window_gives_one_embedding(num_samples, seen):
    out = embed.sliding_embeddings(_Probe(), np.ones(num_samples, dtype=np.int16), RATE_HZ, CFG.embed)
    assert out.shape == (1, 3) and out[0, 2] == seen


def test_int16_is_scaled_like_torchaudio_load():
    audio = np.array([-32768, 0, 16384, 32767] * 10000, dtype=np.int16)
    out = embed.sliding_embeddings(_Probe(), audio, RATE_HZ, CFG.embed)
    assert (out[:, 0] == -1.0).all()  # windows start at multiples of 3200, where the pattern holds -32768
    assert (out[:, 1] == np.float32(32767 / 32768)).all()


def test_bad_audio_is_an_input_error():
    with pytest.raises(InputError, match="16000 Hz"):
        embed.sliding_embeddings(_Probe(), np.zeros(50000, dtype=np.int16), 8000, CFG.embed)
    with pytest.raises(InputError, match="mono"):
        embed.sliding_embeddings(_Probe(), np.zeros((2, 50000), dtype=np.int16), RATE_HZ, CFG.embed)


# ---- the real network -------------------------------------------------------------------------------------
def test_batches_equal_one_window_at_a_time(resnet_fp32, speech):
    audio = speech[7 * RATE_HZ: 7 * RATE_HZ + WINDOW + 4 * HOP + 5]  # 5 windows of real speech
    batched = embed.sliding_embeddings(resnet_fp32, audio, RATE_HZ, load_config(
        overrides=["embed.batch_size=3"]).embed)
    single = embed.sliding_embeddings(resnet_fp32, audio, RATE_HZ, load_config(
        overrides=["embed.batch_size=1"]).embed)
    assert batched.shape == (5, 512) and np.isfinite(batched).all()
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-4)
    # the reference's forward of window k on its own, [1, 32000] floats from torchaudio.load
    window = torch.from_numpy(audio[3 * HOP: 3 * HOP + WINDOW].astype(np.float32) / 32768.0)[None]
    with torch.inference_mode():
        direct = resnet_fp32.module(window).numpy()[0]
    np.testing.assert_allclose(batched[3], direct, rtol=1e-4, atol=1e-4)
    # different speech gives different embeddings
    assert np.abs(batched[0] - batched[4]).max() > 1e-3


def test_segment_embedding_is_one_pass_over_the_segment(resnet_fp32, speech):
    got = embed.segment_embedding(resnet_fp32, speech, RATE_HZ, 8.0, 9.5)
    with torch.inference_mode():
        direct = resnet_fp32.module(torch.from_numpy(speech[128000:152000].astype(np.float32) / 32768.0)[None])
    np.testing.assert_allclose(got, direct.numpy()[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="empty segment"):
        embed.segment_embedding(resnet_fp32, speech, RATE_HZ, 40.0, 41.0)


def test_bfloat16_on_cpu_stays_close_to_float32(speaker_dir, resnet_fp32, speech):
    model = embed.load_speaker_model(with_overrides(CFG, ["embed.cpu_precision=bfloat16"]).embed, speaker_dir, "cpu")
    if not model.bfloat16:
        pytest.skip("this CPU has no native bfloat16")
    audio = speech[10 * RATE_HZ: 10 * RATE_HZ + WINDOW + 2 * HOP + 1]
    fast = embed.sliding_embeddings(model, audio, RATE_HZ, CFG.embed)
    exact = embed.sliding_embeddings(resnet_fp32, audio, RATE_HZ, CFG.embed)
    cosine = (fast * exact).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(exact, axis=1)
    assert cosine.min() > 0.999


# ---- ECAPA-TDNN ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ecapa_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    fakespeaker.build_ecapa_folder(folder / CFG.embed.ecapa_dir, seed=7)
    return folder


def test_ecapa_folder_round_trip(ecapa_weights, speech, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked for a file")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    folder = ecapa_weights / CFG.embed.ecapa_dir
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    model = embed.load_speaker_model(CFG.embed, ecapa_weights, "cpu", name="ecapa")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before  # nothing written there
    assert model.name == "ecapa" and model.dim == fakespeaker.ECAPA_EMBEDDING_DIM
    saved = torch.load(folder / "embedding_model.ckpt", weights_only=True)
    loaded = model.classifier.mods.embedding_model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())

    audio = speech[7 * RATE_HZ: 7 * RATE_HZ + WINDOW + 3 * HOP + 1]
    batched = embed.sliding_embeddings(model, audio, RATE_HZ, CFG.embed)
    single = embed.sliding_embeddings(model, audio, RATE_HZ, load_config(overrides=["embed.batch_size=1"]).embed)
    assert batched.shape == (4, fakespeaker.ECAPA_EMBEDDING_DIM) and np.isfinite(batched).all()
    np.testing.assert_allclose(batched, single, rtol=1e-3, atol=1e-4)
    window = torch.from_numpy(audio[:WINDOW].astype(np.float32) / 32768.0)[None]
    with torch.inference_mode():
        direct = model.classifier.encode_batch(window)[:, 0].numpy()  # av-diarization's run_ecapa
    np.testing.assert_allclose(batched[0], direct[0], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("num_samples", [0, 300, 700])
def test_ecapa_takes_very_short_audio(ecapa_weights, num_samples):
    model = embed.load_speaker_model(CFG.embed, ecapa_weights, "cpu", name="ecapa")
    audio = (0.1 * np.random.default_rng(0).standard_normal(num_samples)).astype(np.float32)
    out = embed.sliding_embeddings(model, audio, RATE_HZ, CFG.embed)
    assert out.shape == (1, fakespeaker.ECAPA_EMBEDDING_DIM) and np.isfinite(out).all()


def test_missing_ecapa_folder_is_one_line(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        embed.load_speaker_model(CFG.embed, tmp_path, "cpu", name="ecapa")
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path / CFG.embed.ecapa_dir) in message and "not found" in message
    assert "download_models.sh" in message


def test_incomplete_ecapa_folder_names_the_missing_file(tmp_path, ecapa_weights):
    folder = tmp_path / CFG.embed.ecapa_dir
    folder.mkdir()
    for name in embed.ECAPA_FILES:
        if name != "classifier.ckpt":
            (folder / name).symlink_to(ecapa_weights / CFG.embed.ecapa_dir / name)
    with pytest.raises(CheckpointError, match=r"lacks classifier.ckpt.*download_models.sh"):
        embed.load_speaker_model(CFG.embed, tmp_path, "cpu", name="ecapa")


def test_corrupt_ecapa_checkpoint_is_one_line(tmp_path, ecapa_weights):
    folder = tmp_path / CFG.embed.ecapa_dir
    folder.mkdir()
    for name in embed.ECAPA_FILES:
        if name != "embedding_model.ckpt":
            (folder / name).symlink_to(ecapa_weights / CFG.embed.ecapa_dir / name)
    (folder / "embedding_model.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as caught:
        embed.load_speaker_model(CFG.embed, tmp_path, "cpu", name="ecapa")
    assert "\n" not in str(caught.value) and str(folder) in str(caught.value)
