"""Score hypothesis RTTMs against reference RTTMs: DER (missed speech, false alarm, confusion) and JER.

The numbers come from pyannote.metrics (``DiarizationErrorRate``, ``JaccardErrorRate``); this module only
reads the files and applies the VoxConverse conventions (those of dscore and md-eval):

- ``collar_s`` is the no-score zone on *each* side of every reference boundary, 0.25 s by default.
  pyannote.metrics' ``collar`` is the total width of that zone, so it receives ``2 * collar_s``.
- Overlapping speech is scored unless ``skip_overlap``.
- Same-speaker segments that overlap or touch are merged (union per speaker) in reference and hypothesis
  before scoring, as dscore does: a boundary inside one speaker's continuous speech is no boundary, and
  a speaker overlapping with itself is not overlapped speech.
- Without a UEM each file is scored from the earliest start to the latest end of its reference *and*
  hypothesis segments together (dscore's convention, and pyannote.metrics' own default). md-eval instead
  scores from the first to the last reference turn, which ignores false alarms outside that span.
  With a UEM (``<file-id> <channel> <start> <end>`` lines) only its regions are scored, and every
  reference file must have an entry.
- Every reference file id is scored; a file without hypothesis segments counts as no speech found.
  Hypothesis file ids absent from the reference are listed in the report and not scored.

Overall DER and JER are pyannote.metrics' accumulated values (total error time over total scored speech).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import InputError
from pipeline.export import read_rttm

Segments = list[tuple[float, float, str]]


@dataclass(frozen=True)
class FileScore:
    """DER parts in seconds of one file (or of all files: ``file_id`` 'OVERALL'); rates are fractions."""

    file_id: str
    scored_s: float        # reference speech time scored (the DER denominator)
    missed_s: float
    false_alarm_s: float
    confusion_s: float
    der: float
    jer: float


@dataclass
class ScoreReport:
    """Scores per file and overall, with the conventions used."""

    files: list[FileScore]
    overall: FileScore
    collar_s: float
    skip_overlap: bool
    uem_path: str | None
    unscored_hyp_files: list[str] = field(default_factory=list)


def union_per_speaker(segments: Segments) -> Segments:
    """Merge each speaker's overlapping or touching segments; sorted by (start, end, speaker)."""
    by_speaker: dict[str, list[tuple[float, float]]] = {}
    for start_s, end_s, speaker in segments:
        by_speaker.setdefault(speaker, []).append((start_s, end_s))
    merged: Segments = []
    for speaker, spans in by_speaker.items():
        spans.sort()
        cur_start, cur_end = spans[0]
        for start_s, end_s in spans[1:]:
            if start_s <= cur_end:
                cur_end = max(cur_end, end_s)
            else:
                merged.append((cur_start, cur_end, speaker))
                cur_start, cur_end = start_s, end_s
        merged.append((cur_start, cur_end, speaker))
    merged.sort(key=lambda row: (row[0], row[1], row[2]))
    return merged


def load_rttms(path: str | Path, what: str = "RTTM") -> dict[str, Segments]:
    """Segments per file id from one RTTM file or every ``*.rttm`` file in a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.rttm"))
        if not files:
            raise InputError(f"no .rttm files in the {what} folder {path}")
    elif path.exists():
        files = [path]
    else:
        raise InputError(f"{what} not found: {path}")
    result: dict[str, Segments] = {}
    for rttm in files:
        for file_id, segments in read_rttm(rttm).items():
            result.setdefault(file_id, []).extend(segments)
    return result


def read_uem(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Scored regions per file id from a UEM file: ``<file-id> <channel> <start> <end>`` per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"UEM file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read UEM file {path}: {getattr(err, 'strerror', None) or err}") from None
    regions: dict[str, list[tuple[float, float]]] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0].startswith("#"):
            continue
        try:
            if len(fields) != 4:
                raise ValueError
            start_s, end_s = float(fields[2]), float(fields[3])
            if not (math.isfinite(start_s) and math.isfinite(end_s)) or start_s < 0 or end_s < start_s:
                raise ValueError
        except ValueError:
            raise InputError(f"{path}:{line_no}: malformed UEM line: expected '<file-id> <channel> <start> <end>' "
                             "with 0 <= start <= end") from None
        regions.setdefault(fields[0], []).append((start_s, end_s))
    return regions


def _annotation(segments: Segments, uri: str):
    from pyannote.core import Annotation, Segment

    annotation = Annotation(uri=uri)
    for index, (start_s, end_s, speaker) in enumerate(segments):
        annotation[Segment(start_s, end_s), index] = speaker
    return annotation


def default_uem(reference: Segments, hypothesis: Segments) -> list[tuple[float, float]]:
    """The region scored without a UEM: earliest start to latest end of reference and hypothesis together."""
    both = reference + hypothesis
    if not both:
        return []
    return [(min(s for s, _, _ in both), max(e for _, e, _ in both))]


def score(reference: dict[str, Segments], hypothesis: dict[str, Segments], collar_s: float = 0.25,
          skip_overlap: bool = False, uem: dict[str, list[tuple[float, float]]] | None = None,
          uem_path: str | None = None) -> ScoreReport:
    """DER and JER of ``hypothesis`` against ``reference`` (segments per file id), per file and overall."""
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate

    if collar_s < 0 or not math.isfinite(collar_s):
        raise InputError(f"--collar must be a non-negative number of seconds, got {collar_s}")
    if not reference:
        raise InputError("the reference holds no SPEAKER segments")
    if hypothesis and not set(hypothesis) & set(reference):
        raise InputError("no file id is in both the reference and the hypothesis "
                         f"(reference: {', '.join(sorted(reference)[:3])}...; "
                         f"hypothesis: {', '.join(sorted(hypothesis)[:3])}...)")
    if uem is not None:
        missing = sorted(set(reference) - set(uem))
        if missing:
            raise InputError(f"the UEM has no entry for reference file {missing[0]!r}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    der_metric = DiarizationErrorRate(collar=2 * collar_s, skip_overlap=skip_overlap)
    jer_metric = JaccardErrorRate(collar=2 * collar_s, skip_overlap=skip_overlap)
    files = []
    for file_id in sorted(reference):
        ref = union_per_speaker(reference[file_id])
        hyp = union_per_speaker(hypothesis.get(file_id, []))
        regions = uem[file_id] if uem is not None else default_uem(ref, hyp)
        timeline = Timeline([Segment(s, e) for s, e in regions if e > s], uri=file_id)
        ref_ann, hyp_ann = _annotation(ref, file_id), _annotation(hyp, file_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts = der_metric(ref_ann, hyp_ann, uem=timeline, detailed=True)
            jer = jer_metric(ref_ann, hyp_ann, uem=timeline)
        files.append(_file_score(file_id, parts, parts["diarization error rate"], jer))
    totals = der_metric[:]
    overall = _file_score("OVERALL", totals, abs(der_metric), abs(jer_metric))
    return ScoreReport(files=files, overall=overall, collar_s=collar_s, skip_overlap=skip_overlap,
                       uem_path=uem_path, unscored_hyp_files=sorted(set(hypothesis) - set(reference)))


def _file_score(file_id: str, parts: dict, der: float, jer: float) -> FileScore:
    return FileScore(file_id=file_id, scored_s=float(parts["total"]), missed_s=float(parts["missed detection"]),
                     false_alarm_s=float(parts["false alarm"]), confusion_s=float(parts["confusion"]),
                     der=float(der), jer=float(jer))


def score_paths(ref_path: str | Path, hyp_path: str | Path, collar_s: float = 0.25, skip_overlap: bool = False,
                uem_path: str | Path | None = None) -> ScoreReport:
    """``score`` on RTTM files or folders (and an optional UEM file)."""
    reference = load_rttms(ref_path, "reference")
    hypothesis = load_rttms(hyp_path, "hypothesis")
    uem = read_uem(uem_path) if uem_path is not None else None
    return score(reference, hypothesis, collar_s=collar_s, skip_overlap=skip_overlap, uem=uem,
                 uem_path=str(uem_path) if uem_path is not None else None)


def _percent(part_s: float, total_s: float) -> float:
    return 100.0 * part_s / total_s if total_s > 0 else (0.0 if part_s == 0 else math.inf)


def format_report(report: ScoreReport) -> str:
    """A fixed-width table: one row per file and OVERALL, rates in percent of scored speech."""
    region = (f"UEM {report.uem_path}" if report.uem_path
              else "no UEM: earliest to latest segment of reference and hypothesis (dscore)")
    lines = [
        f"# collar {report.collar_s:g} s each side of reference boundaries; overlap "
        f"{'skipped' if report.skip_overlap else 'scored'}; region: {region}",
        f"{'file':<16} {'DER%':>7} {'miss%':>7} {'FA%':>7} {'conf%':>7} {'JER%':>7} {'scored_s':>10}",
    ]
    for row in [*report.files, report.overall]:
        lines.append(
            f"{row.file_id:<16} {100 * row.der:7.2f} {_percent(row.missed_s, row.scored_s):7.2f} "
            f"{_percent(row.false_alarm_s, row.scored_s):7.2f} {_percent(row.confusion_s, row.scored_s):7.2f} "
            f"{100 * row.jer:7.2f} {row.scored_s:10.2f}"
        )
    if report.unscored_hyp_files:
        lines.append(f"# not scored (no reference): {', '.join(report.unscored_hyp_files)}")
    return "\n".join(lines)


__all__ = [
    "FileScore",
    "ScoreReport",
    "default_uem",
    "format_report",
    "load_rttms",
    "read_uem",
    "score",
    "score_paths",
    "union_per_speaker",
]
