"""Evaluation metrics of the field, as plain numpy functions.

Expression recognition (RAF-DB, AffectNet, FER2013, CK+ papers report these):
    accuracy, per-class accuracy (recall), macro-F1, confusion matrix.
AU intensity (DISFA, BP4D/FERA 2015; DSR-FAU reports these):
    ICC(3,1) (Shrout & Fleiss 1979), MAE, PCC, per AU and their mean.
Saliency (CAT2000, MIT benchmark; definitions of Bylinskii et al., "What Do Different Evaluation
Metrics Tell Us About Saliency Models?", IEEE TPAMI 41(3) 2019, doi:10.1109/TPAMI.2018.2815601,
and that benchmark's reference MATLAB code):
    AUC-Judd, NSS, CC, KLD, SIM.

Undefined values (e.g. a correlation of a constant series) are NaN, never a silent 0; means over
AUs ignore NaN (``nanmean``) and say so in their docstrings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MATLAB_EPS = 2.220446049250313e-16
"""``eps`` of MATLAB (double), the regulariser of the benchmark's KLD."""

# ------------------------------------------------------------------------- classification


def _labels(y: np.ndarray | Sequence[int], name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D integer labels, got shape {a.shape}")
    return a.astype(np.int64)


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     num_classes: int | None = None) -> np.ndarray:
    """Confusion matrix ``C[i, j]`` = number of samples of true class ``i`` predicted as ``j``.

    Args:
        y_true: (N,) int class indices.
        y_pred: (N,) int class indices.
        num_classes: C; default ``max(label) + 1``.

    Returns:
        (C, C) int64 (rows: truth, columns: prediction — scikit-learn's convention).
    """
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in length")
    c = int(num_classes if num_classes is not None else max(t.max(initial=-1),
                                                             p.max(initial=-1)) + 1)
    if t.size and (t.min() < 0 or p.min() < 0 or t.max() >= c or p.max() >= c):
        raise ValueError(f"labels must be in 0..{c - 1}")
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Overall accuracy ``sum_i [y_i == yhat_i] / N`` in [0, 1] (NaN for N = 0)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in length")
    return float(np.mean(t == p)) if t.size else float("nan")


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Per-class accuracy (recall) ``C[i, i] / sum_j C[i, j]`` from a confusion matrix.

    This is the per-class column of RAF-DB/AffectNet tables; its mean is the "average
    accuracy" (mean class accuracy). NaN for a class with no samples.
    """
    cm = np.asarray(cm, np.float64)
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 ``2 TP / (2 TP + FP + FN)`` from a confusion matrix (0 where undefined).

    The 0 for an undefined class (no true and no predicted sample) matches scikit-learn's
    ``zero_division=0``/default behaviour.
    """
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, 0.0)


def macro_f1(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
             num_classes: int | None = None) -> float:
    """Macro-F1: the unweighted mean of per-class F1.

    ``F1_c = 2 P_c R_c / (P_c + R_c) = 2 TP_c / (2 TP_c + FP_c + FN_c)``; the mean runs over
    ``0..num_classes-1`` when given, else over the classes present in ``y_true`` or ``y_pred``
    (scikit-learn's ``f1_score(average="macro")`` with, respectively, ``labels=range(C)`` or its
    default).
    """
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    cm = confusion_matrix(t, p, num_classes)
    f1 = f1_per_class(cm)
    if num_classes is None:
        present = np.union1d(t, p)
        f1 = f1[present]
    return float(f1.mean()) if f1.size else float("nan")


def classification_report(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                          label_names: Sequence[str]) -> dict:
    """Everything an FER table needs.

    Returns:
        ``{"accuracy", "mean_class_accuracy", "macro_f1", "per_class_accuracy": {name: acc},
        "per_class_f1": {name: f1}, "support": {name: n}, "confusion": (C, C) list,
        "label_names": [...]}``; accuracies in [0, 1].
    """
    c = len(label_names)
    cm = confusion_matrix(y_true, y_pred, c)
    pca = per_class_accuracy(cm)
    f1 = f1_per_class(cm)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "mean_class_accuracy": float(np.nanmean(pca)) if np.isfinite(pca).any() else float("nan"),
        "macro_f1": macro_f1(y_true, y_pred, c),
        "per_class_accuracy": {n: float(a) for n, a in zip(label_names, pca)},
        "per_class_f1": {n: float(a) for n, a in zip(label_names, f1)},
        "support": {n: int(s) for n, s in zip(label_names, cm.sum(1))},
        "confusion": cm.tolist(),
        "label_names": list(label_names),
    }


# ------------------------------------------------------------------------------ AU intensity

_ICC_FORMS = ("1,1", "2,1", "3,1", "1,k", "2,k", "3,k")


def icc(ratings: np.ndarray, form: str = "3,1") -> float:
    """Intraclass correlation of an (n targets, k judges) rating matrix.

    Shrout & Fleiss, "Intraclass Correlations: Uses in Assessing Rater Reliability", Psychological
    Bulletin 86(2) 1979, doi:10.1037/0033-2909.86.2.420, Table 1 (two-way ANOVA mean squares:
    BMS between targets, JMS between judges, EMS residual, WMS within targets):

    * ICC(1,1) = (BMS - WMS) / (BMS + (k-1) WMS)
    * ICC(2,1) = (BMS - EMS) / (BMS + (k-1) EMS + k (JMS - EMS) / n)
    * ICC(3,1) = (BMS - EMS) / (BMS + (k-1) EMS)          (consistency, fixed judges)
    * ICC(1,k) = (BMS - WMS) / BMS
    * ICC(2,k) = (BMS - EMS) / (BMS + (JMS - EMS) / n)
    * ICC(3,k) = (BMS - EMS) / BMS

    Their Table 2 example (6 targets, 4 judges) gives ICC(3,1) = .71. For AU intensity the two
    "judges" are the ground truth and the prediction (k = 2).

    Args:
        ratings: (n, k) float, n >= 2, k >= 2.
        form: one of ``"1,1" "2,1" "3,1" "1,k" "2,k" "3,k"``.

    Returns:
        The ICC (NaN when its denominator is 0, e.g. all ratings equal).
    """
    if form not in _ICC_FORMS:
        raise ValueError(f"form must be one of {_ICC_FORMS}, got {form!r}")
    y = np.asarray(ratings, np.float64)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"ratings must be (n >= 2, k >= 2), got shape {y.shape}")
    n, k = y.shape
    grand = y.mean()
    row_m, col_m = y.mean(1), y.mean(0)
    ss_rows = k * np.sum((row_m - grand) ** 2)
    ss_cols = n * np.sum((col_m - grand) ** 2)
    ss_total = np.sum((y - grand) ** 2)
    ss_within = ss_total - ss_rows
    ss_err = ss_total - ss_rows - ss_cols
    bms = ss_rows / (n - 1)
    jms = ss_cols / (k - 1)
    wms = ss_within / (n * (k - 1))
    ems = ss_err / ((n - 1) * (k - 1))
    num_den = {
        "1,1": (bms - wms, bms + (k - 1) * wms),
        "2,1": (bms - ems, bms + (k - 1) * ems + k * (jms - ems) / n),
        "3,1": (bms - ems, bms + (k - 1) * ems),
        "1,k": (bms - wms, bms),
        "2,k": (bms - ems, bms + (jms - ems) / n),
        "3,k": (bms - ems, bms),
    }[form]
    num, den = num_den
    return float(num / den) if den != 0 else float("nan")


def icc_3_1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """ICC(3,1) between a ground-truth and a predicted intensity series ((N,) each).

    ``icc(np.stack([y_true, y_pred], 1), "3,1")``; see :func:`icc`.
    """
    t, p = np.asarray(y_true, np.float64).ravel(), np.asarray(y_pred, np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ")
    return icc(np.stack([t, p], 1), "3,1")


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error ``sum |y - yhat| / N`` (intensity units)."""
    t, p = np.asarray(y_true, np.float64).ravel(), np.asarray(y_pred, np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ")
    return float(np.mean(np.abs(t - p))) if t.size else float("nan")


def pcc(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation ``cov(x, y) / (std(x) std(y))`` (NaN if either is constant)."""
    a, b = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 0 else float("nan")


def au_report(y_true: np.ndarray, y_pred: np.ndarray, au_names: Sequence[str]) -> dict:
    """Per-AU ICC(3,1), MAE and PCC and their means (DSR-FAU's tables).

    Args:
        y_true: (N, A) intensities 0-5; NaN marks frames not coded for that AU (excluded).
        y_pred: (N, A) predicted intensities.
        au_names: A names (``AU01``...).

    Returns:
        ``{"icc": {au: v}, "mae": {...}, "pcc": {...}, "mean": {"icc", "mae", "pcc"}, "n": {...}}``;
        means are ``nanmean`` over AUs (an AU whose ground truth is constant has NaN ICC/PCC).
    """
    t, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if t.shape != p.shape or t.ndim != 2 or t.shape[1] != len(au_names):
        raise ValueError(f"y_true {t.shape} / y_pred {p.shape} must both be (N, {len(au_names)})")
    out: dict = {"icc": {}, "mae": {}, "pcc": {}, "n": {}}
    for j, name in enumerate(au_names):
        ok = np.isfinite(t[:, j])
        tj, pj = t[ok, j], p[ok, j]
        out["n"][name] = int(ok.sum())
        out["icc"][name] = icc_3_1(tj, pj) if ok.sum() >= 2 else float("nan")
        out["mae"][name] = mae(tj, pj)
        out["pcc"][name] = pcc(tj, pj) if ok.sum() >= 2 else float("nan")
    out["mean"] = {}
    for m in ("icc", "mae", "pcc"):
        vals = np.array(list(out[m].values()), np.float64)
        out["mean"][m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


# ---------------------------------------------------------------------------------- saliency


def _maps(sal: np.ndarray, other: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    s, o = np.asarray(sal, np.float64), np.asarray(other, np.float64)
    if s.ndim != 2 or s.shape != o.shape:
        raise ValueError(f"saliency map {s.shape} and {name} {o.shape} must be equal 2-D shapes "
                         "(resize the saliency map to the ground truth first)")
    return s, o


def auc_judd(sal: np.ndarray, fixations: np.ndarray) -> float:
    """AUC-Judd (Judd et al. 2009; Bylinskii et al. 2019, §3.1).

    Thresholds are the saliency values at the fixated pixels, in decreasing order. At the i-th
    threshold ``t_i`` (i = 1..F): TPR = i / F, FPR = (#{pixels with S >= t_i} - i) / (P - F),
    with P pixels and F fixated pixels. The curve is closed with (0, 0) and (1, 1) and
    integrated with the trapezoidal rule. No jitter is added (deterministic); where fixated
    pixels tie, the FPR counts only non-fixated pixels above the threshold (without ties this is
    exactly the reference code's ``(aboveth - i) / (P - F)``).

    Args:
        sal: (H, W) saliency map (any range).
        fixations: (H, W) binary fixation map (non-zero = fixated).

    Returns:
        AUC in [0, 1] (NaN with no fixation or every pixel fixated).
    """
    s, f = _maps(sal, fixations, "fixation map")
    s, fix = s.ravel(), f.ravel() > 0
    n_fix, n_pix = int(fix.sum()), s.size
    if n_fix == 0 or n_fix == n_pix:
        return float("nan")
    fix_sorted = np.sort(s[fix])
    th = fix_sorted[::-1]
    above = n_pix - np.searchsorted(np.sort(s), th, side="left")  # count(S >= t)
    fix_above = n_fix - np.searchsorted(fix_sorted, th, side="left")  # fixated with S >= t
    i = np.arange(1, n_fix + 1)
    tp = np.concatenate([[0.0], i / n_fix, [1.0]])
    fp = np.concatenate([[0.0], (above - fix_above) / (n_pix - n_fix), [1.0]])
    return float(np.sum((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1]) / 2))


def nss(sal: np.ndarray, fixations: np.ndarray) -> float:
    """Normalized Scanpath Saliency (Peters et al. 2005; Bylinskii et al. 2019, §3.2).

    ``NSS = mean_{i fixated} (S_i - mean(S)) / std(S)``, with the sample standard deviation
    (N - 1), as MATLAB's ``std`` in the reference code. NaN for a constant map or no fixation.
    """
    s, f = _maps(sal, fixations, "fixation map")
    fix = f > 0
    sd = s.std(ddof=1)
    if not fix.any() or sd == 0:
        return float("nan")
    return float(np.mean((s[fix] - s.mean()) / sd))


def cc(sal: np.ndarray, fixation_map: np.ndarray) -> float:
    """Pearson's linear correlation coefficient between a saliency and a fixation map (§3.4).

    ``CC = cov(P, Q) / (sigma(P) sigma(Q))`` over pixels; NaN if either map is constant.
    """
    s, g = _maps(sal, fixation_map, "fixation map")
    return pcc(s, g)


def kld(sal: np.ndarray, fixation_map: np.ndarray, eps: float = MATLAB_EPS) -> float:
    """Kullback-Leibler divergence of the saliency map from the fixation map (§3.6).

    Both maps are normalised to sum 1 (P from the saliency map, Q from the ground truth) and
    ``KLD = sum_i Q_i log(eps + Q_i / (P_i + eps))``, eps = MATLAB's 2.2204e-16 as in the
    benchmark code. Lower is better.
    """
    s, g = _maps(sal, fixation_map, "fixation map")
    if s.min() < 0 or g.min() < 0 or s.sum() <= 0 or g.sum() <= 0:
        raise ValueError("KLD needs non-negative maps with a positive sum")
    p, q = s / s.sum(), g / g.sum()
    return float(np.sum(q * np.log(eps + q / (p + eps))))


def sim(sal: np.ndarray, fixation_map: np.ndarray) -> float:
    """Similarity (histogram intersection) of two maps (Swain & Ballard; §3.5).

    Each map is min-max normalised to [0, 1] and then to sum 1 (as the benchmark's
    ``similarity.m``), and ``SIM = sum_i min(P_i, Q_i)`` in [0, 1]. NaN for a constant map.
    """
    s, g = _maps(sal, fixation_map, "fixation map")

    def norm(a: np.ndarray) -> np.ndarray | None:
        rng = a.max() - a.min()
        if rng == 0:
            return None
        a = (a - a.min()) / rng
        return a / a.sum()

    p, q = norm(s), norm(g)
    if p is None or q is None:
        return float("nan")
    return float(np.minimum(p, q).sum())


def saliency_report(sal_maps: Sequence[np.ndarray], fixation_maps: Sequence[np.ndarray],
                    fixations: Sequence[np.ndarray]) -> dict:
    """Mean AUC-Judd, NSS, CC, KLD and SIM over images (each map pair of equal shape)."""
    rows = [(auc_judd(s, fx), nss(s, fx), cc(s, fm), kld(np.maximum(s, 0), fm), sim(s, fm))
            for s, fm, fx in zip(sal_maps, fixation_maps, fixations)]
    a = np.array(rows, np.float64).reshape(-1, 5)
    names = ("auc_judd", "nss", "cc", "kld", "sim")
    return {n: float(np.nanmean(a[:, i])) if np.isfinite(a[:, i]).any() else float("nan")
            for i, n in enumerate(names)} | {"n": len(rows)}
