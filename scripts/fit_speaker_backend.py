#!/usr/bin/env python3
"""Fit the improved mode's speaker back-end (centring, LDA, two-covariance PLDA; pipeline/fusion/speaker_backend.py)
for one speaker model from single-speaker recordings, and write it to the weights folder as
backend_<model>.npz with its sha256 beside it, where stage 3 finds it.

The recordings are a folder with one sub-folder per speaker, or a flat folder whose file names start with the
speaker's name up to --prefix_sep (LibriSpeech: 103-1240-0000.flac is speaker 103). Any audio PyAV decodes
(wav, flac, mp3, video files). Every 2 s window of every recording (the embedding windows stage 3 uses) is one
sample of its speaker, so a recording of 10 s or more per speaker is enough; at least 3 speakers.
--calibration recording (the default) keeps the fit's directions and calibrates the PLDA's variances on each
recording (what ships for Resemblyzer: models/backends/); --embeddings caches the windows' embeddings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import (  # noqa: E402
    add_config_args,
    add_runtime_args,
    config_from_args,
    info,
    resolve_device,
    run_main,
    writable_dir,
)
from pipeline.errors import InputError  # noqa: E402

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".mp4", ".mkv", ".avi", ".webm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fit_speaker_backend.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio_dir", required=True, help="folder of single-speaker recordings")
    parser.add_argument("--speaker_model", default=None,
                        help="speaker model whose embeddings the back-end is for (default: embed.speaker_model)")
    parser.add_argument("--list", default=None, metavar="FILE",
                        help="use only the recordings named in FILE (one file name per line, relative to --audio_dir)")
    parser.add_argument("--prefix_sep", default="-",
                        help="in a flat folder, the speaker is the file name up to this separator (default: -)")
    parser.add_argument("--lda_dim", type=int, default=64,
                        help="LDA dimensions kept (at most speakers - 1; default 64)")
    parser.add_argument("--calibration", choices=("recording", "fitted"), default="recording",
                        help="recording (default): keep the fit's centring, LDA and PLDA directions, calibrate the "
                             "PLDA's variances on each recording; fitted: the fit's variances too (VBx's recipe; "
                             "worse for Resemblyzer on the development conversations, README 'Improved fusion')")
    parser.add_argument("--embeddings", default=None, metavar="NPZ",
                        help="cache of the windows' embeddings: read from NPZ when it exists and was made from the "
                             "same recordings and model, else computed and written there (refitting then takes "
                             "seconds instead of an hour of embedding)")
    parser.add_argument("--out", default=None,
                        help="write here instead of WEIGHTS_DIR/backend_<model>.npz (the .sha256 goes beside it)")
    add_config_args(parser)
    add_runtime_args(parser, ignored=("--force",), why="it always fits anew")
    return parser


def recordings(audio_dir: Path, listed: Path | None, prefix_sep: str) -> list[tuple[str, Path]]:
    """(speaker, file) of every recording to use, sorted; one-line InputError when there are none."""
    if not audio_dir.is_dir():
        raise InputError(f"--audio_dir {audio_dir} is not a folder")
    files = sorted(p for p in audio_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if listed is not None:
        try:
            names = {line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()}
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"--list {listed} cannot be read: {err}") from None
        missing = sorted(names - {str(p.relative_to(audio_dir)) for p in files})
        if missing:
            raise InputError(f"--list names {len(missing)} recording(s) not in {audio_dir}, e.g. {missing[0]}")
        files = [p for p in files if str(p.relative_to(audio_dir)) in names]
    pairs = []
    for path in files:
        rel = path.relative_to(audio_dir)
        speaker = rel.parts[0] if len(rel.parts) > 1 else path.name.split(prefix_sep, 1)[0]
        pairs.append((speaker, path))
    if not pairs:
        raise InputError(f"no recordings ({', '.join(AUDIO_SUFFIXES)}) in {audio_dir}")
    return pairs


def window_embeddings(pairs: list[tuple[str, Path]], model_name: str, cfg: Any, args: argparse.Namespace,
                      cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Every embedding window of every recording [n, dim] and its speaker [n]; read from ``cache`` when it holds
    the same recordings (names and sizes), model and window settings, else computed (and written there)."""
    key = np.array([model_name, str(cfg.embed.window_s), str(cfg.embed.hop_s)]
                   + [f"{speaker}|{path.name}|{path.stat().st_size}" for speaker, path in pairs])
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as npz:
                if npz["key"].shape == key.shape and (npz["key"] == key).all():
                    info(f"embeddings read from {cache}", args.quiet)
                    return np.asarray(npz["windows"], dtype=np.float64), np.asarray(npz["labels"])
        except Exception as err:  # noqa: BLE001 - an unreadable cache is recomputed, never trusted
            info(f"{cache} cannot be read ({type(err).__name__}): computing the embeddings anew", args.quiet)
        info(f"{cache} was made from other recordings or settings: computing the embeddings anew", args.quiet)
    from pipeline.embed import load_speaker_model, sliding_embeddings
    from pipeline.media import decode_audio

    rate = cfg.media.sample_rate_hz
    model = load_speaker_model(cfg.embed, args.weights_dir, resolve_device(args.device), name=model_name)
    windows, labels = [], []
    for n, (speaker, path) in enumerate(pairs):
        audio = decode_audio(path, rate)
        if audio.size < cfg.embed.window_s * rate:
            raise InputError(f"{path} is shorter than one {cfg.embed.window_s} s embedding window")
        emb = sliding_embeddings(model, audio, rate, cfg.embed)
        windows.append(emb)
        labels += [speaker] * len(emb)
        info(f"[{n + 1}/{len(pairs)}] {path.name}: {len(emb)} windows", args.quiet)
    all_windows, all_labels = np.concatenate(windows).astype(np.float64), np.asarray(labels)
    if cache is not None:
        writable_dir(str(cache.parent), "--embeddings")
        partial = cache.with_name(cache.name + ".partial.npz")
        np.savez(partial, key=key, windows=all_windows, labels=all_labels)
        partial.replace(cache)
    return all_windows, all_labels


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    model_name = args.speaker_model or cfg.embed.speaker_model
    from pipeline.formats import SPEAKER_MODELS

    if model_name not in SPEAKER_MODELS:
        raise InputError(f"unknown speaker model {model_name!r}: choose one of {', '.join(SPEAKER_MODELS)}")
    if args.lda_dim < 1:
        raise InputError(f"--lda_dim must be at least 1, got {args.lda_dim}")
    pairs = recordings(Path(args.audio_dir), Path(args.list) if args.list else None, args.prefix_sep)
    speakers = sorted({s for s, _ in pairs})
    if len(speakers) < 3:
        raise InputError(f"fitting needs recordings of at least 3 speakers, found {len(speakers)} in {args.audio_dir}")
    from models.loader import resolve_weights_dir
    from pipeline.fusion.speaker_backend import backend_file

    out = Path(args.out) if args.out else resolve_weights_dir(args.weights_dir) / backend_file(model_name)
    writable_dir(str(out.parent), "--out")

    from pipeline.fusion.speaker_backend import fit_backend, save_backend

    windows, labels = window_embeddings(pairs, model_name, cfg, args,
                                        Path(args.embeddings) if args.embeddings else None)
    backend = fit_backend(windows, labels, model_name, args.lda_dim, calibration=args.calibration)
    digest = save_backend(backend, out)
    print(f"{out} ({model_name}, {len(speakers)} speakers, {len(labels)} windows, {backend.lda.shape[1]} "
          f"dimensions, {args.calibration} calibration) sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
