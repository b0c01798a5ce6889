import numpy as np
import pytest

from affectstream.operators.smoothing import Smoother


def test_half_life_is_in_ms_not_frames():
    s = Smoother(emotion_half_life_ms=100, label_hysteresis=0)
    s.update(1, 0, np.array([1.0, 0.0]))
    p, _, _, _ = s.update(1, 100, np.array([0.0, 1.0]))  # one half-life later: halfway
    assert p == pytest.approx([0.5, 0.5])
    s2 = Smoother(emotion_half_life_ms=100, label_hysteresis=0)
    s2.update(1, 0, np.array([1.0, 0.0]))
    s2.update(1, 50, np.array([0.0, 1.0]))
    p2, _, _, _ = s2.update(1, 100, np.array([0.0, 1.0]))  # two half-half-lives: same weight
    assert p2 == pytest.approx([0.5, 0.5])


def test_hysteresis_holds_label_until_margin():
    s = Smoother(emotion_half_life_ms=0, label_hysteresis=0.2)
    assert s.update(1, 0, np.array([0.6, 0.4]))[1] == 0
    assert s.update(1, 10, np.array([0.45, 0.55]))[1] == 0  # beats by 0.1 < 0.2
    assert s.update(1, 20, np.array([0.3, 0.7]))[1] == 1


def test_one_euro_reduces_jitter_and_follows_step():
    rng = np.random.default_rng(0)
    s = Smoother(au_min_cutoff_hz=1.0, au_beta=0.05)
    out = []
    for k in range(60):
        x = np.array([2.0 + rng.normal(0, 0.3)])
        out.append(s.update(1, k * 33, np.array([1.0]), x)[2][0])
    assert np.std(out[20:]) < 0.5 * 0.3
    for k in range(60, 120):
        y = s.update(1, k * 33, np.array([1.0]), np.array([4.0]))[2][0]
    assert y == pytest.approx(4.0, abs=0.1)


def test_gap_resets_and_end_frees():
    s = Smoother(emotion_half_life_ms=1000, reset_gap_ms=500)
    s.update(7, 0, np.array([1.0, 0.0]))
    p, lab, _, _ = s.update(7, 2000, np.array([0.0, 1.0]))
    assert lab == 1 and p == pytest.approx([0.0, 1.0])
    s.end_track(7)
    assert len(s) == 0
