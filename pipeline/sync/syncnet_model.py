"""SyncNet as the stages choose it (``get_sync_model("syncnet")``): the ``SyncModel`` interface, light to import.

The computation (``pipeline/sync/syncnet.py``: torch, the network, PyAV, MFCC) is imported by the methods that run
it, not by this module, so that a stage which only reads SyncNet's evidence (stage 4 draws what stage 3 decided)
does not load torch: ``visualise.py`` on the 60 s benchmark clip took 4.9 CPU s with it and about 3 without
(issue 23). Imports run one way: this module imports ``syncnet.py``, never the reverse.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.cache import Cache, sha256_file
from pipeline.errors import CheckpointError
from pipeline.formats import TRACKS_FILE
from pipeline.sync.base import (
    STAGE,
    ClipReport,
    Evidence,
    Network,
    ProgressHook,
    SyncEvidence,
    SyncModel,
    demo_report,
    silent_note,
)

if TYPE_CHECKING:
    from pipeline.sync.syncnet import SyncSettings


class SyncNetModel(SyncModel):
    """SyncNet (VoxConverse's): distance matrices; stage 3 turns them into a confidence (``diarise``)."""

    name = "syncnet"
    section = "syncnet"
    input_files = (TRACKS_FILE, "crops")
    channel_order = "BGR"  # syncnet_python and Wav2Lip read frames with cv2
    stage2_what = "SyncNet on the face tracks"  # diarize.py's stage-2 line
    plot_what, plot_ylabel = "SyncNet confidence", "sync confidence"

    def settings(self, cfg: Any) -> SyncSettings:
        from pipeline.sync.syncnet import SyncSettings

        return SyncSettings.from_config(cfg)

    def checkpoint_file(self, cfg: Any, weights_dir: str | Path | None) -> str:
        from models.syncnet import syncnet_checkpoint

        return syncnet_checkpoint(weights_dir, cfg.syncnet.checkpoint)

    def networks(self, cfg: Any, weights_dir: str | Path | None) -> list[Network]:
        from models.syncnet import load_syncnet

        try:
            file = self.checkpoint_file(cfg, weights_dir)
        except CheckpointError:  # neither published file: stage 2 says so if a face track needs it
            return []
        return [Network(file, lambda: load_syncnet(weights_dir, file))]

    def stage2_key(self, cache: Cache, cfg: Any, tracks: Sequence[Mapping], weights_dir: str | Path | None
                   ) -> dict[str, Any]:
        self.settings(cfg)  # a bad syncnet section fails here, before the checkpoint is looked for
        checkpoint: dict[str, str | None] = {"file": None, "sha256": None}
        if tracks:  # no face track (no faces, or an audio-only input): nothing to sync, no checkpoint needed
            from models.loader import checkpoint_path

            file = self.checkpoint_file(cfg, weights_dir)
            checkpoint = {"file": file, "sha256": sha256_file(checkpoint_path(file, weights_dir))}
        return {
            "stage": STAGE,
            "syncnet": self.section_key(cfg),
            "media": {"frame_rate_hz": cfg.media.frame_rate_hz, "sample_rate_hz": cfg.media.sample_rate_hz},
            "checkpoint": checkpoint,
            "upstream": {TRACKS_FILE: cache.digest(TRACKS_FILE), "crops": cache.digest("crops")},
        }

    def evidence(self, cache: Cache, cfg: Any, tracks: Sequence[Mapping], weights_dir: str | Path | None,
                 device: Any, progress: ProgressHook) -> Evidence:
        from pipeline.sync.syncnet import syncnet_evidence

        file = self.checkpoint_file(cfg, weights_dir) if tracks else None
        return Evidence(*syncnet_evidence(cache, cfg, len(tracks), file, weights_dir, device, progress))

    def offsets_text(self, sync: SyncEvidence) -> str:
        from pipeline.sync.syncnet import offsets_text

        return offsets_text(sync)

    def summary(self, sync: SyncEvidence) -> str:
        return f"SyncNet ({sync.metric})"

    def vote_thresholds(self, cfg: Any, sync: SyncEvidence) -> tuple[float, ...]:
        from pipeline.fusion.voxconverse import conf_thresholds

        return conf_thresholds(cfg.diarise, sync.metric)

    def track_curves(self, cfg: Any, sync: SyncEvidence, distances: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-track smoothed confidence curves from the distances (``diarise``'s settings), as stage 3 fuses."""
        from pipeline.fusion.voxconverse import track_confidence

        return [track_confidence(np.asarray(d), cfg.diarise) for d in distances]

    def clip_report(self, videofile: str | Path, cfg: Any, weights_dir: str | Path | None, device: Any,
                    features: str | None = None) -> ClipReport:
        from pipeline.sync.syncnet import SyncSettings, save_features, sync_clip

        result = sync_clip(videofile, cfg, weights_dir, device, keep_embeddings=bool(features))
        report = ClipReport(demo_report(result.offset_frames, "Min dist", result.min_dist, result.confidence),
                            silent_note(videofile, result.silent))
        if features:
            path = save_features(features, result, SyncSettings.from_config(cfg, demo=True))
            report.after.append(f"saved {result.num_windows} windows of lip and audio embeddings to {path}")
        return report


SYNCNET = SyncNetModel()
