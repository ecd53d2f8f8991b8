"""Voice activity detection: webrtcvad (av-diarization's collector) and the bundled silero-vad on real speech."""
from __future__ import annotations

import collections

import numpy as np
import pytest
from scipy.io import wavfile

from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.vad import collect_voiced, speech_segments, to_int16, webrtc_segments

CFG = load_config()
RATE_HZ = 16000
STEP_S = 0.01


def _read(path):
    rate_hz, samples = wavfile.read(path)
    assert rate_hz == RATE_HZ
    return samples


def _rttm_speech(path, file_id=None) -> list[tuple[float, float]]:
    turns = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "SPEAKER" and (file_id is None or parts[1] == file_id):
            turns.append((float(parts[3]), float(parts[3]) + float(parts[4])))
    return turns


def _mask(segments, duration_s: float) -> np.ndarray:
    """Boolean 10 ms grid of the union of segments."""
    grid = np.zeros(int(round(duration_s / STEP_S)), dtype=bool)
    for start_s, end_s in segments:
        grid[int(round(start_s / STEP_S)):int(round(end_s / STEP_S))] = True
    return grid


@pytest.fixture(scope="module")
def sample(shared_data):
    folder = shared_data / "audio" / "pyannote_sample"
    return _read(folder / "sample.wav"), _rttm_speech(folder / "sample.rttm")


def _check_sorted(segments):
    assert all(start < end for start, end in segments)
    assert all(a[1] <= b[0] for a, b in zip(segments, segments[1:]))


@pytest.mark.parametrize("method", ["webrtc", "silero"])
def test_finds_the_speech_of_a_real_conversation(sample, method):
    audio, truth = sample
    assert audio.dtype == np.int16
    segments = speech_segments(audio, RATE_HZ, CFG.vad, method=method)
    _check_sorted(segments)
    duration_s = len(audio) / RATE_HZ
    found, speech = _mask(segments, duration_s), _mask(truth, duration_s)
    recall = (found & speech).sum() / speech.sum()
    precision = (found & speech).sum() / found.sum()
    assert recall > 0.9, f"{method} recall {recall:.2f}"
    assert precision > 0.85, f"{method} precision {precision:.2f}"
    # nobody speaks during the first 6.7 s
    lead_in = found[: int(6.0 / STEP_S)].mean()
    assert lead_in < 0.1, f"{method} marks {lead_in:.0%} of the silent first 6 s as speech"
    assert 6.0 < segments[0][0] < 7.2


def test_default_method_is_webrtc(sample):
    audio, _ = sample
    assert CFG.vad.method == "webrtc"
    default = speech_segments(audio, RATE_HZ, CFG.vad)
    assert default == webrtc_segments(to_int16(audio), RATE_HZ, CFG.vad)
    assert default != speech_segments(audio, RATE_HZ, CFG.vad, "silero")


@pytest.mark.parametrize("method", ["webrtc", "silero"])
def test_float_input_gives_the_same_segments_as_int16(sample, method):
    audio, _ = sample
    as_float = audio.astype(np.float32) / 32768.0
    assert speech_segments(as_float, RATE_HZ, CFG.vad, method) == speech_segments(audio, RATE_HZ, CFG.vad, method)


@pytest.mark.parametrize("method", ["webrtc", "silero"])
def test_float32_wav_file_of_a_meeting(shared_data, method):
    """pyannote's debug files are float32 WAVs, which webrtcvad cannot take without conversion."""
    folder = shared_data / "audio" / "pyannote_debug"
    audio = _read(folder / "tst00.wav")
    assert audio.dtype == np.float32
    truth = _rttm_speech(folder / "debug.test.rttm", "tst00")
    segments = speech_segments(audio, RATE_HZ, CFG.vad, method)
    _check_sorted(segments)
    duration_s = len(audio) / RATE_HZ
    found, speech = _mask(segments, duration_s), _mask(truth, duration_s)
    # the labels cover 99.7 % of the excerpt; webrtcvad's strict collector keeps about 72 % of it, silero 90 %
    assert (found & speech).sum() / speech.sum() > 0.6
    assert (found & speech).sum() / found.sum() > 0.95


@pytest.mark.parametrize("method", ["webrtc", "silero"])
@pytest.mark.parametrize("kind", ["zeros", "hiss"])
def test_silence_has_no_speech(method, kind):
    rng = np.random.default_rng(0)
    audio = np.zeros(10 * RATE_HZ, dtype=np.int16)
    if kind == "hiss":
        audio = np.clip(rng.normal(0, 30, audio.size), -32768, 32767).astype(np.int16)  # about -60 dBFS
    assert speech_segments(audio, RATE_HZ, CFG.vad, method) == []


@pytest.mark.parametrize("method", ["webrtc", "silero"])
def test_empty_and_tiny_audio(method):
    assert speech_segments(np.zeros(0, dtype=np.int16), RATE_HZ, CFG.vad, method) == []
    assert speech_segments(np.zeros(100, dtype=np.float32), RATE_HZ, CFG.vad, method) == []


def test_bad_arguments_are_input_errors(sample):
    audio, _ = sample
    with pytest.raises(InputError, match="unknown VAD method 'energy'"):
        speech_segments(audio, RATE_HZ, CFG.vad, "energy")
    with pytest.raises(InputError, match="22050"):
        speech_segments(audio, 22050, CFG.vad, "webrtc")
    with pytest.raises(InputError, match="mono"):
        speech_segments(np.zeros((2, 1000), dtype=np.int16), RATE_HZ, CFG.vad)
    with pytest.raises(InputError, match="int16 or float"):
        speech_segments(np.zeros(1000, dtype=np.int32), RATE_HZ, CFG.vad)


# ---- equivalence with av-diarization's code --------------------------------------------------------------
def _reference_webrtc(audio: np.ndarray) -> list[tuple[float, float]]:
    """av-diarization's Vad.run_webrtc (frame_generator + vad_collector, byte for byte), as (start, end)."""
    import webrtcvad

    pcm = audio.astype("<i2").tobytes()
    n = int(RATE_HZ * (30 / 1000.0) * 2)
    frames, offset, timestamp, duration = [], 0, 0.0, (float(n) / RATE_HZ) / 2.0
    while offset + n < len(pcm):
        frames.append((pcm[offset:offset + n], timestamp))
        timestamp += duration
        offset += n
    vad = webrtcvad.Vad(3)
    ring = collections.deque(maxlen=int(300 / 30))
    triggered, voiced, segments = False, [], []
    for frame in frames:
        is_speech = vad.is_speech(frame[0], RATE_HZ)
        if not triggered:
            ring.append((frame, is_speech))
            if len([f for f, s in ring if s]) > 0.9 * ring.maxlen:
                triggered = True
                voiced = [f for f, _ in ring]
                ring.clear()
        else:
            voiced.append(frame)
            ring.append((frame, is_speech))
            if len([f for f, s in ring if not s]) > 0.9 * ring.maxlen:
                triggered = False
                segments.append((voiced[0][1], len(b"".join(f[0] for f in voiced)) / 32000))
                ring.clear()
                voiced = []
    if voiced:
        segments.append((voiced[0][1], len(b"".join(f[0] for f in voiced)) / 32000))
    return [(start, start + length) for start, length in segments]


@pytest.mark.parametrize("name", ["pyannote_sample/sample.wav", "pyannote_debug/tst00.wav", "pyannote_debug/tst01.wav"])
def test_webrtc_matches_av_diarization(shared_data, name):
    audio = _read(shared_data / "audio" / name)
    ours = speech_segments(audio, RATE_HZ, CFG.vad, "webrtc")
    int16 = audio if audio.dtype == np.int16 else np.clip(np.rint(audio * 32768.0), -32768, 32767).astype(np.int16)
    theirs = _reference_webrtc(int16)
    assert len(ours) == len(theirs) > 0
    assert ours == theirs  # the same floats: boundaries land on the same frame after int(t * 25)


def test_collector_rule_on_hand_made_flags():
    """10-frame ring: opens on 10 voiced frames (buffer included), closes on 10 unvoiced (included)."""
    flags = np.array([0] * 5 + [1] * 12 + [0] * 3 + [1] * 2 + [0] * 10 + [1] * 9 + [0] * 4, dtype=bool)
    # voiced run 5..16 opens at frame 14 with frames 5..14; closes when 10 of the last 10 are unvoiced: frame 31
    assert collect_voiced(flags, 10, 0.9, 0.9) == [(5, 32)]
    # nine voiced frames never open a segment; a segment still open at the end runs to the last frame
    assert collect_voiced(np.array([1] * 9 + [0], dtype=bool), 10, 0.9, 0.9) == []
    assert collect_voiced(np.ones(15, dtype=bool), 10, 0.9, 0.9) == [(0, 15)]


def _reference_frames(segments_s, frame_rate_hz: int = 25) -> list[tuple[int, int]]:
    """av-diarization's ``Diarizer.addvad``: ``int(start * 25)`` to ``int((start + duration) * 25)``."""
    return [(int(start * frame_rate_hz), int(end * frame_rate_hz)) for start, end in segments_s]


@pytest.fixture(scope="module")
def real_clip_audio(shared_data):
    """16 kHz mono audio of every real clip, as stage 1 writes it to audio.wav."""
    from pipeline.media import decode_audio

    return {path.stem: decode_audio(path, RATE_HZ) for path in sorted((shared_data / "videos").glob("*.mp4"))}


def test_webrtc_frame_boundaries_are_the_references_on_every_real_clip(real_clip_audio):
    """Times accumulate 0.03 s per frame in float as py-webrtcvad's frame_generator does; ``k * 0.03`` put
    gestsync_asd2spk_a's second segment at frames 45-182 where av-diarization has 45-183 (4 of 25 wavs moved)."""
    assert len(real_clip_audio) == 11
    for name, audio in real_clip_audio.items():
        ours = speech_segments(audio, RATE_HZ, CFG.vad, "webrtc")
        theirs = _reference_webrtc(audio)
        assert ours == theirs, name  # the same floats, not merely close
        assert _reference_frames(ours) == _reference_frames(theirs), name
    assert _reference_frames(speech_segments(real_clip_audio["gestsync_asd2spk_a"], RATE_HZ, CFG.vad, "webrtc")) == \
        [(5, 36), (45, 183), (184, 272)]
