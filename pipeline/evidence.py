"""Which sync model made stage 2's evidence, and what stages 3 and 4 read from it for that model (each model
answers for itself through ``pipeline.sync.SyncModel``; this module only looks the model up).

SyncNet's ``sync.pckl`` (VoxConverse) gives distances that stage 3 turns into a confidence with its
thresholds in ``diarise``; Wav2Lip's expert gives per-frame scores in [0, 1], already smoothed by stage 2,
with thresholds of their own in ``wav2lip``; GestSync's gesture sync (``gestsync``) gives smoothed
scores on its own scale (``logits_scale`` x cosine similarity) with thresholds in ``gestsync`` (and, with
``gestsync.lip_model``, a lip model's evidence beside them, mapped onto that scale: ``pipeline/sync/lip_gesture.py``).
Mixing the two would compare numbers on different scales, so
stage 3 refuses evidence from a model other than the configured ``sync.model``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import CacheError, InputError
from pipeline.formats import FUSION_MODES, RUN_SYNCNET
from pipeline.sync import SyncModel, get_sync_model
from pipeline.sync.evidence_record import OutdatedEvidence, SyncEvidence


def model_named(name: str) -> SyncModel:
    """The sync model called ``name`` (InputError for an unknown name): the stages' one registry lookup."""
    return get_sync_model(name)


def configured_model(cfg: Any) -> SyncModel:
    """The model ``sync.model`` names (InputError for an unknown name)."""
    return model_named(cfg.sync.model)


def fusion_mode(cfg: Any) -> str:
    """``diarise.mode``, checked against the fusion rules stage 3 knows."""
    mode = cfg.diarise.mode
    if mode not in FUSION_MODES:
        raise InputError(f"unknown fusion mode {mode!r}: choose one of {', '.join(FUSION_MODES)}")
    return mode


def read_evidence(data: Any) -> SyncEvidence:
    """``sync.pckl``'s record from its pickled data, for stages 3 and 4: a CacheError (one line, naming
    stage 2) for an older layout or anything else that is not a valid record."""
    try:
        return SyncEvidence.from_pickle(data)
    except OutdatedEvidence as err:
        raise CacheError(f"{err}: run {RUN_SYNCNET} again") from None


def evidence_model(sync: SyncEvidence) -> SyncModel:
    """The model that wrote ``sync.pckl``."""
    try:
        return model_named(sync.model)
    except InputError:
        raise CacheError(f"sync.pckl names an unknown sync model {sync.model!r}: run {RUN_SYNCNET} again"
                         ) from None


def check_evidence_model(cfg: Any, sync: SyncEvidence) -> str:
    """The evidence's model's name, or a CacheError when it is not the configured ``sync.model``."""
    wanted, found = configured_model(cfg), evidence_model(sync)
    if found is not wanted:
        raise CacheError(f"sync.pckl holds {found.name} evidence but sync.model is {wanted.name}: its thresholds do "
                         f"not apply; run {RUN_SYNCNET} --sync_model {wanted.name} (or --set sync.model={found.name} "
                         f"here)")
    return found.name


def vote_thresholds(cfg: Any, sync: SyncEvidence) -> tuple[float, ...]:
    """The VoxConverse rule's confidence thresholds on the scale of the evidence's model."""
    return evidence_model(sync).vote_thresholds(cfg, sync)


def fusion_curves(cfg: Any, sync: SyncEvidence, num_tracks: int
                  ) -> tuple[list[np.ndarray] | None, list[str] | None]:
    """The per-track curves stage 3 fuses and what each came from: the model's own curves (with GestSync's lip
    evidence folded in by ``gestsync.prefer``, ``pipeline/sync/lip_gesture.py``); (None, None) for SyncNet,
    whose curve stage 3 computes from the distances."""
    return evidence_model(sync).fusion_curves(cfg, sync, num_tracks)


def extra_tracks(sync: SyncEvidence) -> list[dict]:
    """Tracks the evidence scores beyond tracks.pckl's face tracks, after them (GestSync's person tracks that
    hold no face, in tracks.pckl's layout); none for the other models."""
    return evidence_model(sync).extra_tracks(sync)


def diarisation_key_extra(cfg: Any, sync: SyncEvidence) -> dict[str, Any]:
    """What stage 3's decisions read beyond ``diarise``: the model's own thresholds when it has them."""
    return evidence_model(sync).stage3_key(cfg, sync)


__all__ = ["check_evidence_model", "configured_model", "diarisation_key_extra", "evidence_model", "extra_tracks",
           "fusion_curves", "fusion_mode", "model_named", "read_evidence", "vote_thresholds"]
