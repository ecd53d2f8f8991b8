#!/usr/bin/env python
"""Make the README's example outputs from a constructed conversation, through the pipeline's real rules.

Two faces share the screen for 20 s. SyncNet distances are constructed so that the left face is in sync
while it speaks (0.2-8 s) and the right one while it speaks (9-16 s); a third voice speaks off screen at
17-19.5 s. Stage 3's fusion (pipeline.fusion.voxconverse.diarise) and stage 4's writers and plots then run unchanged.

    python docs/make_examples.py   # writes docs/example.rttm, example_via.json, example_sync.png, example_timeline.png
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import plots  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.export import write_rttm, write_via_json  # noqa: E402
from pipeline.fusion import voxconverse as fuse  # noqa: E402

FPS, SECONDS, SHIFTS = 25, 20.0, 21
SPEECH_S = {"left": (0.2, 8.0), "right": (9.0, 16.0), "off screen": (17.0, 19.5)}


def constructed_dists(rng: np.random.Generator, speaking_s: tuple[float, float], num_frames: int) -> np.ndarray:
    """Cosine distances [windows, 21]: a clear minimum at offset 0 while the face speaks, flat otherwise."""
    dists = 1.0 + 0.05 * rng.standard_normal((num_frames - 5, SHIFTS))
    start, end = (int(t * FPS) for t in speaking_s)
    dists[start:end - 5, SHIFTS // 2] = 0.15 + 0.05 * rng.standard_normal(end - 5 - start)
    return dists


def main() -> None:
    cfg = load_config()
    rng = np.random.default_rng(0)
    num_frames = int(SECONDS * FPS)
    frames = np.arange(num_frames)
    voices = {name: rng.standard_normal(512) for name in SPEECH_S}
    num_windows = int((SECONDS - cfg.embed.window_s) / cfg.embed.hop_s)
    embeddings = 0.3 * rng.standard_normal((num_windows, 512))
    for name, (start, end) in SPEECH_S.items():
        first = int(max(0.0, start - cfg.diarise.embedding_offset_s) / cfg.embed.hop_s)
        last = int(max(0.0, end - cfg.diarise.embedding_offset_s) / cfg.embed.hop_s)
        embeddings[first:last] += voices[name]
    vad_s = list(SPEECH_S.values())
    tracks = [fuse.TrackEvidence(frames, constructed_dists(rng, SPEECH_S[face], num_frames), vad_s, identity)
              for identity, face in enumerate(("left", "right"))]
    turns = fuse.diarise(tracks, vad_s, embeddings, cfg.diarise, "cosine", cfg.embed.hop_s, num_frames, SECONDS)

    out = Path(__file__).resolve().parent
    write_rttm(turns, out / "example.rttm", file_id="example")
    write_via_json(turns, out / "example_via.json", file_id="example", video_path="example.mp4")
    confidences = [fuse.track_confidence(track.dists, cfg.diarise) for track in tracks]
    labels = plots.track_labels(turns, [0, 1])
    thresholds = fuse.conf_thresholds(cfg.diarise, "cosine")
    plots.plot_sync(out / "example_sync.png", [frames, frames], confidences, labels, turns, FPS, SECONDS, thresholds,
                    title="example: sync confidence per face track (shaded: speaking)")
    plots.plot_timeline(out / "example_timeline.png", turns, SECONDS,
                        title="example: speakers (solid: face seen speaking; hatched: voice only)")
    print((out / "example.rttm").read_text(), end="")


if __name__ == "__main__":
    main()
