"""Building a session's stateful parts from the configuration (one place for run and serve)."""

from __future__ import annotations

import copy

from affectstream.operators.facetrack import FaceTrackStage
from affectstream.operators.smoothing import Smoother
from affectstream.operators.timeline import TimelineBuilder
from affectstream.pipeline.config import PipelineConfig


def new_stage(cfg: PipelineConfig, base: FaceTrackStage | None = None) -> FaceTrackStage:
    """A face-track stage for one session.

    Args:
        cfg: configuration (``detect``, ``track``, ``inference.fer_model`` for the crop).
        base: an existing stage whose networks (detector, landmarker) are shared; the tracker
            is copied, so the new session's state starts blank. None loads the networks.
    """
    if base is None:
        return FaceTrackStage.from_config(cfg)
    return FaceTrackStage(base.detector, copy.deepcopy(base.tracker), base.landmarker, base.crop,
                          base.min_face_px, base.min_presence, base.detect_interval_ms)


def new_builder(cfg: PipelineConfig, labels: tuple[str, ...]) -> TimelineBuilder:
    """A timeline builder (smoother + geometric AUs) for one session, ``labels`` being the
    expression model's canonical label order."""
    s = cfg.smooth
    return TimelineBuilder(Smoother(s.emotion_half_life_ms, s.au_min_cutoff_hz, s.au_beta,
                                    s.au_d_cutoff_hz, s.label_hysteresis, s.reset_gap_ms), labels,
                           store_landmarks=cfg.inference.store_landmarks)
