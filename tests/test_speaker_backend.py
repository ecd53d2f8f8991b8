"""The improved mode's clustering back-end (issue 19): the VB-HMM's forward-backward against a log-domain
transcription of VBx's, the fitted transform on seeded speakers, its files (checksum, model, dimension) and
scripts/fit_speaker_backend.py's bad input."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from scipy.special import logsumexp

from models.errors import CheckpointError
from pipeline.fusion import speaker_backend
from pipeline.fusion.speaker_backend import (
    backend_file,
    find_backend,
    fit_backend,
    load_backend,
    recording_plda,
    save_backend,
)
from pipeline.fusion.vbx import ahc_labels, forward_backward, two_gaussian_threshold, unit_rows, vbx
from tests.conftest import REPO


def _log_forward_backward(log_lik: np.ndarray, loop_prob: float, pi: np.ndarray) -> tuple[np.ndarray, float]:
    """VBx's ``forward_backward`` (log domain, full transition matrix) on one run."""
    tr = np.log(np.eye(len(pi)) * loop_prob + (1 - loop_prob) * pi)
    fwd = np.zeros_like(log_lik)
    bwd = np.zeros_like(log_lik)
    fwd[0] = log_lik[0] + np.log(pi)
    for t in range(1, len(log_lik)):
        fwd[t] = log_lik[t] + logsumexp(fwd[t - 1][:, None] + tr, axis=0)
    for t in range(len(log_lik) - 2, -1, -1):
        bwd[t] = logsumexp(tr + log_lik[t + 1] + bwd[t + 1], axis=1)
    total = logsumexp(fwd[-1])
    return np.exp(fwd + bwd - total), float(total)


def test_forward_backward_equals_vbx_and_restarts_at_run_starts():
    """Scaled O(S) recursion = VBx's log-domain one; a run start makes the two parts independent."""
    rng = np.random.default_rng(0)
    log_lik = rng.normal(size=(40, 3)) * 4
    pi = np.array([0.5, 0.3, 0.2])
    gamma, total, _ = forward_backward(log_lik, 0.9, pi, np.array([0]))
    ref_gamma, ref_total = _log_forward_backward(log_lik, 0.9, pi)
    assert np.allclose(gamma, ref_gamma, atol=1e-10) and total == pytest.approx(ref_total)
    gamma, total, draws = forward_backward(log_lik, 0.9, pi, np.array([0, 15]))
    parts = [_log_forward_backward(log_lik[:15], 0.9, pi), _log_forward_backward(log_lik[15:], 0.9, pi)]
    assert np.allclose(gamma, np.vstack([parts[0][0], parts[1][0]]), atol=1e-10)
    assert total == pytest.approx(parts[0][1] + parts[1][1])
    assert draws.sum() > gamma[0].sum() + gamma[15].sum() - 1e-9  # both run starts count as draws from pi


def test_vbx_drops_a_redundant_speaker_and_keeps_two_real_ones():
    """Two speakers in 8 PLDA dimensions (means 3 apart along one axis, unit within-speaker noise), started
    from three clusters, one splitting a speaker in half: two speakers keep every observation."""
    rng = np.random.default_rng(1)
    truth = np.repeat([0, 1, 0, 1], 50)
    x = rng.normal(size=(200, 8))
    x[:, 0] += np.where(truth == 0, -1.5, 1.5)
    init = np.where(truth == 0, np.where(np.arange(200) < 100, 0, 2), 1)
    gamma0 = np.eye(3)[init] * 0.9 + 0.1 / 3
    result = vbx(x, np.full(8, 2.0), gamma0, 0.99, 0.3, 17.0, np.array([0]))
    labels = result.gamma.argmax(axis=1)
    assert len(np.unique(labels)) == 2
    assert (labels[truth == 0] == labels[0]).all() and (labels[truth == 1] != labels[0]).all()


def test_ahc_threshold_between_two_modes():
    """Similarities around 0.2 and 0.8: the two-mode threshold lies between; AHC finds the two groups."""
    rng = np.random.default_rng(2)
    scores = np.concatenate([rng.normal(0.2, 0.05, 500), rng.normal(0.8, 0.05, 300)])
    assert 0.35 < two_gaussian_threshold(scores) < 0.65
    centres = np.eye(6)[:2]
    points = unit_rows(np.repeat(centres, 20, axis=0) + 0.1 * rng.normal(size=(40, 6)))
    labels = ahc_labels(points, -0.015, 100)
    assert len(np.unique(labels[:20])) == 1 and len(np.unique(labels[20:])) == 1 and labels[0] != labels[20]


def _speakers(num: int, dim: int = 16, windows: int = 30, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num, dim))
    x = np.repeat(centres, windows, axis=0) + 0.3 * rng.normal(size=(num * windows, dim))
    return x, np.repeat(np.arange(num), windows)


def test_fitted_transform_whitens_within_speaker_variation(tmp_path):
    """On its own training windows the PLDA features have identity within-speaker covariance and the
    across-speaker variances ``plda_psi``, largest first; save/load gives the same transform."""
    x, labels = _speakers(12)
    backend = fit_backend(x, labels, "ecapa", lda_dim=8)
    assert backend.lda.shape == (16, 8) and backend.fitted
    feats, psi = backend.plda_features(backend.project(x), 8)
    means = np.stack([feats[labels == s].mean(axis=0) for s in range(12)])
    within = np.cov((feats - means[labels]).T, bias=True)
    assert np.allclose(within, np.eye(8), atol=1e-6)
    assert np.all(np.diff(psi) <= 0) and psi[0] > 1
    path = tmp_path / backend_file("ecapa")
    digest = save_backend(backend, path)
    assert (tmp_path / f"{path.name}.sha256").read_text().split()[0] == digest
    loaded = load_backend(path, "ecapa", 16)
    assert loaded.sha256 == digest and np.allclose(loaded.project(x), backend.project(x))
    assert find_backend("ecapa", 16, tmp_path).sha256 == digest  # the weights folder is looked in first


def test_bad_transform_files_are_one_line(tmp_path):
    x, labels = _speakers(5, dim=6)
    path = tmp_path / backend_file("ecapa")
    save_backend(fit_backend(x, labels, "ecapa", lda_dim=3), path)
    with pytest.raises(CheckpointError, match="fitted for ecapa .6-d embeddings., not resnetse34"):
        load_backend(path, "resnetse34", 6)
    with pytest.raises(CheckpointError, match="not ecapa .192-d"):
        load_backend(path, "ecapa", 192)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs") as err:
        load_backend(path, "ecapa", 6)
    assert "\n" not in str(err.value)
    (tmp_path / f"{path.name}.sha256").unlink()
    with pytest.raises(CheckpointError, match="no checksum"):
        load_backend(path, "ecapa", 6)



def test_recording_calibration_keeps_the_fitted_directions_and_calibrates_on_the_recording(tmp_path):
    """A transform of ``recording`` calibration: AHC compares the length-normalised embeddings, the VB-HMM sees
    the first ``dim`` fitted PLDA directions, length-normalised, calibrated by ``recording_plda``; the
    calibration survives save/load, a file without one (older) is ``fitted``, an unknown one is one line."""
    x, labels = _speakers(12)
    fitted = fit_backend(x, labels, "ecapa", lda_dim=8)
    backend = fit_backend(x, labels, "ecapa", lda_dim=8, calibration="recording")
    assert np.allclose(backend.project(x), unit_rows(x)) and fitted.project(x).shape == (len(x), 8)
    directions = (fitted.lda_project(x) - fitted.plda_mu) @ fitted.plda_tr[:5].T
    expected = recording_plda(unit_rows(directions), 10)
    got = backend.vb_features(x, backend.project(x), 5, 10)
    assert np.allclose(got[0], expected[0]) and np.allclose(got[1], expected[1]) and got[0].shape == (len(x), 5)
    assert np.allclose(fitted.vb_features(x, fitted.project(x), 5, 10)[1], fitted.plda_psi[:5])
    path = tmp_path / backend_file("ecapa")
    save_backend(backend, path)
    assert load_backend(path, "ecapa", 16).calibration == "recording"
    import io

    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "calibration"}
    for value, check in ((None, "fitted"), ("prior", "unknown calibration 'prior'")):
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, **({} if value is None else {"calibration": np.array(value)}))
        path.write_bytes(buffer.getvalue())
        (tmp_path / f"{path.name}.sha256").write_text(f"{speaker_backend._digest(buffer.getvalue())}  {path.name}\n")
        if value is None:
            assert load_backend(path, "ecapa", 16).calibration == check
        else:
            with pytest.raises(CheckpointError, match=check):
                load_backend(path, "ecapa", 16)
    with pytest.raises(ValueError, match="calibration must be one of"):
        fit_backend(x, labels, "ecapa", lda_dim=8, calibration="prior")


def test_the_package_ships_resemblyzers_transform_fitted_on_the_fit_speakers():
    """models/backends/backend_resemblyzer.npz: checksum-verified, GE2E's 256 dimensions, recording
    calibration, what stage 3 finds for --speaker_model resemblyzer without a user's own fit."""
    shipped = load_backend(speaker_backend.PACKAGED_DIR / backend_file("resemblyzer"), "resemblyzer", 256)
    assert shipped.calibration == "recording" and shipped.lda.shape == (256, 64)
    assert find_backend("resemblyzer", 256, REPO / "no-such-weights-folder").sha256 == shipped.sha256

def test_package_folder_is_searched_after_the_weights_folder_and_others_get_the_default_once(tmp_path, capsys,
                                                                                              monkeypatch):
    """A transform in the package folder is found when the weights folder has none, the weights folder's first
    when both have one; a model with neither gets the default and one note on stderr, however often asked."""
    x, labels = _speakers(5, dim=6)
    packaged, weights = tmp_path / "package", tmp_path / "weights"
    monkeypatch.setattr(speaker_backend, "PACKAGED_DIR", packaged)
    in_package = save_backend(fit_backend(x, labels, "resemblyzer", lda_dim=3), packaged / backend_file("resemblyzer"))
    assert find_backend("resemblyzer", 6, weights).sha256 == in_package
    own = save_backend(fit_backend(x[::2], labels[::2], "resemblyzer", lda_dim=2), weights / backend_file("resemblyzer"))
    assert own != in_package and find_backend("resemblyzer", 6, weights).sha256 == own
    monkeypatch.setattr(speaker_backend, "_noted", set())
    for _ in range(2):
        assert not find_backend("resnetse34", 512, weights).fitted
    assert capsys.readouterr().err.count("no fitted speaker back-end for resnetse34") == 1


def test_recording_plda_finds_no_speaker_difference_in_one_voice():
    """One voice plus noise: no across-speaker variance; two alternating voices: some."""
    rng = np.random.default_rng(4)
    one = unit_rows(np.eye(8)[0] + 0.3 * rng.normal(size=(200, 8)))
    assert recording_plda(one, 10)[1].max() < 0.1
    two = unit_rows(np.repeat(np.eye(8)[:2], 25, axis=0)[np.arange(200) % 50] + 0.3 * rng.normal(size=(200, 8)))
    assert recording_plda(two, 10)[1].min() > 0.2  # isotropic: two dimensions of difference spread over 8


def _fit_script():
    spec = importlib.util.spec_from_file_location("fit_script", REPO / "scripts" / "fit_speaker_backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "is not a folder"),
    (lambda d: d, "no recordings"),
    (lambda d: (d / "a-1.wav").write_bytes(b"") or (d / "b-1.wav").write_bytes(b"") or d, "at least 3 speakers"),
])
def test_fit_script_bad_input_is_one_line(tmp_path, capsys, make, message):
    from pipeline.cli import run_main

    module = _fit_script()
    folder = make(tmp_path)
    code = run_main(module.main, module.build_parser(),
                    ["--audio_dir", str(folder), "--speaker_model", "resemblyzer", "--out", str(tmp_path / "o.npz")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.npz").exists()


def test_fit_script_reuses_cached_embeddings_only_for_the_same_recordings(tmp_path, monkeypatch):
    """--embeddings: a cache made from the same recordings, model and windows is read without the network; one
    made from other recordings (a file changed size) is recomputed, never trusted."""
    import argparse

    import pipeline.embed
    from pipeline.config import load_config

    module = _fit_script()
    pairs = []
    for name in ("a-1.wav", "b-1.wav"):
        (tmp_path / name).write_bytes(b"0" * 10)
        pairs.append((name[0], tmp_path / name))
    cfg = load_config()
    key = np.array(["resemblyzer", str(cfg.embed.window_s), str(cfg.embed.hop_s)]
                   + [f"{s}|{p.name}|{p.stat().st_size}" for s, p in pairs])
    cache = tmp_path / "emb.npz"
    np.savez(cache, key=key, windows=np.arange(6.0).reshape(3, 2), labels=np.array(["a", "a", "b"]))

    def no_network(*args, **kwargs):
        raise RuntimeError("the speaker model was loaded")

    monkeypatch.setattr(pipeline.embed, "load_speaker_model", no_network)
    args = argparse.Namespace(quiet=True, weights_dir=None, device="cpu")
    windows, labels = module.window_embeddings(pairs, "resemblyzer", cfg, args, cache)
    assert windows.tolist() == [[0, 1], [2, 3], [4, 5]] and labels.tolist() == ["a", "a", "b"]
    (tmp_path / "b-1.wav").write_bytes(b"0" * 11)
    with pytest.raises(RuntimeError, match="was loaded"):
        module.window_embeddings(pairs, "resemblyzer", cfg, args, cache)
    with pytest.raises(RuntimeError, match="was loaded"):
        module.window_embeddings(pairs, "ecapa", cfg, args, cache)
