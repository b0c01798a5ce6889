"""Building a session's stateful parts from the configuration (one place for run and serve)."""

from __future__ import annotations

import copy
import hashlib
import json

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


def stage_key(cfg: PipelineConfig) -> str:
    """What a face-track stage's networks and tracker settings depend on (``detect``, ``track``
    and the inference settings that pick or run the networks), as a short digest: a pooled stream
    actor serves a run only when its key matches."""
    i = cfg.inference
    data = {"detect": cfg.detect.model_dump(mode="json"),
            "track": cfg.track.model_dump(mode="json"),
            "inference": {k: getattr(i, k) for k in ("fer_model", "au_model", "landmarks_batch",
                                                     "facetrack_runtime", "torch_threads")}}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def new_builder(cfg: PipelineConfig, labels: tuple[str, ...]) -> TimelineBuilder:
    """A timeline builder (smoother + geometric AUs) for one session, ``labels`` being the
    expression model's canonical label order."""
    s = cfg.smooth
    return TimelineBuilder(Smoother(s.emotion_half_life_ms, s.au_min_cutoff_hz, s.au_beta,
                                    s.au_d_cutoff_hz, s.label_hysteresis, s.reset_gap_ms), labels,
                           store_landmarks=cfg.inference.store_landmarks)
