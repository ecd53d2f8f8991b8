"""Conversations mixed from single-speaker recordings, with an exact reference RTTM (``scripts/make_conversations.py``).

What is speech, exactly. Each recording is cut into *phrases* by an energy rule on 10 ms frames
(``conversations.frame_s``): a frame is silent when its mean power is more than ``silence_db`` below the
recording's loud level (the 95th percentile of its frame powers); a run of silent frames of at least
``min_pause_s`` is a pause; a phrase is what lies between pauses, from its first to its last non-silent frame;
phrases shorter than ``min_phrase_s`` (clicks, breaths) are never used. Only whole phrases (and back-channels,
0.3-1 s excerpts of a phrase trimmed by the same rule) are placed in a conversation, and the RTTM labels each
placed piece from its first to its last sample: the labelled segments are exactly where each voice's samples
are, and every sample of a voice is inside its labels. Silences shorter than ``min_pause_s`` inside a phrase
stay inside its label (as a human annotator would bridge them).

How a conversation is built. Speakers take turns: a turn is one or more consecutive phrases of one speaker
(continuing where that speaker's previous turn stopped; a speaker whose phrases run out starts again from
the first, so short recordings are reused), separated by the recording's own pauses (at most
``max_inner_pause_s``). Between turns there is a gap; in a file with overlap a turn starts before the previous
one ends with probability ``overlap_turn_p``. A listener adds a back-channel with probability
``backchannel_p`` per turn: inside the turn when the file has overlap, in the gap after it otherwise. Every
speaker speaks in the first turns; later the next speaker is drawn with per-speaker weights. Each voice is
scaled to its own speech level; noisy files get stationary coloured noise (power spectrum ``1/f^slope``) at an
SNR measured over the reference's speech samples. Everything is drawn from ``numpy.random.default_rng`` seeded
with (seed, file index, purpose): a file does not depend on the others, and the clean mix does not depend on
whether noise is added.
"""
from __future__ import annotations

import json
import math
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache import atomic_path, write_bytes_atomic
from pipeline.errors import InputError
from pipeline.export import to_rttm
from pipeline.settings import ConversationsConfig

AUDIO_SUFFIXES = (".flac", ".wav", ".mp3", ".ogg", ".m4a", ".opus")
_STREAM_PLAN, _STREAM_TURNS, _STREAM_NOISE = 1, 2, 3  # rng purposes
TSV_COLUMNS = ("file", "duration_s", "num_speakers", "speakers", "overlap", "noisy", "snr_db", "speech_s",
               "overlap_s", "seed")


@dataclass(frozen=True)
class Piece:
    """A stretch of one speaker's recording: samples ``[start, end)`` of ``recording``."""

    speaker: str
    recording: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class Voice:
    """One speaker: their recordings (float64, scaled to the voice's level) and phrases in reading order."""

    speaker: str
    recordings: list[np.ndarray]
    phrases: list[Piece]
    pauses: list[int]  # pauses[k]: samples of silence after phrases[k] in the recording (-1: recording ends)
    cursor: int = 0


@dataclass
class Placement:
    """A piece placed at sample ``at`` of the conversation."""

    piece: Piece
    at: int

    @property
    def end(self) -> int:
        return self.at + self.piece.length


@dataclass
class Conversation:
    """One mixed conversation: samples, reference segments and its properties."""

    name: str
    samples: np.ndarray  # float64 in [-1, 1]
    segments: list[tuple[float, float, str]]
    speakers: list[str]
    overlap: bool
    snr_db: float | None
    seed: int
    properties: dict[str, Any] = field(default_factory=dict)


# ---- reading and cutting the recordings ---------------------------------------------------------------
def speaker_of(path: Path, root: Path) -> str:
    """The speaker of a recording: its sub-folder under ``root``, else its file name before the first '-'."""
    relative = path.relative_to(root)
    if len(relative.parts) > 1:
        return relative.parts[0]
    return path.stem.split("-", 1)[0]


def list_recordings(audio_dir: str | Path, allowed: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """Recordings per speaker under ``audio_dir`` (sorted), only those named in ``allowed`` when given."""
    root = Path(audio_dir)
    if not root.is_dir():
        raise InputError(f"--audio_dir {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if allowed is not None:
        wanted = {name.strip() for name in allowed if name.strip() and not name.startswith("#")}
        found = {p for p in files if p.name in wanted or str(p.relative_to(root)) in wanted}
        missing = sorted(wanted - {p.name for p in found} - {str(p.relative_to(root)) for p in found})
        if missing:
            raise InputError(f"{len(missing)} file(s) of the list are not in {root}, e.g. {missing[0]}")
        files = [p for p in files if p in found]
    by_speaker: dict[str, list[Path]] = {}
    for path in files:
        by_speaker.setdefault(speaker_of(path, root), []).append(path)
    if not by_speaker:
        raise InputError(f"no recordings ({', '.join(AUDIO_SUFFIXES)}) in {root}")
    return by_speaker


def frame_levels_db(samples: np.ndarray, frame_len: int) -> np.ndarray:
    """Mean power per non-overlapping frame in dB (a last partial frame is dropped)."""
    num = samples.size // frame_len
    frames = samples[: num * frame_len].reshape(num, frame_len)
    return 10.0 * np.log10(np.mean(frames ** 2, axis=1) + 1e-20)


def speech_frames(samples: np.ndarray, frame_len: int, silence_db: float) -> np.ndarray:
    """The energy rule: True where a frame is within ``silence_db`` of the recording's loud level."""
    levels = frame_levels_db(samples, frame_len)
    if levels.size == 0:
        return np.zeros(0, dtype=bool)
    return levels >= np.percentile(levels, 95) - silence_db


def cut_phrases(samples: np.ndarray, cfg: ConversationsConfig, sample_rate_hz: int) -> list[tuple[int, int, int]]:
    """Phrases of one recording as ``(start, end, pause_after)`` samples (pause -1 after the last)."""
    frame_len = int(round(cfg.frame_s * sample_rate_hz))
    voiced = speech_frames(samples, frame_len, cfg.silence_db)
    min_pause = int(math.ceil(cfg.min_pause_s / cfg.frame_s - 1e-9))
    spans: list[list[int]] = []  # [first_frame, end_frame) of voiced frames, short pauses bridged
    for idx in np.flatnonzero(voiced):
        if spans and idx - spans[-1][1] < min_pause:
            spans[-1][1] = idx + 1
        else:
            spans.append([int(idx), int(idx) + 1])
    min_frames = cfg.min_phrase_s / cfg.frame_s
    kept = [(a, b) for a, b in spans if b - a >= min_frames - 1e-9]
    phrases = []
    for k, (a, b) in enumerate(kept):
        pause = (kept[k + 1][0] - b) * frame_len if k + 1 < len(kept) else -1
        phrases.append((a * frame_len, b * frame_len, pause))
    return phrases


def load_voice(speaker: str, paths: Sequence[Path], cfg: ConversationsConfig, sample_rate_hz: int, level_db: float) -> Voice:
    """A speaker's recordings decoded to mono float at ``sample_rate_hz``, scaled so their phrases'
    mean power is ``level_db`` dBFS, and cut into phrases."""
    from pipeline.media import decode_audio

    recordings, phrases, pauses = [], [], []
    for index, path in enumerate(paths):
        samples = decode_audio(path, sample_rate_hz).astype(np.float64) / 32768.0
        for start, end, pause in cut_phrases(samples, cfg, sample_rate_hz):
            phrases.append(Piece(speaker, index, start, end))
            pauses.append(pause)
        recordings.append(samples)
    if not phrases:
        raise InputError(f"speaker {speaker}: no speech found in {', '.join(p.name for p in paths)}")
    power = np.mean(np.concatenate([recordings[p.recording][p.start:p.end] for p in phrases]) ** 2)
    gain = 10 ** (level_db / 20) / math.sqrt(power)
    return Voice(speaker, [r * gain for r in recordings], phrases, pauses)


# ---- turns ---------------------------------------------------------------------------------------------
def _uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    return float(rng.uniform(float(bounds[0]), float(bounds[1])))


def take_turn(voice: Voice, rng: np.random.Generator, cfg: ConversationsConfig, rate: int) -> list[tuple[Piece, int]]:
    """Consecutive phrases of ``voice`` up to a drawn turn length: ``(phrase, offset from the turn start)``."""
    target = _uniform(rng, cfg.turn_s) * rate
    max_pause = int(round(cfg.max_inner_pause_s * rate))
    pieces: list[tuple[Piece, int]] = []
    offset = 0
    while True:
        k = voice.cursor
        phrase = voice.phrases[k]
        pieces.append((phrase, offset))
        offset += phrase.length
        voice.cursor = (k + 1) % len(voice.phrases)
        pause = voice.pauses[k]
        if offset >= target or pause < 0 or voice.cursor == 0:
            return pieces
        offset += min(pause, max_pause)


def backchannel(voice: Voice, rng: np.random.Generator, cfg: ConversationsConfig, rate: int) -> Piece | None:
    """A 0.3-1 s excerpt of one of ``voice``'s phrases, trimmed to its speech frames by the energy rule."""
    low, high = (int(round(v * rate)) for v in cfg.backchannel_s)
    candidates = [p for p in voice.phrases if p.length >= low]
    if not candidates:
        return None
    phrase = candidates[int(rng.integers(len(candidates)))]
    frame_len = int(round(cfg.frame_s * rate))
    length = min(phrase.length, int(rng.integers(low, high + 1)))
    length -= length % frame_len
    first = phrase.start + frame_len * int(rng.integers((phrase.length - length) // frame_len + 1))
    audio = voice.recordings[phrase.recording]
    # the same rule as the phrases: frames within silence_db of the whole recording's loud level
    loud = np.percentile(frame_levels_db(audio, frame_len), 95)
    levels = frame_levels_db(audio[first:first + length], frame_len)
    voiced = np.flatnonzero(levels >= loud - cfg.silence_db)
    if voiced.size == 0:
        return None
    start, end = first + int(voiced[0]) * frame_len, first + (int(voiced[-1]) + 1) * frame_len
    if end - start < low:
        return None
    return Piece(voice.speaker, phrase.recording, start, end)


def _speaker_order(rng: np.random.Generator, num_speakers: int, weights: np.ndarray, previous: int,
                   turn_index: int, first_round: list[int]) -> int:
    if turn_index < num_speakers:
        return first_round[turn_index]
    p = weights.copy()
    p[previous] = 0.0
    return int(rng.choice(num_speakers, p=p / p.sum()))


def place_turns(voices: list[Voice], rng: np.random.Generator, cfg: ConversationsConfig, rate: int, overlap: bool,
                duration_s: float) -> tuple[list[Placement], int]:
    """Turns, gaps, overlaps and back-channels until ``duration_s`` (a turn that would end after the upper end
    of ``cfg.duration_s`` ends the conversation instead); returns placements and the total length in samples."""
    n = len(voices)
    weights = rng.uniform(*cfg.speaker_weight, size=n)
    first_round = [int(i) for i in rng.permutation(n)]
    grid = int(round(cfg.frame_s * rate))

    def snap(seconds: float) -> int:  # every time on the frame grid: the RTTM's times are exact
        return int(round(seconds * rate / grid)) * grid

    placements: list[Placement] = []
    free_at = [0] * n  # a voice never overlaps itself: its next piece starts after its last one
    now = snap(cfg.edge_silence_s)  # where the next turn may start (after the last placed sample)
    target = snap(duration_s - cfg.edge_silence_s)
    limit = snap(cfg.duration_s[1] - cfg.edge_silence_s)  # no turn past the longest allowed length
    previous, turn_index = -1, 0
    while now < target or turn_index < n:
        who = _speaker_order(rng, n, weights, previous, turn_index, first_round)
        pieces = take_turn(voices[who], rng, cfg, rate)
        turn_len = pieces[-1][1] + pieces[-1][0].length
        start = now + snap(_uniform(rng, cfg.gap_s))
        if turn_index >= n and start + turn_len > limit:
            break
        if overlap and placements and rng.random() < cfg.overlap_turn_p:
            last = placements[-1]  # the previous turn's last phrase: overlap at most half of it and of this turn
            wanted = snap(_uniform(rng, cfg.overlap_s))
            start = now - min(wanted, (last.piece.length // 2) // grid * grid, (turn_len // 2) // grid * grid)
        start = max(start, free_at[who])
        turn = [Placement(piece, start + offset) for piece, offset in pieces]
        placements.extend(turn)
        now = max(now, turn[-1].end)
        free_at[who] = turn[-1].end
        if n > 1 and rng.random() < cfg.backchannel_p:
            now = _add_backchannel(voices, who, rng, cfg, rate, overlap, turn, placements, now, snap, free_at)
        previous, turn_index = who, turn_index + 1
    return placements, now + snap(cfg.edge_silence_s)


def _add_backchannel(voices: list[Voice], who: int, rng: np.random.Generator, cfg: ConversationsConfig, rate: int, overlap: bool,
                     turn: list[Placement], placements: list[Placement], now: int, snap, free_at: list[int]) -> int:
    """One listener's back-channel: inside the turn (overlap files) or in a gap after it; returns ``now``."""
    listener = int(rng.choice([i for i in range(len(voices)) if i != who]))
    piece = backchannel(voices[listener], rng, cfg, rate)
    if piece is None:
        return now
    turn_start, turn_end = max(turn[0].at, free_at[listener]), turn[-1].end
    if overlap and turn_end - turn_start > piece.length:
        at = turn_start + snap(rng.uniform(0, (turn_end - turn_start - piece.length) / rate))
    else:
        at = now + snap(_uniform(rng, cfg.gap_s))
    placements.append(Placement(piece, at))
    free_at[listener] = at + piece.length
    return max(now, at + piece.length)


# ---- mixing ------------------------------------------------------------------------------------------
def coloured_noise(rng: np.random.Generator, num: int, slope: float) -> np.ndarray:
    """Stationary Gaussian noise of unit power whose power spectrum falls as ``1/f^slope``."""
    spectrum = np.fft.rfft(rng.standard_normal(num))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / freqs ** (slope / 2.0), n=num)
    return noise / math.sqrt(np.mean(noise ** 2))


def speech_mask(segments: Sequence[tuple[float, float, str]], num: int, rate: int) -> np.ndarray:
    """True on the samples inside any reference segment."""
    mask = np.zeros(num, dtype=bool)
    for start_s, end_s, _ in segments:
        mask[int(round(start_s * rate)):int(round(end_s * rate))] = True
    return mask


def snr_db(speech: np.ndarray, noise: np.ndarray, mask: np.ndarray) -> float:
    """10 log10 of the speech's mean power over ``mask`` to the noise's mean power over the whole file."""
    return 10.0 * math.log10(np.mean(speech[mask] ** 2) / np.mean(noise ** 2))


def mix(voices: list[Voice], placements: list[Placement], total: int, cfg: ConversationsConfig, rate: int) -> np.ndarray:
    """The clean mixture: each placed piece with ``fade_s`` raised-cosine fades inside its own samples."""
    out = np.zeros(total, dtype=np.float64)
    by_speaker = {v.speaker: v for v in voices}
    fade = int(round(cfg.fade_s * rate))
    for place in placements:
        piece = place.piece
        audio = by_speaker[piece.speaker].recordings[piece.recording][piece.start:piece.end].copy()
        k = min(fade, audio.size // 2)
        if k > 0:
            ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 0.5) / k)
            audio[:k] *= ramp
            audio[-k:] *= ramp[::-1]
        out[place.at:place.end] += audio
    return out


def segments_of(placements: Sequence[Placement], rate: int) -> list[tuple[float, float, str]]:
    """Reference segments: one per placed piece, its first to its last sample, sorted."""
    return sorted((p.at / rate, p.end / rate, p.piece.speaker) for p in placements)


def overlap_seconds(segments: Sequence[tuple[float, float, str]]) -> float:
    """Seconds where two or more different speakers' segments overlap."""
    events = []
    for start_s, end_s, speaker in segments:
        events += [(start_s, 1, speaker), (end_s, -1, speaker)]
    events.sort(key=lambda e: (e[0], e[1]))
    active: dict[str, int] = {}
    total, last = 0.0, 0.0
    for time_s, delta, speaker in events:
        if sum(1 for c in active.values() if c > 0) >= 2:
            total += time_s - last
        active[speaker] = active.get(speaker, 0) + delta
        last = time_s
    return total


# ---- a set of conversations ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FilePlan:
    """What one conversation of a set will be."""

    index: int
    num_speakers: int
    overlap: bool
    noisy: bool


def plan_set(num_files: int, speakers_range: Sequence[int], overlap_files: float, noisy_files: float,
             seed: int) -> list[FilePlan]:
    """Speaker counts cycle over the range; overlap alternates within each count; noisy files are drawn."""
    low, high = int(speakers_range[0]), int(speakers_range[1])
    if not 1 <= low <= high:
        raise InputError(f"speaker counts must satisfy 1 <= low <= high, got {low}..{high}")
    rng = np.random.default_rng([seed, _STREAM_PLAN])
    counts = sorted(low + i % (high - low + 1) for i in range(num_files))
    num_overlap = int(round(overlap_files * num_files))
    # spread the overlap files evenly over the files sorted by speaker count, from a drawn phase
    phase = rng.uniform()
    overlap_idx = {int((k + phase) * num_files / num_overlap) for k in range(num_overlap)} if num_overlap else set()
    noisy_idx = set(rng.choice(num_files, size=int(round(noisy_files * num_files)), replace=False).tolist())
    order = rng.permutation(num_files)  # file names do not reveal the properties
    return [FilePlan(int(order[i]), counts[i], i in overlap_idx, i in noisy_idx) for i in range(num_files)]


def choose_speakers(plans: Sequence[FilePlan], speakers: Sequence[str], seed: int) -> dict[int, list[str]]:
    """Speakers per file: drawn without repeats in a file, the least used first across the set."""
    rng = np.random.default_rng([seed, _STREAM_PLAN, 1])
    uses = dict.fromkeys(speakers, 0)
    chosen: dict[int, list[str]] = {}
    for plan in sorted(plans, key=lambda p: p.index):
        if plan.num_speakers > len(speakers):
            raise InputError(f"a file needs {plan.num_speakers} speakers, the input has only {len(speakers)}")
        ranked = sorted(speakers, key=lambda s: (uses[s], rng.uniform()))
        chosen[plan.index] = ranked[: plan.num_speakers]
        for speaker in chosen[plan.index]:
            uses[speaker] += 1
    return chosen


def make_conversation(name: str, plan: FilePlan, recordings: Mapping[str, Sequence[Path]], speakers: list[str],
                      cfg: ConversationsConfig, rate: int, seed: int) -> Conversation:
    """One conversation of ``speakers`` as ``plan`` says."""
    rng = np.random.default_rng([seed, plan.index, _STREAM_TURNS])
    voices = [load_voice(s, recordings[s], cfg, rate, _uniform(rng, cfg.level_dbfs)) for s in speakers]
    duration_s = _uniform(rng, cfg.duration_s)
    placements, total = place_turns(voices, rng, cfg, rate, plan.overlap, duration_s)
    samples = mix(voices, placements, total, cfg, rate)
    segments = segments_of(placements, rate)
    level = None
    if plan.noisy:
        noise_rng = np.random.default_rng([seed, plan.index, _STREAM_NOISE])
        level = _uniform(noise_rng, cfg.snr_db)
        noise = coloured_noise(noise_rng, total, _uniform(noise_rng, cfg.noise_slope))
        mask = speech_mask(segments, total, rate)
        noise *= math.sqrt(np.mean(samples[mask] ** 2) / 10 ** (level / 10))
        samples = samples + noise
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > cfg.max_peak:  # one gain for the whole file: the SNR is unchanged
        samples = samples * (cfg.max_peak / peak)
    props = {"speech_s": round(float(speech_mask(segments, total, rate).sum()) / rate, 3),
             "overlap_s": round(overlap_seconds(segments), 3)}
    return Conversation(name, samples, segments, speakers, plan.overlap, level, seed, props)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """16-bit PCM mono wav, written atomically."""
    pcm = np.clip(np.rint(samples * 32768.0), -32768, 32767).astype("<i2")
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(rate)
            handle.writeframes(pcm.tobytes())


def tsv_row(conv: Conversation, rate: int) -> list[str]:
    """The list file's row of one conversation (columns ``TSV_COLUMNS``)."""
    return [conv.name, f"{conv.samples.size / rate:.2f}", str(len(conv.speakers)), ",".join(conv.speakers),
            "yes" if conv.overlap else "no", "no" if conv.snr_db is None else "yes",
            "-" if conv.snr_db is None else f"{conv.snr_db:.2f}", f"{conv.properties['speech_s']:.2f}",
            f"{conv.properties['overlap_s']:.2f}", str(conv.seed)]


def write_set(out_dir: Path, conversations: Sequence[Conversation], rate: int, settings: Mapping[str, Any]) -> Path:
    """``wav/NAME.wav``, ``rttm/NAME.rttm``, ``list.txt`` (wav paths), ``conversations.tsv`` and
    ``settings.json`` under ``out_dir``; the TSV is written last (a set without it is unfinished)."""
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    (out_dir / "rttm").mkdir(parents=True, exist_ok=True)
    (out_dir / "conversations.tsv").unlink(missing_ok=True)
    for conv in conversations:
        write_wav(out_dir / "wav" / f"{conv.name}.wav", conv.samples, rate)
        write_bytes_atomic(out_dir / "rttm" / f"{conv.name}.rttm", to_rttm(conv.segments, conv.name).encode())
    write_bytes_atomic(out_dir / "list.txt",
                       "".join(f"wav/{c.name}.wav\n" for c in conversations).encode())
    write_bytes_atomic(out_dir / "settings.json", (json.dumps(settings, indent=1, sort_keys=True) + "\n").encode())
    rows = ["\t".join(TSV_COLUMNS)] + ["\t".join(tsv_row(c, rate)) for c in conversations]
    write_bytes_atomic(out_dir / "conversations.tsv", ("\n".join(rows) + "\n").encode())
    return out_dir / "conversations.tsv"


def read_set(set_dir: str | Path) -> list[dict[str, str]]:
    """The rows of a set's ``conversations.tsv`` as dicts."""
    path = Path(set_dir) / "conversations.tsv"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path} not found: not a finished set of scripts/make_conversations.py") from None
    header = lines[0].split("\t") if lines else []
    if tuple(header) != TSV_COLUMNS:
        raise InputError(f"{path}: unexpected header (expected {' '.join(TSV_COLUMNS)})")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]


__all__ = [
    "Conversation",
    "FilePlan",
    "TSV_COLUMNS",
    "choose_speakers",
    "coloured_noise",
    "cut_phrases",
    "list_recordings",
    "make_conversation",
    "overlap_seconds",
    "plan_set",
    "read_set",
    "snr_db",
    "speech_mask",
    "write_set",
]
