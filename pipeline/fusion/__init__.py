"""The fusion rules of stage 3, one module each, chosen once by name (``diarise.mode``).

- ``voxconverse`` (``voxconverse.py``): the faithful rule of "Spot the conversation" (the default);
- ``argmax`` (``argmax.py``): the face with the highest sync score in each speech frame speaks;
- ``improved`` (``improved.py``): faces as fixed speakers of a VBx back-end (``vbx.py``) on the speaker
  model's transform (``speaker_backend.py``).

Every rule takes the same ``FusionInputs`` and returns the speaker turns; ``get_fusion_rule(name)`` is the one
place that picks a rule by its name.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.formats import FUSION_MODES, Turn
from pipeline.fusion import argmax, improved, voxconverse
from pipeline.fusion.speaker_backend import SpeakerBackend


@dataclass(frozen=True)
class FusionInputs:
    """What every fusion rule decides from: stage 3's per-track evidence, the whole-audio speech regions, the
    sliding speaker embeddings (window k starts at ``k * hop_s``) and the settings.

    ``cfg_diarise`` is the ``diarise`` section with the speaker model's own voice thresholds (what the
    reference rules use); ``cfg_diarise_base`` the section as configured (what the improved rule uses);
    ``thresholds`` the vote thresholds on the evidence's scale; ``backend`` the improved rule's transform."""

    tracks: Sequence[voxconverse.TrackEvidence]
    audio_vad_s: Sequence[tuple[float, float]]
    embeddings: np.ndarray
    cfg_diarise: Any
    cfg_diarise_base: Any
    cfg_improved: Any
    metric: str
    hop_s: float
    num_frames: int
    duration_s: float | None
    thresholds: tuple[float, ...]
    backend: SpeakerBackend | None = None


FusionRule = Callable[[FusionInputs], list[Turn]]


def _voxconverse(inputs: FusionInputs) -> list[Turn]:
    return voxconverse.diarise(inputs.tracks, inputs.audio_vad_s, inputs.embeddings, inputs.cfg_diarise,
                               inputs.metric, inputs.hop_s, inputs.num_frames, inputs.duration_s,
                               thresholds=inputs.thresholds)


def _argmax(inputs: FusionInputs) -> list[Turn]:
    return argmax.diarise_argmax(inputs.tracks, inputs.audio_vad_s, inputs.embeddings, inputs.cfg_diarise,
                                 inputs.hop_s, inputs.num_frames, inputs.duration_s)


def _improved(inputs: FusionInputs) -> list[Turn]:
    return improved.diarise_improved(inputs.tracks, inputs.audio_vad_s, inputs.embeddings,
                                     inputs.cfg_diarise_base, inputs.cfg_improved, inputs.metric, inputs.hop_s,
                                     inputs.num_frames, inputs.duration_s, thresholds=inputs.thresholds,
                                     backend=inputs.backend)


RULES: dict[str, FusionRule] = {"voxconverse": _voxconverse, "argmax": _argmax, "improved": _improved}
# The improved rule alone has its own config section and a speaker back-end (its cache key adds both).
RULES_WITH_BACKEND = frozenset({"improved"})
assert tuple(RULES) == FUSION_MODES, "formats.FUSION_MODES (what the config accepts) must name every rule"


def get_fusion_rule(name: str) -> FusionRule:
    """The fusion rule called ``name``; one line naming the choices for an unknown one."""
    try:
        return RULES[name]
    except KeyError:
        raise InputError(f"unknown fusion mode {name!r}: choose one of {', '.join(RULES)}") from None


def uses_backend(name: str) -> bool:
    """Whether rule ``name`` clusters through a speaker back-end (and has its own ``improved`` settings)."""
    return name in RULES_WITH_BACKEND


__all__ = ["FusionInputs", "FusionRule", "RULES", "get_fusion_rule", "uses_backend"]
