"""Association helpers: pairwise IoU and thresholded optimal assignment."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N,4) with every box in ``b`` (M,4), xyxy -> (N,M) in [0,1]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a = np.asarray(a, np.float64)[:, None]
    b = np.asarray(b, np.float64)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def assign(score: np.ndarray, min_score: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Maximum-total-score one-to-one assignment keeping pairs with ``score >= min_score``.

    Args:
        score: (N, M) similarity (e.g. IoU).
        min_score: pairs below this are never matched.

    Returns:
        (matches as (row, col) pairs, unmatched rows, unmatched cols).
    """
    n, m = score.shape
    if n == 0 or m == 0:
        return [], list(range(n)), list(range(m))
    cost = np.where(score >= min_score, -score, 1e6)
    rows, cols = linear_sum_assignment(cost)
    matches = [(int(r), int(c)) for r, c in zip(rows, cols) if score[r, c] >= min_score]
    mr = {r for r, _ in matches}
    mc = {c for _, c in matches}
    return matches, [i for i in range(n) if i not in mr], [j for j in range(m) if j not in mc]
