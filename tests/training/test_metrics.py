"""Metrics against published worked examples and reference libraries (scikit-learn, scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import scipy.stats
import sklearn.metrics

from affectstream.training import metrics as M

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SF_TABLE2 = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9],
                      [6, 2, 4, 7]], float)


@pytest.mark.parametrize(("form", "published"), [
    ("1,1", 0.17), ("2,1", 0.29), ("3,1", 0.71), ("1,k", 0.44), ("2,k", 0.62), ("3,k", 0.91)])
def test_icc_shrout_fleiss_table(form: str, published: float) -> None:
    # Shrout & Fleiss (1979), Table 4 values for the Table 2 data, printed to two decimals.
    assert round(M.icc(SF_TABLE2, form), 2) == published


def test_icc_3_1_matches_anova_by_least_squares() -> None:
    # Independent route: residual of the additive two-way model fitted by least squares.
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 2)) + rng.normal(size=(40, 1)) * 2
    n, k = y.shape
    rows = np.kron(np.eye(n), np.ones((k, 1)))
    cols = np.kron(np.ones((n, 1)), np.eye(k))
    x = np.hstack([rows, cols[:, 1:]])
    beta, *_ = np.linalg.lstsq(x, y.ravel(), rcond=None)
    ems = np.sum((y.ravel() - x @ beta) ** 2) / ((n - 1) * (k - 1))
    bms = k * np.var(y.mean(1), ddof=1)
    expected = (bms - ems) / (bms + (k - 1) * ems)
    assert M.icc_3_1(y[:, 0], y[:, 1]) == pytest.approx(expected, abs=1e-9)


def test_icc_perfect_and_constant() -> None:
    t = np.array([0, 1, 2, 3, 5.0])
    assert M.icc_3_1(t, t) == pytest.approx(1.0)
    assert M.icc_3_1(t, t + 2) == pytest.approx(1.0)  # consistency ICC ignores a constant offset
    assert np.isnan(M.icc_3_1(np.zeros(5), np.zeros(5)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_against_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 7, 200)
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, 7, 200))
    assert M.accuracy(t, p) == pytest.approx(sklearn.metrics.accuracy_score(t, p), abs=1e-12)
    assert M.macro_f1(t, p) == pytest.approx(
        sklearn.metrics.f1_score(t, p, average="macro"), abs=1e-12)
    assert M.macro_f1(t, p, 9) == pytest.approx(
        sklearn.metrics.f1_score(t, p, average="macro", labels=range(9), zero_division=0),
        abs=1e-12)
    np.testing.assert_array_equal(M.confusion_matrix(t, p, 7),
                                  sklearn.metrics.confusion_matrix(t, p, labels=range(7)))
    rep = M.classification_report(t, p, [f"c{i}" for i in range(7)])
    recall = sklearn.metrics.recall_score(t, p, average=None, labels=range(7))
    assert list(rep["per_class_accuracy"].values()) == pytest.approx(recall, abs=1e-12)
    assert rep["mean_class_accuracy"] == pytest.approx(
        sklearn.metrics.balanced_accuracy_score(t, p), abs=1e-12)


def test_macro_f1_absent_class_only_in_prediction() -> None:
    t, p = [0, 0, 1, 1], [0, 2, 1, 1]
    assert M.macro_f1(t, p) == pytest.approx(sklearn.metrics.f1_score(t, p, average="macro"))


def test_au_metrics_against_scipy_sklearn() -> None:
    rng = np.random.default_rng(3)
    t = rng.integers(0, 6, (300, 3)).astype(float)
    p = np.clip(t + rng.normal(0, 0.8, t.shape), 0, 5)
    t[:10, 2] = np.nan  # not coded
    rep = M.au_report(t, p, ["AU06", "AU12", "AU17"])
    for j, au in enumerate(["AU06", "AU12", "AU17"]):
        ok = np.isfinite(t[:, j])
        assert rep["pcc"][au] == pytest.approx(
            scipy.stats.pearsonr(t[ok, j], p[ok, j]).statistic, abs=1e-9)
        assert rep["mae"][au] == pytest.approx(
            sklearn.metrics.mean_absolute_error(t[ok, j], p[ok, j]), abs=1e-12)
    assert rep["n"]["AU17"] == 290
    assert rep["mean"]["icc"] == pytest.approx(np.mean(list(rep["icc"].values())))


# -------------------------------------------------------------------------------- saliency

SAL = np.array([[0.9, 0.1], [0.5, 0.3]])
FIX = np.array([[1, 0], [0, 1]])


def test_auc_judd_worked_example() -> None:
    # thresholds 0.9, 0.3 -> (FPR, TPR) points (0,0) (0,.5) (.5,1) (1,1): area .375 + .5
    assert M.auc_judd(SAL, FIX) == pytest.approx(0.875, abs=1e-12)


def test_auc_judd_perfect_and_inverted() -> None:
    fix = np.zeros((8, 8), int)
    fix[2, 3] = fix[5, 5] = 1
    assert M.auc_judd(fix.astype(float), fix) == pytest.approx(1.0)
    # lowest exactly at the (tied) fixations: every other pixel ranks above them, so the
    # curve is (0,0) (1,.5) (1,1) and the area .25
    assert M.auc_judd(1.0 - fix, fix) == pytest.approx(0.25, abs=1e-12)


def test_nss_worked_example() -> None:
    sd = np.sqrt(((0.45 ** 2) + (0.35 ** 2) + (0.05 ** 2) + (0.15 ** 2)) / 3)  # ddof=1
    expected = ((0.9 - 0.45) / sd + (0.3 - 0.45) / sd) / 2
    assert M.nss(SAL, FIX) == pytest.approx(expected, abs=1e-12)


def test_cc_kld_sim_against_scipy() -> None:
    rng = np.random.default_rng(5)
    s, g = rng.random((30, 40)) + 0.01, rng.random((30, 40)) + 0.01
    assert M.cc(s, g) == pytest.approx(scipy.stats.pearsonr(s.ravel(), g.ravel()).statistic,
                                       abs=1e-9)
    p, q = s / s.sum(), g / g.sum()
    assert M.kld(s, g) == pytest.approx(scipy.special.rel_entr(q, p).sum(), abs=1e-6)
    assert M.kld(g, g) == pytest.approx(0.0, abs=1e-9)
    assert M.sim(g, g) == pytest.approx(1.0)


def test_sim_worked_example() -> None:
    a = np.array([[0.0, 1.0], [1.0, 2.0]])  # min-max -> [0,.5,.5,1] -> /2 -> [0,.25,.25,.5]
    b = np.array([[2.0, 2.0], [0.0, 0.0]])  # -> [1,1,0,0] -> [.5,.5,0,0]
    assert M.sim(a, b) == pytest.approx(0.25)


def test_saliency_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="resize"):
        M.nss(np.zeros((2, 3)), np.zeros((3, 2)))
