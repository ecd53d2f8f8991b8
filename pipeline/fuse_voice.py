"""Voice steps of the improved fusion rule (``pipeline.fuse_improved``): clustering 5 Hz speaker-embedding
windows in chunks, merging close mean voices, Viterbi resegmentation with one state per speaker."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

_EPS = 1e-8


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def average_linkage_labels(points: np.ndarray, max_distance: float) -> np.ndarray:
    """Flat clusters of unit ``points`` [n, d] by average linkage on cosine distance, merging below
    ``max_distance``: labels 0..k-1."""
    if len(points) <= 1:
        return np.zeros(len(points), dtype=np.int64)
    tree = linkage(np.asarray(points, dtype=np.float64), method="average", metric="cosine")
    tree[:, 2] = np.maximum(tree[:, 2], 0.0)  # float noise can make a distance of identical points negative
    return fcluster(tree, t=max_distance, criterion="distance").astype(np.int64) - 1


def _group_means(points: np.ndarray, weights: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean (unit) and total weight of each label, largest first."""
    num = int(labels.max()) + 1
    onehot = np.zeros((len(labels), num))
    onehot[np.arange(len(labels)), labels] = weights
    sums = onehot.T @ points
    sizes = onehot.sum(axis=0)
    order = np.argsort(-sizes, kind="stable")
    return unit_rows(sums[order]), sizes[order]


def cluster_voice_chunks(unit_emb: np.ndarray, window_weight: np.ndarray, hop_s: float,
                         cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Voice clusters of the windows that are mostly voice-only speech (``window_weight`` >= ``cfg.voice_window_share``):
    (mean voices [k, dim], windows per cluster [k]), largest first; none when no window qualifies.

    Runs of such windows are cut into chunks of ``cfg.chunk_s`` (larger when there would be more than
    ``cfg.max_chunks``); chunk means are clustered by average linkage below ``cfg.chunk_merge_distance``."""
    selected = np.flatnonzero(np.asarray(window_weight) >= float(cfg.voice_window_share))
    dim = unit_emb.shape[1]
    if selected.size == 0:
        return np.zeros((0, dim)), np.zeros(0)
    run_id = np.cumsum(np.diff(selected, prepend=-2) > 1) - 1
    run_start = np.flatnonzero(np.diff(run_id, prepend=-1) > 0)
    position = np.arange(selected.size) - run_start[run_id]
    chunk_windows = max(1, int(round(float(cfg.chunk_s) / hop_s)))
    while True:
        piece = position // chunk_windows
        chunk_id = np.cumsum(np.diff(run_id * (selected.size + 1) + piece, prepend=-1) != 0) - 1
        if chunk_id[-1] + 1 <= int(cfg.max_chunks):
            break
        chunk_windows *= 2
    vectors = unit_emb[selected].astype(np.float64)
    starts = np.flatnonzero(np.diff(chunk_id, prepend=-1) > 0)
    chunk_means = unit_rows(np.add.reduceat(vectors, starts, axis=0))
    chunk_sizes = np.diff(np.append(starts, selected.size)).astype(np.float64)
    labels = average_linkage_labels(chunk_means, float(cfg.chunk_merge_distance))
    return _group_means(chunk_means, chunk_sizes, labels)


def merge_close_means(means: np.ndarray, sizes: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean voices closer than ``max_distance`` (average linkage, cosine) merged, weighted by ``sizes``."""
    labels = average_linkage_labels(unit_rows(means), max_distance)
    return _group_means(unit_rows(means), sizes, labels)


def absorb_small(means: np.ndarray, sizes: np.ndarray, min_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Clusters smaller than ``min_size`` merged, smallest first, into the one with the closest mean
    (weighted by ``sizes``) until every cluster reaches ``min_size`` or one is left."""
    means, sizes = unit_rows(np.asarray(means, dtype=np.float64)), np.asarray(sizes, dtype=np.float64).copy()
    while len(sizes) > 1 and sizes.min() < min_size:
        small = int(np.argmin(sizes))
        sims = means @ means[small]
        sims[small] = -np.inf
        into = int(np.argmax(sims))
        means[into] = unit_rows(means[into] * sizes[into] + means[small] * sizes[small])
        sizes[into] += sizes[small]
        means, sizes = np.delete(means, small, axis=0), np.delete(sizes, small)
    order = np.argsort(-sizes, kind="stable")
    return means[order], sizes[order]


def window_means(unit_emb: np.ndarray, frame_windows: np.ndarray, labels: np.ndarray,
                 previous: np.ndarray) -> np.ndarray:
    """Mean voice of each speaker over the windows whose frames were mostly decoded as that speaker;
    a speaker without any window keeps its ``previous`` mean."""
    num_windows, num_speakers = len(unit_emb), len(previous)
    counts = np.bincount(frame_windows * num_speakers + labels, minlength=num_windows * num_speakers)
    counts = counts.reshape(num_windows, num_speakers)
    owner = np.argmax(counts, axis=1)
    used = counts.max(axis=1) > 0
    onehot = np.zeros((num_windows, num_speakers), dtype=np.float32)
    onehot[np.flatnonzero(used), owner[used]] = 1.0
    sums = onehot.T @ unit_emb
    means = np.where((onehot.sum(axis=0) > 0)[:, None], unit_rows(sums), previous)
    return unit_rows(means)


def run_local_mean(values: np.ndarray, run_starts: np.ndarray, half_width: int) -> np.ndarray:
    """Mean of ``values`` over +- ``half_width`` steps, never crossing into another run (``run_starts``)."""
    num = values.size
    steps = np.arange(num)
    starts = np.asarray(run_starts, dtype=np.int64)
    bounds = np.append(starts, num)
    run_id = np.searchsorted(starts, steps, side="right") - 1
    low = np.maximum(steps - half_width, starts[run_id])
    high = np.minimum(steps + half_width + 1, bounds[run_id + 1])
    sums = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    return (sums[high] - sums[low]) / (high - low)


def viterbi_potts(scores: np.ndarray, switch_penalty: float, run_starts: np.ndarray) -> np.ndarray:
    """Best state per step for per-step ``scores`` [T, S] (log domain) where changing state costs
    ``switch_penalty``; each index in ``run_starts`` begins an independent sequence. int64 [T]."""
    num_steps, num_states = scores.shape
    if num_states == 1 or num_steps == 0:
        return np.zeros(num_steps, dtype=np.int64)
    bounds = list(np.asarray(run_starts, dtype=np.int64)) + [num_steps]
    labels = np.zeros(num_steps, dtype=np.int64)
    states = np.arange(num_states)
    back = np.empty((num_steps, num_states), dtype=np.int32)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        delta = scores[start].astype(np.float64)
        for t in range(start + 1, stop):
            best = int(np.argmax(delta))
            switch = delta[best] - switch_penalty
            moved = switch > delta
            back[t] = np.where(moved, best, states)
            delta = np.where(moved, switch, delta) + scores[t]
        state = int(np.argmax(delta))
        for t in range(stop - 1, start, -1):
            labels[t] = state
            state = int(back[t, state])
        labels[start] = state
    return labels


__all__ = ["absorb_small", "average_linkage_labels", "cluster_voice_chunks", "merge_close_means", "run_local_mean", "unit_rows",
           "viterbi_potts",
           "window_means"]
