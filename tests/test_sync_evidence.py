"""``SyncEvidence`` (``pipeline/sync/evidence_record.py``): the typed ``sync.pckl`` record on disk and back, and
what it refuses. Stage 2 redoing an older file is in ``tests/test_syncnet.py``."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from pipeline.errors import CacheError
from pipeline.sync.evidence_record import SCHEMA, SCHEMA_VERSION, LipEvidence, OutdatedEvidence, SyncEvidence


def _gestsync_with_lips() -> SyncEvidence:
    lips = SyncEvidence("syncnet", "cosine", "syncnet.model", "min_dist", (1.0, math.nan), (0.4, math.nan),
                        (0.5, 0.0), vshift_frames=10)
    return SyncEvidence(
        "gestsync", "cosine_similarity", "gestsync.pth", "best_score", (-5.0, math.nan, 0.0), (3.5, math.nan, 1.0),
        (0.25, 0.0, 0.5), score_raw=tuple(np.arange(n, dtype=np.float32) for n in (4, 3, 2)),
        score_smooth=tuple(np.full(n, 0.5, np.float32) for n in (4, 3, 2)), offset_stride_frames=5,
        max_offset_frames=50, offset_avg_frames=50, num_avg_frames=25, global_speaker=False, logits_scale=10.0,
        persons="face-derived", offset_range_frames=((-50, 50), None, (-5, 5)),
        region_bbox=tuple(np.zeros((n, 4), np.int64) for n in (4, 3, 2)),
        region_from_person=tuple(np.zeros(n, bool) for n in (4, 3, 2)),
        person_tracks=({"frame": np.arange(2, dtype=np.int64), "bbox": np.zeros((2, 4))},),
        lips=LipEvidence("syncnet", (np.ones((3, 21), np.float32), np.zeros((0, 21), np.float32)), lips))


def test_the_record_goes_to_plain_data_and_back_unchanged():
    record = _gestsync_with_lips()
    data = pickle.loads(pickle.dumps(record.to_pickle()))
    assert data["schema"] == SCHEMA and data["version"] == SCHEMA_VERSION
    assert type(data) is dict and type(data["lips"]) is dict and type(data["lips"]["sync"]) is dict  # no class
    assert b"evidence_record" not in pickle.dumps(record.to_pickle())  # the file names no module of ours
    back = SyncEvidence.from_pickle(data)
    assert back.to_pickle().keys() == data.keys()
    assert back.offset_frames[:1] == (-5.0,) and math.isnan(back.offset_frames[1]) and back.logits_scale == 10.0
    assert back.offset_range_frames == ((-50, 50), None, (-5, 5)) and back.lips.sync.score_name == "min_dist"
    np.testing.assert_array_equal(back.score_raw[0], record.score_raw[0])
    np.testing.assert_array_equal(back.lips.distances[0], record.lips.distances[0])
    assert back.score_raw[0].dtype == np.float32 and back.region_bbox[0].dtype == np.int64


@pytest.mark.parametrize("old", [
    {"metric": "cosine", "vshift_frames": 10, "offset_frames": [0.0], "min_dist": [0.4], "confidence": [0.5]},
    {"model": "wav2lip", "metric": "cosine_similarity", "offset_frames": [], "best_score": [], "confidence": []},
    {"schema": SCHEMA, "version": SCHEMA_VERSION + 1},
])
def test_an_older_layout_is_recognised_as_outdated(old):
    with pytest.raises(OutdatedEvidence):
        SyncEvidence.from_pickle(old)


def test_a_malformed_record_is_one_line_naming_stage_2():
    good = _gestsync_with_lips().to_pickle()
    broken = [dict(good, offset_frames=[0.0]),  # fewer offsets than scores
              dict(good, confidence=[0.25, 0.0]),  # one confidence short (the per-track lists still match)
              dict(good, model="lipnet"),
              dict(good, score_raw=[np.zeros(1)]),
              {k: v for k, v in good.items() if k != "persons"},
              dict(good, extra=1),
              dict(good, lips=dict(good["lips"], distances=[]))]
    for data in broken:
        with pytest.raises(CacheError, match="run scripts/run_syncnet.py again") as err:
            SyncEvidence.from_pickle(data)
        assert not isinstance(err.value, OutdatedEvidence) and "\n" not in str(err.value)
    with pytest.raises(CacheError, match="not stage 2's evidence"):
        SyncEvidence.from_pickle([1, 2])


def test_an_older_dict_reads_into_the_same_values_for_comparison():
    """``from_legacy`` (for ``scripts/bench_compare.py``): the old SyncNet dict and the new record of the same
    numbers give the same plain data."""
    old = {"metric": "cosine", "vshift_frames": 10, "offset_frames": [0.0, math.nan], "min_dist": [0.4, math.nan],
           "confidence": [0.5, 0.0], "checkpoint": "syncnet.model", "model": "syncnet"}
    new = SyncEvidence("syncnet", "cosine", "syncnet.model", "min_dist", (0.0, math.nan), (0.4, math.nan),
                       (0.5, 0.0), vshift_frames=10)
    assert repr(SyncEvidence.from_legacy(old).to_pickle()) == repr(new.to_pickle())


def test_bench_compare_compares_sync_pckl_by_value_across_layouts(tmp_path):
    """``scripts/bench_compare.py``: an older checkout's dict and this one's record of the same numbers are the
    same ``sync.pckl``; one number apart, they are not."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_compare.py"
    spec = importlib.util.spec_from_file_location("bench_compare_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    old = {"metric": "cosine", "vshift_frames": 10, "offset_frames": [-3.0], "min_dist": [0.4],
           "confidence": [0.5], "checkpoint": "syncnet.model", "model": "syncnet"}
    new = SyncEvidence("syncnet", "cosine", "syncnet.model", "min_dist", (-3.0,), (0.4,), (0.5,), vshift_frames=10)
    for side, data in (("a", old), ("b", new.to_pickle()), ("c", dict(old, confidence=[0.51]))):
        work = tmp_path / side / "data" / "pywork" / bench.REFERENCE
        work.mkdir(parents=True)
        (work / "sync.pckl").write_bytes(pickle.dumps(data))
    sync_line = [line for line in bench.compare_outputs(tmp_path / "a", tmp_path / "b") if "sync.pckl" in line]
    assert sync_line and sync_line[0].split()[-1] == "same"
    sync_line = [line for line in bench.compare_outputs(tmp_path / "c", tmp_path / "b") if "sync.pckl" in line]
    assert sync_line[0].split()[-1] == "DIFFERENT"
