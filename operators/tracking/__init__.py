"""Multi-face tracking: constant-velocity Kalman boxes + ByteTrack-style two-stage association."""

from affectstream.operators.tracking.tracker import FaceTracker, TrackerState

__all__ = ["FaceTracker", "TrackerState"]
