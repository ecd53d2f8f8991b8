"""Stage 2-3 evidence simulated from a ground-truth RTTM, in the cache formats (``pipeline/formats.py``).

``simulate_file`` turns one file's reference segments into what stages 1-3 would have cached for its video
(``tracks.pckl`` tracks, ``activesd.pckl`` distances, ``sync.pckl``, ``vad.pckl``, ``embeddings.pckl``,
``faceid.pckl``, ``media.pckl``); ``run_modes`` feeds it to stage 3's own decision (``pipeline.stage3.decide``)
in each fusion mode. The noise models and the three profiles are described in scripts/simulate_fusion.py.
Everything is drawn from ``numpy.random.default_rng((seed, crc32(file_id)))``: a file's evidence does not
depend on which other files are simulated.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter1d

from pipeline.sync.evidence_record import SyncEvidence

FPS = 25.0
HOP_S = 0.2
WINDOW_S = 2.0
EMB_DIM = 128


@dataclass(frozen=True)
class Profile:
    """Noise parameters (see scripts/simulate_fusion.py for what each models)."""

    p_offscreen: float = 0.25          # a speaker is never on screen
    shot_mean_s: float = 6.0           # mean shot length (exponential, at least 1 s)
    p_visible_speaking: float = 0.8    # an on-screen speaker who speaks in a shot has a face track in it
    p_visible_silent: float = 0.3      # ... and one who does not speak in it
    bystanders_per_shot: float = 0.3   # mean number of faces of people who never speak, per shot
    p_split: float = 0.1               # a track gets a new face identity (face clustering split)
    p_silent_face: float = 0.1         # a speaking face's lips give no sync (profile, occlusion, dubbing)
    dip_range: tuple[float, float] = (0.5, 1.3)  # per-track depth of the distance dip while its face speaks
    dist_noise: float = 0.3            # per-window, per-shift distance noise (std)
    shift_profile_noise: float = 0.05  # per-track, per-shift offset of the mean distance (std)
    max_offset_frames: int = 3         # audio-video offset of a track: best shift uniform in +- this
    vad_miss_short_p: float = 0.2      # a speech run shorter than 1 s is missed by the VAD
    vad_edge_s: float = 0.1            # std of each VAD boundary's displacement
    vad_bridge_s: float = 0.3          # gaps shorter than this are bridged (hangover)
    vad_fa_per_min: float = 3.0        # false-alarm segments per minute of non-speech
    emb_noise: float = 0.8             # per-window embedding noise (relative to a unit voice)
    emb_noise_smooth_windows: int = 5  # windows over which the noise is correlated (overlapping 2 s windows)
    emb_drift: float = 0.3             # slow channel drift (relative), a random walk with knots every 30 s
    speaker_similarity: float = 0.3    # expected cosine similarity between two speakers' voices


PROFILES: dict[str, Profile] = {
    "easy": Profile(p_offscreen=0.15, p_visible_speaking=0.9, bystanders_per_shot=0.1, p_split=0.05,
                    p_silent_face=0.05, dip_range=(0.7, 1.5), dist_noise=0.2, vad_miss_short_p=0.1,
                    vad_fa_per_min=1.0, emb_noise=0.6, emb_drift=0.2, speaker_similarity=0.25),
    "default": Profile(),
    "hard": Profile(p_offscreen=0.4, p_visible_speaking=0.65, bystanders_per_shot=0.6, p_split=0.2,
                    p_silent_face=0.2, dip_range=(0.35, 1.1), dist_noise=0.4, vad_miss_short_p=0.35,
                    vad_edge_s=0.15, vad_fa_per_min=6.0, emb_noise=1.0, emb_drift=0.4, speaker_similarity=0.35),
}


@dataclass
class SimulatedFile:
    """One file's evidence in the cache formats, and facts about the simulation."""

    file_id: str
    media: dict
    tracks: list[dict]
    distances: list[np.ndarray]
    sync: SyncEvidence
    vad: dict
    embeddings: dict
    face_ids: list[int]
    offscreen_speakers: int


def file_rng(seed: int, file_id: str) -> np.random.Generator:
    return np.random.default_rng((int(seed), zlib.crc32(file_id.encode())))


def truth_frames(segments: Sequence[tuple[float, float, str]], num_frames: int) -> tuple[list[str], np.ndarray]:
    """Speakers (sorted) and a bool [num_frames, speakers] mask of who speaks in each 25 fps frame."""
    speakers = sorted({spk for _, _, spk in segments})
    index = {spk: k for k, spk in enumerate(speakers)}
    mask = np.zeros((num_frames, len(speakers)), dtype=bool)
    for start_s, end_s, spk in segments:
        mask[int(round(start_s * FPS)):int(round(end_s * FPS)), index[spk]] = True
    return speakers, mask


def _runs(mask: np.ndarray) -> np.ndarray:
    """[n, 2] (start, end) of the True runs of a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1)


def simulate_vad(speech: np.ndarray, rng: np.random.Generator, prof: Profile) -> list[tuple[float, float]]:
    """Whole-audio VAD segments (seconds): the true speech with short runs missed, boundaries displaced,
    short gaps bridged and false alarms added in silence."""
    num = speech.size
    runs = _runs(speech)
    keep = ~(((runs[:, 1] - runs[:, 0]) < FPS) & (rng.random(len(runs)) < prof.vad_miss_short_p))
    runs = runs[keep]
    edges = rng.normal(0.0, prof.vad_edge_s * FPS, size=runs.shape)
    out = np.zeros(num, dtype=bool)
    for (s, e), (ds, de) in zip(runs, edges):
        s2, e2 = int(round(s + ds)), int(round(e + de))
        if e2 - s2 >= 3:
            out[max(s2, 0):min(e2, num)] = True
    silence_s = float(np.count_nonzero(~speech)) / FPS
    for _ in range(rng.poisson(prof.vad_fa_per_min * silence_s / 60.0)):
        start = int(rng.integers(0, max(num - 1, 1)))
        length = int(rng.uniform(0.3, 2.0) * FPS)
        if not speech[start:start + length].any():
            out[start:start + length] = True
    gaps = _runs(~out)
    for s, e in gaps:
        if 0 < s and e < num and e - s < prof.vad_bridge_s * FPS:
            out[s:e] = True
    return [(float(s / FPS), float(e / FPS)) for s, e in _runs(out)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def simulate_embeddings(mask: np.ndarray, rng: np.random.Generator, prof: Profile,
                        duration_s: float) -> np.ndarray:
    """float32 [num_windows, EMB_DIM]: window k (``[k * 0.2, k * 0.2 + 2)`` s) is the mix of the voices in it
    (weighted by speaking time; the background where nobody speaks), plus correlated noise and drift."""
    num_windows = int(np.floor((duration_s - WINDOW_S) / HOP_S + 1e-9)) + 1 if duration_s >= WINDOW_S else 0
    num_frames, num_speakers = mask.shape
    common = _unit(rng.normal(size=EMB_DIM))
    own = _unit(rng.normal(size=(num_speakers, EMB_DIM)))
    rho = prof.speaker_similarity
    centres = _unit(np.sqrt(rho) * common + np.sqrt(1 - rho) * own)
    background = _unit(rng.normal(size=EMB_DIM))
    if num_windows == 0:
        return np.zeros((0, EMB_DIM), dtype=np.float32)
    step, width = int(round(HOP_S * FPS)), int(round(WINDOW_S * FPS))
    cums = np.vstack([np.zeros((1, num_speakers)), np.cumsum(mask, axis=0)])
    starts = np.minimum(np.arange(num_windows) * step, num_frames)
    ends = np.minimum(starts + width, num_frames)
    share = (cums[ends] - cums[starts]) / width  # [windows, speakers]
    speech = np.vstack([[0], np.cumsum(mask.any(axis=1))[:, None]])
    silent = 1.0 - (speech[ends] - speech[starts])[:, 0] / width
    clean = _unit(share @ centres + silent[:, None] * background)
    noise = rng.normal(size=(num_windows, EMB_DIM)) / np.sqrt(EMB_DIM)
    if prof.emb_noise_smooth_windows > 1:
        noise = uniform_filter1d(noise, prof.emb_noise_smooth_windows, axis=0, mode="nearest")
        noise *= np.sqrt(prof.emb_noise_smooth_windows)
    knots = rng.normal(size=(int(duration_s // 30) + 2, EMB_DIM)) / np.sqrt(EMB_DIM)
    position = np.arange(num_windows) * HOP_S / 30.0
    low = np.floor(position).astype(int)
    frac = (position - low)[:, None]
    drift = np.cumsum(knots, axis=0) / np.sqrt(np.arange(1, len(knots) + 1))[:, None]
    drift = (1 - frac) * drift[low] + frac * drift[low + 1]
    return (clean + prof.emb_noise * noise + prof.emb_drift * drift).astype(np.float32)


def simulate_shots(num_frames: int, rng: np.random.Generator, prof: Profile) -> list[tuple[int, int]]:
    """Shots (start_frame, end_frame) with exponential lengths of mean ``shot_mean_s``, at least 1 s."""
    shots, start = [], 0
    while start < num_frames:
        length = max(int(FPS), int(rng.exponential(prof.shot_mean_s) * FPS))
        shots.append((start, min(start + length, num_frames)))
        start += length
    return shots


def track_distances(speaking: np.ndarray, rng: np.random.Generator, prof: Profile, vshift: int,
                    silent_face: bool) -> np.ndarray:
    """float32 [num_windows, 2 * vshift + 1] SyncNet-like cosine distances of one track whose face speaks
    on the track frames ``speaking`` (bool): about 1 everywhere, dipping at the track's offset (and half as
    much at the neighbouring shifts) in windows centred on speaking frames, unless the face is silent."""
    num_windows = speaking.size - 5
    shifts = 2 * vshift + 1
    if num_windows <= 0:
        return np.zeros((0, shifts), dtype=np.float32)
    base = 1.0 + prof.shift_profile_noise * rng.normal(size=shifts)
    dists = base[None, :] + prof.dist_noise * rng.normal(size=(num_windows, shifts))
    if not silent_face:
        best = vshift + int(rng.integers(-prof.max_offset_frames, prof.max_offset_frames + 1))
        depth = rng.uniform(*prof.dip_range)
        dip = depth * speaking[2:2 + num_windows] * (1 + 0.2 * rng.normal(size=num_windows))
        dists[:, best] -= dip
        for side in (best - 1, best + 1):
            if 0 <= side < shifts:
                dists[:, side] -= dip / 2
    return np.clip(dists, 0.0, 2.0).astype(np.float32)


def _box(rng: np.random.Generator, n: int) -> np.ndarray:
    x, y = rng.uniform(100, 1000), rng.uniform(50, 500)
    return np.tile([x, y, x + 150, y + 150], (n, 1)).astype(np.float64)


def simulate_file(file_id: str, segments: Sequence[tuple[float, float, str]], profile: Profile, seed: int,
                  vshift: int = 10) -> SimulatedFile:
    """Evidence of one file in the cache formats (see the module docstring)."""
    rng = file_rng(seed, file_id)
    duration_s = max(e for _, e, _ in segments) + float(rng.uniform(1.0, 5.0))
    num_frames = int(np.ceil(duration_s * FPS))
    speakers, mask = truth_frames(segments, num_frames)
    num_speakers = len(speakers)
    offscreen = rng.random(num_speakers) < profile.p_offscreen
    tracks, distances, track_vad_frames, face_ids = [], [], [], []
    next_split, bystander_ids = 1000, [500 + k for k in range(3)]
    for start, end in simulate_shots(num_frames, rng, profile):
        if end - start < FPS:
            continue
        talk = mask[start:end].mean(axis=0)
        for spk in range(num_speakers):
            if offscreen[spk]:
                continue
            p = profile.p_visible_speaking if talk[spk] >= 0.3 else profile.p_visible_silent
            if rng.random() >= p:
                continue
            identity = spk
            if rng.random() < profile.p_split:
                identity, next_split = next_split, next_split + 1
            tracks.append((start, end, spk, identity))
        for _ in range(rng.poisson(profile.bystanders_per_shot)):
            tracks.append((start, end, -1, int(rng.choice(bystander_ids))))
    vad_audio = simulate_vad(mask.any(axis=1), rng, profile)
    vad_mask = np.zeros(num_frames, dtype=bool)
    for s, e in vad_audio:
        vad_mask[int(s * FPS):int(e * FPS)] = True
    track_dicts = []
    for start, end, spk, identity in tracks:
        frames = np.arange(start, end, dtype=np.int64)
        speaking = mask[start:end, spk] if spk >= 0 else np.zeros(end - start, dtype=bool)
        silent = rng.random() < profile.p_silent_face
        distances.append(track_distances(speaking, rng, profile, vshift, silent))
        track_dicts.append({"track": {"frame": frames, "bbox": _box(rng, frames.size)}})
        face_ids.append(int(identity))
        local = _runs(vad_mask[start:end])
        track_vad_frames.append([(float(s / FPS), float(e / FPS)) for s, e in local])
    embeddings = simulate_embeddings(mask, rng, profile, duration_s)
    media = {"num_frames": num_frames, "frame_rate_hz": FPS, "duration_s": duration_s, "has_audio": True,
             "sample_rate_hz": 16000, "num_samples": int(duration_s * 16000)}
    sync = SyncEvidence(model="syncnet", metric="cosine", checkpoint="simulated", score_name="min_dist",
                        vshift_frames=vshift)
    return SimulatedFile(file_id, media, track_dicts, distances, sync,
                         {"method": "simulated", "audio": vad_audio, "tracks": track_vad_frames},
                         {"model": "simulated", "window_s": WINDOW_S, "hop_s": HOP_S, "embeddings": embeddings},
                         face_ids, int(np.count_nonzero(offscreen)))


def run_mode(sim: SimulatedFile, cfg: Any) -> list[tuple[float, float, str]]:
    """Stage 3's decision (``pipeline.stage3.decide``, the configured mode) on simulated evidence: segments."""
    from pipeline.stage3 import decide, track_evidence

    evidence = track_evidence(sim.tracks, sim.distances, sim.vad, sim.face_ids)
    turns = decide(cfg, evidence, sim.vad["audio"], sim.embeddings["embeddings"], float(sim.embeddings["hop_s"]),
                   int(sim.media["num_frames"]), sim.media["duration_s"], sim.sync)
    return [(t.start_s, t.end_s, t.speaker) for t in turns]


def run_modes(reference: Mapping[str, list], profile: Profile, seed: int, cfgs: Mapping[str, Any],
              vshift: int = 10) -> tuple[dict[str, dict[str, list]], dict[str, int], list[str]]:
    """Hypothesis segments per mode per file, off-screen speakers per file, and 'file mode: error' lines for
    files where a mode raised (their hypothesis is left empty)."""
    hyps: dict[str, dict[str, list]] = {mode: {} for mode in cfgs}
    offscreen, failures = {}, []
    for file_id in sorted(reference):
        sim = simulate_file(file_id, reference[file_id], profile, seed, vshift)
        offscreen[file_id] = sim.offscreen_speakers
        for mode, cfg in cfgs.items():
            try:
                hyps[mode][file_id] = run_mode(sim, cfg)
            except Exception as exc:  # noqa: BLE001 - a crash is a result the simulator reports per file
                failures.append(f"{file_id} {mode}: {type(exc).__name__}: {exc}")
                hyps[mode][file_id] = []
    return hyps, offscreen, failures


def profile_named(name: str, **changes: Any) -> Profile:
    """A profile by name, with optional field changes."""
    return replace(PROFILES[name], **changes)


__all__ = ["PROFILES", "Profile", "SimulatedFile", "profile_named", "run_mode", "run_modes", "simulate_file",
           "simulate_vad", "truth_frames"]
