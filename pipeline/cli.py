"""What every command-line script shares: common arguments, device choice, one-line errors, progress."""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.config import Config, load_config
from pipeline.errors import CacheError, InputError, PipelineError, first_line
from pipeline.runtime import release_heap


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--config and --set."""
    parser.add_argument("--config", default=None, help="YAML file overriding configs/default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set detect.image_scale=0.25 (repeatable)")


def add_cache_args(parser: argparse.ArgumentParser, reference_required: bool = True,
                   data_dir_required: bool = True) -> None:
    """--data_dir and --reference: where a video's intermediates live."""
    parser.add_argument("--data_dir", required=data_dir_required, default=None, help="cache folder shared by all stages")
    parser.add_argument("--reference", required=reference_required, default=None,
                        help="name of this video's sub-folder in the cache (no path separators)")


COMMON_OPTIONS = ("--weights_dir", "--device", "--force", "--quiet", "--debug", "--threads")


def add_runtime_args(parser: argparse.ArgumentParser, ignored: Sequence[str] = (), why: str = "") -> None:
    """--weights_dir, --device, --force, --quiet, --debug, --threads: every script accepts them (``COMMON_OPTIONS``).

    ``ignored`` names those meaningless to this script (e.g. ``--device`` where no network runs): they are
    still accepted, so one command line fits every script, and their help says they are ignored and ``why``.
    """
    def help_for(option: str, text: str) -> str:
        return f"ignored by this script ({why})" if option in ignored else text

    parser.add_argument("--weights_dir", default=None,
                        help=help_for("--weights_dir", "checkpoint folder (default: $AVDIARISE_WEIGHTS_DIR, "
                                                       "else ~/.cache/av-diarise/weights)"))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help=help_for("--device", "where networks run"))
    parser.add_argument("--force", action="store_true",
                        help=help_for("--force", "redo this stage even where the cache is valid"))
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or notes on stderr (the result still goes to stdout)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=help_for("--threads", "torch's CPU threads (default: runtime.threads, 0: torch's own "
                                                   "choice); recorded in each intermediate's manifest"))


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's config from --config, --set and --threads (``runtime.threads``)."""
    overrides = list(getattr(args, "overrides", ()))
    if getattr(args, "threads", None) is not None:
        overrides.append(f"runtime.threads={args.threads}")
    return load_config(getattr(args, "config", None), overrides)


def resolve_device(name: str):
    """A torch.device for auto, cpu or cuda; cuda without a GPU is an input error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


def input_file(path: str, what: str = "file") -> Path:
    """An existing, readable regular file, or a one-line InputError."""
    candidate = Path(path)
    if not candidate.exists():
        raise InputError(f"{what} not found: {path}")
    if not candidate.is_file():
        raise InputError(f"{what} is not a regular file: {path}")
    if not os.access(candidate, os.R_OK):
        raise InputError(f"{what} is not readable: {path}")
    return candidate


def writable_dir(path: str, option: str) -> Path:
    """Create ``path`` if needed and check a file can be written there, or a one-line InputError."""
    import tempfile

    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise InputError(f"cannot write to {option} {folder}: {err.strerror or err}") from None
    return folder


def existing_reference(data_dir: str, reference: str, needed: str, script: str) -> None:
    """Check, before any heavy import, that ``--data_dir``/``--reference`` hold ``needed`` (an intermediate in
    pywork/REF), else the one-line CacheError that names ``script``; nothing is created."""
    from pipeline.cache import check_reference

    check_reference(reference)
    if not (Path(data_dir) / "pywork" / reference / needed).is_file():
        raise CacheError(f"no {needed} for reference {reference!r} in {data_dir}: run {script} first")


def default_reference(videofile: str) -> str:
    """The reference a video gets when none is given: its file name without the extension."""
    return Path(videofile).stem or "video"


class Progress:
    """One hook for every stage's progress and timing: ``progress(step, done, total)``.

    Draws tqdm bars on a terminal (not in CI logs or with --quiet) and records each step's wall time.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bars: dict[str, object] = {}
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def __call__(self, step: str, done: int | None = None, total: int | None = None) -> None:
        now = time.perf_counter()
        if step not in self.started:
            self.started[step] = now
        self.seconds[step] = now - self.started[step]
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(step)
        if bar is None:
            bar = self.bars[step] = tqdm(total=total, desc=step, unit="it", leave=False, file=sys.stderr)
        if total is not None and bar.total != total:
            bar.total = total
        if done is not None:
            bar.n = done
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def info(message: str, quiet: bool = False) -> None:
    """A status line on stderr."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def run_main(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run ``main``; turn every failure into one line on stderr and an exit code."""
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False) or bool(os.environ.get("AVDIARISE_DEBUG"))
    prog = parser.prog
    if not debug:
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|torchaudio|speechbrain|scenedetect)")
        warnings.formatwarning = lambda message, category, *rest: f"{prog}: warning: {message}\n"
    try:
        code = main(args)
        return int(code or 0)
    except PipelineError as err:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished intermediates are kept, unfinished ones are discarded", file=sys.stderr)
        return 130
    except MemoryError:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: out of memory", file=sys.stderr)
        return 1
    except Exception as err:  # the promise is one line, never a traceback, unless --debug
        if debug:
            traceback.print_exc()
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):  # a write outside atomic_path
            where = Path(err.filename).parent if getattr(err, "filename", None) else "the output"
            print(f"{prog}: error: no space left on the device holding {where}: free some space and re-run",
                  file=sys.stderr)
            return 1
        detail = first_line(err, 300) if str(err).strip() else ""
        print(f"{prog}: internal error: {type(err).__name__}: {detail} (re-run with --debug for details)",
              file=sys.stderr)
        return 1
    finally:
        release_heap()  # the stage is done: its kept heap is not carried into the interpreter's shutdown
