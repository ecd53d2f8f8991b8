"""Store the regression RTTM of every shared clip (tests/data/regression/), as tests/test_all_clips.py makes it.

    python tests/make_regression_rttms.py [CLIP ...]

Run it only for an intended change of behaviour, and say in the commit what changed and why.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.random_weights import write_random_checkpoints  # noqa: E402
from pipeline.cache import Cache  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.stage1 import run_pipeline  # noqa: E402
from pipeline.stage2 import run_stage2  # noqa: E402
from pipeline.stage3 import run_cluster  # noqa: E402
from pipeline.stage4 import visualise  # noqa: E402
from tests.conftest import DETECTIONS, VIDEOS  # noqa: E402
from tests.test_all_clips import CLIPS, REGRESSION_DIR  # noqa: E402


def main(names: list[str]) -> int:
    REGRESSION_DIR.mkdir(parents=True, exist_ok=True)
    cfg = load_config()
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_random_checkpoints(Path(tmp) / "weights")
        for name in names or CLIPS:
            work = Path(tmp) / name
            cache = Cache(work, name)
            shutil.copy(DETECTIONS / f"{name}_haar_faces.pckl", cache.work("faces.pckl"))
            run_pipeline(VIDEOS / f"{name}.mp4", cache, cfg)
            run_stage2(cache, cfg, weights, "cpu")
            run_cluster(cache, cfg, weights, "cpu")
            rttm = visualise(work, name, cfg)["rttm"]
            shutil.copyfile(rttm, REGRESSION_DIR / f"{name}.rttm")
            print(f"{name}: {sum(1 for line in rttm.read_text().splitlines() if line.strip())} turns", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
