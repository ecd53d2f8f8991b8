"""Stage 4 on a tiny synthetic cache: RTTM, VIA JSON, plots and the annotated video (pipeline/stage4.py)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.annotate import Overlay, write_annotated_video
from pipeline.cache import Cache, file_identity
from pipeline.config import load_config
from pipeline.errors import CacheError, InputError
from pipeline.export import read_rttm
from pipeline.formats import DIARISATION_UPSTREAM
from pipeline.media import iter_frames
from pipeline.plots import identity_speakers, plot_sync, plot_timeline, speaker_colours, track_labels
from pipeline.stage3 import save_sync_curves
from pipeline.stage4 import output_names, visualise
from pipeline.sync.evidence_record import SyncEvidence
from tests.synth import make_video, make_wav

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "visualise.py"
REF = "clip"
WIDTH, HEIGHT = 160, 120
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _track(first: int, last: int, centre_x: float) -> dict:
    frames = np.arange(first, last + 1)
    n = frames.size
    x = np.full(n, centre_x)
    y = np.full(n, 60.0)
    s = np.full(n, 20.0)
    bbox = np.stack([x - s, y - s, x + s, y + s], axis=1)
    return {"track": {"frame": frames, "bbox": bbox}, "proc_track": {"x": x, "y": y, "s": s}}


def _dists(num_frames: int, best_shift: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dists = rng.uniform(0.8, 1.2, size=(num_frames - 4, 21)).astype(np.float32)  # 5-frame windows
    dists[:, best_shift] -= 0.6
    return dists


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    """A cache with every input of stage 4 for a 2 s, 160 x 120 video with a tone."""
    video = make_video(tmp_path / "clip.mp4", num_frames=50, size=(WIDTH, HEIGHT), audio_s=2.0)
    num_frames = sum(1 for _ in iter_frames(video, frame_rate_hz=25))
    data_dir = tmp_path / "data"
    cache = Cache(data_dir, REF)
    make_wav(cache.audio_wav, seconds=2.0)
    tracks = [_track(0, 49, 40.0), _track(10, 45, 120.0)]
    objects = {
        "media.pckl": {"source": file_identity(video), "num_frames": num_frames, "frame_rate_hz": 25.0,
                       "width": WIDTH, "height": HEIGHT, "duration_s": num_frames / 25.0, "num_samples": 32000,
                       "sample_rate_hz": 16000, "has_audio": True},
        "tracks.pckl": tracks,
        "activesd.pckl": [_dists(50, 10, 0), _dists(36, 3, 1)],
        "sync.pckl": SyncEvidence("syncnet", "cosine", score_name="min_dist", vshift_frames=10,
                                  offset_frames=(0.0, -7.0), score=(0.4, 0.5), confidence=(0.6, 0.5)).to_pickle(),
    }
    for name, obj in objects.items():
        cache.save_pickle(name, obj, stage="test", key={})
    cache.save_pickle("faceid.pckl", [0, 1], stage="test", key={"upstream": {"tracks.pckl": cache.digest("tracks.pckl")}})
    save_stage3_turns(cache, [(0.0, 1.2, "spk00", "av", (0,)), (1.2, 1.8, "spk01", "av", (1,)),
                              (1.8, 2.0, "unknown", "audio", ())])
    return data_dir


def save_stage3_turns(cache: Cache, turns: list, cfg=None) -> None:
    """diarization.pckl and sync_curves.pckl as stage 3 records them (made from the cache's current upstream)."""
    upstream = {name: cache.digest(name) for name in DIARISATION_UPSTREAM}
    cache.save_pickle("diarization.pckl", turns, stage="test", key={"upstream": upstream})
    save_sync_curves(cache, cfg or load_config(), cache.load_pickle("activesd.pckl"),
                     SyncEvidence.from_pickle(cache.load_pickle("sync.pckl")))


def _decode(path: Path):
    with av.open(str(path)) as container:
        kinds = {(s.type, s.codec_context.name) for s in container.streams}
        video = container.streams.video[0]
        size = (video.codec_context.width, video.codec_context.height)
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio_samples = sum(f.samples for f in container.decode(audio=0))
    return kinds, size, frames, audio_samples


def test_visualise_writes_every_output(cache_dir, tmp_path):
    cfg = load_config()
    out_dir = tmp_path / "out"
    outputs = visualise(cache_dir, REF, cfg, video=True, out_dir=out_dir)
    work = cache_dir / "pywork" / REF
    names = output_names(REF)
    assert set(outputs) == {"rttm", "via", "sync_plot", "timeline_plot", "video"}
    for kind, path in outputs.items():
        assert path == out_dir / names[kind] and path.is_file()
        assert (work / names[kind]).read_bytes() == path.read_bytes()
    assert names["rttm"] == "clip.rttm" and names["via"] == "clip_via.json"
    assert not [p for p in work.iterdir() if p.name.startswith(".")]  # no temporary files left

    assert read_rttm(outputs["rttm"]) == {"clip": [(0.0, 1.2, "spk00"), (1.2, 1.8, "spk01"), (1.8, 2.0, "unknown")]}
    project = json.loads(outputs["via"].read_text())
    assert project["file"]["1"]["fname"] == "clip.mp4" and len(project["metadata"]) == 3

    for kind in ("sync_plot", "timeline_plot"):
        data = outputs[kind].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        import matplotlib.image

        image = matplotlib.image.imread(outputs[kind])
        assert image.shape[0] > 100 and image.shape[1] > 500 and image.std() > 0.01  # not a blank picture


def test_annotated_video_plays_with_audio_and_boxes(cache_dir, tmp_path):
    outputs = visualise(cache_dir, REF, load_config(), video=True)
    kinds, size, frames, audio_samples = _decode(outputs["video"])
    assert ("video", "h264") in kinds and ("audio", "aac") in kinds
    assert size == (WIDTH, HEIGHT)
    media = Cache(cache_dir, REF, create=False).load_pickle("media.pckl")
    assert len(frames) == media["num_frames"]
    assert abs(audio_samples - 32000) <= 2048  # the whole 2 s tone, give or take the encoder's padding
    # track 0 (spk00, blue box in BGR ~ (180, 119, 31)) is drawn on frame 5 around x = 20..60, y = 40..80
    source = [frame for _, frame in zip(range(6), iter_frames(media["source"]["path"]))][5]
    edge = frames[5][78:82, 25:55].reshape(-1, 3).mean(axis=0)
    assert edge[0] > edge[2] + 60  # blue dominates on the box edge
    assert np.abs(frames[5][78:82, 25:55].astype(int) - source[78:82, 25:55].astype(int)).mean() > 30


def test_without_video_no_mp4(cache_dir):
    outputs = visualise(cache_dir, REF, load_config())
    assert "video" not in outputs
    assert not (cache_dir / "pywork" / REF / output_names(REF)["video"]).exists()


@pytest.mark.parametrize("name, script", [
    ("media.pckl", "run_pipeline.py"),
    ("tracks.pckl", "run_pipeline.py"),
    ("activesd.pckl", "run_syncnet.py"),
    ("sync.pckl", "run_syncnet.py"),
    ("faceid.pckl", "cluster.py"),
    ("diarization.pckl", "cluster.py"),
    ("sync_curves.pckl", "cluster.py"),
])
def test_missing_cache_names_the_stage_to_run(cache_dir, name, script):
    Cache(cache_dir, REF, create=False).invalidate(name)
    with pytest.raises(CacheError, match=rf"no {name} .* run scripts/{script} first"):
        visualise(cache_dir, REF, load_config())


def test_stage4_draws_what_stage3_decided_whatever_its_own_diarise_config(cache_dir, monkeypatch):
    """Other smoothing and thresholds at stage 4 change nothing: the curves and thresholds drawn, the video and
    the RTTM are stage 3's (before the fix stage 4 recomputed the curves with its own config)."""
    import pipeline.plots

    drawn = []
    real_plot_sync = pipeline.plots.plot_sync

    def spy(path, track_frames, confidences, labels, turns, frame_rate_hz, duration_s, thresholds, **kwargs):
        drawn.append(([np.array(c) for c in confidences], tuple(thresholds)))
        return real_plot_sync(path, track_frames, confidences, labels, turns, frame_rate_hz, duration_s, thresholds,
                              **kwargs)

    monkeypatch.setattr(pipeline.plots, "plot_sync", spy)
    cfg = load_config()
    other = load_config(overrides=["diarise.conf_medfilt_frames=5", "diarise.conf_thresholds_cosine=[0.1, 0.2]",
                                   "diarise.conf_pad_frames=0"])
    first = {k: p.read_bytes() for k, p in visualise(cache_dir, REF, cfg, video=True).items() if k != "via"}
    second = {k: p.read_bytes() for k, p in visualise(cache_dir, REF, other, video=True).items() if k != "via"}
    assert first.keys() == {"rttm", "sync_plot", "timeline_plot", "video"} and first == second  # via: a timestamp
    from pipeline.fusion.voxconverse import track_confidence

    dists = Cache(cache_dir, REF, create=False).load_pickle("activesd.pckl")
    for run in drawn:
        assert run[1] == (0.5, 0.9)
        for ours, d in zip(run[0], dists):
            np.testing.assert_array_equal(ours, track_confidence(d, cfg.diarise))


def test_stale_stage3_outputs_are_refused(cache_dir):
    """Turns re-clustered without new curves, or stage 2 re-run after stage 3: stage 4 says run cluster.py."""
    cache = Cache(cache_dir, REF, create=False)
    upstream = {name: cache.digest(name) for name in DIARISATION_UPSTREAM}
    cache.save_pickle("diarization.pckl", [(0.0, 2.0, "spk00", "av", (0,))], stage="test", key={"upstream": upstream})
    with pytest.raises(CacheError, match=r"sync_curves.pckl is stale \(diarization.pckl changed since\): "
                                         r"run scripts/cluster.py again"):
        visualise(cache_dir, REF, load_config())
    dists = cache.load_pickle("activesd.pckl")
    cache.save_pickle("activesd.pckl", [d + 0.01 for d in dists], stage="run_syncnet", key={"again": 1})
    with pytest.raises(CacheError, match=r"diarization.pckl is stale \(activesd.pckl changed since\)"):
        visualise(cache_dir, REF, load_config())


def test_empty_data_dir_says_run_pipeline(tmp_path):
    with pytest.raises(CacheError, match="run scripts/run_pipeline.py first"):
        visualise(tmp_path / "nothing", REF, load_config())
    assert not (tmp_path / "nothing").exists()


def test_inconsistent_cache_is_a_cache_error(cache_dir):
    cache = Cache(cache_dir, REF, create=False)
    save_stage3_turns(cache, [(0.0, 1.0, "spk00", "av", (7,))])
    with pytest.raises(CacheError, match="names track 7 of 2: run scripts/cluster.py again"):
        visualise(cache_dir, REF, load_config())


def test_unwritable_out_dir_is_one_line(cache_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot write to --out_dir") as info:
        visualise(cache_dir, REF, load_config(), out_dir=blocker / "sub")
    assert "\n" not in str(info.value)


def test_fewer_frames_than_media_says_is_a_cache_error_and_leaves_nothing(cache_dir):
    cache = Cache(cache_dir, REF, create=False)
    media = cache.load_pickle("media.pckl")
    cache.save_pickle("media.pckl", dict(media, num_frames=media["num_frames"] + 10), stage="test", key={})
    save_stage3_turns(cache, cache.load_pickle("diarization.pckl"))  # stage 3 re-run on the new media.pckl
    with pytest.raises(CacheError, match="run scripts/run_pipeline.py again"):
        visualise(cache_dir, REF, load_config(), video=True)
    assert not list(cache.work_dir.glob("*.mp4")) and not list(cache.work_dir.glob(".*mp4"))


def test_odd_frame_size_is_padded_to_even(tmp_path):
    frames = [np.full((121, 161, 3), 40 * k, np.uint8) for k in range(5)]
    overlays = {2: [Overlay((10, 10, 60, 60), (0, 0, 255), "spk00  T0  conf 1.00", True)]}
    cfg = load_config().visualise
    out = write_annotated_video(frames, overlays, tmp_path / "odd.mp4", None, 5, 25.0, cfg)
    kinds, size, decoded, _ = _decode_video_only(out)
    assert size == (162, 122) and len(decoded) == 5 and kinds == {("video", "h264")}


def _decode_video_only(path: Path):
    with av.open(str(path)) as container:
        kinds = {(s.type, s.codec_context.name) for s in container.streams}
        video = container.streams.video[0]
        frames = list(container.decode(video=0))
        return kinds, (video.codec_context.width, video.codec_context.height), frames, 0


# ---- plots and labels -----------------------------------------------------------------------------------------
def test_labels_follow_face_identity():
    from pipeline.formats import Turn

    turns = [Turn(0.0, 3.0, "spk01", "av", (0,)), Turn(3.0, 4.0, "spk00", "av", (0, 2)),
             Turn(4.0, 5.0, "spk00", "audio", ())]
    face_ids = [5, 6, 5]  # tracks 0 and 2 are the same face; track 1 never speaks
    assert identity_speakers(turns, face_ids) == {5: "spk01"}  # face 5: spk01 3 s, spk00 1 s + 1 s
    assert track_labels(turns, face_ids) == ["spk01", "face 6", "spk01"]
    colours = speaker_colours(["spk01", "unknown", "spk00"])
    assert colours["unknown"] == (0.5, 0.5, 0.5) and colours["spk00"] != colours["spk01"]


def test_plots_with_no_tracks_and_no_turns(tmp_path):
    sync = plot_sync(tmp_path / "s.png", [], [], [], [], 25.0, 0.0)
    timeline = plot_timeline(tmp_path / "t.png", [], 0.0)
    for path in (sync, timeline):
        assert path.read_bytes().startswith(PNG_MAGIC)


# ---- the command line -----------------------------------------------------------------------------------------
def _script():
    spec = importlib.util.spec_from_file_location("visualise_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_missing_cache_is_one_line(tmp_path, capsys):
    from pipeline.cli import run_main

    script = _script()
    code = run_main(script.main, script.get_parser(), ["--reference", REF, "--data_dir", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "run scripts/run_pipeline.py first" in err


def test_script_lists_outputs(cache_dir, capsys):
    from pipeline.cli import run_main

    script = _script()
    # results on stdout, as diarize.py and every other script; --quiet silences progress, not results
    assert run_main(script.main, script.get_parser(), ["--reference", REF, "--data_dir", str(cache_dir),
                                                       "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "rttm: " in out and "timeline_plot: " in out and f"RTTM file id {REF!r}" in out
    # --file_id: the id a reference RTTM uses for the recording, in the RTTM and said on stdout
    assert run_main(script.main, script.get_parser(), ["--reference", REF, "--data_dir", str(cache_dir),
                                                       "--file_id", "the_recording"]) == 0
    out, err = capsys.readouterr()
    assert "RTTM file id 'the_recording'" in out
    assert set(read_rttm(cache_dir / "pywork" / REF / f"{REF}.rttm")) == {"the_recording"}
    assert run_main(script.main, script.get_parser(), ["--reference", REF, "--data_dir", str(cache_dir),
                                                       "--file_id", "a b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--file_id must be one word" in err


# visualise.py in a fresh interpreter; prints whether torch was imported, then the exit code.
STAGE4_IMPORTS = """
import runpy, sys
sys.argv = ["visualise.py", *sys.argv[1:]]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as done:
    print("torch" in sys.modules, done.code)
"""


def test_stage4_of_syncnet_evidence_does_not_load_torch(cache_dir, tmp_path):
    # stage 4 only reads what stages 2 and 3 wrote: importing torch cost it about 2 of its 4.9 CPU s (issue 23)
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", STAGE4_IMPORTS.format(script=str(SCRIPT)), "--data_dir",
                           str(cache_dir), "--reference", REF, "--out_dir", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True, cwd=SCRIPT.parents[1])
    assert done.stdout.splitlines()[-1].split() == ["False", "0"], done.stdout[-300:] + done.stderr[-500:]
    assert (tmp_path / "out" / f"{REF}.rttm").is_file()
