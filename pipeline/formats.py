"""The intermediates the stages hand each other, in one place.

All pickles hold only built-in types and numpy arrays (protocol 4), so they load without this package.
Frame indices are on the one 25 fps sequence of ``pipeline.media`` (frame i is shown at i / 25 s);
times are seconds from the start of that sequence; boxes are ``[x1, y1, x2, y2]`` in pixels of the full frame.

Stage 1, ``run_pipeline`` (pywork/REF/):

- ``media.pckl``: dict ``source`` (the video's content: ``size``, ``sha256``), ``num_frames``, ``frame_rate_hz``,
  ``width``, ``height``, ``duration_s``, ``num_samples``, ``sample_rate_hz``, ``has_audio``.
- ``source.json``: where that video was last seen (``path``, with ``size`` and ``sha256``); no manifest, so a
  moved video changes nothing downstream.
- ``faces.pckl``: syncnet_python's layout, one list per frame of dicts
  ``{'frame': int, 'bbox': [x1, y1, x2, y2], 'conf': float}``; S3FD's boxes less those
  ``pipeline.detections`` drops (non-finite, empty, absurd, beyond ``detections.max_per_frame``).
  ``manifest/faces.pckl.pipeline`` holds the sha256 of the last faces.pckl stage 1 wrote (written before it): a
  faces.pckl without a valid manifest is the user's (kept, never overwritten) unless it is that file.
- ``scene.pckl``: list of shots ``(start_frame, end_frame)``, end exclusive (syncnet_python stores
  PySceneDetect FrameTimecode pairs; plain ints need no scenedetect to unpickle).
- ``tracks.pckl``: syncnet_python's flat list over shots of
  ``{'track': {'frame': int64[N], 'bbox': float64[N, 4]}, 'proc_track': {'x', 'y', 's': float64[N]}}``
  where ``proc_track`` holds the median-filtered crop centre and half-size.
- pycrop/REF/``%05d.avi`` (watchable, with audio), ``%05d.mkv`` (lossless frames, 224 x 224, decode as bgr24),
  ``%05d.wav`` (the track's 16 kHz mono audio, frames ``[first, last + 1)``).

Stage 2, ``run_syncnet``:

- ``activesd.pckl``: list over tracks of float32 ``[num_windows, 2 * vshift + 1]`` distances; row i compares
  video window i (frames i .. i + 4) with audio shifted by ``-vshift .. +vshift`` frames.
  ``num_windows = min(num_frames, num_samples // 640) - 5`` as in the original (N x 640 samples give
  4N - 1 MFCC frames); ``(0, 2 * vshift + 1)`` for a track shorter than one window.
- ``sync.pckl``: the ``SyncEvidence`` record (``pipeline/sync/evidence_record.py``) as plain data: a dict with
  ``schema`` ('av-diarise.sync_evidence'), ``version`` (1) and one entry per field; fields a model does not
  use keep their defaults (None, or an empty list). A ``sync.pckl`` without schema (written before it) or of
  another version is scored again by stage 2 (one note) and refused by stages 3 and 4. SyncNet's: ``model``
  'syncnet', ``metric`` ('cosine' or 'euclidean'), ``vshift_frames``, ``checkpoint`` (file name),
  ``score_name`` 'min_dist', and per track lists ``offset_frames`` (NaN for a track too short or digitally
  silent), ``score`` (the min dist; NaN when too short), ``confidence`` (0.0 for both).
- ``offsets.txt``: two ``#`` header lines, then ``track offset_frames min_dist confidence`` per line
  (``nan`` where undefined).

Stage 2 with ``sync.model: wav2lip`` (Wav2Lip's lip-sync expert, ``pipeline/sync/wav2lip.py``): the expert's
face input is the track's own box (``tracks.pckl`` ``track.bbox``, grown by ``wav2lip.box_expand`` on each
side, clipped to the frame, resized to 96 x 96), not the 224 crop with its 40 % context. Stage 2 cuts it from
the normalised frame sequence itself (``pipeline.media.iter_frames`` of the video stage 1 read, whose file
identity ``media.pckl`` records; one decode for all tracks), so stage 1 and its crops stay the same for
every sync model. The audio is the track's ``%05d.wav``, as for SyncNet.

- ``activesd.pckl``: list over tracks of float32 ``[num_windows, 2 * vshift + 1]`` **scores** (cosine
  similarity of the expert's embeddings, in [0, 1], higher = more in sync; 0 where the shifted audio window
  falls outside the track's audio); row i compares frames i .. i + 4 with the 16 mel frames starting at
  ``int(80 * (i + shift) / 25)``, shift ``-vshift .. +vshift``. ``num_windows = min(num_frames - 4,`` windows
  the audio holds``)``.
- ``sync.pckl``: the record with ``model`` 'wav2lip', ``metric`` ('cosine_similarity'), ``vshift_frames``,
  ``checkpoint``, ``smooth_frames``, ``score_name`` 'best_score', and per track lists ``offset_frames``
  (``vshift`` minus the column with the highest mean score: SyncNet's sign; NaN for a track too short or
  digitally silent), ``score`` (that mean, the best score; NaN when too short), ``confidence`` (best minus
  median of the per-shift means; 0.0 when undefined),
  ``score_raw`` (float32 ``[num_frames]`` per track frame: the score at the best shift of the window centred
  on that frame, i.e. window i on frame i + 2; NaN on frames no window is centred on) and ``score_smooth``
  (float32 ``[num_frames]``: the centred ``smooth_frames`` moving average of ``score_raw`` over its finite
  values; NaN where none). Frame j of both curves is the track's frame ``track.frame[0] + j``.
- ``offsets.txt``: as above with ``best_score`` in place of ``min_dist``.

Stage 2 with ``sync.model: gestsync`` (GestSync's gesture sync, ``pipeline/sync/gestsync.py``): each face
track is scored on its person's square crop around a box derived from its face box, or the person box of a
``persons.pckl`` the user placed in pywork/REF (faces.pckl layout, person boxes instead of faces). Its
``activesd.pckl`` holds per track the offset search's float32 ``[offset_avg_frames, candidates]`` block of
scores (``logits_scale`` x cosine; column k: GestSync's offset ``k * stride`` minus the block's first
window; ``[0, 0]`` when the track is too short). ``sync.pckl`` is the expert's record with ``model``
'gestsync', ``num_avg_frames``, ``global_speaker``, ``offset_stride_frames``, ``max_offset_frames``,
``offset_avg_frames`` and ``logits_scale`` in place of ``smooth_frames``, ``persons`` (what the regions came
from), and per track ``offset_range_frames`` (lowest and highest offset searched, SyncNet's sign, or None),
``region_bbox`` (int64 ``[num_frames, 4]``, the crop square of each track frame in frame pixels) and
``region_from_person`` (bool ``[num_frames]``), ``person_tracks`` (``{'frame', 'bbox'}`` of the person tracks
without a face track, scored after the face tracks); ``score_raw`` is the scaled score of the (edge-padded)
window centred on each frame, NaN past the audio.
With ``gestsync.lip_model`` set, ``sync.pckl`` also holds ``lips``: ``{'model': 'syncnet' | 'wav2lip',
'distances': that model's activesd.pckl list for the face tracks, 'sync': its own record (as above)}`` (else None).

Stage 3, ``cluster``:

- ``vad.pckl``: dict ``method`` (a VAD method, or 'given': ``--speech FILE``), ``audio``: list of
  ``(start_s, end_s)``, ``tracks``: one such list per track
  (times relative to the track's first frame).
- ``embeddings.pckl``: dict ``model``, ``window_s``, ``hop_s``, ``embeddings``: float32 ``[num_windows, dim]``,
  window k covering ``[k * hop_s, k * hop_s + window_s)``.
- ``faceid.pckl``: list over tracks of int face identity.
- ``diarization.pckl``: list of turns ``(start_s, end_s, speaker, source, track_ids)``, source 'av' or 'audio'.
- ``sync_curves.pckl``: what the fusion decided from, for stage 4 to draw: dict ``metric``, ``thresholds``
  (list of float, one vote each), ``frame_rate_hz``, ``confidence`` (list over tracks of float64
  ``[num_frames]``, the smoothed per-frame sync confidence from the track's first frame), ``model`` (stage 2's),
  ``sources`` (per track the evidence its curve came from: the model's name, or for GestSync 'gestures',
  'lips' or 'lips+gestures' on the gesture scale, ``pipeline/sync/lip_gesture.py``), ``mode`` and ``diarise``
  (the config section used). Its manifest records the digests of ``activesd.pckl``, ``sync.pckl`` and
  ``diarization.pckl``; stage 4 refuses it when any of them changed since.

Written by ``pipeline.diarize`` (``scripts/diarize.py``, the corpus runner), not an intermediate (no manifest):

- ``stage_seconds.json``: per stage (``stage1`` .. ``stage4``) ``{'seconds': float, 'mtime_ns': int}``, the wall
  time of the run that wrote that stage's output (``tracks.pckl``, ``sync.pckl``, ``diarization.pckl``) and
  the output's modification time then; a later run that reuses the output reports those seconds.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from pipeline.errors import CacheError

# Stage 2's sync models (config ``sync.model``; ``--sync_model``): SyncNet is VoxConverse's.
SYNC_MODELS = ("syncnet", "wav2lip", "gestsync")
# Stage 3's fusion rules (config ``diarise.mode``; ``--fusion``): voxconverse is av-diarization's, improved ours.
FUSION_MODES = ("voxconverse", "argmax", "improved")
# Stage 3's voice activity detectors (``vad.method``; ``--vad``): webrtc is av-diarization's.
VAD_METHODS = ("webrtc", "silero")
# Stage 3's speaker embedding networks (``embed.speaker_model``; ``--speaker_model``): resnetse34 is av-diarization's.
SPEAKER_MODELS = ("resnetse34", "ecapa", "resemblyzer")
# SyncNet's distance (``syncnet.metric``): cosine is av-diarization's, euclidean syncnet_python's.
SYNC_METRICS = ("cosine", "euclidean")
# Speaker embeddings on the CPU (``embed.cpu_precision``).
EMBED_CPU_PRECISIONS = ("float32", "bfloat16")
# GestSync's companion lip model (``gestsync.lip_model``) and which evidence wins (``gestsync.prefer``).
GESTSYNC_LIP_MODELS = ("none", "syncnet", "wav2lip")
GESTSYNC_PREFERENCES = ("lips", "gestures", "stronger")
# scripts/train_sync.py: the trainable sync models (``train.model``), optimisers and CUDA autocast precisions.
TRAIN_MODELS = ("syncnet", "wav2lip")
TRAIN_OPTIMIZERS = ("adam", "sgd")
TRAIN_CUDA_PRECISIONS = ("bfloat16", "float16", "float32")
# scripts/train_sync.py's run folder: the checkpoint --resume continues from.
TRAIN_LAST_FILE = "last.pt"

# The script that writes each stage's intermediates, named in errors about a missing or stale cache.
RUN_PIPELINE = "scripts/run_pipeline.py"
RUN_SYNCNET = "scripts/run_syncnet.py"
CLUSTER = "scripts/cluster.py"

# The cache's file names (described in this module's docstring), used by these names everywhere.
# pyavi/REF/ (``Cache.audio_wav``):
AUDIO_FILE = "audio.wav"
# pywork/REF/, stage 1:
MEDIA_FILE = "media.pckl"
SOURCE_FILE = "source.json"
FACES_FILE = "faces.pckl"
SCENE_FILE = "scene.pckl"
TRACKS_FILE = "tracks.pckl"
# pywork/REF/, stage 2 (PERSONS_FILE is the user's, read by GestSync):
ACTIVESD_FILE = "activesd.pckl"
SYNC_FILE = "sync.pckl"
OFFSETS_FILE = "offsets.txt"
PERSONS_FILE = "persons.pckl"
# pywork/REF/, stage 3:
VAD_FILE = "vad.pckl"
EMBEDDINGS_FILE = "embeddings.pckl"
FACEID_FILE = "faceid.pckl"
DIARISATION_FILE = "diarization.pckl"
SYNC_CURVES_FILE = "sync_curves.pckl"
# pywork/REF/, written by pipeline.diarize:
STAGE_TIMES_FILE = "stage_seconds.json"

# Stage 3's outputs that stage 4 draws, and the outputs each is made from (recorded in its manifest's key):
# stage 4 refuses one whose upstream changed since.
DIARISATION_UPSTREAM = (MEDIA_FILE, TRACKS_FILE, ACTIVESD_FILE, SYNC_FILE, FACEID_FILE)
SYNC_CURVES_UPSTREAM = (ACTIVESD_FILE, SYNC_FILE, DIARISATION_FILE)


class Turn(NamedTuple):
    """One speaker turn; pickled as a plain tuple."""

    start_s: float
    end_s: float
    speaker: str
    source: str  # 'av': a speaking face; 'audio': voice only
    track_ids: tuple[int, ...]


def turns_from_pickle(rows: Sequence[Sequence[Any]]) -> list[Turn]:
    """Turns from the plain tuples stored in diarization.pckl."""
    return [Turn(float(r[0]), float(r[1]), str(r[2]), str(r[3]), tuple(int(t) for t in r[4])) for r in rows]


def validate_faces(faces: Any, source: str) -> list[list[dict]]:
    """Check syncnet_python's faces.pckl layout and return it with plain floats; CacheError names the problem.

    Box values are not judged here: ``pipeline.detections.sanitize_faces`` drops unusable boxes."""
    if not isinstance(faces, list):
        raise CacheError(f"{source}: faces must be a list with one list of detections per frame")
    clean: list[list[dict]] = []
    for frame_idx, dets in enumerate(faces):
        if not isinstance(dets, (list, tuple)):
            raise CacheError(f"{source}: frame {frame_idx} is not a list of detections")
        frame_dets = []
        for det in dets:
            try:
                bbox = [float(v) for v in det["bbox"]]
                conf = float(det.get("conf", 1.0))
            except (TypeError, KeyError, ValueError):
                raise CacheError(f"{source}: frame {frame_idx} has a detection without a 4-number 'bbox'") from None
            if len(bbox) != 4:
                raise CacheError(f"{source}: frame {frame_idx} has a box of {len(bbox)} numbers, not 4")
            # non-finite, empty or absurd boxes are dropped (and counted) by pipeline.detections.sanitize_faces
            frame_dets.append({"frame": frame_idx, "bbox": bbox, "conf": conf})
        clean.append(frame_dets)
    return clean
