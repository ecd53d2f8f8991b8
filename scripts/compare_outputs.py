"""Check that a refactor changed no output: scripts/diarize.py of a base commit and of this tree on the same inputs.

Both trees run ``scripts/diarize.py`` on the same shared clips (``../shared/data/videos``) with the same injected
face boxes (``detections/<clip>_haar_faces.pckl`` as the cache's ``faces.pckl``; where the clip has GestSync's
person boxes, ``detections/<clip>_faces.pckl``, also as ``persons.pckl``), the same seeded random weights in the
published file formats (written once into a temporary folder that both trees read) and the same settings, for each
sync-model configuration in ``CONFIGS``. Every (configuration, clip) runs in a fresh cache folder, so no run reuses
another's stages. The RTTM, the VIA JSON, ``offsets.txt`` and a dump of ``sync_curves.pckl`` (every track's
per-frame sync confidence at full precision, ``dump_curves``) are then compared byte for byte, except the VIA
project's ``created`` field, which is the wall-clock time of the run (``pipeline/export.py``).

    python scripts/compare_outputs.py --base 151dab7                # exit 0: all identical, 1: a difference
    python scripts/compare_outputs.py --base 151dab7 --keep DIR     # also keep both trees' outputs in DIR
    python scripts/compare_outputs.py --reuse_base DIR              # compare with the base outputs kept in DIR
    python scripts/compare_outputs.py --reuse_base DIR --tree ../wt-x   # another working tree against them

Results made with random weights mean nothing as diarisation; they only pin the computation down.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# name -> extra diarize.py arguments (issue 20: SyncNet, Wav2Lip + argmax, GestSync, GestSync + lips)
CONFIGS: dict[str, list[str]] = {
    "syncnet": [],
    "wav2lip_argmax": ["--sync_model", "wav2lip", "--fusion", "argmax"],
    "gestsync": ["--sync_model", "gestsync"],
    "gestsync_lips": ["--sync_model", "gestsync", "--set", "gestsync.lip_model=syncnet"],
}
# 29.97 fps, two shots, one haar face track and three GestSync person tracks without a face; one frontal face at
# 25 fps. 16 runs in all, about 7 CPU minutes.
DEFAULT_CLIPS = ("gestsync_asd2spk_b", "retalking_talkinghead_5")
THREADS = "1"  # torch's CPU threads, the same in both trees (a different count may change float sums)
RUN_TIMEOUT_S = 1800
META = "meta.json"
VIA_CREATED = re.compile(r'^(\s*"created": )-?\d+(,?)$', re.MULTILINE)


class UserError(Exception):
    """A bad input, said in one line."""


CURVES_DUMP = "sync_curves.txt"


def dump_curves(pywork: Path, dest: Path) -> None:
    """``sync_curves.pckl`` (the per-frame sync confidence every track's fusion decided from, stage 3) as text:
    per track its source, length and the sha256 of its float64 values, so that the comparison pins the sync
    numbers down at full precision (with random weights the RTTM rarely depends on them, and offsets.txt has
    three decimals)."""
    import pickle

    import numpy as np

    path = pywork / "sync_curves.pckl"
    if not path.is_file():
        return
    with open(path, "rb") as handle:
        curves = pickle.load(handle)
    lines = [f"metric {curves.get('metric')} model {curves.get('model')} mode {curves.get('mode')} "
             f"frame_rate_hz {float(curves.get('frame_rate_hz', 0.0))!r}",
             "thresholds " + " ".join(repr(float(t)) for t in curves.get("thresholds", []))]
    sources = list(curves.get("sources") or [])
    for index, values in enumerate(curves.get("confidence", [])):
        values = np.ascontiguousarray(np.asarray(values, dtype=np.float64))
        source = sources[index] if index < len(sources) else "?"
        head = " ".join(repr(float(v)) for v in values[:3])
        lines.append(f"track {index} {source} frames {len(values)} nan {int(np.isnan(values).sum())} "
                     f"sha256 {hashlib.sha256(values.tobytes()).hexdigest()[:20]} first {head}")
    (dest / CURVES_DUMP).write_text("\n".join(lines) + "\n")


def outputs(clip: str) -> tuple[str, ...]:
    """The compared files of one run, as stored under ``<tree>/<config>/<clip>/``."""
    return (f"{clip}.rttm", f"{clip}_via.json", "offsets.txt", CURVES_DUMP)


def git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return proc.stdout.strip()


def resolve_commit(commit: str) -> str:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    except UserError:
        raise UserError(f"--base {commit}: not a commit of this repository") from None


def export_tree(commit: str, dest: Path) -> Path:
    """The base commit's tracked files (``git archive``: no worktree entry left behind in .git)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit], capture_output=True)
    if archive.returncode != 0:
        raise UserError(f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    if not (dest / "scripts" / "diarize.py").is_file():
        raise UserError(f"--base {commit}: has no scripts/diarize.py")
    return dest


def write_weights(folder: Path) -> dict[str, str]:
    """Seeded random checkpoints under every file name the four configurations load, in the published formats;
    returns their sha256 (the same seed gives the same bytes, checked again when base outputs are reused)."""
    import torch

    from models.random_weights import write_random_checkpoints
    from pipeline.cache import sha256_file
    from tests import fakeweights

    write_random_checkpoints(folder, seed=0, overwrite=True)
    state = fakeweights.random_state_dict("gestsync_rgb.json", seed=5)  # GestSync's training-script layout
    torch.save({"state_dict": state, "optimizer": None, "global_step": 0, "global_epoch": 0}, folder / "model_rgb.pth")
    return {path.name: sha256_file(path) for path in sorted(folder.iterdir())}


def run_one(tree: Path, config: str, clip: str, weights: Path, scratch: Path, results: Path) -> str | None:
    """diarize.py of ``tree`` on one clip in a fresh cache; the compared files copied to ``results``.
    Returns None, or the failure in one line."""
    work = scratch / f"{config}-{clip}"
    pywork = work / "data" / "pywork" / clip
    pywork.mkdir(parents=True)
    shutil.copy(SHARED_DATA / "detections" / f"{clip}_haar_faces.pckl", pywork / "faces.pckl")
    persons = SHARED_DATA / "detections" / f"{clip}_faces.pckl"
    if persons.is_file():
        shutil.copy(persons, pywork / "persons.pckl")
    cmd = [sys.executable, str(tree / "scripts" / "diarize.py"), "--videofile", str(SHARED_DATA / "videos" / f"{clip}.mp4"),
           "--data_dir", str(work / "data"), "--out_dir", str(work / "out"), "--weights_dir", str(weights),
           "--threads", THREADS, "--quiet", *CONFIGS[config]]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "AVDIARISE_WEIGHTS_DIR")}
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"diarize.py ran over {RUN_TIMEOUT_S} s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return f"diarize.py exit {proc.returncode}: {last}"
    dest = results / config / clip
    dest.mkdir(parents=True)
    rttm, via, offsets, _ = outputs(clip)
    for src, name in ((work / "out" / rttm, rttm), (work / "out" / via, via), (pywork / offsets, offsets)):
        if src.is_file():
            shutil.copy(src, dest / name)
    dump_curves(pywork, dest)
    shutil.rmtree(work, ignore_errors=True)
    return None


def run_tree(tree: Path, label: str, jobs: list[tuple[str, str]], weights: Path, scratch: Path,
             results: Path, verbose: bool) -> dict[tuple[str, str], str | None]:
    failures = {}
    for config, clip in jobs:
        start = time.monotonic()
        failures[(config, clip)] = run_one(tree, config, clip, weights, scratch / label, results / label)
        if verbose:
            print(f"  ran {label:7} {config:15} {clip}: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return failures


def normalised(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.name.endswith("_via.json"):
        text = VIA_CREATED.sub(r"\1<run time>\2", text, count=1)
    return text.splitlines(keepends=True)


def first_difference(base: Path, current: Path) -> str | None:
    """None when the two files are identical (the VIA's run time aside), else where they first differ."""
    if not base.is_file() or not current.is_file():
        return f"{base.name}: missing in {'base' if not base.is_file() else 'current'}"
    if base.read_bytes() == current.read_bytes():
        return None
    old, new = normalised(base), normalised(current)
    if old == new:
        return None
    for number, (a, b) in enumerate(zip(old, new), start=1):
        if a != b:
            return f"{base.name} line {number}: base {a.rstrip()[:80]!r} current {b.rstrip()[:80]!r}"
    shorter = "current" if len(new) < len(old) else "base"
    return f"{base.name}: {shorter} ends at line {min(len(old), len(new))} of {max(len(old), len(new))}"


def compare(jobs: list[tuple[str, str]], base: Path, current: Path, base_failures: dict, current_failures: dict) -> int:
    """One line per configuration x clip; the number of differences."""
    differences = 0
    for config, clip in jobs:
        failed = base_failures.get((config, clip)), current_failures.get((config, clip))
        if any(failed):
            line = "; ".join(f"{label} {why}" for label, why in zip(("base", "current"), failed) if why)
            verdict = f"DIFFERENT (run failed: {line})"
        else:
            diffs = [d for name in outputs(clip)
                     if (d := first_difference(base / config / clip / name, current / config / clip / name))]
            verdict = "identical" if not diffs else "DIFFERENT " + "; ".join(diffs)
        differences += verdict != "identical"
        print(f"{config:15} {clip:28} {verdict}", flush=True)
    return differences


def load_kept(folder: Path, commit: str | None, jobs: list[tuple[str, str]]) -> dict:
    """The meta of base outputs kept by an earlier ``--keep``, checked against this run's inputs."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"--reuse_base {folder}: no readable {META} ({err})") from None
    if commit is not None and meta["base_commit"] != commit:
        raise UserError(f"--reuse_base {folder} holds outputs of {meta['base_commit'][:12]}, not of --base {commit[:12]}")
    missing = [f"{config}/{clip}" for config, clip in jobs
               if not (folder / "base" / config / clip).is_dir() and f"{config}/{clip}" not in meta["base_failures"]]
    if missing:
        raise UserError(f"--reuse_base {folder} has no base outputs for {', '.join(missing)}")
    if meta["configs"] != CONFIGS or meta["threads"] != THREADS:
        raise UserError(f"--reuse_base {folder} was made with other diarize.py arguments; rerun without --reuse_base")
    return meta


def keep(folder: Path, results: Path, meta: dict) -> None:
    """Both trees' outputs and the run's meta into ``folder``, replaced whole (written beside it, then renamed)."""
    if folder.exists() and not (folder / META).is_file():
        raise UserError(f"--keep {folder} exists and is not a folder an earlier --keep wrote")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(results, partial)
    (partial / META).write_text(json.dumps(meta, indent=1) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="commit whose outputs are the reference (e.g. main before the refactor)")
    parser.add_argument("--clips", help=f"comma-separated clip names in ../shared/data/videos (default: {','.join(DEFAULT_CLIPS)})")
    parser.add_argument("--configs", help=f"comma-separated subset of {','.join(CONFIGS)} (default: all)")
    parser.add_argument("--keep", type=Path, help="keep the base's and this tree's outputs here (for --reuse_base)")
    parser.add_argument("--reuse_base", type=Path, help="compare with base outputs an earlier --keep wrote here "
                        "instead of running the base again")
    parser.add_argument("--tree", type=Path, default=REPO, help="the working tree to check against the base "
                        "(default: the one holding this script)")
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2), help="trees run side by side (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no per-run timings on stderr")
    return parser


def parse_names(text: str | None, default: tuple[str, ...], known: list[str], option: str) -> list[str]:
    names = [name for name in (text.split(",") if text else default) if name]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise UserError(f"{option}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"compare_outputs.py: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.base is None and args.reuse_base is None:
        raise UserError("give --base COMMIT, or --reuse_base DIR from an earlier --keep")
    if not (SHARED_DATA / "videos").is_dir() or not (SHARED_DATA / "detections").is_dir():
        raise UserError(f"shared data not found at {SHARED_DATA} (expected videos/ and detections/ there)")
    tree = args.tree.resolve()
    if not (tree / "scripts" / "diarize.py").is_file():
        raise UserError(f"--tree {args.tree}: no scripts/diarize.py there")
    commit = resolve_commit(args.base) if args.base else None
    known_clips = sorted(p.name[:-len("_haar_faces.pckl")] for p in (SHARED_DATA / "detections").glob("*_haar_faces.pckl")
                         if (SHARED_DATA / "videos" / (p.name[:-len("_haar_faces.pckl")] + ".mp4")).is_file())
    clips = parse_names(args.clips, DEFAULT_CLIPS, known_clips, "--clips")
    configs = parse_names(args.configs, tuple(CONFIGS), list(CONFIGS), "--configs")
    jobs = [(config, clip) for config in configs for clip in clips]
    if args.reuse_base is not None and not (args.reuse_base / "base").is_dir():
        raise UserError(f"--reuse_base {args.reuse_base}: no base/ folder of kept outputs there")

    meta = load_kept(args.reuse_base, commit, jobs) if args.reuse_base is not None else None
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compare_outputs_") as tmp:
        scratch, results = Path(tmp), Path(tmp) / "results"
        weights_sha = write_weights(scratch / "weights")
        if meta is not None:
            if meta["weights_sha256"] != weights_sha:
                raise UserError(f"--reuse_base {args.reuse_base} was made with other random weights; "
                                "rerun without --reuse_base")
            commit = meta["base_commit"]
            base_results = args.reuse_base / "base"
            base_failures = {tuple(key.split("/")): why for key, why in meta["base_failures"].items()}
            trees = [(tree, "current")]
        else:
            base_results, base_failures = results / "base", {}
            trees = [(export_tree(commit, scratch / "base_tree"), "base"), (tree, "current")]
        print(f"comparing {tree} with {commit[:12]}: {len(configs)} configurations x {len(clips)} clips", flush=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {label: pool.submit(run_tree, tree, label, jobs, scratch / "weights", scratch, results,
                                          not args.quiet) for tree, label in trees}
            failures = {label: future.result() for label, future in futures.items()}
        base_failures = failures.get("base", base_failures)
        differences = compare(jobs, base_results, results / "current", base_failures, failures["current"])
        if args.keep is not None:
            if args.reuse_base is not None:
                shutil.copytree(base_results, results / "base")
            keep(args.keep, results, {"base_commit": commit, "current": str(tree), "clips": clips, "configs": CONFIGS,
                                      "threads": THREADS, "weights_sha256": weights_sha,
                                      "base_failures": {f"{c}/{k}": v for (c, k), v in base_failures.items() if v}})
    print(f"{len(jobs) - differences} of {len(jobs)} identical, {differences} different "
          f"({time.monotonic() - start:.0f} s)", flush=True)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
