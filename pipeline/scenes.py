"""Shot boundaries with PySceneDetect's ContentDetector, fed the frames stage 1 already decodes."""
from __future__ import annotations

import cv2
import numpy as np
from scenedetect import ContentDetector, FrameTimecode
from scenedetect.scene_manager import compute_downscale_factor


class ShotDetector:
    """Push the 25 fps frames one by one, then ``finish()`` gives the shots ``[(start, end), ...)``.

    Frames are downscaled exactly as PySceneDetect's SceneManager does by default (auto downscale,
    linear interpolation), so the cuts are those of ``SceneManager.detect_scenes``.
    """

    def __init__(self, frame_rate_hz: float, threshold: float, min_scene_len_frames: int) -> None:
        self.frame_rate_hz = frame_rate_hz
        self.detector = ContentDetector(threshold=threshold, min_scene_len=min_scene_len_frames)
        self.cuts: list[int] = []
        self.num_frames = 0
        self.downscale: float | None = None

    def push(self, frame_bgr: np.ndarray) -> None:
        """Process the next frame."""
        if self.downscale is None:
            self.downscale = compute_downscale_factor(max(frame_bgr.shape[1], frame_bgr.shape[0]))
        small = frame_bgr
        if self.downscale > 1.0:
            size = (max(1, round(frame_bgr.shape[1] / self.downscale)), max(1, round(frame_bgr.shape[0] / self.downscale)))
            small = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_LINEAR)
        timecode = FrameTimecode(self.num_frames, fps=float(self.frame_rate_hz))
        self.cuts += [cut.frame_num for cut in self.detector.process_frame(timecode, small)]
        self.num_frames += 1

    def finish(self) -> list[tuple[int, int]]:
        """Shots as (start_frame, end_frame), end exclusive; the whole video is one shot when no cut is found."""
        if self.num_frames == 0:
            return []
        last = FrameTimecode(self.num_frames - 1, fps=float(self.frame_rate_hz))
        self.cuts += [cut.frame_num for cut in self.detector.post_process(last)]
        bounds = [0] + sorted(c for c in set(self.cuts) if 0 < c < self.num_frames) + [self.num_frames]
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
