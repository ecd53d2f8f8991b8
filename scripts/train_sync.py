#!/usr/bin/env python3
"""Train or fine-tune a sync model on the face-track crops stage 1 cut from your videos.

    python scripts/run_pipeline.py --videofile V1 --data_dir D      # for every video (two at least)
    python scripts/train_sync.py --data_dir D --out_dir RUN [--references R1 R2 ... | all] [--init syncnet.model]
    python scripts/run_syncnet.py --data_dir D --reference R --weights_dir RUN   # stage 2 with the trained model
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import (  # noqa: E402
    add_config_args,
    add_runtime_args,
    config_from_args,
    resolve_device,
    run_main,
    writable_dir,
)
from pipeline.errors import InputError  # noqa: E402
from pipeline.formats import TRAIN_LAST_FILE as LAST_FILE  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_sync.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="syncnet or wav2lip (default: config train.model)")
    parser.add_argument("--data_dir", required=True, help="cache folder holding stage 1's crops (pycrop/)")
    parser.add_argument("--references", nargs="+", default=None, metavar="REF",
                        help="cached videos to use, or 'all' (default: all); split by video into training and validation")
    parser.add_argument("--out_dir", required=True, help="run folder: checkpoints, losses.csv, losses.png, train.json")
    parser.add_argument("--init", default=None, metavar="CKPT",
                        help="fine-tune from this checkpoint (published format); a bare file name is also looked "
                             "for in --weights_dir")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: config train.steps)")
    parser.add_argument("--batch_size", type=int, default=None, help="lip windows per step (default: config)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out_dir from its last.pt")
    add_runtime_args(parser)  # --weights_dir: where a bare --init name is found; --force: start over in --out_dir
    add_config_args(parser)
    return parser


class Bar:
    """A tqdm bar showing the loss and lip windows per second (scripts draw progress, the library reports it)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __call__(self, step: int, total: int, loss: float, samples_per_s: float) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=step - 1, desc="train", unit="step", file=sys.stderr)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4g}", samples_per_s=f"{samples_per_s:.1f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _init_path(init: str, weights_dir: str | None) -> Path:
    """``--init`` as given, else (a bare file name) in the weights folder; InputError when neither exists."""
    from models.loader import resolve_weights_dir

    path = Path(init)
    if path.is_file():
        return path
    if path.name == init:
        in_weights = resolve_weights_dir(weights_dir) / init
        if in_weights.is_file():
            return in_weights
    raise InputError(f"--init checkpoint not found: {init}")


def main(args: argparse.Namespace) -> int:

    if args.init and args.resume:
        raise InputError("--init starts a new run; --resume continues one: give only one of them")
    cfg = config_from_args(args)
    if not Path(args.data_dir).is_dir():  # checked before torch is imported: a typo is reported at once
        raise InputError(f"--data_dir not found: {args.data_dir}")
    init = _init_path(args.init, args.weights_dir) if args.init else None
    out_dir = writable_dir(args.out_dir, "--out_dir")
    if (out_dir / LAST_FILE).exists() and not (args.resume or args.force):
        raise InputError(f"{out_dir} holds a training run already: --resume continues it, --force starts over "
                         f"(overwriting its checkpoints)")
    from pipeline.train.trainer import train_sync_model

    bar = Bar(enabled=not args.quiet)
    try:
        result = train_sync_model(args.data_dir, out_dir, cfg, references=args.references, init=init,
                                  resume=args.resume, device=resolve_device(args.device), progress=bar,
                                  model=args.model, steps=args.steps, batch_size=args.batch_size)
    except KeyboardInterrupt:
        bar.close()
        print(f"train_sync.py: interrupted; saved {out_dir / 'last.pt'}: continue with --resume", file=sys.stderr)
        return 130
    finally:
        bar.close()
    print(f"train_sync: trained {result.steps_done} steps at {result.samples_per_s:.1f} lip windows/s; best "
          f"validation loss {result.best_val_loss:.4g} at step {result.best_step} -> {result.checkpoint} "
          f"(use --weights_dir {out_dir}); curves in {out_dir / 'losses.png'}", flush=True)  # the result, even --quiet
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
