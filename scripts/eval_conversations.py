#!/usr/bin/env python
"""Diarise a set of make_conversations.py conversations in one mode and score it, overall and by kind of file.

    python scripts/eval_conversations.py --conversations SET_DIR --data_dir CACHE --mode improved
                                         [--out_dir O] [--vad webrtc] [--speaker_model resemblyzer]
                                         [--speech] [--workers N] [--set section.key=value ...] [--score_only]

Runs every wav of SET_DIR's conversations.tsv through the four stages (audio only, the cache in CACHE, one
sub-folder per conversation), writes O/rttm/NAME.rttm (default O: SET_DIR/runs/MODE[_speech]), O/scores.tsv (per
file) and O/table.md, and prints the table: DER with missed speech, false alarm and confusion (percent of
scored speech, scripts/score.py's conventions and config), and how many files got the reference's number of
speakers, for all files, 2 speakers, 3+ speakers, overlap, no overlap, noisy and clean files.
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
    info,
    run_main,
    writable_dir,
)
from pipeline.errors import InputError  # noqa: E402
from pipeline.formats import FUSION_MODES, SPEAKER_MODELS, VAD_METHODS  # noqa: E402

GROUPS = (  # (row name, which files): the breakdown issue 19 asks for
    ("all", lambda row: True),
    ("2 speakers", lambda row: row["num_speakers"] == "2"),
    ("3+ speakers", lambda row: int(row["num_speakers"]) >= 3),
    ("overlap", lambda row: row["overlap"] == "yes"),
    ("no overlap", lambda row: row["overlap"] == "no"),
    ("noisy", lambda row: row["noisy"] == "yes"),
    ("clean", lambda row: row["noisy"] == "no"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eval_conversations.py", description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", required=True, metavar="SET_DIR",
                        help="a folder written by scripts/make_conversations.py (conversations.tsv, wav/, rttm/)")
    parser.add_argument("--data_dir", required=True, help="cache folder for the runs (one per engineer/branch)")
    parser.add_argument("--mode", choices=FUSION_MODES, required=True, help="stage 3's rule (diarise.mode)")
    parser.add_argument("--out_dir", default=None, help="hypotheses and scores (default: SET_DIR/runs/MODE)")
    parser.add_argument("--vad", choices=VAD_METHODS, default="webrtc",
                        help="voice activity detector (default: webrtc, issue 19's protocol)")
    parser.add_argument("--speaker_model", choices=SPEAKER_MODELS, default="resemblyzer",
                        help="speaker embeddings (default: resemblyzer, issue 19's protocol)")
    parser.add_argument("--speech", action="store_true",
                        help="give each conversation its reference's speech (rttm/NAME.rttm) instead of the VAD "
                             "(--speech of diarize.py): the clustering alone is scored")
    parser.add_argument("--score_only", action="store_true", help="score O/rttm as it is, run nothing")
    parser.add_argument("--workers", type=int, default=1,
                        help="conversations diarised at once, one process each (default 1); each gets "
                             "cores/workers torch threads unless --threads says otherwise")
    add_config_args(parser)
    add_runtime_args(parser)
    return parser


def _diarise_one(job: dict) -> tuple[str, int]:
    """One conversation through ``pipeline.api.diarize``; its turns to ``job['rttm']``. Runs in a worker too."""
    from pipeline.api import diarize
    from pipeline.cache import write_bytes_atomic
    from pipeline.config import load_config
    from pipeline.export import to_rttm

    cfg = load_config(job["config"], job["overrides"])
    result = diarize(job["wav"], job["data_dir"], reference=job["name"], config=cfg, weights_dir=job["weights_dir"],
                     device=job["device"], force=job["force"], vad=job["vad"], speaker_model=job["speaker_model"],
                     speech=job.get("speech"))
    write_bytes_atomic(Path(job["rttm"]), to_rttm(result.turns, job["name"]).encode("utf-8"))
    return job["name"], len(result.speakers)


def run_set(rows: list[dict], set_dir: Path, args: argparse.Namespace, rttm_dir: Path) -> None:
    """Every conversation diarised, ``args.workers`` at a time; RTTMs to ``rttm_dir/NAME.rttm``."""
    import os

    overrides = list(args.overrides) + ([f"runtime.threads={args.threads}"] if args.threads is not None else [])
    if args.workers > 1 and not args.threads:
        overrides.append(f"runtime.threads={max(1, (os.cpu_count() or 1) // args.workers)}")
    jobs = [{"wav": str(set_dir / "wav" / f"{row['file']}.wav"), "name": row["file"], "data_dir": args.data_dir,
             "config": args.config, "overrides": overrides, "weights_dir": args.weights_dir, "device": args.device,
             "force": args.force, "vad": args.vad, "speaker_model": args.speaker_model,
             "rttm": str(rttm_dir / f"{row['file']}.rttm"),
             "speech": str(set_dir / "rttm" / f"{row['file']}.rttm") if args.speech else None} for row in rows]
    expected = {row["file"]: row["num_speakers"] for row in rows}
    if args.workers == 1:
        done = map(_diarise_one, jobs)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
        done = pool.map(_diarise_one, jobs)
    for k, (name, speakers) in enumerate(done, start=1):
        info(f"eval_conversations: [{k}/{len(rows)}] {name}: {speakers} speakers (reference {expected[name]})",
             args.quiet)


def score_set(rows: list[dict], set_dir: Path, rttm_dir: Path, cfg) -> list[dict]:
    """Per file: the DER parts in seconds and the speaker counts of reference and hypothesis."""
    from pipeline.score import load_rttms, score

    reference = load_rttms(set_dir / "rttm", "reference")
    missing = [row["file"] for row in rows if not (rttm_dir / f"{row['file']}.rttm").is_file()]
    if missing:
        raise InputError(f"no hypothesis {rttm_dir / (missing[0] + '.rttm')} ({len(missing)} missing): run without "
                         "--score_only first")
    hypothesis = load_rttms(rttm_dir, "hypothesis")
    names = [row["file"] for row in rows]
    report = score({n: reference[n] for n in names}, {n: hypothesis.get(n, []) for n in names},
                   collar_s=cfg.score.collar_s, skip_overlap=cfg.score.skip_overlap)
    by_name = {f.file_id: f for f in report.files}
    scores = []
    for row in rows:
        f = by_name[row["file"]]
        scores.append({**row, "scored_s": f.scored_s, "missed_s": f.missed_s, "false_alarm_s": f.false_alarm_s,
                       "confusion_s": f.confusion_s,
                       "ref_speakers": len({s for _, _, s in reference[row["file"]]}),
                       "hyp_speakers": len({s for _, _, s in hypothesis.get(row["file"], [])})})
    return scores


def _percent(part: float, total: float) -> float:
    return 100.0 * part / total if total > 0 else 0.0


def table(scores: list[dict]) -> str:
    """The markdown table: one row per group of GROUPS with files in it."""
    lines = ["| files | n | DER % | missed % | false alarm % | confusion % | right speaker count |",
             "|---|---|---|---|---|---|---|"]
    for name, member in GROUPS:
        group = [s for s in scores if member(s)]
        if not group:
            continue
        total = sum(s["scored_s"] for s in group)
        parts = [sum(s[key] for s in group) for key in ("missed_s", "false_alarm_s", "confusion_s")]
        right = sum(s["ref_speakers"] == s["hyp_speakers"] for s in group)
        lines.append(f"| {name} | {len(group)} | {_percent(sum(parts), total):.1f} | "
                     + " | ".join(f"{_percent(p, total):.1f}" for p in parts) + f" | {right} of {len(group)} |")
    return "\n".join(lines)


def per_file_tsv(scores: list[dict]) -> str:
    """scores.tsv: one line per file."""
    header = ["file", "num_speakers", "overlap", "noisy", "der_pct", "missed_pct", "false_alarm_pct",
              "confusion_pct", "ref_speakers", "hyp_speakers"]
    lines = ["\t".join(header)]
    for s in scores:
        parts = [_percent(s[k], s["scored_s"]) for k in ("missed_s", "false_alarm_s", "confusion_s")]
        lines.append("\t".join([s["file"], s["num_speakers"], s["overlap"], s["noisy"], f"{sum(parts):.2f}",
                                *(f"{p:.2f}" for p in parts), str(s["ref_speakers"]), str(s["hyp_speakers"])]))
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    from pipeline.conversations import read_set

    set_dir = Path(args.conversations)
    rows = read_set(set_dir)
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    args.overrides = [*args.overrides, f"diarise.mode={args.mode}", f"vad.method={args.vad}",
                      f"embed.speaker_model={args.speaker_model}"]
    cfg = config_from_args(args)
    default_out = set_dir / "runs" / (args.mode + ("_speech" if args.speech else ""))
    out_dir = writable_dir(args.out_dir or str(default_out), "--out_dir")
    rttm_dir = out_dir / "rttm"
    rttm_dir.mkdir(exist_ok=True)
    if not args.score_only:
        writable_dir(args.data_dir, "--data_dir")
        run_set(rows, set_dir, args, rttm_dir)
    scores = score_set(rows, set_dir, rttm_dir, cfg)
    from pipeline.cache import write_bytes_atomic

    text = table(scores)
    write_bytes_atomic(out_dir / "scores.tsv", per_file_tsv(scores).encode("utf-8"))
    write_bytes_atomic(out_dir / "table.md", (text + "\n").encode("utf-8"))
    speech = "the reference's speech (--speech)" if args.speech else f"vad {args.vad}"
    print(f"# {set_dir}: mode {args.mode}, {speech}, speaker model {args.speaker_model}"
          + (f", --set {' '.join(args.overrides[:-3])}" if args.overrides[:-3] else ""))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
