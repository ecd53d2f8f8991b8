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

from pipeline.cli import add_config_args, config_from_args, info, resolve_device, run_main, writable_dir  # noqa: E402
from pipeline.errors import InputError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_sync.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="syncnet or wav2lip (default: config train.model)")
    parser.add_argument("--data_dir", required=True, help="cache folder holding stage 1's crops (pycrop/)")
    parser.add_argument("--references", nargs="+", default=None, metavar="REF",
                        help="cached videos to use, or 'all' (default: all); split by video into training and validation")
    parser.add_argument("--out_dir", required=True, help="run folder: checkpoints, losses.csv, losses.png, train.json")
    parser.add_argument("--init", default=None, metavar="CKPT", help="fine-tune from this checkpoint (published format)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: config train.steps)")
    parser.add_argument("--batch_size", type=int, default=None, help="lip windows per step (default: config)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out_dir from its last.pt")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the network trains")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
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


def main(args: argparse.Namespace) -> int:
    from pipeline.train_sync import train_sync_model

    if args.init and args.resume:
        raise InputError("--init starts a new run; --resume continues one: give only one of them")
    cfg = config_from_args(args)
    out_dir = writable_dir(args.out_dir, "--out_dir")
    bar = Bar(enabled=not args.quiet)
    try:
        result = train_sync_model(args.data_dir, out_dir, cfg, references=args.references, init=args.init,
                                  resume=args.resume, device=resolve_device(args.device), progress=bar,
                                  model=args.model, steps=args.steps, batch_size=args.batch_size)
    except KeyboardInterrupt:
        bar.close()
        print(f"train_sync.py: interrupted; saved {out_dir / 'last.pt'}: continue with --resume", file=sys.stderr)
        return 130
    finally:
        bar.close()
    info(f"trained {result.steps_done} steps at {result.samples_per_s:.1f} lip windows/s; best validation loss "
         f"{result.best_val_loss:.4g} at step {result.best_step} -> {result.checkpoint} "
         f"(use --weights_dir {out_dir}); curves in {out_dir / 'losses.png'}", args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
