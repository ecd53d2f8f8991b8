"""Face detection with S3FD, batched, giving the boxes of av-diarization's ``Preprocessor.inference_video``.

The reference detects one frame at a time: BGR frame -> RGB -> ``cv2.resize`` by ``image_scale`` (bilinear)
-> minus the RGB mean -> S3FD -> softmax -> decode every anchor -> anchors above ``prior_conf_threshold``
-> NMS at ``prior_nms_overlap`` over the ``prior_nms_top_k`` best, in the network's [0, 1] coordinates
(float32) -> the first ``max_detections`` kept -> those above ``conf_threshold`` scaled to full-resolution
pixels -> py-faster-rcnn NMS at ``nms_overlap`` (float64).

Here every frame of a batch is resized on the CPU, the network runs once per batch, anchors are built once
per input size, and only the anchors that can reach the output are decoded and suppressed. That shortcut keeps
the result: an anchor is only ever suppressed by anchors visited before it, and anchors at or below
``conf_threshold`` are visited after all anchors above it. Scores are ranked with torch's own sort on the
network's device, on the same array as the reference's, so tied scores fall the same way; the final NMS sorts
with numpy's ``argsort`` on the same float64 array as the reference's. With ``batch_size`` 1 the boxes are
bit-identical to the reference's; larger batches can change the network's outputs in the last bits.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from models.s3fd import BOX_VARIANCES, INPUT_MEAN_RGB, feature_map_sizes, load_s3fd, prior_boxes
from pipeline.errors import InputError

EMPTY_DETECTIONS = np.zeros((0, 5), dtype=np.float32)


def resize_frames(frames_bgr: Sequence[np.ndarray], scale: float) -> np.ndarray:
    """Frames resized like the reference (``cv2.resize`` with fx = fy = scale, bilinear): uint8 ``[B, h, w, 3]`` BGR.

    Resizing before the BGR -> RGB swap gives the same pixels as the reference's swap-then-resize: bilinear
    resizing treats the channels independently.
    """
    return np.stack([
        cv2.resize(frame, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) for frame in frames_bgr
    ])


def frames_to_input(small_bgr: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``[B, h, w, 3]`` BGR -> contiguous float32 ``[B, 3, h, w]``, RGB minus ``INPUT_MEAN_RGB``."""
    pixels = torch.from_numpy(small_bgr).to(device)  # [B, h, w, 3] uint8; 4x less to copy than float
    rgb = pixels.permute(0, 3, 1, 2).flip(1).float()  # [B, 3, h, w]
    mean = torch.tensor(INPUT_MEAN_RGB, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return (rgb - mean).contiguous()


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """SSD decoding: ``loc`` ``[M, 4]`` and ``priors`` ``[M, 4]`` (cx, cy, w, h) -> ``[M, 4]`` x1, y1, x2, y2.

    Units are those of ``priors`` (fractions of the network input size). Same float operations as the reference.
    """
    centre = priors[:, :2] + loc[:, :2] * BOX_VARIANCES[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * BOX_VARIANCES[1])
    top_left = centre - size / 2
    return torch.cat((top_left, size + top_left), 1)


def greedy_nms(boxes: np.ndarray, order: np.ndarray, overlap: float, union_style: str = "frcnn") -> np.ndarray:
    """Greedy non-maximum suppression: indices into ``boxes`` (x1, y1, x2, y2) kept, in visiting order.

    ``order`` lists the candidates best first. A box is dropped when its IoU with a kept box is not at most
    ``overlap`` (so NaN IoU drops it, like the references). Arithmetic runs in ``boxes``' dtype; ``union_style``
    picks the references' summation order: "frcnn" ``(a_i + a_j) - inter`` (py-faster-rcnn ``nms_``, float64)
    or "ssd" ``(a_j - inter) + a_i`` (SSD ``box_utils.nms``, float32).
    """
    if union_style not in ("frcnn", "ssd"):
        raise ValueError(f"union_style must be 'frcnn' or 'ssd', got {union_style!r}")
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    threshold = boxes.dtype.type(overlap)
    keep = []
    order = np.asarray(order, dtype=np.int64)
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0.0)
        height = np.maximum(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0.0)
        inter = width * height
        if union_style == "frcnn":
            union = areas[best] + areas[rest] - inter
        else:
            union = (areas[rest] - inter) + areas[best]
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / union
        order = rest[iou <= threshold]
    return np.asarray(keep, dtype=np.int64)


def rank_candidates(
    face_prob: torch.Tensor, prior_conf_threshold: float, conf_threshold: float, top_k: int
) -> torch.Tensor:
    """One frame's anchors that the reference can report, best first: int64 ``[M]`` indices into ``face_prob`` ``[N]``.

    Like the reference, anchors above ``prior_conf_threshold`` are sorted with torch's own sort on the network's
    device (not stable: tied scores fall as they fall there) and the ``top_k`` best are kept; of those, the ones
    above ``conf_threshold`` come first in that order and are the only ones that can reach the output.
    """
    candidates = (face_prob > prior_conf_threshold).nonzero()[:, 0]  # [C] anchor order
    scores = face_prob[candidates]
    _, ascending = scores.sort(0)
    best_first = ascending[-top_k:].flip(0)
    return candidates[best_first[scores[best_first] > conf_threshold]]


def postprocess_frame(
    boxes_rel: np.ndarray, scores: np.ndarray, width_px: int, height_px: int, cfg_detect: Mapping
) -> np.ndarray:
    """One frame's ranked candidates -> float32 ``[K, 5]`` x1, y1, x2, y2, conf in full-resolution pixels.

    ``boxes_rel`` float32 ``[M, 4]`` (fractions of the network input) and ``scores`` float32 ``[M]`` are the
    decoded anchors of ``rank_candidates``, best first. The frame is ``width_px`` x ``height_px``.
    """
    if scores.size == 0:
        return EMPTY_DETECTIONS.copy()
    keep = greedy_nms(boxes_rel, np.arange(len(scores)), cfg_detect["prior_nms_overlap"], union_style="ssd")
    keep = keep[: cfg_detect["max_detections"]]
    boxes_px = boxes_rel[keep] * np.array([width_px, height_px, width_px, height_px], dtype=np.float32)
    dets = np.concatenate([boxes_px, scores[keep, None]], axis=1).astype(np.float64)  # [K, 5], as the reference
    final = greedy_nms(dets[:, :4], dets[:, 4].argsort()[::-1], cfg_detect["nms_overlap"], union_style="frcnn")
    return np.ascontiguousarray(dets[final], dtype=np.float32)


def detections_from_network(
    loc: torch.Tensor, face_prob: torch.Tensor, priors: torch.Tensor, frame_sizes_px: Sequence[tuple[int, int]],
    cfg_detect: Mapping,
) -> list[np.ndarray]:
    """Network outputs of a batch -> per frame float32 ``[K, 5]`` boxes in full-resolution pixels.

    ``loc`` ``[B, N, 4]``, ``face_prob`` ``[B, N]``, ``priors`` ``[N, 4]`` on one device; ``frame_sizes_px`` holds
    each frame's (width, height). Only the ranked candidates are decoded, in one call, then copied to the CPU.
    """
    ranked = [
        rank_candidates(face_prob[b], cfg_detect["prior_conf_threshold"], cfg_detect["conf_threshold"],
                        cfg_detect["prior_nms_top_k"])
        for b in range(face_prob.shape[0])
    ]
    frame_idx = torch.cat([torch.full_like(anchors, b) for b, anchors in enumerate(ranked)])
    anchor_idx = torch.cat(ranked)
    boxes_rel = decode_boxes(loc[frame_idx, anchor_idx], priors[anchor_idx]).cpu().numpy()
    scores = face_prob[frame_idx, anchor_idx].cpu().numpy()
    bounds = np.cumsum([0] + [len(anchors) for anchors in ranked])
    return [
        postprocess_frame(boxes_rel[lo:hi], scores[lo:hi], width_px, height_px, cfg_detect)
        for lo, hi, (width_px, height_px) in zip(bounds[:-1], bounds[1:], frame_sizes_px)
    ]


class FaceDetector:
    """S3FD on ``device`` with the thresholds of the ``detect`` config section."""

    def __init__(self, cfg_detect: Mapping, weights_dir: str | Path | None, device: str | torch.device) -> None:
        self.cfg = cfg_detect
        self.device = torch.device(device)
        self.net = load_s3fd(weights_dir, cfg_detect["checkpoint"]).to(self.device)
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    def priors(self, height: int, width: int) -> torch.Tensor:
        """Anchors ``[N, 4]`` for a network input of ``height`` x ``width`` pixels, on the device, cached."""
        key = (height, width)
        if key not in self._priors:
            if min(min(size) for size in feature_map_sizes(height, width)) < 1:
                raise InputError(
                    f"frames resized to {width}x{height} are too small for the face detector; raise detect.image_scale"
                )
            self._priors[key] = torch.from_numpy(prior_boxes(height, width)).to(self.device)
        return self._priors[key]

    @torch.inference_mode()
    def detect_batch(self, frames_bgr: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per frame, float32 ``[K, 5]`` x1, y1, x2, y2 (full-resolution pixels) and score, best first after NMS.

        Frames are uint8 ``[H, W, 3]`` BGR; any number, of any sizes (same-size frames share network calls).
        """
        results: list[np.ndarray | None] = [None] * len(frames_bgr)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, frame in enumerate(frames_bgr):
            if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise InputError(f"frame {index} is not a uint8 [H, W, 3] BGR image")
            by_shape.setdefault(frame.shape, []).append(index)
        batch_size = max(1, self.cfg["batch_size"])
        for indices in by_shape.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                for index, dets in zip(chunk, self._detect_same_size([frames_bgr[i] for i in chunk])):
                    results[index] = dets
        return results  # type: ignore[return-value]

    def _detect_same_size(self, frames_bgr: list[np.ndarray]) -> list[np.ndarray]:
        height_px, width_px = frames_bgr[0].shape[:2]
        small = resize_frames(frames_bgr, self.cfg["image_scale"])
        priors = self.priors(small.shape[1], small.shape[2])
        loc, face_prob = self.net(frames_to_input(small, self.device))
        if loc.shape[1] != priors.shape[0]:
            raise RuntimeError(f"S3FD gave {loc.shape[1]} anchors, expected {priors.shape[0]}")
        return detections_from_network(loc, face_prob, priors, [(width_px, height_px)] * len(frames_bgr), self.cfg)

__all__ = [
    "FaceDetector",
    "decode_boxes",
    "detections_from_network",
    "frames_to_input",
    "greedy_nms",
    "postprocess_frame",
    "rank_candidates",
    "resize_frames",
]
