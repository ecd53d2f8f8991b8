"""Face-track identities: VGGFace2 features of a few frames per track, grouped as av-diarization's FaceCluster.

Per track the reference reads frames ``int(k * num_frames / 5)`` for k = 1..4 of its crop video, cuts rows
0-160 and columns 32-192 (the face without the chin and the padding of the 224 x 224 crop), resizes that to
224 x 224 with OpenCV's bilinear filter and feeds the BGR pixels as floats in 0-255, with no mean subtracted.
A track then joins the closest earlier group it never shares a frame with when the median cosine distance
between its features and all of that group's features is at most ``max_cosine_distance``.
"""
from __future__ import annotations

from bisect import bisect_right
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


def _frame_index(path: Path) -> tuple[list[int], list[int]]:
    """Presentation times of the crop video's frames, in order, and the positions of its keyframes."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [(packet.pts, packet.is_keyframe) for packet in container.demux(stream)
                   if packet.size > 0]  # Matroska: one block per frame
    if any(pts is None for pts, _ in packets):
        raise CacheError(f"face crop {path} has frames without timestamps: run {RUN_PIPELINE} again")
    packets.sort()
    return [pts for pts, _ in packets], [pos for pos, (_, key) in enumerate(packets) if key]


def _count_frames(path: Path) -> int:
    return len(_frame_index(path)[0])


def read_frames(path: Path, indices: Sequence[int]) -> list[np.ndarray]:
    """BGR frames ``[H, W, 3]`` (uint8) at ``indices`` of a video; an index past the end repeats the last frame.

    Each wanted frame is reached from the keyframe before it (stage 1 writes one every
    ``crop.keyframe_interval_frames``), decoding on from where the last one was found when that is nearer;
    lossless frames, so the pixels are those of a decode from the first frame.
    """
    times, keyframes = _frame_index(path)
    if not times:
        raise CacheError(f"face crop {path} has no frames: run {RUN_PIPELINE} again")
    return _decode_at(path, times, keyframes, indices)


def read_sampled_frames(path: Path, frames_per_track: int) -> list[np.ndarray]:
    """The frames ``sample_frame_indices`` picks from a crop video (BGR ``[H, W, 3]`` uint8)."""
    times, keyframes = _frame_index(path)
    if not times:
        raise CacheError(f"face crop {path} has no frames: run {RUN_PIPELINE} again")
    return _decode_at(path, times, keyframes, sample_frame_indices(len(times), frames_per_track))


def _decode_at(path: Path, times: list[int], keyframes: list[int], indices: Sequence[int]) -> list[np.ndarray]:
    """Frames at ``indices`` (clamped to the last), seeking to the keyframe before each when that saves decoding."""
    import av

    wanted = sorted({min(int(idx), len(times) - 1) for idx in indices})
    found: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, position = container.decode(stream), -1  # position: index of the last frame decoded
        for target in wanted:
            key = keyframes[bisect_right(keyframes, target) - 1] if keyframes and keyframes[0] <= target else 0
            if position >= target or key > position + 1:
                container.seek(times[key], stream=stream, backward=True, any_frame=False)
                frames, position = container.decode(stream), None
            for frame in frames:
                position = times.index(frame.pts) if position is None else position + 1
                if position == target:
                    found[target] = frame.to_ndarray(format="bgr24")
                    break
            if target not in found:
                raise CacheError(f"face crop {path} ends before its frame {target}: run {RUN_PIPELINE} again")
    last = len(times) - 1
    return [found[min(int(idx), last)] for idx in indices]


def face_input(frames_bgr: Sequence[np.ndarray], cfg_faces: Any) -> torch.Tensor:
    """The network input ``[N, 3, S, S]`` float32 of BGR crops: the reference's sub-crop, resized, 0-255."""
    x1, y1, x2, y2 = (int(v) for v in cfg_faces.crop_box_px)
    size = cfg_faces.input_size_px
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
    frames_per_track = cfg_faces.frames_per_track
    if frames_per_track < 1:
        raise InputError(f"faces.frames_per_track must be at least 1, got {cfg_faces.frames_per_track}")
    features = []
    for path in map(Path, crop_paths):
        try:
            frames = read_sampled_frames(path, frames_per_track)
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
    max_distance = cfg_faces.max_cosine_distance
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
