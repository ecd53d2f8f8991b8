"""What every registered sync model owes the stages (``pipeline.sync.base.SyncModel``), checked through the
interface only, so that a model added to the registry is tested here without editing this file.

- its stage-2 key changes when any setting of its section outside ``stage2_excluded_keys`` (speed-only, or
  read by stage 3 only) changes, when its checkpoint or any of its declared ``input_files`` changes, and not
  when an excluded setting does;
- its stage-3 key changes whenever a setting changes what stage 3 reads of it (thresholds or curves);
- a flat frame with distinct blue, green and red levels reaches its network in ``channel_order``;
- the networks it declares cover every checkpoint its evidence step loads;
- a checkpoint of it whose weights are NaN is refused before stage 1 with one line.

Seeded random weights, a 34-frame flat-colour clip with a tone, evidence computed once per model variant. Every
variant runs with a short GestSync offset search (``FAST``: 5 windows averaged, offsets up to +-2 frames in steps
of 1) so that 34 frames are enough for every model's search; the checks do not depend on the search's size.
"""
from __future__ import annotations

import copy
import functools
import math
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models import loader
from models.random_weights import write_random_checkpoints
from pipeline.cache import Cache
from pipeline.config import load_config
from pipeline.errors import CheckpointError, InputError
from pipeline.stage1 import run_pipeline
from pipeline.sync import get_sync_model, registered_models
from pipeline.sync.evidence_record import SyncEvidence
from tests.conftest import REPO
from tests.synth import make_video
from tests.test_nothing_silent import error_lines, nan_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the published")

BGR_PIXEL = (30, 110, 220)  # distinct blue, green, red levels
NUM_FRAMES = 34  # enough for every model's offset search (GestSync under FAST: 25-frame windows, 5 candidates
# 1 frame apart, each averaging 5 windows, and 25 frames for its smoothed curve)
FAST = ("gestsync.offset_avg_frames=5", "gestsync.offset_stride_frames=1", "gestsync.max_offset_frames=2")
FACE_BOX = [40.0, 40.0, 120.0, 120.0]
NOOP = lambda *args, **kwargs: None  # noqa: E731


@functools.cache
def _choices(section: str, key: str) -> list[str]:
    """The named choices the config allows for ``section.key`` (from its one-line refusal), else []."""
    try:
        load_config(overrides=[f"{section}.{key}=not-a-choice"])
    except InputError as err:
        found = re.search(r"must be one of (.*?), got", str(err))
        return found.group(1).split(", ") if found else []
    return []


def variants() -> list[tuple[str, tuple[str, ...]]]:
    """Every registered model with its defaults, and once per other registered model a choice of its section
    may name (GestSync's ``lip_model``)."""
    out = []
    for name in registered_models():
        model = get_sync_model(name)
        out.append((name, ()))
        for key, value in load_config()[model.section].to_dict().items():
            if isinstance(value, str):
                out += [(name, (f"{model.section}.{key}={choice}",)) for choice in _choices(model.section, key)
                        if choice in registered_models() and choice != value]
    return out


VARIANTS = variants()


@functools.cache
def config(name: str, overrides: tuple[str, ...] = (), *more: str) -> Any:
    """The config of one variant plus ``more`` overrides (frozen, so one object per distinct argument list;
    a refused list raises each time)."""
    return load_config(overrides=[f"sync.model={name}", *FAST, *overrides, *more])


def candidates(value: Any) -> list[Any]:
    """Other values of a setting's type, nearest first (the config's range rules pick the first allowed)."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value * 2, value - 1, 1, 0]
    if isinstance(value, float):
        return [value * 1.5 if value else 0.5, value + 0.1, value * 0.5, value - 0.1]
    if isinstance(value, list):
        return [[v + 0.05 for v in value], [v * 1.1 for v in value]]
    return []


def yaml_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def changed_configs(name: str, overrides: tuple[str, ...], section: str, key: str, value: Any) -> list[Any]:
    """Configs that differ from the variant's only in ``section.key`` (every candidate the config accepts)."""
    values = candidates(value) if not isinstance(value, str) else _choices(section, key)
    out = []
    for other in (v for v in values if v != value):
        try:
            out.append(config(name, overrides, f"{section}.{key}={yaml_value(other)}"))
        except InputError:
            continue
    return out


# ---- fixtures: the config file read once, weights, a stage-1 cache, evidence --------------------------
@pytest.fixture(autouse=True, scope="module")
def _default_config_parsed_once():
    """``configs/default.yaml`` parsed once for the module (a copy each time, keyed by the file's size and
    mtime): the key tests load a config per candidate setting, some two thousand in all, and parsing the YAML
    was most of that. The values and checks of ``load_config`` are unchanged."""
    from pipeline import config as config_module

    read, parsed = config_module._read_yaml, {}

    def read_once(path: Path) -> dict:
        stat = Path(path).stat()
        ident = (str(path), stat.st_size, stat.st_mtime_ns)
        if ident not in parsed:
            parsed[ident] = read(path)
        return copy.deepcopy(parsed[ident])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config_module, "_read_yaml", read_once)
        config.cache_clear()
        yield
    config.cache_clear()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from tests.test_gestsync import published_checkpoint

    folder = write_random_checkpoints(tmp_path_factory.mktemp("weights"))
    published_checkpoint(folder / "model_rgb.pth")
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Cache:
    """Stage 1 on a flat BGR (30, 110, 220) clip with a tone, one placed face box in every frame."""
    root = tmp_path_factory.mktemp("colour")
    video = make_video(root / "colour.mp4", num_frames=NUM_FRAMES, size=(160, 160), codec="libx264",
                       audio_s=NUM_FRAMES / 25, frame_fn=lambda k: np.full((160, 160, 3), BGR_PIXEL, np.uint8))
    cache = Cache(root / "data", "colour")
    faces = [[{"frame": k, "bbox": FACE_BOX, "conf": 1.0}] for k in range(NUM_FRAMES)]
    with open(cache.work("faces.pckl"), "wb") as handle:
        pickle.dump(faces, handle, protocol=4)
    short_tracks = load_config(overrides=[f"track.min_track_frames={NUM_FRAMES - 4}"])  # the default wants 51 frames
    assert run_pipeline(video, cache, short_tracks).num_tracks == 1
    return cache


@pytest.fixture(scope="module")
def evidence(cache, weights, tmp_path_factory) -> dict:
    """Per variant: the evidence, the checkpoint files loaded, and the first image batch each network saw."""
    out = {}
    for name, overrides in VARIANTS:
        loaded, seen = [], []
        with pytest.MonkeyPatch.context() as patch:
            _record_loads_and_images(patch, loaded, seen)
            tracks = cache.load_pickle("tracks.pckl")
            result = get_sync_model(name).evidence(cache, config(name, overrides), tracks, weights, "cpu", NOOP)
        # the clip is long enough for every model's offset search (else stage 3's reads could not show a
        # preference between lip and gesture evidence, which needs both offsets)
        assert all(math.isfinite(v) for v in result.sync.offset_frames), (name, overrides, result.sync.offset_frames)
        out[(name, overrides)] = {"evidence": result, "loaded": loaded, "images": seen}
    return out


def _record_loads_and_images(patch: pytest.MonkeyPatch, loaded: list[str], seen: list[torch.Tensor]) -> None:
    """Record every checkpoint file loaded and the input of each network's first convolution on 3k channels
    (the picture; audio convolutions take 1 channel). The finiteness probe is skipped: it is not the picture."""
    resolve = loader.checkpoint_path

    def recording_path(file: str, weights_dir: Any) -> Path:
        loaded.append(file)
        return resolve(file, weights_dir)

    patch.setattr(loader, "checkpoint_path", recording_path)
    patch.setattr(loader, "check_finite", NOOP)
    for conv in (torch.nn.Conv2d, torch.nn.Conv3d):
        def recording_forward(self, x, forward=conv.forward):
            if not seen and self.in_channels % 3 == 0:
                seen.append(x.detach().float().clone())
            return forward(self, x)

        patch.setattr(conv, "forward", recording_forward)


# ---- 1. stage-2 key -------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _hash_once(monkeypatch):
    """The models' sha256 of a file, computed once per (path, size, mtime): a key per candidate setting would
    otherwise hash a 100 MB checkpoint each time."""
    from pipeline import cache as cache_module

    hashes: dict = {}

    def cached(path) -> str:
        stat = Path(path).stat()
        ident = (str(path), stat.st_size, stat.st_mtime_ns)
        if ident not in hashes:
            hashes[ident] = cache_module.sha256_file(path)
        return hashes[ident]

    for module in [m for n, m in sys.modules.items() if n.startswith("pipeline.sync")]:
        if hasattr(module, "sha256_file"):
            monkeypatch.setattr(module, "sha256_file", cached)


def stage2_key(name: str, cfg: Any, cache: Cache, weights: Path) -> dict:
    return get_sync_model(name).stage2_key(cache, cfg, cache.load_pickle("tracks.pckl"), weights)


@pytest.mark.parametrize("name, overrides", VARIANTS)
def test_stage2_key_changes_with_every_setting_that_is_not_speed_only(cache, weights, name, overrides):
    model = get_sync_model(name)
    base_cfg = config(name, overrides)
    base = stage2_key(name, base_cfg, cache, weights)
    checked = set()
    for key, value in base_cfg[model.section].to_dict().items():
        if key == "checkpoint":
            continue  # a file: the next test
        # a setting the config pins to one value (the network's input size, say) cannot go stale
        for cfg in changed_configs(name, overrides, model.section, key, value):
            try:
                other = stage2_key(name, cfg, cache, weights)
            except InputError:  # a combination the model's settings refuse (one line): nothing to key
                continue
            checked.add(key)
            if key in model.stage2_excluded_keys:
                assert other == base, f"{model.section}.{key} is left out of stage 2 but changes its key"
            else:
                assert other != base, f"changing {model.section}.{key} keeps {name}'s stage-2 key"
    excluded = model.stage2_excluded_keys
    assert set(excluded) <= checked | {"checkpoint"} and len(checked) > len(excluded)


@pytest.mark.parametrize("name, overrides", VARIANTS)
def test_stage2_key_changes_with_its_checkpoint_and_every_declared_input_file(cache, weights, tmp_path, name,
                                                                                overrides):
    model = get_sync_model(name)
    cfg = config(name, overrides)
    copy = tmp_path / "weights"
    copy.mkdir()
    declared = {n.file for n in model.networks(cfg, weights)}
    for path in weights.iterdir():  # the declared checkpoints copied (they are edited below), the rest linked
        (copy / path.name).write_bytes(path.read_bytes()) if path.name in declared else \
            (copy / path.name).symlink_to(path)
    base = stage2_key(name, cfg, cache, copy)
    networks = model.networks(cfg, copy)
    assert networks, f"{name} declares no network"
    for network in networks:  # the bytes of every checkpoint it will load
        before = (copy / network.file).read_bytes()
        (copy / network.file).write_bytes(before + b"\0")
        assert stage2_key(name, cfg, cache, copy) != base, f"{network.file} changed but {name}'s key did not"
        (copy / network.file).write_bytes(before)
    assert stage2_key(name, cfg, cache, copy) == base
    for file in model.input_files:
        _assert_key_follows(cache, file, lambda: stage2_key(name, cfg, cache, copy), f"{name}'s stage-2 key")


def _assert_key_follows(cache: Cache, file: str, key_now, what: str) -> None:
    """Change ``file`` (the files its manifest records, or the file itself when the user places it) and check
    that ``key_now()`` changes; undo the change."""
    base = key_now()
    manifest = cache.read_manifest(file)
    if manifest is not None:  # a stage's output: one of its recorded files edited (a byte appended), re-recorded
        recorded = [cache.data_dir / rel for rel in manifest["files"]]
        before = recorded[0].read_bytes(), cache.manifest_path(file).read_bytes()
        recorded[0].write_bytes(before[0] + b"\0")  # pickles and media read up to their end mark
        cache.record(file, manifest["stage"], manifest["key"], recorded)
        assert key_now() != base, f"{file} changed but {what} did not"
        recorded[0].write_bytes(before[0])
        cache.manifest_path(file).write_bytes(before[1])
        return
    path = cache.work(file)  # a file the user places (persons.pckl: faces.pckl's layout)
    keys = []
    for box in ([10.0, 10.0, 100.0, 150.0], [12.0, 10.0, 100.0, 150.0]):
        with open(path, "wb") as handle:
            pickle.dump([[{"frame": 0, "bbox": box, "conf": 1.0}]], handle, protocol=4)
        keys.append(key_now())
    path.unlink()
    assert base != keys[0] != keys[1], f"{file} placed or edited but {what} did not change"


# ---- 2. stage-3 key -------------------------------------------------------------------------------
def stage3_reads(model, cfg: Any, sync: SyncEvidence, num_tracks: int) -> tuple:
    curves, sources = model.fusion_curves(cfg, sync, num_tracks)
    thresholds = model.vote_thresholds(cfg, sync)
    return thresholds, sources, None if curves is None else [np.nan_to_num(c, nan=-9.0).tolist() for c in curves]


@pytest.mark.parametrize("name, overrides", VARIANTS)
def test_stage3_key_changes_whenever_what_stage_3_reads_changes(evidence, name, overrides):
    model = get_sync_model(name)
    sync = evidence[(name, overrides)]["evidence"].sync
    num_tracks = len(evidence[(name, overrides)]["evidence"].distances)
    base_cfg = config(name, overrides)
    base_reads, base_key = stage3_reads(model, base_cfg, sync, num_tracks), model.stage3_key(base_cfg, sync)
    checked = 0
    for section in {get_sync_model(n).section for n in registered_models()} | {"diarise"}:
        for key, value in base_cfg[section].to_dict().items():
            for cfg in changed_configs(name, overrides, section, key, value):
                try:
                    reads = stage3_reads(model, cfg, sync, num_tracks)
                except InputError:
                    continue
                if reads != base_reads:
                    checked += 1
                    same_key = model.stage3_key(cfg, sync) == base_key and cfg.diarise.to_dict() == \
                        base_cfg.diarise.to_dict()
                    assert not same_key, f"{section}.{key} changes what stage 3 reads of {name} but not its key"
    assert checked, f"no setting changes what stage 3 reads of {name}: its thresholds at least should"


# ---- 3. channel order, 4. declared networks -------------------------------------------------------
@pytest.mark.parametrize("name, overrides", VARIANTS)
def test_the_picture_reaches_the_network_in_its_references_channel_order(evidence, name, overrides):
    images = evidence[(name, overrides)]["images"]
    assert images, f"{name}'s network saw no picture"
    batch = images[0]  # [n, 3k, ...]: channel 3j + c is frame j's colour c
    lit = batch.movedim(1, 0).reshape(batch.shape[1], -1)
    means = [float(lit[c::3][lit[c::3] > 0].mean()) for c in range(3)]  # masked (black) rows left out
    order = "BGR" if means[0] < means[1] < means[2] else "RGB" if means[0] > means[1] > means[2] else "?"
    assert order == get_sync_model(name).channel_order, f"{name}'s network got channel means {means}"


@pytest.mark.parametrize("name, overrides", VARIANTS)
def test_declared_networks_cover_every_checkpoint_the_evidence_loads(evidence, weights, name, overrides):
    declared = {n.file for n in get_sync_model(name).networks(config(name, overrides), weights)}
    loaded = set(evidence[(name, overrides)]["loaded"])
    assert loaded, f"{name}'s evidence loaded no checkpoint"
    assert loaded <= declared, f"{name} loads {sorted(loaded - declared)} without declaring them"
    evidence_sync = evidence[(name, overrides)]["evidence"].sync
    assert all(math.isfinite(v) or math.isnan(v) for v in evidence_sync.offset_frames)


# ---- 5. a NaN checkpoint is refused before stage 1 ------------------------------------------------
@pytest.mark.parametrize("name, overrides", VARIANTS)
def test_nan_checkpoint_is_refused_by_preflight(weights, tmp_path, name, overrides):
    from pipeline.preflight import check_networks

    cfg = config(name, overrides)
    cache = Cache(tmp_path / "data", "clip")
    cache.work("faces.pckl").write_bytes(b"")  # detections placed: S3FD is not loaded
    for network in get_sync_model(name).networks(cfg, weights):
        folder = tmp_path / f"nan_{network.file}"
        folder.mkdir()
        for path in weights.iterdir():
            (folder / path.name).symlink_to(path)
        (folder / network.file).unlink()
        (folder / network.file).write_bytes((weights / network.file).read_bytes())
        nan_checkpoint(folder / network.file)
        with pytest.raises(CheckpointError, match=f"{re.escape(network.file)} holds non-finite weights") as err:
            check_networks(cache, cfg, folder)
        assert "\n" not in str(err.value)


def test_nan_checkpoint_is_one_line_from_diarize_before_stage_1(weights, tmp_path):
    """The same through the command line, once (the model whose first network comes last in the registry)."""
    name = registered_models()[-1]
    file = get_sync_model(name).networks(config(name), weights)[0].file
    folder = tmp_path / "w"
    folder.mkdir()
    for path in weights.iterdir():
        (folder / path.name).symlink_to(path)
    (folder / file).unlink()
    (folder / file).write_bytes((weights / file).read_bytes())
    nan_checkpoint(folder / file)
    data = tmp_path / "data"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "diarize.py"), "--videofile",
                             str(REPO.parent / "shared" / "data" / "videos" / "retalking_talkinghead_5.mp4"),
                             "--data_dir", str(data), "--weights_dir", str(folder), "--sync_model", name, "--quiet"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{file} holds non-finite weights" in lines[0]
    assert not (data / "pywork").exists() or not any((data / "pywork").rglob("*.pckl"))
