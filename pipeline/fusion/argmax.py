"""Stage 3's ``argmax`` rule (``diarise.mode: argmax``), the rule of syncnet-speaker-diarization (the
project that diarises with Wav2Lip's lip-sync expert): in every frame with speech, the face with the
highest smoothed sync score speaks.

Speech frames are the whole-audio VAD's; a face takes part in the frames its track covers and where its
curve is defined (the expert's smoothed score, or SyncNet's smoothed confidence, ``fuse.track_curve``); ties
go to the lower track index. Each track's won frames are its active speech, and every run of them is an
utterance of its face identity (no vote, closing or minimum length: the seed project has none). From there
the VoxConverse steps are shared (``fuse.turns_from_activities``): identities merged by voice, speech that no
face on screen wins (no face there) labelled by voice, the same output.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.formats import Turn
from pipeline.fusion.voxconverse import TrackActivity, TrackEvidence, track_curve, turns_from_activities, vad_frame_counts
from pipeline.settings import DiariseConfig

NO_FACE = -1


def argmax_faces(curves: Sequence[np.ndarray], first_frames: Sequence[int], num_frames: int) -> np.ndarray:
    """int64 ``[num_frames]``: per frame the index of the curve with the highest finite value, NO_FACE if none.

    ``curves[k][j]`` belongs to frame ``first_frames[k] + j``; values beyond ``num_frames`` are ignored.
    """
    best = np.full(num_frames, -np.inf)
    winner = np.full(num_frames, NO_FACE, dtype=np.int64)
    for idx, (curve, first) in enumerate(zip(curves, first_frames)):
        values = np.asarray(curve, dtype=np.float64)
        start, stop = max(int(first), 0), min(int(first) + values.size, num_frames)
        if stop <= start:
            continue
        segment = values[start - int(first):stop - int(first)]
        better = np.isfinite(segment) & (segment > best[start:stop])
        best[start:stop][better] = segment[better]
        winner[start:stop][better] = idx
    return winner


def argmax_activities(tracks: Sequence[TrackEvidence], curves: Sequence[np.ndarray],
                      speech: np.ndarray) -> list[TrackActivity]:
    """Each track's active frames: the speech frames where its curve is the highest."""
    present = [i for i, t in enumerate(tracks) if len(t.frames)]
    winner = argmax_faces([curves[i] for i in present], [tracks[i].first_frame for i in present], speech.size)
    winner[~speech] = NO_FACE
    activities = []
    for rank, idx in enumerate(present):
        first, size = tracks[idx].first_frame, len(curves[idx])
        active = np.zeros(size, dtype=np.int64)
        stop = min(first + size, speech.size)
        if stop > first:
            active[:stop - first] = winner[first:stop] == rank
        activities.append(TrackActivity(idx, int(tracks[idx].identity), first, active))
    return activities


def diarise_argmax(tracks: Sequence[TrackEvidence], audio_vad_s: Sequence[tuple[float, float]],
                   embeddings: np.ndarray, cfg_diarise: DiariseConfig, hop_s: float, num_frames: int,
                   duration_s: float | None = None) -> list[Turn]:
    """Speaker turns by the argmax rule (same inputs and output as ``fuse.diarise``)."""
    fps = cfg_diarise.frame_rate_hz
    curves = [track_curve(t, cfg_diarise) if len(t.frames) else np.zeros(0) for t in tracks]
    ends = [int(num_frames)] + [int(end_s * fps) for _, end_s in audio_vad_s]
    ends += [t.first_frame + len(c) for t, c in zip(tracks, curves) if len(t.frames)]
    speech = vad_frame_counts(audio_vad_s, max(ends), fps) > 0
    activities = argmax_activities(tracks, curves, speech)
    return turns_from_activities(tracks, activities, 0, audio_vad_s, embeddings, cfg_diarise, hop_s, num_frames,
                                 duration_s)


__all__ = ["NO_FACE", "argmax_activities", "argmax_faces", "diarise_argmax"]
