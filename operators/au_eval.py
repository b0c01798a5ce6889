"""Quality measures of AU intensity estimates on real media (pure numpy; no Ray/Redis/Kafka).

* :func:`saturation` — share of frames at the scale's ceiling (== 5.0) per AU.
* :func:`jitter` — mean absolute frame-to-frame change per AU (0–5 units per frame).
* :func:`segment_means` — per-AU means inside labelled time segments (``pts_ms``).
* :func:`prototype_check` — do the AUs of a posed basic emotion lead? Prototypes after Ekman &
  Friesen's EMFACS predictions as tabulated for DISFA's 12 AUs (happiness AU06+AU12; surprise
  AU01+AU02+AU05+AU26; anger AU04; sadness AU01+AU04+AU15; disgust AU09+AU15; fear
  AU01+AU02+AU04+AU05+AU20+AU26), plus the bars of issue 12 for the three clearest ones.
"""

from __future__ import annotations

import numpy as np

from affectstream.operators.records import DISFA_AUS

PROTOTYPES: dict[str, tuple[str, ...]] = {
    "happiness": ("AU06", "AU12"),
    "surprise": ("AU01", "AU02", "AU05", "AU26"),
    "anger": ("AU04",),
    "sadness": ("AU01", "AU04", "AU15"),
    "disgust": ("AU09", "AU15"),
    "fear": ("AU01", "AU02", "AU04", "AU05", "AU20", "AU26"),
}

_COL = {a: i for i, a in enumerate(DISFA_AUS)}


def _check(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != len(DISFA_AUS):
        raise ValueError(f"AU intensities must be (T, {len(DISFA_AUS)}), got {x.shape}")
    return x


def saturation(au: np.ndarray, ceiling: float = 5.0) -> np.ndarray:
    """(12,) share in [0, 1] of the T frames of ``au`` (T, 12) with a value >= ``ceiling``."""
    au = _check(au)
    return (au >= ceiling).mean(0) if len(au) else np.zeros(au.shape[1])


def jitter(au: np.ndarray) -> np.ndarray:
    """(12,) mean ``|au[t] - au[t-1]|`` over consecutive frames of (T, 12); zeros when T < 2."""
    au = _check(au)
    return np.abs(np.diff(au, axis=0)).mean(0) if len(au) > 1 else np.zeros(au.shape[1])


def parse_segment(spec: str) -> tuple[str, float, float]:
    """``"laughing:9000-15000"`` -> ``("laughing", 9000.0, 15000.0)`` (milliseconds).

    Raises:
        ValueError: malformed spec or end <= start.
    """
    try:
        name, rng = spec.rsplit(":", 1)
        a, b = (float(v) for v in rng.split("-"))
    except ValueError:
        raise ValueError(f"segment must look like NAME:START_MS-END_MS, got {spec!r}") from None
    if not name or b <= a:
        raise ValueError(f"segment {spec!r}: needs a name and END_MS > START_MS")
    return name, a, b


def segment_means(au: np.ndarray, pts_ms: np.ndarray, segments: list[tuple[str, float, float]]
                  ) -> dict[str, tuple[int, np.ndarray]]:
    """Per segment: (frames in ``[start, end)``, (12,) mean intensities; NaN when empty)."""
    au = _check(au)
    ts = np.asarray(pts_ms, np.float64)
    out = {}
    for name, a, b in segments:
        m = (ts >= a) & (ts < b)
        out[name] = (int(m.sum()), au[m].mean(0) if m.any() else np.full(au.shape[1], np.nan))
    return out


def prototype_check(label: str, au: np.ndarray) -> dict:
    """How a posed still's AUs (12,) match its emotion's prototype.

    Returns:
        ``{"expected", "expected_mean", "top3", "rank_of_best_expected", "bar"}`` where ``bar`` is
        True/False for happiness (AU12 highest), surprise (AU01 or AU02 >= 1 and AU26 >= 1) and
        anger (AU04 among the top three), each leading AU above 0, None for the other emotions.

    Raises:
        KeyError: unknown label (lists the known ones).
    """
    if label not in PROTOTYPES:
        raise KeyError(f"unknown emotion {label!r}; known: {', '.join(PROTOTYPES)}")
    v = _check(np.asarray(au).reshape(1, -1))[0]
    order = [DISFA_AUS[i] for i in np.argsort(-v, kind="stable")]
    exp = PROTOTYPES[label]
    bar = None
    if label == "happiness":
        bar = bool(order[0] == "AU12" and v[_COL["AU12"]] > 0)
    elif label == "surprise":
        bar = bool(max(v[_COL["AU01"]], v[_COL["AU02"]]) >= 1 and v[_COL["AU26"]] >= 1)
    elif label == "anger":
        bar = bool("AU04" in order[:3] and v[_COL["AU04"]] > 0)
    return {"expected": {a: float(v[_COL[a]]) for a in exp},
            "expected_mean": float(np.mean([v[_COL[a]] for a in exp])),
            "top3": order[:3], "rank_of_best_expected": min(order.index(a) for a in exp) + 1,
            "bar": bar}
