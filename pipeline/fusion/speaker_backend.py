"""The speaker-model-specific transform the improved mode's clustering back-end (``pipeline.fusion.vbx``) runs on, as
VBx's recipe prepares x-vectors: centring, length normalisation, LDA, centring and length normalisation
again (the vectors AHC compares by cosine), then a two-covariance PLDA diagonalised so that the within-speaker
covariance is the identity and the across-speaker covariance the diagonal ``plda_psi`` (what the VB-HMM sees).

Its ``calibration`` says where the PLDA's variances come from: ``fitted``, the fit's own (VBx's recipe), or
``recording``: only the fit's directions are kept (the first ``lda_dim`` PLDA directions, length-normalised),
their within- and across-speaker variances are calibrated on each recording as the default transform does
(``recording_plda``), and AHC and the faces' voices compare the length-normalised embeddings themselves. With
one utterance per fit speaker (Resemblyzer's ALLOWED LibriSpeech files) the fitted variances come from windows
of one recording and the VB-HMM misjudges the speakers of a conversation; the fitted directions still help
(README, "Improved fusion").

``fit_backend`` estimates it from windows of single-speaker recordings (``scripts/fit_speaker_backend.py``);
``save_backend`` writes ``backend_<model>.npz`` with a ``.sha256`` beside it; ``find_backend`` looks in the
weights folder first (a user's own fit), then in the package (``models/backends/``: Resemblyzer's GE2E), and
otherwise gives the documented default (``default_backend``: length normalisation, an isotropic PLDA
calibrated on each recording, ``recording_plda``), saying so once on stderr. A file that is damaged, altered
or made for another model or dimension is one line.
"""
from __future__ import annotations

import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.linalg import eigh

from models.errors import CheckpointError

PACKAGED_DIR = Path(__file__).resolve().parents[2] / "models" / "backends"  # the models package's folder
_FIELDS = ("mean1", "lda", "mean2", "plda_mu", "plda_tr", "plda_psi")
CALIBRATIONS = ("fitted", "recording")
_noted: set[str] = set()


def backend_file(model: str) -> str:
    """File name of ``model``'s fitted transform in the weights folder."""
    return f"backend_{model}.npz"


@dataclass(frozen=True)
class SpeakerBackend:
    """A fitted (or default) transform of one speaker model's embeddings of dimension ``dim``."""

    model: str
    dim: int
    mean1: np.ndarray  # [dim]
    lda: np.ndarray  # [dim, k]
    mean2: np.ndarray  # [k]
    plda_mu: np.ndarray  # [k]
    plda_tr: np.ndarray  # [k, k]: rows are the PLDA directions, largest across-speaker variance first
    plda_psi: np.ndarray  # [k]: across-speaker variance along each direction (within: 1)
    source: str  # the file it came from, or "default"
    sha256: str | None = None
    calibration: str = "fitted"  # one of CALIBRATIONS: the PLDA's variances from the fit or from each recording

    @property
    def fitted(self) -> bool:
        return self.source != "default"

    def lda_project(self, embeddings: np.ndarray) -> np.ndarray:
        """Unit vectors [n, k] after centring, length norm, LDA, centring and length norm (VBx's AHC space)."""
        x = _unit(np.asarray(embeddings, dtype=np.float64) - self.mean1) @ self.lda
        return _unit(x - self.mean2)

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """The unit vectors AHC and the faces' voices compare: ``lda_project``'s, or with a fitted transform of
        ``recording`` calibration the length-normalised embeddings themselves."""
        if self.fitted and self.calibration == "recording":
            return _unit(np.asarray(embeddings, dtype=np.float64))
        return self.lda_project(embeddings)

    def plda_features(self, projected: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``dim`` PLDA coordinates of projected vectors and their across-speaker variances."""
        dim = min(int(dim), len(self.plda_psi))
        return (projected - self.plda_mu) @ self.plda_tr[:dim].T, self.plda_psi[:dim]

    def vb_features(self, embeddings: np.ndarray, points: np.ndarray, dim: int,
                    lag: int) -> tuple[np.ndarray, np.ndarray]:
        """What the VB-HMM sees of one recording's observations: (features [n, d] with identity within-speaker
        covariance, across-speaker variances [d]). ``embeddings`` [n, dim_in] are the observations' windows,
        ``points`` their ``project``-ions, ``dim`` the PLDA dimensions a fitted transform keeps, ``lag`` the
        observations between two windows that do not overlap (``recording_plda``)."""
        if not self.fitted:  # the default: every dimension, calibrated on the recording
            return recording_plda(points, lag)
        if self.calibration == "fitted":
            return self.plda_features(points, dim)
        directions, _ = self.plda_features(self.lda_project(embeddings), dim)
        return recording_plda(_unit(directions), lag)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def default_backend(model: str, dim: int) -> SpeakerBackend:
    """Length normalisation only; the PLDA is calibrated on each recording (``recording_plda``). No centring:
    without a fit there is no population mean, and a recording's own mean would remove the voice of a
    one-speaker recording."""
    return SpeakerBackend(model, int(dim), np.zeros(dim), np.eye(dim), np.zeros(dim), np.zeros(dim), np.eye(dim),
                          np.ones(dim), "default")


def recording_plda(points: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """An isotropic two-covariance PLDA calibrated on one recording's sequence of unit ``points`` [n, d] (the
    default transform's): the within-speaker variance per dimension is half the median squared distance of
    points ``lag`` steps apart (windows that do not overlap, mostly of one speaker), the across-speaker
    variance what the total variance has beyond it (none in a one-speaker recording). (features [n, d]
    centred and whitened, across-speaker variances [d])."""
    x = np.asarray(points, dtype=np.float64)
    dim = x.shape[1]
    centred = x - x.mean(axis=0)
    lag = max(1, min(int(lag), len(x) - 1))
    if len(x) < 2:
        return centred, np.zeros(dim)
    within = max(float(np.median(np.sum((x[lag:] - x[:-lag]) ** 2, axis=1))) / (2 * dim), 1e-12)
    total = float(np.mean(np.sum(centred ** 2, axis=1))) / dim
    return centred / np.sqrt(within), np.full(dim, max(total / within - 1.0, 0.0))


# ---- fitting ---------------------------------------------------------------------------------------------
def _scatter(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Within-speaker covariance (pooled over windows) and across-speaker covariance (of speaker means,
    one per speaker)."""
    speakers = np.unique(labels)
    means = np.stack([x[labels == s].mean(axis=0) for s in speakers])
    centred = x - means[np.searchsorted(speakers, labels)]
    within = centred.T @ centred / len(x)
    across = np.cov(means.T, bias=True)
    return within, across


def fit_backend(embeddings: np.ndarray, labels: np.ndarray, model: str, lda_dim: int,
                regularisation: float = 1e-6, calibration: str = "fitted") -> SpeakerBackend:
    """The transform from windows ``embeddings`` [n, dim] of single-speaker recordings, ``labels`` [n] naming
    each window's speaker: LDA to ``lda_dim`` (at most speakers - 1) dimensions, then the two-covariance
    PLDA simultaneously diagonalised (as VBx's ``vbhmm.py`` does with Kaldi's PLDA); ``calibration``, one of
    ``CALIBRATIONS``, is stored with it."""
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    num_speakers = len(np.unique(labels))
    if num_speakers < 3:
        raise ValueError(f"fitting needs at least 3 speakers, got {num_speakers}")
    lda_dim = min(int(lda_dim), num_speakers - 1, x.shape[1])
    mean1 = x.mean(axis=0)
    x1 = _unit(x - mean1)
    within, across = _scatter(x1, labels)
    ridge = regularisation * np.trace(within) / len(within) * np.eye(len(within))
    values, vectors = eigh(across, within + ridge)
    lda = vectors[:, ::-1][:, :lda_dim]
    x2 = x1 @ lda
    mean2 = x2.mean(axis=0)
    x3 = _unit(x2 - mean2)
    plda_mu = x3.mean(axis=0)
    within, across = _scatter(x3, labels)
    ridge = regularisation * np.trace(within) / len(within) * np.eye(len(within))
    psi, directions = eigh(across, within + ridge)  # directions.T @ within @ directions = I
    order = np.argsort(-psi)
    return SpeakerBackend(model, x.shape[1], mean1, lda, mean2, plda_mu, directions[:, order].T,
                          np.maximum(psi[order], 0.0), "fitted", calibration=calibration)


# ---- files -------------------------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_backend(backend: SpeakerBackend, path: Path) -> str:
    """Write ``backend`` to ``path`` (npz) and its sha256 to ``path.sha256``, each atomically; the digest."""
    buffer = io.BytesIO()
    np.savez(buffer, model=np.array(backend.model), dim=np.array(backend.dim),
             calibration=np.array(backend.calibration), **{k: getattr(backend, k) for k in _FIELDS})
    data = buffer.getvalue()
    digest = _digest(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, payload in ((path, data), (Path(f"{path}.sha256"), f"{digest}  {path.name}\n".encode())):
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(payload)
        partial.replace(target)
    return digest


def load_backend(path: Path, model: str, dim: int) -> SpeakerBackend:
    """The transform in ``path``, checked against its ``.sha256``, its model name and dimension; a one-line
    CheckpointError otherwise."""
    sums = Path(f"{path}.sha256")
    try:
        data = path.read_bytes()
        expected = sums.read_text(encoding="utf-8").split()[0] if sums.is_file() else None
    except (OSError, UnicodeDecodeError, IndexError) as err:
        raise CheckpointError(f"speaker back-end {path} cannot be read ({err}); fit it again with "
                              f"scripts/fit_speaker_backend.py") from None
    digest = _digest(data)
    if expected is None or expected != digest:
        why = f"no checksum {sums.name} beside it" if expected is None else "its sha256 differs from " + sums.name
        raise CheckpointError(f"speaker back-end {path} is not trusted ({why}): fit it again with "
                              f"scripts/fit_speaker_backend.py")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            stored = {k: np.asarray(npz[k], dtype=np.float64) for k in _FIELDS}
            stored_model, stored_dim = str(npz["model"]), int(npz["dim"])
            calibration = str(npz["calibration"]) if "calibration" in npz.files else "fitted"  # older files
    except Exception as err:  # noqa: BLE001 - any unreadable npz is the same one-line error
        raise CheckpointError(f"speaker back-end {path} is damaged ({type(err).__name__}): fit it again with "
                              f"scripts/fit_speaker_backend.py") from None
    if stored_model != model or stored_dim != dim:
        raise CheckpointError(f"speaker back-end {path} was fitted for {stored_model} ({stored_dim}-d embeddings), "
                              f"not {model} ({dim}-d): fit one for {model} with scripts/fit_speaker_backend.py")
    k = stored["lda"].shape[1] if stored["lda"].ndim == 2 else -1
    shapes_ok = (stored["mean1"].shape == (dim,) and stored["lda"].shape == (dim, k) and stored["mean2"].shape == (k,)
                 and stored["plda_mu"].shape == (k,) and stored["plda_tr"].shape == (k, k)
                 and stored["plda_psi"].shape == (k,))
    if calibration not in CALIBRATIONS:
        raise CheckpointError(f"speaker back-end {path} names an unknown calibration {calibration!r} (known: "
                              f"{', '.join(CALIBRATIONS)}): fit it again with scripts/fit_speaker_backend.py")
    if not shapes_ok or not all(np.isfinite(v).all() for v in stored.values()) or (stored["plda_psi"] < 0).any():
        raise CheckpointError(f"speaker back-end {path} holds arrays of the wrong shape or non-finite values: fit it "
                              f"again with scripts/fit_speaker_backend.py")
    return SpeakerBackend(model, dim, stored["mean1"], stored["lda"], stored["mean2"], stored["plda_mu"],
                          stored["plda_tr"], stored["plda_psi"], str(path), digest, calibration)


def find_backend(model: str | None, dim: int, weights_dir: str | Path | None) -> SpeakerBackend:
    """``model``'s fitted transform (weights folder, then the package), else the default with a one-time
    note on stderr (no note for unnamed embeddings, e.g. the simulator's)."""
    from models.loader import resolve_weights_dir  # torch: not for the stages that only read turns (stage 4)

    if model:
        for folder in (resolve_weights_dir(weights_dir), PACKAGED_DIR):
            path = folder / backend_file(model)
            if path.is_file():
                return load_backend(path, model, dim)
        if model not in _noted:
            _noted.add(model)
            print(f"note: no fitted speaker back-end for {model} ({backend_file(model)} is neither in "
                  f"{resolve_weights_dir(weights_dir)} nor in the package); the improved mode clusters on the "
                  f"default transform (length norm, an isotropic PLDA calibrated on each recording); "
                  f"scripts/fit_speaker_backend.py fits one", file=sys.stderr)
    return default_backend(model or "unnamed", dim)


__all__ = ["CALIBRATIONS", "PACKAGED_DIR", "SpeakerBackend", "backend_file", "default_backend", "find_backend", "fit_backend",
           "load_backend", "recording_plda", "save_backend"]
