"""``SyncEvidence``: stage 2's ``sync.pckl``, one typed record for every sync model.

Every model writes the same record; what a field does not apply to stays at its default (SyncNet has no curves,
only GestSync has regions and person tracks). On disk it is plain data (``to_pickle``): a dict with the schema's
name and version and one entry per field (numpy arrays, lists, numbers, strings), so the cache does not depend on
this class's import path. ``from_pickle`` checks that dict and gives the record back; a ``sync.pckl`` written
before the schema (one of the three older dict shapes) or with another version raises ``OutdatedEvidence``, which
stage 2 answers by scoring again (with one note) and stages 3 and 4 by asking for stage 2 again.
``from_legacy`` reads those older dicts into the record, only for comparing an old checkout's values with a new
one's (``scripts/bench_compare.py``). Layout of the fields: ``pipeline/formats.py``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from pipeline.errors import CacheError
from pipeline.formats import RUN_SYNCNET, SYNC_FILE, SYNC_MODELS

SCHEMA = "av-diarise.sync_evidence"
SCHEMA_VERSION = 1
SCORE_NAMES = ("min_dist", "best_score")  # SyncNet's per-track score is a distance (lower: in sync)


class OutdatedEvidence(CacheError):
    """``sync.pckl`` predates the schema (no schema name or version) or has another version."""


@dataclass(frozen=True, eq=False)
class LipEvidence:
    """GestSync's lip model's own stage-2 evidence on the face tracks (``gestsync.lip_model``)."""

    model: str
    distances: tuple[np.ndarray, ...]  # that model's activesd.pckl matrices, one per face track
    sync: SyncEvidence  # that model's record


@dataclass(frozen=True, eq=False)
class SyncEvidence:
    """One sync model's stage-2 evidence (``sync.pckl``); per-track tuples run over the scored tracks."""

    model: str  # the sync model that wrote it (pipeline/sync/)
    metric: str  # 'cosine' / 'euclidean' (SyncNet's distances) or 'cosine_similarity'
    checkpoint: str | None = None  # the checkpoint file; None when there was no track to score
    score_name: str = "best_score"  # what ``score`` holds: 'min_dist' (SyncNet) or 'best_score'
    offset_frames: tuple[float, ...] = ()  # SyncNet's sign; NaN for a track too short or silent
    score: tuple[float, ...] = ()  # the offset's mean distance or score; NaN when too short
    confidence: tuple[float, ...] = ()  # 0.0 when undefined
    score_raw: tuple[np.ndarray, ...] = ()  # float32 [num_frames] per track (models with their own curves)
    score_smooth: tuple[np.ndarray, ...] = ()  # float32 [num_frames] per track: what stage 3 fuses
    # the offset search and curves as run (None: not the model's setting)
    vshift_frames: int | None = None
    smooth_frames: int | None = None
    offset_stride_frames: int | None = None
    max_offset_frames: int | None = None
    offset_avg_frames: int | None = None
    num_avg_frames: int | None = None
    global_speaker: bool | None = None
    logits_scale: float | None = None
    # GestSync's regions
    persons: str | None = None  # what the regions came from
    offset_range_frames: tuple[tuple[int, int] | None, ...] = ()
    region_bbox: tuple[np.ndarray, ...] = ()  # int64 [num_frames, 4] per track
    region_from_person: tuple[np.ndarray, ...] = ()  # bool [num_frames] per track
    person_tracks: tuple[dict[str, np.ndarray], ...] = ()  # {'frame', 'bbox'} of person tracks without a face
    lips: LipEvidence | None = None

    @property
    def num_tracks(self) -> int:
        return len(self.offset_frames)

    # ---- on disk ----
    def to_pickle(self) -> dict[str, Any]:
        """The record as plain data: ``schema``, ``version`` and one entry per field."""
        data: dict[str, Any] = {"schema": SCHEMA, "version": SCHEMA_VERSION}
        for f in _FIELDS:
            value = getattr(self, f)
            if f == "lips":
                value = None if value is None else {"model": value.model, "distances": list(value.distances),
                                                    "sync": value.sync.to_pickle()}
            elif isinstance(value, tuple):
                value = list(value)
            data[f] = value
        return data

    @classmethod
    def from_pickle(cls, data: Any) -> SyncEvidence:
        """The record from ``to_pickle``'s dict; ``OutdatedEvidence`` for an older layout, CacheError (one
        line) for anything else that is not a valid record."""
        if not isinstance(data, Mapping):
            raise CacheError(f"{SYNC_FILE} is not stage 2's evidence: run {RUN_SYNCNET} again")
        if "schema" not in data or "version" not in data:
            raise OutdatedEvidence(f"{SYNC_FILE} was written by an older version (no schema)")
        if data["schema"] != SCHEMA or data["version"] != SCHEMA_VERSION:
            raise OutdatedEvidence(f"{SYNC_FILE} has schema {data['schema']!r} version {data['version']!r}, "
                                   f"this version reads {SCHEMA!r} version {SCHEMA_VERSION}")
        keys = set(data) - {"schema", "version"}
        if keys != set(_FIELDS):
            wrong = sorted(keys ^ set(_FIELDS))
            raise CacheError(f"{SYNC_FILE} has the wrong fields ({', '.join(wrong)}): run {RUN_SYNCNET} again")
        values = {f: data[f] for f in _FIELDS}
        lips = values.pop("lips")
        try:
            record = cls(**{f: tuple(v) if f in _SEQUENCES else v for f, v in values.items()})
            if lips is not None:
                record = replace(record, lips=LipEvidence(str(lips["model"]), tuple(lips["distances"]),
                                                          cls.from_pickle(lips["sync"])))
        except (TypeError, KeyError, ValueError, CacheError):  # CacheError: the lip model's record
            raise CacheError(f"{SYNC_FILE} holds a malformed record: run {RUN_SYNCNET} again") from None
        record.validate()
        return record

    def validate(self) -> None:
        """CacheError (one line) when the record is inconsistent."""
        problem = self._problem()
        if problem:
            raise CacheError(f"{SYNC_FILE} {problem}: run {RUN_SYNCNET} again")

    def _problem(self) -> str | None:
        if self.model not in SYNC_MODELS:
            return f"names an unknown sync model {self.model!r}"
        if not isinstance(self.metric, str) or self.score_name not in SCORE_NAMES:
            return "does not name its metric and score"
        count = len(self.offset_frames)
        if len(self.score) != count or len(self.confidence) != count:
            return "does not hold one offset, score and confidence per track"
        if not all(isinstance(v, float) for v in (*self.offset_frames, *self.score, *self.confidence)):
            return "holds offsets or scores that are not numbers"
        for name in ("score_raw", "score_smooth", "offset_range_frames", "region_bbox", "region_from_person"):
            if len(getattr(self, name)) not in (0, count):
                return f"does not hold one {name} per track"
        if self.lips is not None and self.lips.sync.num_tracks != len(self.lips.distances):
            return "holds malformed lip evidence"
        return None

    # ---- older caches ----
    @classmethod
    def from_legacy(cls, data: Mapping[str, Any]) -> SyncEvidence:
        """The record an older ``sync.pckl`` dict (before the schema) holds, for comparing values only: stages
        never read an older file (they score again)."""
        values = dict(data)
        score_name = "min_dist" if "min_dist" in values else "best_score"
        values["score"] = values.pop(score_name, [])
        values["score_name"] = score_name
        values.setdefault("model", "syncnet")  # caches written before models were recorded are SyncNet's
        lips = values.pop("lips", None)
        record = cls(**{f: tuple(v) if f in _SEQUENCES else v for f, v in values.items() if f in _FIELDS})
        if lips:
            record = replace(record, lips=LipEvidence(str(lips["model"]), tuple(lips["distances"]),
                                                      cls.from_legacy(lips["sync"])))
        return record


_FIELDS = tuple(f.name for f in fields(SyncEvidence))
_SEQUENCES = frozenset({"offset_frames", "score", "confidence", "score_raw", "score_smooth", "offset_range_frames",
                        "region_bbox", "region_from_person", "person_tracks"})


__all__ = ["LipEvidence", "OutdatedEvidence", "SCHEMA", "SCHEMA_VERSION", "SyncEvidence"]
