"""Bayesian HMM clustering of a speaker-embedding sequence (VBx: Landini, Profant, Diez, Burget, "Bayesian HMM
clustering of x-vector sequences (VBx) in speaker diarization", Computer Speech & Language 2022; written from
BUTSpeechFIT/VBx's ``VBx.py`` and ``vbhmm.py``). Pure numpy, no I/O; the model-specific transform it runs on is
``pipeline.fusion.speaker_backend``.

The model: each observation x_t (an embedding window after the backend's LDA and PLDA diagonalisation, so the
within-speaker covariance is the identity and the across-speaker covariance ``phi`` is diagonal) is drawn from
the speaker of the HMM state it is in; speaker s has mean ``V y_s`` with ``y_s ~ N(0, I)``, ``V = sqrt(phi)``.
States stay with probability ``loop_prob`` and otherwise jump to a speaker drawn from the priors ``pi``.
Variational Bayes alternates the speaker-model posteriors (``alpha``, ``inv_l``) and the per-observation speaker
posteriors (``gamma``, forward-backward). ``fa`` scales the observations' evidence (windows overlap and are not
independent), ``fb`` the speaker prior: the larger, the fewer speakers; speakers whose prior ``pi`` drains to
zero take no observation, so the number of speakers comes out of the model.

Ours beyond VBx's code: ``run_starts`` cut the sequence into independent runs (speech runs): at the start of
a run the speaker is drawn afresh from ``pi`` (the end of every speech run is a possible speaker change), and
``log_bias`` adds fixed log-evidence per observation and speaker (faces seen speaking anchor their speaker).
The forward-backward pass uses VBx's transition structure (loop + rank-one jump) in linear, scaled form, so a
step costs O(speakers) rather than O(speakers^2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.special import softmax

_EPS = 1e-8


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


# ---- AHC initialisation ---------------------------------------------------------------------------------
def two_gaussian_threshold(scores: np.ndarray, iterations: int = 20) -> float:
    """The score that separates the two modes of ``scores`` (a two-Gaussian mixture with a shared variance,
    fitted by EM; VBx's ``twoGMMcalib_lin``): within- and across-speaker similarities of one recording."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    weights = np.array([0.5, 0.5])
    means = s.mean() + s.std() * np.array([-1.0, 1.0])
    var = max(float(s.var()), _EPS)
    threshold = float(s.mean())
    for _ in range(iterations):
        lls = np.log(weights) - 0.5 * np.log(var) - 0.5 * (s[:, None] - means) ** 2 / var
        post = softmax(lls, axis=1)
        counts = np.maximum(post.sum(axis=0), _EPS)
        weights = counts / counts.sum()
        means = s @ post / counts
        var = max(float(((s ** 2) @ post / counts - means ** 2) @ weights), _EPS)
        if abs(means[1] - means[0]) < _EPS:
            break
        threshold = float(-0.5 * (np.log(weights ** 2 / var) - means ** 2 / var) @ [1, -1] / ((means / var) @ [1, -1]))
    return threshold


def ahc_labels(points: np.ndarray, threshold_offset: float, max_scores: int) -> np.ndarray:
    """Average-linkage clusters of unit ``points`` [n, d] on cosine similarity, merging while the average
    similarity exceeds the recording's own two-mode threshold plus ``threshold_offset`` (VBx's AHC), the
    threshold fitted on an evenly strided ``max_scores`` of the pair similarities at most: labels 0..k-1."""
    return ahc_clusters(points, threshold_offset, max_scores)[0]


def ahc_clusters(points: np.ndarray, threshold_offset: float, max_scores: int) -> tuple[np.ndarray, float]:
    """``ahc_labels`` and the merge threshold it used (the average similarity above which two groups of
    ``points`` are one voice; +inf with fewer than two points, where nothing is compared)."""
    n = len(points)
    if n <= 1:
        return np.zeros(n, dtype=np.int64), float("inf")
    sims = np.clip(points @ points.T, -1.0, 1.0)
    upper = sims[np.triu_indices(n, k=1)]
    stride = max(1, -(-upper.size // max(int(max_scores), 1)))
    threshold = two_gaussian_threshold(upper[::stride]) + threshold_offset
    tree = linkage(1.0 - upper, method="average")  # condensed distances 1 - similarity
    tree[:, 2] = np.maximum(tree[:, 2], 0.0)
    return fcluster(tree, t=1.0 - threshold, criterion="distance").astype(np.int64) - 1, threshold


def chunk_points(points: np.ndarray, run_starts: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive observations of one run averaged in chunks so that at most ``max_points`` remain (AHC's
    memory is quadratic): (unit chunk means [m, d], chunk of each observation [n])."""
    n = len(points)
    run_id = np.cumsum(np.isin(np.arange(n), run_starts)) - 1 if n else np.zeros(0, dtype=np.int64)
    position = np.arange(n) - np.asarray(run_starts, dtype=np.int64)[run_id] if n else run_id
    size = 1
    while True:
        key = run_id * (n + 1) + position // size
        chunk = np.cumsum(np.diff(key, prepend=-1) != 0) - 1 if n else key
        if n == 0 or chunk[-1] + 1 <= max_points:
            break
        size *= 2
    if n == 0:
        return np.zeros((0, points.shape[1] if points.ndim == 2 else 0)), chunk
    starts = np.flatnonzero(np.diff(chunk, prepend=-1) > 0)
    return unit_rows(np.add.reduceat(np.asarray(points, dtype=np.float64), starts, axis=0)), chunk


# ---- forward-backward with VBx's transitions ---------------------------------------------------------
def forward_backward(log_lik: np.ndarray, loop_prob: float, pi: np.ndarray,
                     run_starts: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Posteriors [T, S] of the HMM whose transition matrix is ``loop_prob * I + (1 - loop_prob) * pi``, with a
    fresh draw from ``pi`` at every index in ``run_starts`` (0 always is one); (gamma, total log-likelihood,
    expected number of draws from ``pi`` into each speaker [S], the statistic of ``pi``'s update)."""
    num_steps, num_states = log_lik.shape
    pi = np.asarray(pi, dtype=np.float64)
    reset = np.zeros(num_steps, dtype=bool)
    reset[np.asarray(run_starts, dtype=np.int64)] = True
    reset[0] = True
    peak = log_lik.max(axis=1, keepdims=True)
    lik = np.exp(log_lik - peak)  # per-step scaled emission probabilities
    fwd = np.empty_like(lik)
    scale = np.empty(num_steps)
    jump = 1.0 - loop_prob
    prev = pi
    for t in range(num_steps):
        a = (pi if reset[t] else loop_prob * prev + jump * pi) * lik[t]
        if not a.sum() > 0:  # every possible speaker has a zero prior here (a fixed speaker drained): no prior
            a = lik[t]
        scale[t] = a.sum()
        prev = fwd[t] = a / scale[t]
    bwd = np.empty_like(lik)
    bwd[-1] = 1.0
    for t in range(num_steps - 2, -1, -1):
        g = lik[t + 1] * bwd[t + 1]
        drawn = float(pi @ g)
        bwd[t] = (drawn if reset[t + 1] else loop_prob * g + jump * drawn) / scale[t + 1]
    gamma = fwd * bwd
    gamma /= gamma.sum(axis=1, keepdims=True)
    total = float(np.log(scale).sum() + peak.sum())
    # draws from pi: the whole posterior at a reset, the jump part of the transition elsewhere
    draws = gamma[reset].sum(axis=0)
    if (~reset).any():
        inner = np.flatnonzero(~reset)
        draws = draws + jump * pi * (lik[inner] * bwd[inner] / scale[inner, None]).sum(axis=0)
    return gamma, total, draws


# ---- VB-HMM --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VbxResult:
    """Speaker posteriors per observation [T, S], speaker priors [S] and the ELBO per iteration."""

    gamma: np.ndarray
    pi: np.ndarray
    elbo: list[float]


def vbx(features: np.ndarray, phi: np.ndarray, gamma: np.ndarray, loop_prob: float, fa: float, fb: float,
        run_starts: np.ndarray, log_bias: np.ndarray | None = None, max_iterations: int = 40,
        epsilon: float = 1e-6, drop_share: float = 0.0) -> VbxResult:
    """VB-HMM over ``features`` [T, D] (PLDA space: identity within-speaker covariance, across-speaker ``phi``
    [D]) from the initial speaker posteriors ``gamma`` [T, S] (VBx's equations 16-25); ``log_bias`` [T, S]
    is added to each observation's log-likelihood (anchors); iterates until the ELBO gains under ``epsilon``.
    A speaker whose prior and largest posterior fall to ``drop_share`` or below leaves the model (its
    posteriors stay 0): the speakers whose share vanished take no observation anyway, so this only saves time."""
    x = np.asarray(features, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    gamma = np.asarray(gamma, dtype=np.float64)
    num_states = gamma.shape[1]
    pi = np.full(num_states, 1.0 / num_states)
    const = -0.5 * (np.sum(x ** 2, axis=1, keepdims=True) + x.shape[1] * np.log(2 * np.pi))  # (23)
    rho = x * np.sqrt(phi)  # (18)
    elbo: list[float] = []
    alive = np.arange(num_states)  # speakers still holding a posterior share
    for _ in range(max_iterations):
        inv_l = 1.0 / (1.0 + fa / fb * gamma.sum(axis=0, keepdims=True).T * phi)  # (17)
        alpha = fa / fb * inv_l * (gamma.T @ rho)  # (16)
        log_p = fa * (rho @ alpha.T - 0.5 * (inv_l + alpha ** 2) @ phi + const)  # (23)
        if log_bias is not None:
            log_p = log_p + log_bias[:, alive]
        gamma, log_px, draws = forward_backward(log_p, loop_prob, pi, run_starts)  # (19)-(22)
        elbo.append(log_px + fb * 0.5 * float(np.sum(np.log(inv_l) - inv_l - alpha ** 2 + 1)))  # (25)
        pi = draws / max(draws.sum(), _EPS)  # (24)
        if len(elbo) > 1 and elbo[-1] - elbo[-2] < epsilon:
            break
        keep = (pi > drop_share) | (gamma.max(axis=0) > drop_share)  # vanished speakers leave the model (speed)
        if not keep.all():
            alive, gamma, pi = alive[keep], gamma[:, keep], pi[keep] / pi[keep].sum()
    full_gamma = np.zeros((len(x), num_states))
    full_gamma[:, alive] = gamma
    full_pi = np.zeros(num_states)
    full_pi[alive] = pi
    return VbxResult(full_gamma, full_pi, elbo)


def initial_posteriors(labels: np.ndarray, num_states: int, smoothing: float) -> np.ndarray:
    """Hard labels softened into posteriors, ``softmax(smoothing * onehot)`` (VBx's ``init_smoothing``)."""
    onehot = np.zeros((len(labels), num_states))
    onehot[np.arange(len(labels)), labels] = 1.0
    return softmax(onehot * smoothing, axis=1)


__all__ = ["VbxResult", "ahc_clusters", "ahc_labels", "chunk_points", "forward_backward", "initial_posteriors",
           "two_gaussian_threshold", "unit_rows", "vbx"]
