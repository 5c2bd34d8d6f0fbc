"""Average ranks (ties share the mean of the ranks they span), for AUROC and Spearman correlation."""

from __future__ import annotations

import numpy as np

__all__ = ["average_ranks", "tie_groups"]


def tie_groups(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of each run of equal values in a sorted 1-D array."""
    n = sorted_values.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1
    starts = np.concatenate([[0], change]).astype(np.int64)
    lengths = np.diff(np.concatenate([starts, [n]])).astype(np.int64)
    return starts, lengths


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks ``1..n`` of a 1-D array, tied values getting the average of their ranks (float64).

    The same ranks as ``scipy.stats.rankdata(values, method="average")``.
    """
    flat = np.asarray(values).ravel()
    order = np.argsort(flat)  # ties are averaged, so the sort need not be stable
    starts, lengths = tie_groups(flat[order])
    group_rank = starts + (lengths + 1) / 2.0  # mean of ranks start+1 .. start+length
    ranks = np.empty(flat.shape[0], dtype=np.float64)
    ranks[order] = np.repeat(group_rank, lengths)
    return ranks
