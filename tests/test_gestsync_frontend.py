"""GestSync's front end: log-mel filterbanks against a transcription of the reference's ``wav2filterbanks`` on
a real wav, and the masking and window alignment on hand-made frames whose answers are worked out by hand."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from scipy.io import wavfile

from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.sync import gestsync_frontend as gf
from tests import gestsync_windows as gw
from tests.conftest import SHARED_DATA

SAMPLE_WAV = SHARED_DATA / "audio" / "pyannote_sample" / "sample.wav"
S = gf.DEFAULTS


# ---- transcription of Sindhu-Hegde/gestsync utils/audio_utils.py wav2filterbanks ----------------------
# Unchanged except: librosa >= 0.10 takes filters.mel's arguments by keyword, torch >= 2 wants
# return_complex=True (view_as_real gives the reference's b x F x T x 2), and the device is the CPU.
AUDIO_OPTS = {"sample_rate": 16000, "n_fft": 512, "win_length": 320, "hop_length": 160, "n_mel": 80}


def reference_wav2filterbanks(wav):
    assert len(wav.shape) == 2, "Need batch of wavs as input"
    spect = torch.stft(wav, n_fft=AUDIO_OPTS["n_fft"], hop_length=AUDIO_OPTS["hop_length"],
                       win_length=AUDIO_OPTS["win_length"], window=torch.hann_window(AUDIO_OPTS["win_length"]),
                       center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    spect = torch.view_as_real(spect)  # b x F x T x 2
    spect = spect[:, :, :-1, :]
    mag = power_spect = torch.norm(spect, dim=-1)
    mel_basis = torch.from_numpy(librosa.filters.mel(sr=AUDIO_OPTS["sample_rate"], n_fft=AUDIO_OPTS["n_fft"],
                                                     n_mels=AUDIO_OPTS["n_mel"], fmin=0,
                                                     fmax=int(AUDIO_OPTS["sample_rate"] / 2)))
    mel_basis = mel_basis.float()
    features = torch.log(torch.matmul(mel_basis, power_spect) + 1e-20)  # b x F x T
    features = features.permute([0, 2, 1]).contiguous()  # b x T x F
    return features, mag


def test_settings_from_the_default_config_are_the_references():
    assert gf.FrontEndSettings.from_config(load_config()) == gf.FrontEndSettings(
        sample_rate_hz=16000, n_fft=512, win_samples=320, hop_samples=160, num_mels=80, fmin_hz=0.0,
        fmax_hz=8000.0, log_floor=1e-20, mel_frames_per_video_frame=4, window_frames=25, window_stride_frames=1,
        frame_width_px=480, frame_height_px=270, mask_below_face_px=15, mask_rows_no_face=110)
    assert S.mel_window_frames == 100
    with pytest.raises(InputError, match="win_samples"):
        gf.FrontEndSettings(win_samples=600)
    with pytest.raises(InputError, match="window_frames"):
        gf.FrontEndSettings(window_frames=0)


def test_filterbanks_equal_gestsyncs_wav2filterbanks_on_a_real_wav():
    if not SAMPLE_WAV.is_file():
        pytest.skip(f"{SAMPLE_WAV} not present")
    rate, samples = wavfile.read(SAMPLE_WAV)  # 16 kHz mono int16
    assert rate == 16000 and samples.dtype == np.int16
    wav = librosa.load(SAMPLE_WAV, sr=16000)[0]  # as load_spectrograms reads it
    expected = reference_wav2filterbanks(torch.FloatTensor(wav).unsqueeze(0))[0].squeeze(0).numpy()
    ours = gf.filterbanks(samples)
    assert ours.dtype == np.float32 and ours.shape == expected.shape == (len(samples) // 160, 80)
    assert np.abs(ours - expected).max() < 1e-5
    assert ours.std() > 1.0  # real speech, not a floor
    assert np.abs(gf.filterbanks(wav) - expected).max() < 1e-5  # float samples are taken as they are


def test_filterbanks_of_a_tone_silence_and_too_little_audio():
    t = np.arange(16000) / 16000.0
    tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    fb = gf.filterbanks(tone)
    assert fb.shape == (100, 80)  # 1 s: 101 centred frames, the last dropped
    centres = librosa.mel_frequencies(n_mels=82, fmin=0.0, fmax=8000.0)[1:-1]
    assert set(np.argmax(fb[2:-2], axis=1)) == {int(np.argmin(np.abs(centres - 1000.0)))}
    assert np.all(gf.filterbanks(np.zeros(1600, np.int16)) == np.float32(np.log(1e-20)))
    assert gf.filterbanks(np.zeros(256, np.int16)).shape == (0, 80)
    with pytest.raises(InputError, match="mono"):
        gf.filterbanks(np.zeros((2, 1600), np.int16))


def test_audio_windows_start_four_filterbank_frames_per_video_frame():
    ramp = np.repeat(np.arange(140, dtype=np.float32)[:, None], 80, axis=1)  # row t holds t
    windows = gf.audio_windows(ramp, [0, 3, 10], S)
    assert windows.shape == (3, 1, 80, 100)
    for row, start in enumerate([0, 3, 10]):
        assert torch.equal(windows[row, 0, 5], torch.arange(4 * start, 4 * start + 100, dtype=torch.float32))
    assert [gf.count_audio_windows(n, S) for n in (99, 100, 103, 104, 140)] == [0, 1, 1, 2, 11]
    with pytest.raises(InputError, match="video frame 11"):
        gf.audio_windows(ramp, [11], S)


def test_window_counts_agree_for_matching_audio_and_video():
    for seconds in (1, 2, 7):  # 25 fps video and 100 Hz filterbanks of the same length: 25 s - 24 windows each
        num_frames, num_mel = 25 * seconds, gf.filterbanks(np.zeros(16000 * seconds, np.int16)).shape[0]
        assert num_mel == 100 * seconds
        assert gw.count_video_windows(num_frames) == gf.count_audio_windows(num_mel) == 25 * seconds - 24
    assert gw.window_starts(30, 150, S) == [0, 1, 2, 3, 4, 5]  # video allows 6, audio 13: the shorter wins
    assert gw.window_starts(60, 110, S) == [0, 1, 2]
    assert gw.window_starts(24, 1000, S) == []


def _frame(height, width, rgb=(10, 20, 30)):
    return np.broadcast_to(np.array(rgb, np.uint8), (height, width, 3)).copy()


def test_mask_below_the_face_at_the_frames_own_size():
    out = gf.masked_frame(_frame(270, 480), face_bottom_px=100)
    assert out.shape == (270, 480, 3) and out.dtype == np.uint8
    assert np.all(out[:116] == 0)  # rows 0 .. 100 + 15, the last one included (cv2.rectangle fills inclusively)
    assert np.all(out[116:] == [10, 20, 30])  # RGB order kept


def test_mask_is_drawn_before_resizing_a_larger_frame():
    # 540 x 960 -> 270 x 480 halves both sides: bilinear output row r averages source rows 2r and 2r + 1, so
    # source rows 0 .. 115 black make output rows 0 .. 57 black and leave row 58 untouched.
    out = gf.masked_frame(_frame(540, 960, (200, 100, 50)), face_bottom_px=100)
    assert np.all(out[:58] == 0) and np.all(out[58:] == [200, 100, 50])
    odd = gf.masked_frame(_frame(540, 960, (200, 100, 50)), face_bottom_px=101)  # rows 0 .. 116: row 58 half black
    assert np.all(odd[:58] == 0) and np.all(odd[58] == [100, 50, 25]) and np.all(odd[59:] == [200, 100, 50])


def test_no_face_blacks_out_the_top_of_the_resized_frame():
    out = gf.masked_frame(_frame(540, 960), face_bottom_px=None)
    assert np.all(out[:111] == 0) and np.all(out[111:] == [10, 20, 30])  # rows 0 .. 110 of the 270 x 480 frame
    assert np.all(gf.masked_frame(_frame(100, 200), face_bottom_px=400) == 0)  # face bottom past the frame
    with pytest.raises(InputError, match="uint8 RGB"):
        gf.masked_frame(np.zeros((270, 480), np.uint8), None)


def test_video_windows_are_25_consecutive_frames_channels_first_in_0_1():
    frames = np.zeros((30, 270, 480, 3), np.uint8)
    frames[..., 0] = np.arange(30, dtype=np.uint8)[:, None, None]  # frame t: red t, green 2t, blue 255
    frames[..., 1] = 2 * np.arange(30, dtype=np.uint8)[:, None, None]
    frames[..., 2] = 255
    windows = gw.video_windows(frames, [0, 5], S)
    assert windows.shape == (2, 3, 25, 270, 480) and windows.dtype == torch.float32
    for row, start in enumerate([0, 5]):
        expected_t = torch.arange(start, start + 25, dtype=torch.float32)
        assert torch.allclose(windows[row, 0, :, 7, 9], expected_t / 255)
        assert torch.allclose(windows[row, 1, :, 7, 9], 2 * expected_t / 255)
        assert torch.all(windows[row, 2] == 1.0)
    with pytest.raises(InputError, match="does not fit"):
        gw.video_windows(frames, [6], S)
    assert gw.video_windows(frames, [], S).shape == (0, 3, 25, 270, 480)


def reference_masked_frame(img, face_bottom_px, width=480, height=270):
    """load_rgb_masked_frames' per-frame body, with the face's lowest keypoint row given as y2."""
    import cv2

    img = img.copy()
    if face_bottom_px is None:
        img = cv2.resize(img, (width, height))
        masked_img = cv2.rectangle(img, (0, 0), (width, 110), (0, 0, 0), -1)
    else:
        masked_img = cv2.rectangle(img, (0, 0), (img.shape[1], face_bottom_px + 15), (0, 0, 0), -1)
    if masked_img.shape[0] != width or masked_img.shape[1] != height:
        masked_img = cv2.resize(masked_img, (width, height))
    return masked_img


@pytest.mark.parametrize("shape, face_bottom_px", [((360, 640), 123), ((270, 480), None), ((720, 1280), 0),
                                                   ((480, 854), 300), ((300, 400), None)])
def test_masked_frame_equals_the_references_on_random_frames(shape, face_bottom_px):
    frame = np.random.default_rng(7).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    assert np.array_equal(gf.masked_frame(frame, face_bottom_px), reference_masked_frame(frame, face_bottom_px))
