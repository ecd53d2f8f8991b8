"""Wav2Lip's lip-sync expert as stage 2's second sync model: mel front end, network, checkpoint, windows,
offset search, curves, and the CLI's single-clip mode.

The references (Rudrabha/Wav2Lip ``audio.py``, ``hparams.py``, ``models/syncnet.py``, ``models/conv.py`` and
librosa 0.7.0, Wav2Lip's pin) are transcribed here, independently of our code, and compared on real audio
and seeded random weights in the published layout.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess

import numpy as np
import pytest
import scipy.signal
import torch
from scipy.io import wavfile
from torch import nn
from torch.nn import functional as F

from models import loader
from models.wav2lip import MEL, load_lipsync_expert, strip_module_prefix
from pipeline.cli import run_main
from pipeline.errors import CheckpointError, InputError
from pipeline.sync import wav2lip as w2l
from pipeline.sync.evidence_record import SyncEvidence
from tests import fakeweights
from tests.conftest import REPO, SHARED_DATA
from tests.test_syncnet import SPF, noise_frames, speechlike, write_clip

MANIFEST = "wav2lip_lipsync_expert.json"
SAMPLE_WAV = SHARED_DATA / "audio" / "pyannote_sample" / "sample.wav"


# ---- transcription of Wav2Lip's audio.py with hparams.py, on librosa 0.7.0 ------------------------
def _hz_to_mel_slaney(freq):
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    freq = np.asanyarray(freq, dtype=np.float64)
    mels = freq / f_sp
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(freq >= min_log_hz, min_log_mel + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz_slaney(mels):
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


def reference_mel_basis(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600):
    """librosa 0.7.0 ``filters.mel`` (Slaney scale, area normalisation, float32)."""
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fftfreqs = np.linspace(0, float(sr) / 2, 1 + n_fft // 2, endpoint=True)
    mel_f = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights


def reference_stft(y, n_fft=800, hop_length=200, win_length=800):
    """librosa 0.7.0 ``stft``: periodic Hann, centred frames with reflect padding, complex64 output."""
    window = scipy.signal.get_window("hann", win_length, fftbins=True).reshape(-1, 1)
    y = np.pad(y, int(n_fft // 2), mode="reflect")
    num = 1 + (len(y) - n_fft) // hop_length
    frames = np.lib.stride_tricks.as_strided(y, shape=(n_fft, num), strides=(y.itemsize, hop_length * y.itemsize))
    return np.fft.rfft(window * frames, axis=0).astype(np.complex64)


def reference_melspectrogram(wav):
    """Wav2Lip ``audio.melspectrogram`` with its hparams (preemphasize, symmetric, clipped normalisation)."""
    d = reference_stft(scipy.signal.lfilter([1, -0.97], [1], wav))
    min_level = np.exp(-100 / 20 * np.log(10))
    s = 20 * np.log10(np.maximum(min_level, np.dot(reference_mel_basis(), np.abs(d)))) - 20
    return np.clip((2 * 4.0) * ((s - -100) / (- -100)) - 4.0, -4.0, 4.0)  # noqa: B002 - audio.py's -hp.min_level_db


def test_mel_front_end_equals_wav2lips_on_a_real_wav():
    if not SAMPLE_WAV.is_file():
        pytest.skip(f"{SAMPLE_WAV} not present")
    rate, samples = wavfile.read(SAMPLE_WAV)  # 16 kHz mono int16, 30 s
    assert rate == 16000 and samples.dtype == np.int16
    wav = samples.astype(np.float32) / 32768.0  # what librosa.load(path, sr=16000) returns for it
    expected = reference_melspectrogram(wav)
    ours = w2l.melspectrogram(samples)
    assert ours.shape == expected.shape == (80, 1 + len(samples) // 200)
    assert np.abs(ours - expected).max() < 1e-5
    assert ours.min() >= -4 and ours.max() <= 4 and ours.std() > 0.5  # real speech, not a floor


def test_mel_of_silence_and_of_too_little_audio():
    assert np.all(w2l.melspectrogram(np.zeros(3200, np.int16)) == -4.0)  # floored at min_level_db
    assert w2l.melspectrogram(np.zeros(100, np.int16)).shape == (80, 0)
    with pytest.raises(InputError, match="int16"):
        w2l.melspectrogram(np.zeros(3200, np.float32))


# ---- window alignment ---------------------------------------------------------------------------
def test_mel_window_of_frame_i_starts_at_int_80_i_over_25():
    starts = [w2l.mel_start(i, 25.0) for i in range(12)]
    assert starts == [int(80.0 * (i / 25.0)) for i in range(12)] == [0, 3, 6, 9, 12, 16, 19, 22, 25, 28, 32, 35]
    for num_mel in range(0, 200):  # windows the audio holds: start + 16 <= mel frames
        assert w2l.count_audio_windows(num_mel, 25.0) == sum(1 for i in range(100)
                                                            if w2l.mel_start(i, 25.0) + 16 <= num_mel)


@pytest.mark.parametrize("onset_frame", [10, 11, 12, 13, 14])
def test_audio_window_starts_on_a_known_onset(onset_frame):
    """Silence, then noise from the first sample of video frame F: the audio window of frame F is the first
    whose first mel column hears it (the STFT frame centred just before the onset reaches into it), and the
    window of frame F - 1 starts in silence."""
    audio = np.zeros(SPF * 30, np.int16)
    audio[onset_frame * SPF:] = (np.random.default_rng(0).standard_normal(len(audio) - onset_frame * SPF)
                                 * 3000).astype(np.int16)
    mels = w2l.melspectrogram(audio)
    windows = w2l.mel_windows(mels, [onset_frame - 1, onset_frame], 25.0)  # [2, 1, 80, 16]
    assert windows.shape == (2, 1, 80, 16)
    assert np.all(windows[0, 0, :, 0] == -4.0)  # frame F - 1 begins in silence
    assert windows[1, 0, :, 0].mean() > -3.0  # frame F begins on the onset
    first_loud = int(np.argmax(mels.mean(axis=0) > -3.0))  # mel frame m is centred on sample 200 m, 800 wide
    assert w2l.mel_start(onset_frame - 1, 25.0) < first_loud <= w2l.mel_start(onset_frame, 25.0)
    assert abs(200 * w2l.mel_start(onset_frame, 25.0) - onset_frame * SPF) < 200  # centred within one hop


def test_face_windows_stack_five_frames_lower_half_bgr():
    faces = np.zeros((7, 96, 96, 3), np.uint8)
    for k in range(7):
        faces[k, :48] = 255  # upper half: must not be seen
        faces[k, 48:] = [k, 10 + k, 20 + k]  # B, G, R
    windows = w2l.face_windows(torch.from_numpy(faces))
    assert windows.shape == (3, 15, 48, 96)
    for i in range(3):
        for k in range(5):
            for c, base in enumerate((0, 10, 20)):
                assert torch.all(windows[i, 3 * k + c] == np.float32((base + i + k) / 255.0))


def test_expanded_box_and_crop():
    assert w2l.expanded_box([100, 50, 200, 150], 0.2, 640, 360) == (80, 30, 220, 170)
    assert w2l.expanded_box([0, 0, 50, 100], 0.2, 60, 90) == (0, 0, 60, 90)  # clipped to the frame
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[30:170, 80:220] = 200
    crop = w2l.face_crop(frame, [100, 50, 200, 150], 0.2)
    assert crop.shape == (96, 96, 3) and crop.dtype == np.uint8 and np.all(crop == 200)


# ---- offset search and curves -------------------------------------------------------------------
def test_offset_search_on_a_hand_made_matrix():
    scores = np.full((4, 5), 0.2, np.float32)
    scores[:, 3] = 0.9  # column 3 = shift +1: offset = vshift - 3 = -1
    scores[:, 1] = 0.3
    offset, best, confidence = w2l.offset_search(scores, 2)
    assert offset == -1 and best == pytest.approx(0.9) and confidence == pytest.approx(0.9 - 0.2)
    assert w2l.offset_search(np.zeros((0, 5), np.float32), 2)[:2] == (pytest.approx(math.nan, nan_ok=True),) * 2
    with pytest.raises(InputError):
        w2l.offset_search(scores, 3)


def test_frame_curve_centres_windows_and_moving_average_ignores_missing_frames():
    scores = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]], np.float32)
    curve = w2l.frame_curve(scores, 1, 8)  # 3 windows of 5 frames in 8 frames: centres 2, 3, 4
    assert np.array_equal(np.isnan(curve), [True, True, False, False, False, True, True, True])
    assert curve[2:5].tolist() == [1.0, 2.0, 3.0]
    smooth = w2l.moving_average(curve, 3)
    assert np.isnan(smooth[[0, 6, 7]]).all()  # no finite frame within one frame of them
    assert smooth[1:6].tolist() == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0])
    assert w2l.moving_average(np.arange(10, dtype=np.float32), 75).tolist() == pytest.approx([4.5] * 10)


class ToyExpert(nn.Module):
    """Stands in for the expert where the right answer is known: a face window is 'open' when most of its 5
    frames are bright, an audio window 'loud' when more than 60 % of its 16 mel frames hear sound (each mel
    frame's 50 ms STFT window reaches 25 ms beyond its 12.5 ms hop on each side); the two embeddings agree
    (cosine 1) or not (0)."""

    def forward_face(self, faces):
        bright = (faces.mean(dim=(2, 3)).reshape(-1, 5, 3).mean(dim=2) > 0.5).float().mean(dim=1)
        is_open = (bright > 0.5).float()
        return F.pad(torch.stack([is_open, 1 - is_open], dim=1), (0, 510))

    def forward_audio(self, mels):
        heard = (mels[:, 0].mean(dim=1) > -3.0).float().mean(dim=1)  # [N]: share of loud mel frames
        loud = (heard > 0.6).float()
        return F.pad(torch.stack([loud, 1 - loud], dim=1), (0, 510))


@pytest.mark.parametrize("audio_lag_frames", [0, 3, -2])
def test_offset_of_a_known_onset(audio_lag_frames):
    """The mouth opens on frames 15..24 and 35..44 and the voice sounds ``lag`` frames later: the best shift
    is +lag, so the offset is -lag (SyncNet's sign), and every window agrees with its audio there."""
    num_frames, bursts = 60, [(15, 25), (35, 45)]
    faces = [np.full((96, 96, 3), 255 if any(a <= i < b for a, b in bursts) else 0, np.uint8)
             for i in range(num_frames)]
    audio = np.zeros(num_frames * SPF, np.int16)
    noise = (np.random.default_rng(1).standard_normal(len(audio)) * 3000).astype(np.int16)
    for a, b in bursts:
        start, stop = (a + audio_lag_frames) * SPF, (b + audio_lag_frames) * SPF
        audio[start:stop] = noise[start:stop]
    settings = w2l.ExpertSettings(vshift_frames=5, batch_size=7, smooth_frames=5)
    result = w2l.sync_faces(ToyExpert(), faces, audio, settings)
    assert result.offset_frames == -audio_lag_frames
    assert result.num_frames == num_frames and result.score_raw.shape == (num_frames,)
    assert result.num_windows == num_frames - 4
    inside = result.scores[5:-5, 5 + audio_lag_frames]  # windows whose shifted audio exists at every shift
    assert np.all(inside == 1.0) and result.confidence > 0.1


# ---- the network and its checkpoint ---------------------------------------------------------------
class RefConv2d(nn.Module):
    """Wav2Lip ``models/conv.py`` Conv2d, transcribed."""

    def __init__(self, cin, cout, kernel_size, stride, padding, residual=False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x):
        out = self.conv_block(x)
        if self.residual:
            out += x
        return self.act(out)


class RefSyncNetColor(nn.Module):
    """Wav2Lip ``models/syncnet.py`` SyncNet_color, transcribed."""

    def __init__(self):
        super().__init__()
        c = RefConv2d
        self.face_encoder = nn.Sequential(
            c(15, 32, kernel_size=(7, 7), stride=1, padding=3),
            c(32, 64, kernel_size=5, stride=(1, 2), padding=1),
            c(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
            c(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
            c(64, 128, kernel_size=3, stride=2, padding=1),
            c(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
            c(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
            c(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
            c(128, 256, kernel_size=3, stride=2, padding=1),
            c(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
            c(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
            c(256, 512, kernel_size=3, stride=2, padding=1),
            c(512, 512, kernel_size=3, stride=1, padding=1, residual=True),
            c(512, 512, kernel_size=3, stride=1, padding=1, residual=True),
            c(512, 512, kernel_size=3, stride=2, padding=1),
            c(512, 512, kernel_size=3, stride=1, padding=0),
            c(512, 512, kernel_size=1, stride=1, padding=0))
        self.audio_encoder = nn.Sequential(
            c(1, 32, kernel_size=3, stride=1, padding=1),
            c(32, 32, kernel_size=3, stride=1, padding=1, residual=True),
            c(32, 32, kernel_size=3, stride=1, padding=1, residual=True),
            c(32, 64, kernel_size=3, stride=(3, 1), padding=1),
            c(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
            c(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
            c(64, 128, kernel_size=3, stride=3, padding=1),
            c(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
            c(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
            c(128, 256, kernel_size=3, stride=(3, 2), padding=1),
            c(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
            c(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
            c(256, 512, kernel_size=3, stride=1, padding=0),
            c(512, 512, kernel_size=1, stride=1, padding=0))

    def forward(self, audio_sequences, face_sequences):
        face_embedding = self.face_encoder(face_sequences)
        audio_embedding = self.audio_encoder(audio_sequences)
        audio_embedding = audio_embedding.view(audio_embedding.size(0), -1)
        face_embedding = face_embedding.view(face_embedding.size(0), -1)
        return F.normalize(audio_embedding, p=2, dim=1), F.normalize(face_embedding, p=2, dim=1)


def published_checkpoint(path, state=None, prefix=""):
    """``lipsync_expert.pth`` as Wav2Lip's save_checkpoint writes it (optionally from DataParallel)."""
    state = state if state is not None else fakeweights.random_state_dict(MANIFEST, seed=3)
    state = {prefix + key: value for key, value in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "optimizer": None, "global_step": 0, "global_epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory):
    return published_checkpoint(tmp_path_factory.mktemp("w2l") / "lipsync_expert.pth").parent


def test_published_layout_loads_strictly_and_matches_the_transcribed_network(expert_dir):
    model = load_lipsync_expert(expert_dir, "lipsync_expert.pth")
    reference = RefSyncNetColor()
    reference.load_state_dict(torch.load(expert_dir / "lipsync_expert.pth", weights_only=True)["state_dict"])
    reference.eval()
    keys = [entry["key"] for entry in fakeweights.manifest_keys(MANIFEST)]
    assert sorted(model.state_dict()) == sorted(keys)
    gen = torch.Generator().manual_seed(0)
    faces, mels = torch.rand(3, 15, 48, 96, generator=gen), torch.rand(3, 1, 80, 16, generator=gen) * 8 - 4
    with torch.inference_mode():
        ref_audio, ref_face = reference(mels, faces)
        ours_audio, ours_face = model(mels, faces.contiguous(memory_format=torch.channels_last))
    assert ours_face.shape == (3, 512) and ours_audio.shape == (3, 512)
    assert torch.allclose(ours_face, ref_face, atol=1e-5) and torch.allclose(ours_audio, ref_audio, atol=1e-5)
    sim = F.cosine_similarity(ours_audio, ours_face)
    assert torch.all((sim >= 0) & (sim <= 1 + 1e-6))  # ReLU outputs: the sync probability lies in [0, 1]


def test_dataparallel_prefix_is_stripped(tmp_path):
    published_checkpoint(tmp_path / "lipsync_expert.pth", prefix="module.")
    load_lipsync_expert(tmp_path, "lipsync_expert.pth")
    assert strip_module_prefix({"a.b": 1}) == {"a.b": 1}


def test_wrong_truncated_and_missing_checkpoints_are_one_line(tmp_path):
    state = fakeweights.random_state_dict(MANIFEST, seed=3)
    del state["audio_encoder.13.conv_block.0.bias"]
    published_checkpoint(tmp_path / "lipsync_expert.pth", state)
    with pytest.raises(CheckpointError) as err:
        load_lipsync_expert(tmp_path, "lipsync_expert.pth")
    assert "missing keys: audio_encoder.13.conv_block.0.bias" in str(err.value) and "\n" not in str(err.value)
    published_checkpoint(tmp_path / "lipsync_expert.pth")
    path = tmp_path / "lipsync_expert.pth"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot be read") as err:
        load_lipsync_expert(tmp_path, "lipsync_expert.pth")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_lipsync_expert(tmp_path / "empty", "lipsync_expert.pth")
    message = str(err.value)
    assert "\n" not in message and "no direct download" in message and "github.com/Rudrabha/Wav2Lip" in message


def test_registry_row_and_download_script_say_where_to_get_it(tmp_path):
    entry = loader.registry_entry("lipsync_expert.pth")
    assert entry.network == "wav2lip" and entry.manual and not entry.default and entry.sha256 is None
    proc = subprocess.run(["bash", str(REPO / "download_models.sh"), str(tmp_path), "wav2lip"], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 1  # asked for and not there: not a silent success
    assert "lipsync_expert.pth has no direct download" in proc.stderr and entry.url in proc.stderr
    assert str(tmp_path / "lipsync_expert.pth") in proc.stderr and not list(tmp_path.iterdir())
    published_checkpoint(tmp_path / "lipsync_expert.pth")
    again = subprocess.run(["bash", str(REPO / "download_models.sh"), str(tmp_path), "wav2lip"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "present  lipsync_expert.pth" in again.stdout


# ---- scoring with the network -----------------------------------------------------------------------
def test_batched_scores_equal_one_window_at_a_time(expert_dir):
    model = load_lipsync_expert(expert_dir, "lipsync_expert.pth")
    faces = [f[64:160, 64:160].copy() for f in noise_frames(23, seed=2)]  # 96 x 96
    audio = speechlike(23 * SPF)
    settings = w2l.ExpertSettings(vshift_frames=3, batch_size=5)
    result = w2l.sync_faces(model, faces, audio, settings)
    mels = w2l.melspectrogram(audio)
    assert result.num_windows == 19
    with torch.inference_mode():
        for i in (0, 7, 18):
            face = model.forward_face(w2l.face_windows(torch.from_numpy(np.stack(faces[i:i + 5]))))
            for column, shift in enumerate(range(-3, 4)):
                j = i + shift
                if 0 <= j < w2l.count_audio_windows(mels.shape[1], 25.0):
                    aud = model.forward_audio(torch.from_numpy(w2l.mel_windows(mels, [j], 25.0)))
                    expected = float(F.cosine_similarity(aud, face))
                else:
                    expected = 0.0  # no audio there: a zero embedding
                assert result.scores[i, column] == pytest.approx(expected, abs=1e-5)


def test_silent_and_too_short_tracks(expert_dir):
    model = load_lipsync_expert(expert_dir, "lipsync_expert.pth")
    faces = [np.zeros((96, 96, 3), np.uint8)] * 12
    silent = w2l.sync_faces(model, faces, np.zeros(12 * SPF, np.int16), w2l.ExpertSettings())
    assert silent.silent and math.isnan(silent.offset_frames) and silent.confidence == 0.0 and silent.num_windows == 8
    short = w2l.sync_faces(model, faces[:3], speechlike(3 * SPF), w2l.ExpertSettings())
    assert short.num_windows == 0 and math.isnan(short.best_score) and short.score_smooth.shape == (3,)
    assert np.all(np.isnan(short.score_smooth))


# ---- single-clip mode (scripts/run_syncnet.py --videofile CLIP --sync_model wav2lip) -------------------
def _script():
    spec = importlib.util.spec_from_file_location("run_syncnet_w2l", REPO / "scripts" / "run_syncnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_single_clip_prints_offset_best_score_and_confidence(expert_dir, tmp_path, capsys):
    clip = write_clip(tmp_path / "face.avi", noise_frames(24, seed=7), speechlike(24 * SPF), codec="mpeg4")
    script = _script()
    code = run_main(script.main, script.build_parser(),
                    ["--videofile", str(clip), "--sync_model", "wav2lip", "--weights_dir", str(expert_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.fullmatch(r"AV offset: \t-?\d+\nBest score: \t\d\.\d{3}\nConfidence: \t-?\d\.\d{3}\n", out), out
    assert -10 <= int(out.split("\n")[0].split("\t")[1]) <= 10
    code = run_main(script.main, script.build_parser(), ["--videofile", str(clip), "--sync_model", "wav2lip",
                                                         "--features", str(tmp_path / "f.npz")])
    out, err = capsys.readouterr()
    assert code != 0 and err.count("\n") == 1 and "--features" in err and "Traceback" not in err


def test_settings_from_config_and_bad_values():
    from pipeline.config import load_config

    settings = w2l.ExpertSettings.from_config(load_config(overrides=["wav2lip.vshift_frames=4"]))
    assert settings.vshift_frames == 4 and settings.smooth_frames == 75 and settings.box_expand == 0.2
    assert settings.num_shifts == 9 and MEL.frames_per_s == 80
    with pytest.raises(InputError, match="16000 Hz"):
        w2l.ExpertSettings(sample_rate_hz=8000)
    with pytest.raises(InputError, match="smooth_frames"):
        w2l.ExpertSettings(smooth_frames=0)


# ---- stage 2 on a cache, and what stage 3 makes of it ------------------------------------------------
def _stage_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_w2l", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:.*differs from the published")
def test_stage2_cache_reuse_model_switch_and_refusals(tmp_path, capsys, weights_dir, expert_dir):
    """A real clip (one face, 25 fps): stage 2 with the expert writes its layout and is reused; SyncNet
    redoes it; stage 3 refuses SyncNet evidence under sync.model wav2lip; a changed video is one line."""
    from pipeline.cache import Cache
    from pipeline.config import load_config
    from pipeline.errors import CacheError
    from pipeline.stage1 import run_pipeline
    from pipeline.stage2 import run_stage2
    from pipeline.stage3 import run_cluster
    from tests.conftest import DETECTIONS, clip

    video = tmp_path / "talk.mp4"
    video.write_bytes(clip("retalking_talkinghead_5").read_bytes())
    weights = tmp_path / "weights"  # the session's random checkpoints and the expert's
    weights.mkdir()
    for path in [*weights_dir.iterdir(), expert_dir / "lipsync_expert.pth"]:
        (weights / path.name).symlink_to(path)
    cfg = load_config(overrides=["sync.model=wav2lip"])
    cache = Cache(tmp_path / "data", "talk")
    (cache.work("faces.pckl")).write_bytes((DETECTIONS / "retalking_talkinghead_5_haar_faces.pckl").read_bytes())
    stage1 = run_pipeline(video, cache, cfg)
    assert stage1.num_tracks == 1

    script = _stage_script("run_syncnet")
    args = ["--data_dir", str(tmp_path / "data"), "--reference", "talk", "--weights_dir", str(weights)]
    assert run_main(script.main, script.build_parser(), args + ["--sync_model", "wav2lip"]) == 0
    assert "Wav2Lip expert on 1 tracks" in capsys.readouterr().out  # the result goes to stdout (issue 22)
    sync = SyncEvidence.from_pickle(cache.load_pickle("sync.pckl"))
    assert sync.model == "wav2lip" and sync.metric == "cosine_similarity"
    num_frames = len(cache.load_pickle("tracks.pckl")[0]["track"]["frame"])
    assert sync.score_raw[0].shape == (num_frames,) and np.isfinite(sync.score_smooth[0]).all()
    lines = cache.work("offsets.txt").read_text().splitlines()
    assert lines[1] == "# track\toffset_frames\tbest_score\tconfidence" and lines[2].startswith("00000\t")
    assert run_stage2(cache, cfg, weights, "cpu").reused

    syncnet = run_stage2(cache, load_config(), weights, "cpu")  # the other model's key: redone
    assert not syncnet.reused and syncnet.sync.model == "syncnet"
    with pytest.raises(CacheError, match="holds syncnet evidence but sync.model is wav2lip"):
        run_cluster(cache, cfg, weights, "cpu")

    expert = run_stage2(cache, cfg, weights, "cpu")
    assert not expert.reused and expert.sync.model == "wav2lip"
    cluster = _stage_script("cluster")
    assert run_main(cluster.main, cluster.build_parser(),
                    args + ["--set", "sync.model=wav2lip", "--fusion", "argmax"]) == 0
    capsys.readouterr()

    with open(video, "ab") as handle:  # the video stage 1 read changed: the expert's faces would not match
        handle.write(b"\0" * 16)
    code = run_main(script.main, script.build_parser(), args + ["--sync_model", "wav2lip", "--force"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "changed since" in err and "run_pipeline.py" in err
