"""Head pose (yaw, pitch, roll) and gaze direction from FaceMesh V2 landmarks.

Pure numpy; no Ray/Redis/Kafka.

Head pose: a weighted orthogonal Procrustes fit (Umeyama, IEEE TPAMI 13(4), 1991) of MediaPipe's
canonical face (:func:`models.face_geometry.canonical_face`, with MediaPipe's own basis landmarks
and weights) to the 3-D landmarks under weak perspective (orthographic camera), the same fit
MediaPipe's face-geometry pipeline makes. Angles (degrees), for a camera looking at the subject:

* ``yaw`` > 0: the face turns toward the image's right (the subject's left);
* ``pitch`` > 0: the face tilts up (chin forward);
* ``roll`` > 0: the head turns counter-clockwise as seen in the image (top of the head toward the
  image's left).

``R = Ry(yaw) @ Rx(-pitch) @ Rz(roll)`` in the canonical frame (x image-right, y up, z toward the
camera). Weak perspective ignores the camera's focal length: close to the lens and far off-centre
faces read a few degrees off.

Gaze (eye-in-head plus head): each iris centre's offset from its eye's centre (mid-point of the
eye corners, vertical from the lid mid-points) divided by the eyeball radius, taken as 2.05 iris
radii (adult iris diameter ~11.7 mm, eyeball radius ~12 mm), gives the eye's rotation; averaged
over both eyes and added to the head's yaw/pitch. It is an uncalibrated geometric estimate: no
per-person eyeball model and no gaze ground truth here to measure it against; vertical gaze is the
weaker axis (the lids follow the eye).
"""

from __future__ import annotations

import numpy as np

# eye (outer corner, inner corner, upper lid, lower lid, iris centre, iris rim 4 points)
_EYES = ((33, 133, 159, 145, 468, (469, 470, 471, 472)),
         (263, 362, 386, 374, 473, (474, 475, 476, 477)))
EYEBALL_PER_IRIS_RADIUS = 2.05


def _to_canonical_axes(lm: np.ndarray) -> np.ndarray:
    """Image landmarks (x right, y down, z away) -> (x right, y up, z toward the camera)."""
    return lm * np.array([1.0, -1.0, -1.0])


def head_rotation(landmarks3d: np.ndarray) -> np.ndarray:
    """Rotation matrices of the faces.

    Args:
        landmarks3d: (N, >=468, 3) float, x, y in pixels and z in the same scale (FaceMesh V2
            output mapped to the frame).

    Returns:
        (N, 3, 3) float64 rotations R with ``landmarks ~ s * R @ canonical + t``.

    Raises:
        ValueError: bad shape.
    """
    from affectstream.models.face_geometry import canonical_face

    lm = np.asarray(landmarks3d, np.float64)
    if lm.ndim != 3 or lm.shape[1] < 468 or lm.shape[2] != 3:
        raise ValueError(f"landmarks3d must be (N, 468|478, 3), got {lm.shape}")
    verts, ids, w = canonical_face()
    src = verts[ids].astype(np.float64)                       # (K, 3)
    dst = _to_canonical_axes(lm[:, ids])                      # (N, K, 3)
    w = (w / w.sum()).astype(np.float64)
    src_c = src - (w[:, None] * src).sum(0)
    dst_c = dst - (w[None, :, None] * dst).sum(1, keepdims=True)
    cov = np.einsum("k,nki,kj->nij", w, dst_c, src_c)        # (N, 3, 3)
    u, _, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.tile(np.eye(3), (len(lm), 1, 1))
    fix[:, 2, 2] = d
    return u @ fix @ vt


def head_pose(landmarks3d: np.ndarray) -> np.ndarray:
    """Yaw, pitch, roll in degrees (see the module docstring for signs).

    Args:
        landmarks3d: (N, >=468, 3) float frame pixels (z in the same scale).

    Returns:
        (N, 3) float32 ``[yaw, pitch, roll]`` degrees; yaw, roll in (-180, 180], pitch in [-90, 90].
    """
    r = head_rotation(landmarks3d)
    # R = Ry(yaw) Rx(-pitch) Rz(roll): r[1,2] = sin(pitch); yaw from r[0,2], r[2,2]
    pitch = np.degrees(np.arcsin(np.clip(r[:, 1, 2], -1.0, 1.0)))
    yaw = np.degrees(np.arctan2(r[:, 0, 2], r[:, 2, 2]))
    roll = np.degrees(np.arctan2(r[:, 1, 0], r[:, 1, 1]))
    return np.stack([yaw, pitch, roll], -1).astype(np.float32)


def gaze(landmarks: np.ndarray, pose: np.ndarray | None = None) -> np.ndarray:
    """Gaze direction as yaw/pitch in degrees (camera frame, signs as :func:`head_pose`).

    Args:
        landmarks: (N, 478, 2|3) float frame pixels (FaceMesh V2 with iris points).
        pose: (N, 3) head pose from :func:`head_pose`; computed when ``None`` and 3-D landmarks
            are given, else taken as zero (eye-in-head angles only).

    Returns:
        (N, 2) float32 ``[gaze_yaw, gaze_pitch]`` degrees.

    Raises:
        ValueError: fewer than 478 landmarks (no iris points).
    """
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[1] != 478:
        raise ValueError(f"gaze needs (N, 478, 2|3) landmarks with iris points, got {lm.shape}")
    if pose is None:
        pose = head_pose(lm) if lm.shape[2] == 3 else np.zeros((len(lm), 3), np.float32)
    xy = lm[..., :2]
    yaws, pitches = [], []
    for outer, inner, up, low, iris, rim in _EYES:
        ux = xy[:, inner] - xy[:, outer] if outer == 33 else xy[:, outer] - xy[:, inner]
        ux /= np.maximum(np.linalg.norm(ux, axis=-1, keepdims=True), 1e-6)  # image-right
        uy = np.stack([-ux[:, 1], ux[:, 0]], -1)                            # image-down
        centre = np.stack([(xy[:, outer] + xy[:, inner]) / 2, (xy[:, up] + xy[:, low]) / 2])
        r_iris = np.linalg.norm(xy[:, list(rim)] - xy[:, iris][:, None], axis=-1).mean(1)
        r_eye = np.maximum(EYEBALL_PER_IRIS_RADIUS * r_iris, 1e-6)
        dx = ((xy[:, iris] - centre[0]) * ux).sum(-1)
        dy = ((xy[:, iris] - centre[1]) * uy).sum(-1)
        yaws.append(np.degrees(np.arcsin(np.clip(dx / r_eye, -1, 1))))
        pitches.append(-np.degrees(np.arcsin(np.clip(dy / r_eye, -1, 1))))
    eye = np.stack([np.mean(yaws, 0), np.mean(pitches, 0)], -1)
    return (eye + np.asarray(pose)[:, :2]).astype(np.float32)


def frontalize(landmarks3d: np.ndarray) -> np.ndarray:
    """Landmarks with the head rotation removed, back in image axes (x right, y down).

    Args:
        landmarks3d: (N, P, 3) float frame pixels (P >= 468).

    Returns:
        (N, P, 3) float64, rotated about the landmarks' centroid so the face looks straight at the
        camera; same scale as the input (pixels), so 2-D geometry (e.g.
        :func:`operators.au_geometric.features` on ``[..., :2]``) no longer shrinks with yaw.
    """
    lm = _to_canonical_axes(np.asarray(landmarks3d, np.float64))
    r = head_rotation(landmarks3d)
    c = lm.mean(1, keepdims=True)
    front = np.einsum("nji,npj->npi", r, lm - c) + c           # R^T (p - c) + c
    return _to_canonical_axes(front)
