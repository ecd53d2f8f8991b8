"""Given speech regions (``--speech FILE``): read from an RTTM, a UEM or a ``.lab`` file, used instead of the VAD.

Formats, chosen by the file's extension:

- ``.rttm``: the union of the SPEAKER segments (speaker labels ignored);
- ``.uem``: ``<file-id> <channel> <start> <end>`` lines, each a speech region;
- ``.lab``: ``<start> <end> [label]`` lines (Audacity's and HTK-style label files; times in seconds).

An RTTM or UEM holding several file ids must hold the recording's reference name (the cache sub-folder,
by default the file's stem); one holding a single file id is taken whatever its name. Blank lines and
``#``/``;;`` comments are skipped. A malformed line, an empty file, a region that starts before 0 or ends
more than ``vad.given_speech_tolerance_s`` after the end of the audio is an InputError (one line); ends
within that tolerance are cut at the end of the audio.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.cache import sha256_file
from pipeline.errors import InputError
from pipeline.export import read_rttm

SPEECH_FORMATS = (".rttm", ".uem", ".lab")


@dataclass(frozen=True)
class GivenSpeech:
    """Speech regions from a file: sorted, disjoint ``(start_s, end_s)``, with what the cache key needs."""

    path: str
    sha256: str
    file_id: str | None  # the RTTM/UEM file id used; None for .lab
    regions: list[tuple[float, float]]

    def key(self) -> dict:
        """The part of stage 3's cache key that names this speech: content, not path or time stamp."""
        return {"sha256": self.sha256, "file_id": self.file_id}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--speech file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"--speech {path} is a folder, not a file") from None
    except UnicodeDecodeError:
        raise InputError(f"--speech {path} is not a UTF-8 text file") from None
    except OSError as err:
        raise InputError(f"cannot read --speech file {path}: {err.strerror or err}") from None


def _time(text: str, where: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"{where}: malformed line: {text!r} is not a time in seconds (expected {expected})")
    return value


def _rows(text: str) -> list[tuple[int, list[str]]]:
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields and not fields[0].startswith(("#", ";;")):
            rows.append((line_no, fields))
    return rows


def parse_lab(text: str, name: str) -> list[tuple[float, float]]:
    """``start end [label]`` lines."""
    expected = "'<start> <end> [label]'"
    regions = []
    for line_no, fields in _rows(text):
        where = f"{name}:{line_no}"
        if len(fields) < 2:
            raise InputError(f"{where}: malformed line: expected {expected}")
        regions.append((_time(fields[0], where, expected), _time(fields[1], where, expected)))
    return regions


def parse_uem(text: str, name: str) -> dict[str, list[tuple[float, float]]]:
    """``file-id channel start end`` lines, per file id."""
    expected = "'<file-id> <channel> <start> <end>'"
    regions: dict[str, list[tuple[float, float]]] = {}
    for line_no, fields in _rows(text):
        where = f"{name}:{line_no}"
        if len(fields) != 4:
            raise InputError(f"{where}: malformed UEM line: expected {expected}")
        regions.setdefault(fields[0], []).append((_time(fields[2], where, expected),
                                                  _time(fields[3], where, expected)))
    return regions


def parse_rttm(path: Path) -> dict[str, list[tuple[float, float]]]:
    """SPEAKER segments per file id (``pipeline.export.read_rttm``'s checks)."""
    return {file_id: [(s, e) for s, e, _ in segments] for file_id, segments in read_rttm(path).items()}


def _pick_file(per_file: dict[str, list[tuple[float, float]]], reference: str, path: Path
               ) -> tuple[str, list[tuple[float, float]]]:
    if not per_file:
        raise InputError(f"--speech {path} holds no speech regions")
    if len(per_file) == 1:
        return next(iter(per_file.items()))
    if reference not in per_file:
        ids = sorted(per_file)
        raise InputError(f"--speech {path} holds {len(ids)} file ids ({', '.join(ids[:3])}"
                         f"{', ...' if len(ids) > 3 else ''}) and none is this recording's reference {reference!r}")
    return reference, per_file[reference]


def union(regions: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, merged regions (touching or overlapping ones joined; empty ones dropped)."""
    merged: list[list[float]] = []
    for start_s, end_s in sorted(r for r in regions if r[1] > r[0]):
        if merged and start_s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end_s)
        else:
            merged.append([start_s, end_s])
    return [(s, e) for s, e in merged]


def _checked(regions: list[tuple[float, float]], path: Path, duration_s: float | None,
             tolerance_s: float) -> list[tuple[float, float]]:
    for start_s, end_s in regions:
        if start_s < 0 or end_s < start_s:
            raise InputError(f"--speech {path}: region {start_s:g}-{end_s:g} s is invalid (needs 0 <= start <= end)")
        if duration_s is not None and end_s > duration_s + tolerance_s:
            raise InputError(f"--speech {path}: region {start_s:g}-{end_s:g} s ends after the audio "
                             f"({duration_s:.2f} s): is it the speech of another recording?")
    merged = union(regions)
    if duration_s is not None:
        merged = [(s, min(e, duration_s)) for s, e in merged if s < duration_s]
    if not merged:
        raise InputError(f"--speech {path} holds no speech regions"
                         + (" inside the audio" if regions else ""))
    return merged


def read_speech(path: str | Path, reference: str, duration_s: float | None, tolerance_s: float) -> GivenSpeech:
    """The speech regions of ``path`` for the recording named ``reference`` of ``duration_s`` seconds
    (None: not checked against a length)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SPEECH_FORMATS:
        raise InputError(f"--speech {path}: unknown format {suffix or '(no extension)'!r}; use an "
                         f"{', '.join(SPEECH_FORMATS[:-1])} or {SPEECH_FORMATS[-1]} file")
    file_id = None
    if suffix == ".lab":
        regions = parse_lab(_read_text(path), str(path))
    elif suffix == ".uem":
        file_id, regions = _pick_file(parse_uem(_read_text(path), str(path)), reference, path)
    else:
        _read_text(path)  # one line for a missing or binary file before the RTTM reader
        file_id, regions = _pick_file(parse_rttm(path), reference, path)
    merged = _checked(regions, path, duration_s, tolerance_s)
    return GivenSpeech(path=str(path), sha256=sha256_file(path), file_id=file_id, regions=merged)


def track_regions(regions: list[tuple[float, float]], start_s: float, end_s: float) -> list[tuple[float, float]]:
    """``regions`` inside ``[start_s, end_s)``, in seconds from ``start_s`` (a face track's own audio)."""
    return [(max(s, start_s) - start_s, min(e, end_s) - start_s) for s, e in regions if e > start_s and s < end_s]


__all__ = ["GivenSpeech", "SPEECH_FORMATS", "parse_lab", "parse_rttm", "parse_uem", "read_speech", "track_regions",
           "union"]
