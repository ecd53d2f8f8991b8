"""The final turns as files researchers use: RTTM and a VIA 3 project, behind a small writer registry.

- RTTM (NIST Rich Transcription Time Marked), one line per turn, sorted by start::

      SPEAKER <file-id> 1 <start_s> <duration_s> <NA> <NA> <speaker> <NA> <NA>

  Times have 3 decimals (milliseconds), like pyannote.core's ``Annotation.write_rttm``; VoxConverse's own files
  use 5 or 6 decimals on a 10 ms grid, which 3 decimals represent exactly.
  RTTM fields are separated by whitespace, so whitespace inside a label or the file id is replaced by ``_``
  (what av-diarization does); two labels that become the same after that, or an empty label, are refused.
  Turns of zero length are not written.
- VIA 3 project JSON (VGG Image Annotator 3, data format 3.1.1): one video file and view, one "Speaker"
  attribute anchored to temporal segments (``FILE1_Z2_XY0``) whose options are the speakers, and one
  metadata entry per turn with ``z = [start_s, end_s]`` and the speaker as the attribute value.
  Each option's id is the speaker label itself, so the value VIA stores and shows is the label.

``read_rttm`` reads RTTM files back (any order, any number of file ids) and names the file and line of a
malformed line. ``to_annotation`` gives a ``pyannote.core.Annotation``.
"""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pipeline.cache import write_bytes_atomic
from pipeline.errors import InputError

RTTM_DECIMALS = 3
VIA_DATA_FORMAT_VERSION = "3.1.1"
VIA_FILE_TYPE_VIDEO = 4           # _VIA_FILE_TYPE.VIDEO
VIA_FILE_LOC_URIFILE = 3          # _VIA_FILE_LOC.URIFILE: src is a file URI or path
VIA_ATTRIBUTE_TYPE_SELECT = 4     # _VIA_ATTRIBUTE_TYPE.SELECT: a drop-down of options
VIA_ANCHOR_TEMPORAL_SEGMENT = "FILE1_Z2_XY0"  # "Temporal Segment in Video or Audio"
VIA_SPEAKER_AID = "1"
VIA_VID = "1"
VIA_FID = "1"
_VIA_DECIMALS = 3                 # VIA rounds times to 3 (5 in some releases) decimals: _VIA_FLOAT_FIXED_POINT

_WHITESPACE_RE = re.compile(r"\s+")

TurnLike = Sequence  # (start_s, end_s, speaker, ...): a pipeline.formats.Turn or a plain tuple


def rttm_token(text: str, what: str = "speaker label") -> str:
    """``text`` as one RTTM field: whitespace runs become ``_``; an empty token is an InputError."""
    token = _WHITESPACE_RE.sub("_", str(text).strip())
    if not token:
        raise InputError(f"RTTM cannot hold an empty {what} ({text!r})")
    return token


def check_file_id(file_id: str, option: str = "--file_id") -> str:
    """``file_id`` when it can be an RTTM file id as given (one word: RTTM's fields are split on whitespace),
    else a one-line InputError; never changed silently, since scoring matches it against a reference's."""
    text = str(file_id)
    if not text or _WHITESPACE_RE.search(text):
        raise InputError(f"{option} must be one word without spaces (RTTM's file id field), got {text!r}")
    return text


def _clean_turns(turns: Iterable[TurnLike]) -> list[tuple[float, float, str]]:
    """(start_s, end_s, speaker) sorted by start, zero-length turns dropped; bad times are an InputError."""
    rows = []
    for turn in turns:
        start_s, end_s, speaker = float(turn[0]), float(turn[1]), str(turn[2])
        if not (math.isfinite(start_s) and math.isfinite(end_s)) or start_s < 0 or end_s < start_s:
            raise InputError(f"turn of {speaker!r} has invalid times {start_s}..{end_s}")
        if end_s > start_s:
            rows.append((start_s, end_s, speaker))
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    return rows


def _rttm_labels(speakers: Iterable[str]) -> dict[str, str]:
    """Speaker -> RTTM token; two speakers that would share a token are refused."""
    mapping: dict[str, str] = {}
    owner: dict[str, str] = {}
    for speaker in sorted(set(speakers)):
        token = rttm_token(speaker)
        if token in owner and owner[token] != speaker:
            raise InputError(f"speaker labels {owner[token]!r} and {speaker!r} are the same in RTTM ({token!r})")
        owner[token] = speaker
        mapping[speaker] = token
    return mapping


def to_rttm(turns: Iterable[TurnLike], file_id: str) -> str:
    """RTTM text of ``turns``: one line per turn, sorted by start, 3 decimals."""
    rows = _clean_turns(turns)
    labels = _rttm_labels(speaker for _, _, speaker in rows)
    uri = rttm_token(file_id, "file id")
    lines = [
        f"SPEAKER {uri} 1 {start_s:.{RTTM_DECIMALS}f} {end_s - start_s:.{RTTM_DECIMALS}f} "
        f"<NA> <NA> {labels[speaker]} <NA> <NA>\n"
        for start_s, end_s, speaker in rows
    ]
    return "".join(lines)


def write_rttm(turns: Iterable[TurnLike], path: Path, *, file_id: str, video_path: str | Path | None = None) -> Path:
    """Write ``turns`` as RTTM to ``path`` atomically (``video_path`` is unused: registry signature)."""
    write_bytes_atomic(Path(path), to_rttm(turns, file_id).encode("utf-8"))
    return Path(path)


def _video_src(video_path: str | Path) -> str:
    """What VIA loads: a file:// URI for an absolute path, else the path as given (relative to via.html)."""
    path = Path(video_path)
    return path.as_uri() if path.is_absolute() else str(video_path)


def to_via_project(turns: Iterable[TurnLike], video_path: str | Path, project_name: str = "",
                   created_ms: int | None = None) -> dict:
    """A VIA 3 project (as a dict) holding one temporal segment per turn of the video at ``video_path``."""
    rows = _clean_turns(turns)
    speakers = sorted({speaker for _, _, speaker in rows})
    metadata = {
        f"{VIA_VID}_{index:06d}": {
            "vid": VIA_VID,
            "flg": 0,
            "z": [round(start_s, _VIA_DECIMALS), round(end_s, _VIA_DECIMALS)],
            "xy": [],
            "av": {VIA_SPEAKER_AID: speaker},
        }
        for index, (start_s, end_s, speaker) in enumerate(rows)
    }
    return {
        "project": {
            "pid": "__VIA_PROJECT_ID__",  # VIA's markers for a project that lives only in this file
            "rev": "__VIA_PROJECT_REV_ID__",
            "rev_timestamp": "__VIA_PROJECT_REV_TIMESTAMP__",
            "pname": project_name or f"{Path(video_path).stem} diarisation",
            "data_format_version": VIA_DATA_FORMAT_VERSION,
            "creator": "av-diarise (VGG Image Annotator 3 project)",
            "created": int(time.time() * 1000) if created_ms is None else int(created_ms),
            "vid_list": [VIA_VID],
        },
        "config": {
            "file": {"loc_prefix": {"1": "", "2": "", "3": "", "4": ""}},
            "ui": {
                "file_content_align": "center",
                "file_metadata_editor_visible": True,
                "spatial_metadata_editor_visible": True,
                "spatial_region_label_attribute_id": "",
            },
        },
        "attribute": {
            VIA_SPEAKER_AID: {
                "aname": "Speaker",
                "anchor_id": VIA_ANCHOR_TEMPORAL_SEGMENT,
                "type": VIA_ATTRIBUTE_TYPE_SELECT,
                "desc": "Speaker of the turn",
                "options": {speaker: speaker for speaker in speakers},
                "default_option_id": "",
            }
        },
        "file": {
            VIA_FID: {
                "fid": VIA_FID,
                "fname": Path(video_path).name,
                "type": VIA_FILE_TYPE_VIDEO,
                "loc": VIA_FILE_LOC_URIFILE,
                "src": _video_src(video_path),
            }
        },
        "view": {VIA_VID: {"fid_list": [VIA_FID]}},
        "metadata": metadata,
    }


def write_via_json(turns: Iterable[TurnLike], path: Path, *, file_id: str, video_path: str | Path) -> Path:
    """Write the VIA 3 project of ``turns`` on the video at ``video_path`` to ``path`` atomically."""
    project = to_via_project(turns, video_path, project_name=f"{file_id} diarisation")
    write_bytes_atomic(Path(path), json.dumps(project, indent=1, ensure_ascii=False).encode("utf-8"))
    return Path(path)


Writer = Callable[..., Path]

#: name -> (file suffix, writer); every writer takes ``(turns, path, *, file_id, video_path)``.
WRITERS: dict[str, tuple[str, Writer]] = {
    "rttm": (".rttm", write_rttm),
    "via": ("_via.json", write_via_json),
}


def available_writers() -> list[str]:
    """Names accepted by ``get_writer``."""
    return sorted(WRITERS)


def get_writer(name: str) -> tuple[str, Writer]:
    """(file suffix, writer) of the format ``name``: 'rttm' or 'via'."""
    try:
        return WRITERS[name]
    except KeyError:
        raise InputError(f"unknown output format {name!r}; choose from {', '.join(available_writers())}") from None


def to_annotation(turns: Iterable[TurnLike], uri: str):
    """A ``pyannote.core.Annotation`` with one track per non-empty turn, labelled by speaker."""
    from pyannote.core import Annotation, Segment

    annotation = Annotation(uri=uri)
    for index, (start_s, end_s, speaker) in enumerate(_clean_turns(turns)):
        annotation[Segment(start_s, end_s), index] = speaker
    return annotation


# RTTM types other than SPEAKER (NIST RT-09 evaluation plan); lines of these types are skipped.
_OTHER_RTTM_TYPES = frozenset({
    "SEGMENT", "NOSCORE", "NO_RT_METADATA", "LEXEME", "NON-LEX", "NON-SPEECH", "FILLER", "EDIT", "IP",
    "SU", "CB", "A/P", "SPKR-INFO",
})


def _parse_rttm_line(fields: list[str], where: str) -> tuple[str, float, float, str] | None:
    """(file_id, start_s, end_s, speaker) of a SPEAKER line, None for a zero-length one."""
    if len(fields) < 8:
        raise InputError(f"{where}: malformed RTTM line: expected at least 8 fields "
                         "'SPEAKER <file-id> <channel> <start> <duration> <NA> <NA> <speaker>', "
                         f"got {len(fields)}")
    try:
        start_s, duration_s = float(fields[3]), float(fields[4])
    except ValueError:
        raise InputError(f"{where}: malformed RTTM line: start {fields[3]!r} or duration {fields[4]!r} "
                         "is not a number") from None
    if not (math.isfinite(start_s) and math.isfinite(duration_s)) or start_s < 0 or duration_s < 0:
        raise InputError(f"{where}: malformed RTTM line: start {fields[3]} and duration {fields[4]} "
                         "must be finite and not negative")
    if duration_s == 0:
        return None
    return fields[1], start_s, round(start_s + duration_s, 9), fields[7]  # 9 decimals: no float noise (1.2 + 0.6)


def read_rttm(path: str | Path) -> dict[str, list[tuple[float, float, str]]]:
    """Segments per file id, each list sorted by start: ``{file_id: [(start_s, end_s, speaker), ...]}``.

    Lines of other RTTM types (SPKR-INFO, ...), blank lines and ``;;``/``#`` comments are skipped, as are
    zero-length segments; input order does not matter. A malformed SPEAKER line is an InputError naming
    the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"RTTM file not found: {path}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a UTF-8 text RTTM file") from None
    except OSError as err:
        raise InputError(f"cannot read RTTM file {path}: {err.strerror or err}") from None
    result: dict[str, list[tuple[float, float, str]]] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0].startswith("#"):
            continue
        if fields[0] != "SPEAKER":
            if fields[0] in _OTHER_RTTM_TYPES:
                continue
            raise InputError(f"{path}:{line_no}: malformed RTTM line: unknown type {fields[0]!r} "
                             "(expected SPEAKER)")
        parsed = _parse_rttm_line(fields, f"{path}:{line_no}")
        if parsed is not None:
            file_id, start_s, end_s, speaker = parsed
            result.setdefault(file_id, []).append((start_s, end_s, speaker))
    for segments in result.values():
        segments.sort()
    return result


__all__ = [
    "RTTM_DECIMALS",
    "WRITERS",
    "available_writers",
    "get_writer",
    "read_rttm",
    "rttm_token",
    "to_annotation",
    "to_rttm",
    "to_via_project",
    "write_rttm",
    "write_via_json",
]
