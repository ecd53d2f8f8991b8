"""Before a whole run (``pipeline.diarize``): every network the four stages will load is loaded once and run on a
tiny input, so that a damaged or diverged checkpoint (non-finite weights or output, a file that does not fit)
is one line before stage 1 rather than after hours of stages 1 and 2.

Loading is on the CPU; ``models.loader`` remembers each file it has checked, so the stages do not run the
check again. A checkpoint that is missing is left to the stage that needs it (stage 2 needs none when no face
is found; stage 1 none when the user placed ``faces.pckl``), except the speaker model, which every run needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models.loader import resolve_weights_dir
from pipeline.cache import Cache
from pipeline.errors import CheckpointError
from pipeline.evidence import configured_model
from pipeline.formats import FACES_FILE


def _present(file: str, weights_dir: str | Path | None) -> bool:
    return (resolve_weights_dir(weights_dir) / file).exists()


def check_networks(cache: Cache, cfg: Any, weights_dir: str | Path | None,
                   speaker_model: str | None = None) -> list[str]:
    """Load and try every network the run will use (see the module docstring); returns the files checked.

    Raises CheckpointError (one line naming the file) for a bad checkpoint, or for a missing speaker model.
    """
    checked: list[str] = []
    if not cache.work(FACES_FILE).is_file():  # stage 1 will detect faces
        from models.s3fd import load_s3fd

        file = cfg.detect.checkpoint
        if _present(file, weights_dir):
            load_s3fd(weights_dir, file)
            checked.append(file)
    for network in configured_model(cfg).networks(cfg, weights_dir):  # the sync model's, its lip model's too
        if _present(network.file, weights_dir):
            network.load()
            checked.append(network.file)
    from pipeline.embed import load_speaker_model

    name = speaker_model or cfg.embed.speaker_model
    load_speaker_model(cfg.embed, weights_dir, "cpu", name=name)  # every run embeds its audio: missing is an error
    checked.append(name)
    from models.loader import find_network_checkpoint
    from pipeline.faceid import load_face_model

    try:
        face_file = find_network_checkpoint("vggface2", cfg.faces.checkpoint, weights_dir)
    except CheckpointError:  # needed only when stage 1 finds a face track: that stage says so
        return checked
    load_face_model(cfg.faces, weights_dir, "cpu")
    checked.append(face_file)
    return checked


__all__ = ["check_networks"]
