"""Issue 22: inputs that used to give a wrong result with exit 0 now give a correct one, or one line and nothing
written. Each test is a command, what it must print and what it must leave on disk."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.random_weights import write_random_checkpoints
from pipeline.errors import CheckpointError
from tests.conftest import REPO, clip
from tests.test_detections import faststart_cut

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the published")


def script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def error_lines(stderr: str) -> list[str]:
    """stderr without the "not the published checkpoint" warnings the random weights cause."""
    return [line for line in stderr.strip().splitlines() if ": warning: " not in line]


def nan_checkpoint(path: Path) -> Path:
    """``path`` (a bare or a training-checkpoint state dict) with every floating-point weight NaN."""
    state = torch.load(path, weights_only=True)
    inner = state["state_dict"] if "state_dict" in state else state
    for key, value in inner.items():
        if value.is_floating_point():
            inner[key] = torch.full_like(value, float("nan"))
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    from tests.test_gestsync import published_checkpoint

    folder = write_random_checkpoints(tmp_path_factory.mktemp("weights"))
    published_checkpoint(folder / "model_rgb.pth")
    return folder


def weights_with_nan(random_weights: Path, folder: Path, file: str) -> Path:
    """A weights folder like ``random_weights`` in which ``file`` is all NaN."""
    folder.mkdir(parents=True)
    for path in random_weights.iterdir():
        if path.name == file:
            (folder / file).write_bytes(path.read_bytes())
            nan_checkpoint(folder / file)
        else:
            (folder / path.name).symlink_to(path)
    return folder


# --- 1. every network the run loads is tried -----------------------------------------------------------------

def test_nan_lipsync_expert_is_refused_by_diarize_before_stage_1(random_weights, tmp_path):
    weights = weights_with_nan(random_weights, tmp_path / "w", "lipsync_expert.pth")
    data = tmp_path / "data"
    result = script("diarize", "--videofile", str(clip("retalking_talkinghead_5")), "--data_dir", str(data),
                    "--weights_dir", str(weights), "--sync_model", "wav2lip", "--out_dir", str(tmp_path / "out"),
                    "--quiet")
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"checkpoint {weights / 'lipsync_expert.pth'} holds non-finite weights" in lines[0], lines[0]
    assert not (data / "pywork").exists() or not any((data / "pywork").rglob("*.pckl"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_nan_lipsync_expert_is_refused_by_run_syncnet_on_one_clip(random_weights, tmp_path):
    weights = weights_with_nan(random_weights, tmp_path / "w", "lipsync_expert.pth")
    result = script("run_syncnet", "--videofile", str(clip("retalking_talkinghead_5")), "--sync_model", "wav2lip",
                    "--weights_dir", str(weights))
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "lipsync_expert.pth holds non-finite weights" in lines[0] and "nan" not in result.stdout.lower()


@pytest.mark.parametrize("lip_model, file", [("wav2lip", "lipsync_expert.pth"), ("syncnet", "syncnet.model")])
def test_preflight_tries_gestsyncs_lip_model(random_weights, tmp_path, lip_model, file):
    from pipeline.cache import Cache
    from pipeline.config import load_config
    from pipeline.preflight import check_networks

    cfg = load_config(overrides=["sync.model=gestsync", f"gestsync.lip_model={lip_model}"])
    cache = Cache(tmp_path / "data", "clip")
    cache.work("faces.pckl").write_bytes(b"")  # detections placed: S3FD is not loaded (faster)
    assert file in check_networks(cache, cfg, random_weights)
    weights = weights_with_nan(random_weights, tmp_path / "w", file)
    with pytest.raises(CheckpointError, match=f"{file} holds non-finite weights"):
        check_networks(cache, cfg, weights)


# --- an unknown config key is refused, never ignored ---------------------------------------------------------

@pytest.mark.parametrize("how", ["set", "config"])
def test_misspelt_config_key_is_one_line_naming_the_closest_key(tmp_path, how):
    if how == "set":
        args = ["--set", "diarise.merge_distnce=0.5"]
    else:
        (tmp_path / "my.yaml").write_text("diarise:\n  merge_distance: 0.4\n  merge_distnce: 0.5\n")
        args = ["--config", str(tmp_path / "my.yaml")]
    data = tmp_path / "data"
    result = script("diarize", "--videofile", str(clip("retalking_talkinghead_5")), "--data_dir", str(data),
                    "--out_dir", str(tmp_path / "out"), *args)
    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert result.stderr.strip() == ("diarize.py: error: unknown config key diarise.merge_distnce (see "
                                     "configs/default.yaml); did you mean diarise.merge_distance?"), result.stderr
    assert not data.exists() and not (tmp_path / "out").exists()


# --- cache keys hold everything a stage reads ----------------------------------------------------------------

@pytest.mark.parametrize("step", ["diarisation", "sync_curves"])
def test_stage3_reruns_when_wav2lips_thresholds_change_under_gestsync_with_wav2lip_lips(tmp_path, monkeypatch, step):
    """With ``sync.model=gestsync, gestsync.lip_model=wav2lip`` the lip curves are mapped with Wav2Lip's
    thresholds: changing them must redo stage 3's decision and curves, not reuse the stale ones."""
    import numpy as np

    from pipeline import stage3
    from pipeline.cache import Cache
    from pipeline.config import load_config

    cache = Cache(tmp_path / "data", "clip")
    seen: list[tuple] = []
    from pipeline.sync.evidence_record import LipEvidence, SyncEvidence

    sync = SyncEvidence("gestsync", "cosine", lips=LipEvidence("wav2lip", (), SyncEvidence("wav2lip", "cosine_similarity")))

    def fake_decide(cfg, *args, **kwargs):
        seen.append(tuple(cfg.wav2lip.conf_thresholds))
        return []

    def fake_curves(cfg, sync, num_tracks):
        seen.append(tuple(cfg.wav2lip.conf_thresholds))
        return [], []

    monkeypatch.setattr(stage3, "decide", fake_decide)
    monkeypatch.setattr(stage3, "fusion_curves", fake_curves)
    for thresholds in ("[0.5, 0.75]", "[0.5, 0.75]", "[0.6, 0.8]"):
        cfg = load_config(overrides=["sync.model=gestsync", "gestsync.lip_model=wav2lip",
                                     f"wav2lip.conf_thresholds={thresholds}"])
        if step == "diarisation":
            stage3.compute_diarisation(cache, cfg, {"num_frames": 25, "duration_s": 1.0}, [], sync, {"audio": []},
                                       {"embeddings": np.zeros((0, 4)), "hop_s": 0.2, "model": "resnetse34"},
                                       force=False)
        else:
            stage3.save_sync_curves(cache, cfg, [], sync)
    assert seen == [(0.5, 0.75), (0.6, 0.8)]  # the second run reused the first, the third did not


def test_gestsync_stage2_key_changes_when_persons_pckl_is_edited(tmp_path):
    """Person boxes placed by the user feed GestSync's regions: an edited persons.pckl must not reuse stale
    stage-2 scores."""
    import pickle

    from pipeline.cache import Cache
    from pipeline.config import load_config
    from pipeline.sync.gestsync import GestSyncSettings, read_persons, stage2_key

    cfg = load_config(overrides=["sync.model=gestsync"])
    cache = Cache(tmp_path / "data", "clip")
    settings = GestSyncSettings.from_config(cfg)

    def key_with(boxes: list) -> dict:
        with open(cache.work("persons.pckl"), "wb") as handle:
            pickle.dump([[{"frame": 0, "bbox": box, "conf": 1.0} for box in boxes]], handle, protocol=4)
        return stage2_key(cache, cfg, settings, "model_rgb.pth", "0" * 64, read_persons(cache)[1])

    first = key_with([[10.0, 10.0, 100.0, 200.0]])
    assert key_with([[10.0, 10.0, 100.0, 200.0]]) == first
    assert key_with([[20.0, 10.0, 110.0, 200.0]]) != first


# --- the channel order reaching each network is its reference's ---------------------------------------------

BGR_PIXEL = (30, 110, 220)  # distinct blue, green, red levels


@pytest.fixture(scope="module")
def coloured_video(tmp_path_factory) -> Path:
    """12 frames of one flat colour, blue 30, green 110, red 220 (H.264 keeps each within a few levels)."""
    import numpy as np

    from tests.synth import make_video

    path = tmp_path_factory.mktemp("colour") / "colour.mp4"
    return make_video(path, num_frames=12, size=(96, 96), codec="libx264",
                      frame_fn=lambda k: np.full((96, 96, 3), BGR_PIXEL, np.uint8))


def decoded_frames(path: Path) -> list:
    from pipeline import media

    return list(media.iter_frames(path, 25.0))


def assert_channels(levels: list[float], expected: tuple[int, int, int], who: str) -> None:
    """Channel k's mean level (0..255) equals ``expected[k]`` within H.264's rounding."""
    assert all(abs(level - want) <= 6 for level, want in zip(levels, expected)), f"{who} got channels {levels}"


def test_wav2lip_expert_sees_bgr_as_wav2lip_reads_with_cv2(coloured_video):
    """Wav2Lip's expert was trained on ``cv2.imread`` crops, so its first channel of each frame is blue."""
    import numpy as np

    from models.wav2lip import LipSyncExpert
    from pipeline.config import load_config
    from pipeline.sync.wav2lip import ExpertSettings, score_tracks

    model, seen = LipSyncExpert().eval(), []
    model.face_encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    frames = decoded_frames(coloured_video)
    tracks = [{"track": {"frame": np.arange(len(frames)), "bbox": np.tile([20.0, 20.0, 76.0, 76.0], (len(frames), 1))}}]
    audio = (np.random.default_rng(0).standard_normal(16000) * 3000).astype(np.int16)
    score_tracks(model, iter(frames), tracks, [audio], ExpertSettings.from_config(load_config()), "cpu",
                 lambda *args, **kwargs: None)
    windows = torch.cat(seen)  # [n, 15, 48, 96]: channel 3k + c is frame k's channel c
    assert windows.shape[1] == 15
    levels = [float(windows[:, c::3].mean()) * 255 for c in range(3)]
    assert_channels(levels, BGR_PIXEL, "the Wav2Lip expert")


def test_gestsync_sees_rgb_as_gestsync_reads_its_frames(coloured_video):
    """GestSync's demos convert OpenCV's BGR frames to RGB before the network: its first channel is red."""
    import numpy as np

    from models.gestsync import GestSyncRGB
    from pipeline.config import load_config
    from pipeline.sync.gestsync import GestSyncSettings, score_tracks

    model, seen = GestSyncRGB().eval(), []
    model.net_vid.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    frames = decoded_frames(coloured_video)
    tracks = [{"frame": np.arange(len(frames))}]
    regions = [np.tile([48.0, 48.0, 48.0], (len(frames), 1))]  # crop squares (centre x, centre y, half side)
    audio = (np.random.default_rng(0).standard_normal(16000) * 3000).astype(np.int16)
    score_tracks(model, iter(frames), tracks, regions, [None], [audio],
                 GestSyncSettings.from_config(load_config()), "cpu", lambda *args, **kwargs: None)
    clip = torch.cat(seen, dim=2)  # [1, 3, T, 270, 480]; the top rows are blacked out (no face known)
    lit = clip[:, :, :, -100:]
    levels = [float(lit[:, c].mean()) * 255 for c in range(3)]
    assert_channels(levels, BGR_PIXEL[::-1], "GestSync")


# --- 3. settings the networks or the clip cannot take ---------------------------------------------------------

@pytest.mark.parametrize("setting, message", [
    ("gestsync.num_mels=1", "config value gestsync.num_mels must be 80, the filterbank bands GestSync's audio "
                            "network was trained on, got 1"),
    ("gestsync.window_frames=100000", "config value gestsync.window_frames must be in [5, 54], got 100000"),
    ("gestsync.window_frames=40", "gestsync.window_frames x gestsync.mel_frames_per_video_frame is 160 filterbank "
                                  "frames; GestSync's audio network makes one embedding of 85 to 116 (trained on "
                                  "25 x 4 = 100)"),
])
def test_gestsync_settings_its_network_cannot_take_are_one_line(tmp_path, setting, message):
    data = tmp_path / "data"
    result = script("diarize", "--videofile", str(clip("retalking_talkinghead_5")), "--data_dir", str(data),
                    "--out_dir", str(tmp_path / "out"), "--sync_model", "gestsync", "--set", setting)
    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert result.stderr.strip() == f"diarize.py: error: {message}", result.stderr
    assert not data.exists() and not (tmp_path / "out").exists()


def test_gestsync_ranges_are_what_its_network_takes():
    """The limits pipeline/config.py states (it cannot import torch) are the network's: at the limits one
    embedding per window, beyond them none (an error, or more than one)."""
    from models.gestsync import POS_ENCODING_MAX_LEN, GestSyncRGB
    from pipeline import config
    from pipeline.sync.gestsync import TEMPORAL_KERNEL_FRAMES

    assert config.GESTSYNC_MAX_WINDOW_FRAMES == POS_ENCODING_MAX_LEN + TEMPORAL_KERNEL_FRAMES - 1
    model = GestSyncRGB().eval()

    def one_embedding(bands: int, frames: int) -> bool:
        try:
            with torch.no_grad():
                return tuple(model.forward_aud(torch.zeros(1, 1, bands, frames)).shape) == (1, 1024, 1)
        except RuntimeError:
            return False

    low, high = config.GESTSYNC_MEL_WINDOW_FRAMES
    bands = config.GESTSYNC_MEL_BANDS
    assert one_embedding(bands, low) and one_embedding(bands, high)
    assert not one_embedding(bands, low - 1) and not one_embedding(bands, high + 1)
    assert not one_embedding(1, 100)


def test_wav2lip_offset_search_longer_than_every_track_is_one_line(random_weights, tmp_path):
    """``wav2lip.vshift_frames=100000`` used to allocate 26 GB; now it is one line naming the longest track."""
    import pickle
    import shutil

    from tests.conftest import DETECTIONS

    data = tmp_path / "data"
    work = data / "pywork" / "clip"
    work.mkdir(parents=True)
    with open(DETECTIONS / "retalking_talkinghead_5_haar_faces.pckl", "rb") as handle:
        faces = pickle.load(handle)
    with open(work / "faces.pckl", "wb") as handle:
        pickle.dump(faces, handle, protocol=4)
    video = tmp_path / "clip.mp4"
    shutil.copy(clip("retalking_talkinghead_5"), video)
    common = ["--data_dir", str(data), "--weights_dir", str(random_weights), "--reference", "clip", "--quiet"]
    assert script("run_pipeline", "--videofile", str(video), *common).returncode == 0
    result = script("run_syncnet", *common, "--sync_model", "wav2lip", "--set", "wav2lip.vshift_frames=100000")
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("run_syncnet.py: error: wav2lip.vshift_frames is 100000, but the longest face "
                               "track has only "), lines[0]
    assert not (work / "sync.pckl").exists() and not (work / "offsets.txt").exists()


# --- 2. a truncated file is not read as a short one -----------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_faststart_mp4_cut_short_is_one_line_and_nothing_written(tmp_path, fraction):
    cut = faststart_cut(clip("retalking_talkinghead_5"), tmp_path / "cut.mp4", fraction)  # index at the front
    out, data_dir = tmp_path / "out", tmp_path / "data"
    result = script("diarize", "--videofile", str(cut), "--data_dir", str(data_dir), "--out_dir", str(out),
                    "--weights_dir", str(tmp_path / "no_weights"), "--speaker_model", "resemblyzer", "--quiet")
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"diarize.py: error: {cut} is truncated: its audio stream declares 4.87 s but only "), \
        lines[0]
    assert lines[0].endswith("decode (an interrupted download or copy?); get the whole file")
    assert not out.exists() or not any(out.iterdir())
    assert not any(data_dir.rglob("*.wav")) and not any(data_dir.rglob("*.pckl"))


def test_truncated_video_stream_is_refused_after_its_frames():
    """The frames of a stream that ends early are read, then one line (stage 1 has written nothing by then)."""
    from pipeline import media
    from pipeline.errors import InputError

    frames = media.iter_frames(clip("retalking_talkinghead_5"), 25.0, max_missing_s=0.25)
    assert sum(1 for _ in frames) == 122  # the whole clip passes
    with pytest.raises(InputError, match=r"is truncated: its video stream declares 4\.88 s but only 4\.00 s decode"):
        media.check_complete("clip.mp4", "video", 4.88, 4.0, 0.25)


# --- 6. NaN samples in a float wav ---------------------------------------------------------------------------

def test_float_wav_with_nan_samples_is_one_line(tmp_path):
    """2 s of NaN inside speech used to be converted to noise and diarised (exit 0, a wrong extra speaker)."""
    import numpy as np
    import soundfile

    speech, rate = soundfile.read(REPO.parent / "shared" / "data" / "audio" / "pyannote_sample" / "sample.wav",
                                  dtype="float32")
    speech = speech[:10 * rate].copy()
    speech[4 * rate:6 * rate] = np.nan
    wav = tmp_path / "nan.wav"
    soundfile.write(wav, speech, rate, subtype="FLOAT")
    out, data_dir = tmp_path / "out", tmp_path / "data"
    result = script("diarize", "--videofile", str(wav), "--data_dir", str(data_dir), "--out_dir", str(out),
                    "--weights_dir", str(tmp_path / "no_weights"), "--speaker_model", "resemblyzer", "--quiet")
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0] == (f"diarize.py: error: {wav} has 32000 NaN or infinite audio samples (the first at 4.00 s): "
                        f"the audio is damaged; repair or re-export it"), lines[0]
    assert not out.exists() or not any(out.iterdir())
    assert not any(data_dir.rglob("*.wav")) and not any(data_dir.rglob("*.pckl"))


# --- 7. Ctrl-C during a --force rerun: the pipeline's own faces.pckl is not taken for the user's --------------

def test_interrupted_force_rerun_detects_again(random_weights, tmp_path):
    """The state a finished run leaves (the pipeline's faces.pckl with its manifest), then ``run_pipeline.py
    --force`` stopped by Ctrl-C while S3FD runs, then a plain rerun: it must detect again, not adopt the old
    file as detections the user placed. ``detect.conf_threshold=1.0`` keeps every run free of tracks (fast)."""
    import json
    import signal
    import time

    import numpy as np

    from pipeline.cache import Cache
    from pipeline.stage1 import save_detections
    from tests.synth import make_video

    num_frames = 75
    video = make_video(tmp_path / "v.mp4", num_frames=num_frames, size=(160, 120), audio_s=num_frames / 25,
                       frame_fn=lambda k: np.full((120, 160, 3), (k * 7) % 200, np.uint8))
    data = tmp_path / "data"
    save_detections(Cache(data, "v"), [[] for _ in range(num_frames)], {"input": "an earlier run", "detect": {}})
    manifest = data / "pywork" / "v" / "manifest" / "faces.pckl.json"
    args = [sys.executable, str(REPO / "scripts" / "run_pipeline.py"), "--videofile", str(video), "--data_dir",
            str(data), "--reference", "v", "--weights_dir", str(random_weights), "--set", "detect.conf_threshold=1.0"]

    # the child gets the default Ctrl-C action, as in a terminal: a suite started in the background (a
    # non-interactive shell's `&`) hands its children SIGINT ignored, and the run would finish
    rerun = subprocess.Popen(args + ["--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while manifest.exists() and rerun.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # --force drops the detections' manifest just before S3FD starts
    rerun.send_signal(signal.SIGINT)  # Ctrl-C while it detects
    _, err = rerun.communicate(timeout=60)
    assert rerun.returncode != 0 and not manifest.exists(), err  # stopped before new detections were saved

    again = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert "using the face detections found in faces.pckl" not in again.stderr, again.stderr
    assert json.loads(manifest.read_text())["key"]["detect"]["conf_threshold"] == 1.0  # S3FD ran again


def test_faces_pckl_written_but_not_yet_recorded_is_the_pipelines(tmp_path):
    """A run killed between writing faces.pckl and its manifest leaves the pipeline's file without a manifest:
    it is recognised by the mark written before it, while a file the user puts there later is theirs."""
    import pickle

    from pipeline.cache import Cache
    from pipeline.stage1 import _user_faces, save_detections

    cache = Cache(tmp_path / "data", "v")
    faces = [[{"frame": 0, "bbox": [1.0, 2.0, 30.0, 40.0], "conf": 0.9}]]
    save_detections(cache, faces, {"detect": "key"})
    cache.invalidate("faces.pckl")  # what a kill before cache.record leaves
    assert _user_faces(cache, {"sha256": "x"}) is None
    with open(cache.work("faces.pckl"), "wb") as handle:
        pickle.dump([[{"frame": 0, "bbox": [5.0, 5.0, 50.0, 50.0], "conf": 1.0}]], handle, protocol=4)
    assert _user_faces(cache, {"sha256": "x"})[0][0]["bbox"] == [5.0, 5.0, 50.0, 50.0]
