"""Face-track identities: VGGFace2 features of a few frames per track, grouped as av-diarization's FaceCluster.

Per track the reference reads frames ``int(k * num_frames / 5)`` for k = 1..4 of its crop video, cuts rows
0-160 and columns 32-192 (the face without the chin and the padding of the 224 x 224 crop), resizes that to
224 x 224 with OpenCV's bilinear filter and feeds the BGR pixels as floats in 0-255, with no mean subtracted.
A track then joins the closest earlier group it never shares a frame with when the median cosine distance
between its features and all of that group's features is at most ``max_cosine_distance``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy.spatial.distance import cdist

from pipeline.errors import CacheError, InputError, first_line
from pipeline.formats import RUN_PIPELINE


def load_face_model(cfg_faces: Any, weights_dir: str | Path | None, device: str | torch.device) -> torch.nn.Module:
    """The VGGFace2 ResNet-50 of ``cfg_faces.checkpoint`` on ``device``, in eval mode."""
    from models.vggface import load_vggface

    return load_vggface(weights_dir, cfg_faces.checkpoint).to(torch.device(device)).eval()


# ---- frames --------------------------------------------------------------------------------------
def sample_frame_indices(num_frames: int, frames_per_track: int) -> list[int]:
    """``int(k * num_frames / (n + 1))`` for k = 1..n: n frames spread inside the track (n = 4 in the reference)."""
    return [int(k * num_frames / (frames_per_track + 1)) for k in range(1, frames_per_track + 1)]


def _count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size > 0)  # Matroska: one block per frame


def read_frames(path: Path, indices: Sequence[int]) -> list[np.ndarray]:
    """BGR frames ``[H, W, 3]`` (uint8) at ``indices`` of a video; an index past the end repeats the last frame."""
    import av

    wanted = set(indices)
    found: dict[int, np.ndarray] = {}
    last_idx, last_frame = -1, None
    with av.open(str(path)) as container:
        for idx, frame in enumerate(container.decode(video=0)):
            last_idx, last_frame = idx, frame
            if idx in wanted:
                found[idx] = frame.to_ndarray(format="bgr24")
            if idx >= max(wanted):
                break
        if last_frame is None:
            raise CacheError(f"face crop {path} has no frames: run {RUN_PIPELINE} again")
        if last_idx not in found:
            found[last_idx] = last_frame.to_ndarray(format="bgr24")
    return [found[idx] if idx in found else found[last_idx] for idx in indices]


def face_input(frames_bgr: Sequence[np.ndarray], cfg_faces: Any) -> torch.Tensor:
    """The network input ``[N, 3, S, S]`` float32 of BGR crops: the reference's sub-crop, resized, 0-255."""
    x1, y1, x2, y2 = (int(v) for v in cfg_faces.crop_box_px)
    size = int(cfg_faces.input_size_px)
    images = []
    for frame in frames_bgr:
        part = np.ascontiguousarray(frame[y1:y2, x1:x2])
        if part.size == 0:
            raise InputError(f"faces.crop_box_px {list(cfg_faces.crop_box_px)} lies outside a {frame.shape[1]} x "
                             f"{frame.shape[0]} face crop")
        images.append(cv2.resize(part, (size, size)))  # bilinear, like the reference's cv2.resize
    batch = np.stack(images).transpose(0, 3, 1, 2)  # [N, 3, S, S], BGR
    return torch.from_numpy(np.ascontiguousarray(batch)).float()


def track_face_embeddings(model: torch.nn.Module, crop_paths: Sequence[Path], cfg_faces: Any,
                          device: str | torch.device) -> list[np.ndarray]:
    """Per track, float32 ``[frames_per_track, 2048]`` VGGFace2 features of the frames the reference samples."""
    device = torch.device(device)
    frames_per_track = int(cfg_faces.frames_per_track)
    if frames_per_track < 1:
        raise InputError(f"faces.frames_per_track must be at least 1, got {cfg_faces.frames_per_track}")
    features = []
    for path in map(Path, crop_paths):
        try:
            num_frames = _count_frames(path)
            if num_frames == 0:
                raise CacheError(f"face crop {path} has no frames: run {RUN_PIPELINE} again")
            frames = read_frames(path, sample_frame_indices(num_frames, frames_per_track))
        except CacheError:
            raise
        except Exception as err:  # missing file, not a video, truncated stream
            raise CacheError(f"cannot read face crop {path} ({first_line(err, 200)}): run {RUN_PIPELINE} again") from None
        with torch.inference_mode():
            out = model(face_input(frames, cfg_faces).to(device))  # [n, 2048, 1, 1]
        features.append(out.reshape(out.shape[0], -1).float().cpu().numpy())
    return features


# ---- grouping ------------------------------------------------------------------------------------
def assign_face_identities(track_features: Sequence[np.ndarray], track_frames: Sequence[np.ndarray],
                           cfg_faces: Any) -> list[int]:
    """Face identity per track (0, 1, ... in order of first appearance), av-diarization's FaceCluster rule."""
    if len(track_features) != len(track_frames):
        raise InputError(f"{len(track_features)} track features for {len(track_frames)} tracks")
    max_distance = float(cfg_faces.max_cosine_distance)
    group_frames: list[set[int]] = []
    group_feats: list[np.ndarray] = []
    identities: list[int] = []
    for feats, frames in zip(track_features, track_frames):
        feats = np.atleast_2d(np.asarray(feats, dtype=np.float64))
        frame_set = {int(f) for f in np.asarray(frames).reshape(-1)}
        candidates = [g for g, seen in enumerate(group_frames) if not (seen & frame_set)]
        best, best_distance = None, np.inf
        for g in candidates:
            distance = float(np.median(cdist(feats, group_feats[g], metric="cosine")))
            if distance < best_distance:  # the first of equal distances, like np.argmin
                best, best_distance = g, distance
        if best is not None and best_distance <= max_distance:
            group_frames[best] |= frame_set
            group_feats[best] = np.concatenate((group_feats[best], feats), axis=0)
            identities.append(best)
        else:
            group_frames.append(set(frame_set))
            group_feats.append(feats)
            identities.append(len(group_frames) - 1)
    return identities
