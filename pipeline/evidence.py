"""Which sync model made stage 2's evidence, and what stages 3 and 4 read from it for that model.

SyncNet's ``sync.pckl`` (VoxConverse) gives distances that stage 3 turns into a confidence with its
thresholds in ``diarise``; Wav2Lip's expert gives per-frame scores in [0, 1], already smoothed by stage 2,
with thresholds of their own in ``wav2lip``; GestSync's gesture sync (``gestsync``) gives smoothed
scores on its own scale (``logits_scale`` x cosine similarity) with thresholds in ``gestsync`` (and, with
``gestsync.lip_model``, a lip model's evidence beside them, mapped onto that scale: ``pipeline/lip_gesture.py``).
Mixing the two would compare numbers on different scales, so
stage 3 refuses evidence from a model other than the configured ``sync.model``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.errors import CacheError, InputError
from pipeline.formats import FUSION_MODES, RUN_SYNCNET, SYNC_MODELS

# Models whose sync.pckl carries its own smoothed per-frame curves (``score_smooth``) and whose thresholds
# live in the config section of the model's name (``wav2lip.conf_thresholds``, ``gestsync.conf_thresholds``).
OWN_CURVE_MODELS = ("wav2lip", "gestsync")


def configured_model(cfg: Any) -> str:
    """``sync.model``, checked against the models stage 2 knows."""
    model = str(cfg.sync.model)
    if model not in SYNC_MODELS:
        raise InputError(f"unknown sync model {model!r}: choose one of {', '.join(SYNC_MODELS)}")
    return model


def fusion_mode(cfg: Any) -> str:
    """``diarise.mode``, checked against the fusion rules stage 3 knows."""
    mode = str(cfg.diarise.mode)
    if mode not in FUSION_MODES:
        raise InputError(f"unknown fusion mode {mode!r}: choose one of {', '.join(FUSION_MODES)}")
    return mode


def evidence_model(sync: Mapping[str, Any]) -> str:
    """The model that wrote ``sync.pckl`` (caches written before models were recorded are SyncNet's)."""
    return str(sync.get("model", "syncnet"))


def check_evidence_model(cfg: Any, sync: Mapping[str, Any]) -> str:
    """The evidence's model, or a CacheError when it is not the configured ``sync.model``."""
    wanted, found = configured_model(cfg), evidence_model(sync)
    if found != wanted:
        raise CacheError(f"sync.pckl holds {found} evidence but sync.model is {wanted}: its thresholds do not "
                         f"apply; run {RUN_SYNCNET} --sync_model {wanted} (or --set sync.model={found} here)")
    return found


def vote_thresholds(cfg: Any, sync: Mapping[str, Any]) -> tuple[float, ...]:
    """The VoxConverse rule's confidence thresholds on the scale of the evidence's model."""
    if evidence_model(sync) in OWN_CURVE_MODELS:
        return tuple(float(v) for v in cfg[evidence_model(sync)].conf_thresholds)
    from pipeline.fusion.voxconverse import conf_thresholds

    return conf_thresholds(cfg.diarise, str(sync["metric"]))


def model_curves(sync: Mapping[str, Any], num_tracks: int) -> list[np.ndarray] | None:
    """Per-track per-frame curves the model gives itself (the expert's smoothed scores), else None."""
    model = evidence_model(sync)
    if model not in OWN_CURVE_MODELS:
        return None
    curves = sync.get("score_smooth")
    if not isinstance(curves, Sequence) or len(curves) != num_tracks:
        raise CacheError(f"sync.pckl lacks one smoothed {model} score curve per track: run {RUN_SYNCNET} again")
    return [np.asarray(c, dtype=np.float64) for c in curves]


def fusion_curves(cfg: Any, sync: Mapping[str, Any], num_tracks: int
                  ) -> tuple[list[np.ndarray] | None, list[str] | None]:
    """The per-track curves stage 3 fuses and what each came from: the model's own curves
    (``model_curves``), with GestSync's lip evidence folded in by ``gestsync.prefer`` when stage 2 kept one
    (``pipeline/lip_gesture.py``); (None, None) for SyncNet, whose curve stage 3 computes from the distances."""
    curves = model_curves(sync, num_tracks)
    if curves is None:
        return None, None
    if evidence_model(sync) != "gestsync":
        return curves, [evidence_model(sync)] * len(curves)
    from pipeline.lip_gesture import combined_curves

    return combined_curves(cfg, sync, curves)


def extra_tracks(sync: Mapping[str, Any]) -> list[dict]:
    """Tracks the evidence scores beyond tracks.pckl's face tracks, after them (GestSync's person tracks that
    hold no face, in tracks.pckl's layout); none for the other models."""
    if evidence_model(sync) != "gestsync":
        return []
    from pipeline.sync_gestsync import person_only_tracks

    return person_only_tracks(sync)


def diarisation_key_extra(cfg: Any, sync: Mapping[str, Any]) -> dict[str, Any]:
    """What stage 3's decisions read beyond ``diarise``: the expert's thresholds when it made the evidence."""
    model = evidence_model(sync)
    if model in OWN_CURVE_MODELS:
        from pipeline.lip_gesture import key_extra

        return {"sync_model": model, f"{model}_conf_thresholds": [float(v) for v in cfg[model].conf_thresholds],
                **key_extra(cfg, sync)}
    return {}


__all__ = ["check_evidence_model", "configured_model", "diarisation_key_extra", "evidence_model", "extra_tracks",
           "fusion_curves",
           "fusion_mode", "model_curves", "vote_thresholds"]
