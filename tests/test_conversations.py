"""make_conversations (pipeline/conversations.py): deterministic for a seed, an exact RTTM, overlap only when
asked, the SNR it reports. Synthetic voices with known phrases (tone bursts between silences) make every
expected time exact; the CLI test mixes the real CI voices."""
from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.conversations import (
    FilePlan,
    cut_phrases,
    list_recordings,
    make_conversation,
    overlap_seconds,
    plan_set,
    snr_db,
    speech_mask,
    write_set,
)
from pipeline.errors import InputError
from pipeline.export import read_rttm
from tests.conftest import REPO, SHARED_DATA

RATE = 16000
BURST_S = {"11": (0.8, 1.3, 0.5), "22": (1.1, 0.6, 0.9), "33": (0.7, 1.0, 1.2)}  # phrase lengths per speaker
TONE_HZ = {"11": 220.0, "22": 330.0, "33": 470.0}
PAUSE_S = 0.5
CI_AUDIO = SHARED_DATA / "audio" / "librispeech_train-clean-100"


def _write_wav(path: Path, samples: np.ndarray) -> None:
    pcm = np.clip(np.rint(samples * 32768), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(RATE)
        handle.writeframes(pcm.tobytes())


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as handle:
        assert handle.getframerate() == RATE and handle.getnchannels() == 1
        return np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").astype(np.float64) / 32768


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> Path:
    """Three speakers, one file each ('SPEAKER-1-0000.wav'): tone bursts of known lengths, PAUSE_S apart."""
    folder = tmp_path_factory.mktemp("voices")
    for speaker, lengths in BURST_S.items():
        parts = [np.zeros(int(PAUSE_S * RATE))]
        for length in lengths:
            t = np.arange(int(round(length * RATE))) / RATE
            parts += [0.3 * np.sin(2 * np.pi * TONE_HZ[speaker] * t), np.zeros(int(PAUSE_S * RATE))]
        _write_wav(folder / f"{speaker}-1-0000.wav", np.concatenate(parts))
    return folder


def _cfg(*overrides: str):
    return load_config(None, ["conversations.duration_s=[20.0, 25.0]", *overrides]).conversations


def _conversation(voices: Path, seed: int = 7, overlap: bool = False, noisy: bool = False, speakers=("11", "22", "33"),
                  overrides: tuple[str, ...] = ()):
    recordings = list_recordings(voices)
    plan = FilePlan(index=0, num_speakers=len(speakers), overlap=overlap, noisy=noisy)
    return make_conversation("c", plan, recordings, list(speakers), _cfg(*overrides), RATE, seed)


def test_phrases_are_the_bursts(voices):
    cfg = _cfg()
    samples = _read_wav(voices / "22-1-0000.wav")
    phrases = cut_phrases(samples, cfg, RATE)
    assert [round((end - start) / RATE, 2) for start, end, _ in phrases] == list(BURST_S["22"])
    assert [pause for _, _, pause in phrases] == [int(PAUSE_S * RATE), int(PAUSE_S * RATE), -1]


def test_rttm_is_exactly_where_each_voice_is(voices):
    turns_only = _conversation(voices, overrides=("conversations.backchannel_p=0.0",))
    lengths = {round(end - start, 2) for start, end, _ in turns_only.segments}
    assert lengths <= {length for lengths_s in BURST_S.values() for length in lengths_s}, "not a whole phrase"
    conv = _conversation(voices, overlap=False, overrides=("conversations.backchannel_p=1.0",))
    assert len(conv.segments) > len(turns_only.segments)  # the back-channels are there too
    mask = speech_mask(conv.segments, conv.samples.size, RATE)
    assert not np.any(conv.samples[~mask]), "voice outside the labelled segments"
    for start_s, end_s, speaker in conv.segments:  # each segment holds its own speaker's tone, edge to edge
        piece = conv.samples[int(round(start_s * RATE)):int(round(end_s * RATE))]
        spectrum = np.abs(np.fft.rfft(piece))
        assert np.fft.rfftfreq(piece.size, 1 / RATE)[np.argmax(spectrum)] == pytest.approx(TONE_HZ[speaker], abs=2)
        edge = int(0.01 * RATE)  # the 5 ms fades are inside the first and last 10 ms
        level = np.sqrt(np.mean(piece ** 2))
        assert min(np.sqrt(np.mean(piece[edge:2 * edge] ** 2)), np.sqrt(np.mean(piece[-2 * edge:-edge] ** 2))) > level / 2
    assert {s for _, _, s in conv.segments} == {"11", "22", "33"}
    assert 20.0 <= conv.samples.size / RATE <= 25.0 + 1e-9


def test_overlap_only_when_asked(voices):
    assert overlap_seconds(_conversation(voices, overlap=False, overrides=("conversations.backchannel_p=1.0",)).segments) == 0
    with_overlap = _conversation(voices, overlap=True, overrides=("conversations.overlap_turn_p=0.8",))
    assert overlap_seconds(with_overlap.segments) > 1.0
    assert with_overlap.properties["overlap_s"] == pytest.approx(overlap_seconds(with_overlap.segments), abs=1e-3)


def test_a_seed_gives_the_same_conversation(voices):
    first, again, other = (_conversation(voices, seed=s, overlap=True, noisy=True) for s in (3, 3, 4))
    assert np.array_equal(first.samples, again.samples) and first.segments == again.segments
    assert first.segments != other.segments


def test_snr_is_the_requested_one(voices, tmp_path):
    noisy = _conversation(voices, seed=5, noisy=True, overrides=("conversations.snr_db=[15.0, 25.0]",))
    clean = _conversation(voices, seed=5, noisy=False)
    assert noisy.segments == clean.segments  # the noise draws do not move the turns
    assert np.max(np.abs(clean.samples)) < 0.9  # no peak scaling: noisy - clean is the noise
    write_set(tmp_path / "n", [noisy], RATE, {})
    write_set(tmp_path / "c", [clean], RATE, {})
    heard = _read_wav(tmp_path / "n" / "wav" / "c.wav")
    dry = _read_wav(tmp_path / "c" / "wav" / "c.wav")
    mask = speech_mask(read_rttm(tmp_path / "n" / "rttm" / "c.rttm")["c"], dry.size, RATE)
    assert 15.0 <= noisy.snr_db <= 25.0
    assert snr_db(dry, heard - dry, mask) == pytest.approx(noisy.snr_db, abs=0.5)


def test_plan_covers_the_counts_and_fractions():
    plans = plan_set(16, [2, 6], 0.5, 0.33, seed=1)
    assert sorted(p.index for p in plans) == list(range(16))
    assert {p.num_speakers for p in plans} == {2, 3, 4, 5, 6}
    assert sum(p.overlap for p in plans) == 8 and sum(p.noisy for p in plans) == 5
    for count in (2, 3, 4, 5, 6):  # with and without overlap at every count that has two files or more
        flags = {p.overlap for p in plans if p.num_speakers == count}
        assert flags == {True, False}


def test_list_and_speaker_prefix(voices, tmp_path):
    assert sorted(list_recordings(voices)) == ["11", "22", "33"]
    listed = tmp_path / "list.txt"
    listed.write_text("11-1-0000.wav\n22-1-0000.wav\n")
    assert sorted(list_recordings(voices, listed.read_text().splitlines())) == ["11", "22"]
    with pytest.raises(InputError, match="not in"):
        list_recordings(voices, ["44-1-0000.wav"])


def test_script_is_deterministic_on_real_voices(tmp_path):
    """The CLI on four CI voices, twice with one seed: the same bytes; its RTTMs match its TSV."""
    files = sorted(CI_AUDIO.glob("*.flac"))[:4]
    assert len(files) == 4, f"{CI_AUDIO} lacks the CI voices"
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{f.name}\n" for f in files))

    def run(out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "scripts" / "make_conversations.py"), "--audio_dir",
                               str(CI_AUDIO), "--list", str(listed), "--out_dir", str(out), "--num_files", "2",
                               "--seed", "11", "--speakers", "2", "3", "--duration_s", "20", "30", "--quiet"],
                              capture_output=True, text=True, timeout=300)

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    for name in ("conversations.tsv", "wav/conv_000.wav", "wav/conv_001.wav", "rttm/conv_000.rttm"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    rows = [line.split("\t") for line in (tmp_path / "a" / "conversations.tsv").read_text().splitlines()[1:]]
    for row in rows:
        segments = read_rttm(tmp_path / "a" / "rttm" / f"{row[0]}.rttm")[row[0]]
        assert len({s for _, _, s in segments}) == int(row[2])
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "make_conversations.py"), "--audio_dir",
                          str(CI_AUDIO), "--out_dir", str(tmp_path / "c"), "--num_files", "1", "--seed", "1",
                          "--speakers", "30", "30"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "speakers" in bad.stderr
    assert not (tmp_path / "c" / "conversations.tsv").exists()


def test_eval_table_groups_and_sums():
    """scripts/eval_conversations.py's table: DER parts summed over a group's files, over its scored speech."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_conversations", REPO / "scripts" / "eval_conversations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scores = [
        {"file": "a", "num_speakers": "2", "overlap": "yes", "noisy": "no", "scored_s": 100.0, "missed_s": 2.0,
         "false_alarm_s": 1.0, "confusion_s": 7.0, "ref_speakers": 2, "hyp_speakers": 2},
        {"file": "b", "num_speakers": "4", "overlap": "no", "noisy": "yes", "scored_s": 300.0, "missed_s": 0.0,
         "false_alarm_s": 3.0, "confusion_s": 27.0, "ref_speakers": 4, "hyp_speakers": 5},
    ]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in module.table(scores).splitlines()[2:]}
    assert rows["all"] == ["2", "10.0", "0.5", "1.0", "8.5", "1 of 2"]  # (10 + 30) s of 400 s
    assert rows["2 speakers"] == ["1", "10.0", "2.0", "1.0", "7.0", "1 of 1"]
    assert rows["3+ speakers"] == rows["no overlap"] == rows["noisy"] == ["1", "10.0", "0.0", "1.0", "9.0", "0 of 1"]
    assert "clean" in rows and rows["clean"] == rows["overlap"] == rows["2 speakers"]
