"""Constant-velocity Kalman filter on a box ``(cx, cy, w, h)``, time-aware (dt in ms).

State ``x = [cx, cy, w, h, vcx, vcy, vw, vh]`` in pixels and pixels/ms. Process noise scales with
the box height (faces far away move fewer pixels), following the SORT/ByteTrack convention of
size-proportional noise; measurement noise likewise.
"""

from __future__ import annotations

import numpy as np

_H = np.hstack([np.eye(4), np.zeros((4, 4))])


def xyxy_to_cxcywh(b: np.ndarray) -> np.ndarray:
    """(…,4) x1,y1,x2,y2 -> cx,cy,w,h (float64)."""
    b = np.asarray(b, np.float64)
    return np.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2,
                     b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], -1)


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    """(…,4) cx,cy,w,h -> x1,y1,x2,y2."""
    return np.stack([b[..., 0] - b[..., 2] / 2, b[..., 1] - b[..., 3] / 2,
                     b[..., 0] + b[..., 2] / 2, b[..., 1] + b[..., 3] / 2], -1)


class BoxKalman:
    """Kalman filter of one box.

    Args:
        box_xyxy: first measurement (4,), pixels.
        pos_noise: std of position noise per ms, as a fraction of box height.
        vel_noise: std of velocity noise per ms, as a fraction of box height per ms.
        meas_noise: std of the measurement, as a fraction of box height.
    """

    def __init__(self, box_xyxy: np.ndarray, pos_noise: float = 0.05 / 33,
                 vel_noise: float = 0.00625 / 33, meas_noise: float = 0.05) -> None:
        z = xyxy_to_cxcywh(box_xyxy)
        self.x = np.concatenate([z, np.zeros(4)])
        h = max(z[3], 1.0)
        self.P = np.diag(np.r_[np.full(4, (2 * 0.05 * h) ** 2), np.full(4, (10 * 0.00625 * h / 33) ** 2)])
        self.q = (pos_noise, vel_noise)
        self.r = meas_noise

    def predict(self, dt_ms: float) -> np.ndarray:
        """Advance by ``dt_ms`` milliseconds; returns the predicted box xyxy (4,)."""
        dt = max(float(dt_ms), 0.0)
        F = np.eye(8)
        F[:4, 4:] = np.eye(4) * dt
        h = max(self.x[3], 1.0)
        qp, qv = self.q[0] * h * dt, self.q[1] * h * dt
        Q = np.diag(np.r_[np.full(4, qp ** 2), np.full(4, qv ** 2)])
        self.x = F @ self.x
        self.x[2:4] = np.maximum(self.x[2:4], 1.0)
        self.P = F @ self.P @ F.T + Q
        return self.box()

    def update(self, box_xyxy: np.ndarray) -> None:
        """Correct with a measured box xyxy (4,)."""
        z = xyxy_to_cxcywh(box_xyxy)
        h = max(z[3], 1.0)
        R = np.eye(4) * (self.r * h) ** 2
        S = _H @ self.P @ _H.T + R
        K = self.P @ _H.T @ np.linalg.inv(S)
        self.x = self.x + K @ (z - _H @ self.x)
        self.P = (np.eye(8) - K @ _H) @ self.P

    def box(self) -> np.ndarray:
        """Current box xyxy (4,) float64."""
        return cxcywh_to_xyxy(self.x[:4])
