"""Time-aware temporal smoothing of per-track signals (DESIGN §4).

* Emotion probabilities: exponential smoothing with a half-life in ms,
  ``alpha = 1 - 2^(-dt/half_life)``, so irregular frame intervals weigh correctly.
* AU intensities: One-Euro filter (Casiez, Roussel, Vogel, CHI 2012, §3): a low-pass whose cutoff
  rises with the signal's speed, ``fc = min_cutoff + beta*|dx/dt|``, ``alpha = 1/(1 + tau/dt)``
  with ``tau = 1/(2*pi*fc)``; little lag on fast onsets, little jitter at rest.
* Dominant label: hysteresis — a new label replaces the current one only when its smoothed
  probability beats the current label's by ``label_hysteresis``.
* A gap longer than ``reset_gap_ms`` resets the track's filters; ``end_track`` frees the state.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def _one_euro_alpha(dt_s: float, cutoff_hz: float) -> np.ndarray | float:
    tau = 1.0 / (2 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


@dataclasses.dataclass
class _TrackState:
    t_ms: int
    probs: np.ndarray
    label: int
    au: np.ndarray | None
    au_deriv: np.ndarray | None
    extra: np.ndarray | None


class Smoother:
    """Per-(session, track) smoothing; one instance per session.

    Args:
        emotion_half_life_ms: half-life of the probability smoothing, ms (0 = off).
        au_min_cutoff_hz: One-Euro minimum cutoff, Hz.
        au_beta: One-Euro speed coefficient (1/(units/s)).
        au_d_cutoff_hz: cutoff for the derivative estimate, Hz.
        label_hysteresis: margin in probability a challenger label needs, [0, 1].
        reset_gap_ms: gap after which a track's filters restart, ms.
    """

    def __init__(self, emotion_half_life_ms: float = 300.0, au_min_cutoff_hz: float = 1.0,
                 au_beta: float = 0.05, au_d_cutoff_hz: float = 1.0,
                 label_hysteresis: float = 0.1, reset_gap_ms: int = 1000) -> None:
        self.half_life = emotion_half_life_ms
        self.min_cutoff = au_min_cutoff_hz
        self.beta = au_beta
        self.d_cutoff = au_d_cutoff_hz
        self.hyst = label_hysteresis
        self.reset_gap = reset_gap_ms
        self._s: dict[int, _TrackState] = {}

    def reset(self) -> None:
        self._s.clear()

    def end_track(self, track_id: int) -> None:
        """Free a finished track's state."""
        self._s.pop(track_id, None)

    def snapshot(self) -> dict[int, _TrackState]:
        """Per-track filter state, picklable."""
        return dict(self._s)

    def restore(self, state: dict[int, _TrackState]) -> None:
        """Continue from a :meth:`snapshot`."""
        self._s = dict(state)

    def __len__(self) -> int:
        return len(self._s)

    def update(self, track_id: int, t_ms: int, probs: np.ndarray, au: np.ndarray | None = None,
               extra: np.ndarray | None = None) -> tuple[np.ndarray, int, np.ndarray | None,
                                                         np.ndarray | None]:
        """Smooth one observation of a track.

        Args:
            track_id: track.
            t_ms: media time, ms (non-decreasing per track; an older point resets the track).
            probs: (E,) emotion probabilities summing to 1.
            au: (A,) AU intensities 0–5, or None.
            extra: (R,) other [0,1] signals smoothed like probabilities (e.g. saliency), or None.

        Returns:
            (smoothed probs (E,), dominant label index, smoothed AUs (A,) or None,
            smoothed extra (R,) or None).
        """
        probs = np.asarray(probs, np.float64)
        st = self._s.get(track_id)
        if st is None or t_ms - st.t_ms > self.reset_gap or t_ms < st.t_ms:
            st = _TrackState(t_ms, probs.copy(), int(np.argmax(probs)),
                             None if au is None else np.asarray(au, np.float64).copy(),
                             None if au is None else np.zeros(len(au)),
                             None if extra is None else np.asarray(extra, np.float64).copy())
            self._s[track_id] = st
            return st.probs.copy(), st.label, _c(st.au), _c(st.extra)
        dt_ms = t_ms - st.t_ms
        st.t_ms = t_ms
        a = 1.0 if self.half_life <= 0 else 1.0 - 2.0 ** (-dt_ms / self.half_life)
        st.probs = st.probs + a * (probs - st.probs)
        if extra is not None:
            ex = np.asarray(extra, np.float64)
            st.extra = ex.copy() if st.extra is None else st.extra + a * (ex - st.extra)
        best = int(np.argmax(st.probs))
        if best != st.label and st.probs[best] >= st.probs[st.label] + self.hyst:
            st.label = best
        if au is not None:
            x = np.asarray(au, np.float64)
            if st.au is None or dt_ms == 0:
                st.au = x.copy() if st.au is None else st.au
                st.au_deriv = np.zeros(len(x))
            else:
                dt_s = dt_ms / 1000.0
                dx = (x - st.au) / dt_s
                ad = _one_euro_alpha(dt_s, self.d_cutoff)
                st.au_deriv = st.au_deriv + ad * (dx - st.au_deriv)
                cutoff = self.min_cutoff + self.beta * np.abs(st.au_deriv)
                a_au = 1.0 / (1.0 + (1.0 / (2 * math.pi * cutoff)) / dt_s)
                st.au = st.au + a_au * (x - st.au)
        return st.probs.copy(), st.label, _c(st.au), _c(st.extra)


def _c(x: np.ndarray | None) -> np.ndarray | None:
    return None if x is None else x.copy()
