"""The Python API: analyse a clip or an image in this process and get a pandas DataFrame.

The same session runner and operators as ``affectstream run``, placed in the calling process
with in-process batched inference and an in-memory sink: no Ray, no Redis. Columns follow the
conventions of OpenFace / py-feat where they exist (``frame``, ``timestamp_ms``, ``AU12_r``,
``AU12_c``) and this project's record names otherwise (DESIGN §4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from affectstream.operators.records import DISFA_AUS, EMOTIONS, FACE_REGIONS, POSE_FIELDS, TimelinePoint

if TYPE_CHECKING:
    import pandas as pd

AU_PRESENCE_THRESHOLD = 1.0
"""For points without the AU model's own presence (``au_model: geometric``, older stored points):
``AUxx_c`` = 1 where the intensity ``AUxx_r`` reaches this (FACS level A, "trace"), else 0."""


def points_frame(points: Iterable[TimelinePoint], frame_of: dict[int, int] | None = None
                 ) -> pd.DataFrame:
    """Timeline points as a DataFrame, one row per face per analysed frame.

    Args:
        points: timeline points (any sessions, any order).
        frame_of: ``ts_ms -> frame index`` of the source; None leaves ``frame`` empty (<NA>).

    Returns:
        Columns: ``session_id``, ``frame`` (Int64), ``timestamp_ms`` (capture time, epoch ms),
        ``pts_ms`` (media time, ms), ``track_id``, ``x1 y1 x2 y2`` (box, pixels), ``det_score``
        (0–1), ``emotion`` (dominant label), one probability column per canonical emotion
        (0–1; NaN for labels the model does not output), ``AU01_r``… (intensity 0–5),
        ``AU01_c``… (presence 0/1: the AU model's own, per frame — ``blendshape``: that frame's
        intensity >= 2.0 before smoothing — else smoothed intensity >=
        :data:`AU_PRESENCE_THRESHOLD`), ``sal_<region>`` (0–1, NaN when saliency is off),
        ``valence``/``arousal`` (-1–1 or NaN), ``yaw`` ``pitch`` ``roll`` (head pose, degrees;
        NaN without ``au_model: blendshape``), ``gaze_yaw`` ``gaze_pitch`` (degrees, coarse);
        when points carry landmarks (``inference.store_landmarks``) also ``x_0``… ``y_0``…
        (``z_0``… for 3-D), frame pixels, as OpenFace names them. Sorted by ``timestamp_ms``
        then ``track_id``.
    """
    import pandas as pd

    rows = []
    n_lm = dims = 0
    for p in points:
        r: dict[str, Any] = {"session_id": p.session_id,
                             "frame": None if frame_of is None else frame_of.get(p.ts_ms),
                             "timestamp_ms": p.ts_ms, "pts_ms": p.pts_ms, "track_id": p.track_id,
                             "x1": p.bbox_xyxy[0], "y1": p.bbox_xyxy[1], "x2": p.bbox_xyxy[2],
                             "y2": p.bbox_xyxy[3], "det_score": p.det_score, "emotion": p.emotion}
        for e in EMOTIONS:
            r[e] = p.emotion_probs.get(e, np.nan)
        for au in DISFA_AUS:
            r[f"{au}_r"] = p.au_intensity.get(au, np.nan)
        for au in DISFA_AUS:
            v = p.au_intensity.get(au)
            c = p.au_presence.get(au)
            r[f"{au}_c"] = (c if c is not None else pd.NA if v is None
                            else int(v >= AU_PRESENCE_THRESHOLD))
        for reg in FACE_REGIONS:
            r[f"sal_{reg}"] = p.saliency.get(reg, np.nan)
        r["valence"] = np.nan if p.valence is None else p.valence
        r["arousal"] = np.nan if p.arousal is None else p.arousal
        for k in POSE_FIELDS:
            v = getattr(p, k)
            r[k] = np.nan if v is None else v
        if p.landmarks is not None:
            lm = np.asarray(p.landmarks)
            n_lm = max(n_lm, lm.shape[0])
            dims = max(dims, lm.shape[1])
            for d, axis in enumerate("xyz"[:lm.shape[1]]):
                r.update({f"{axis}_{j}": float(v) for j, v in enumerate(lm[:, d])})
        rows.append(r)
    cols = (["session_id", "frame", "timestamp_ms", "pts_ms", "track_id", "x1", "y1", "x2", "y2",
             "det_score", "emotion", *EMOTIONS, *(f"{a}_r" for a in DISFA_AUS),
             *(f"{a}_c" for a in DISFA_AUS), *(f"sal_{r}" for r in FACE_REGIONS), "valence",
             "arousal", *POSE_FIELDS,
             *(f"{axis}_{j}" for axis in "xyz"[:dims] for j in range(n_lm))])
    df = pd.DataFrame(rows, columns=cols)
    df["frame"] = df["frame"].astype("Int64")
    for au in DISFA_AUS:
        df[f"{au}_c"] = df[f"{au}_c"].astype("Int64")
    return df.sort_values(["timestamp_ms", "track_id"], kind="stable").reset_index(drop=True)


def analyze_frames(frames: Iterable[Any], session_id: str, *, config: str | None = None,
                   overrides: dict | None = None) -> pd.DataFrame:
    """Analyse :class:`~affectstream.operators.records.Frame` records in order (see
    :func:`analyze_video`); ``overrides`` are configuration overrides (nested dict)."""
    import torch

    from affectstream.operators.analyze import FaceAnalyzer
    from affectstream.pipeline.config import load_config
    from affectstream.pipeline.runtime.local_inference import LocalInference
    from affectstream.pipeline.runtime.memory import ListSink
    from affectstream.pipeline.runtime.parts import new_builder, new_stage
    from affectstream.pipeline.runtime.runner import SessionRunner

    cfg = load_config(config, overrides=overrides)
    i = cfg.inference
    analyzer = FaceAnalyzer(i.fer_model, i.saliency, i.au_model, i.device, i.half)
    sink, frame_of = ListSink(), {}

    async def main() -> None:
        infer = LocalInference(analyzer, i.max_batch_size)
        runner = SessionRunner(session_id, new_stage(cfg), new_builder(cfg, analyzer.labels),
                               infer, sink, window=cfg.max_in_flight,
                               saliency_interval_ms=i.saliency_interval_ms)
        await runner.open("python")
        try:
            for f in frames:
                frame_of[f.ts_ms] = f.seq
                await runner.submit(f)
        finally:
            await runner.close()
            infer.close()

    # the runner's stages already run in parallel threads; intra-op threads on top of them cost
    # more than they give (measured on 2 cores, WolfgangLanger: 1 thread 43.3 frames/s, 2 threads
    # 32.3 with -c fast; 28.0 vs 19.7 by default). Restored on return: the setting is process-wide.
    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, i.torch_threads or 1))
    try:
        asyncio.run(main())
    finally:
        torch.set_num_threads(threads_before)
    return points_frame(sink.all_points(session_id), frame_of)


def analyze_video(source: str | Path, *, session_id: str | None = None,
                  analysis_fps: float | None = None, max_frames: int | None = None,
                  config: str | None = None, fer_model: str | None = None,
                  au_model: str | None = None) -> pd.DataFrame:
    """Analyse a video file (or stream URL) in this process; no Ray, no Redis.

    Args:
        source: video file path, or an ``rtsp://`` URL (then set ``max_frames``).
        session_id: the ``session_id`` column (default: the file stem).
        analysis_fps: frames per second of media time analysed; None = every frame.
        max_frames: stop after this many analysed frames.
        config: YAML file or preset name (``configs/``); fer_model / au_model: override the
            configured models (registry id or checkpoint path).

    Returns:
        One row per face per analysed frame, columns as in :func:`points_frame`; frames with
        no face have no row (their indices are absent from ``frame``).

    Raises:
        SourceError: missing file, unreadable container, unreachable stream.
        KeyError: unknown model name (the message lists the known ones).

    Example:
        >>> import affectstream
        >>> df = affectstream.analyze_video("interview.mp4", analysis_fps=10)
        >>> df.groupby("track_id")[["happiness", "AU12_r"]].mean()
    """
    from affectstream.operators.decode import VideoSource

    overrides = {"decode": {"analysis_fps": analysis_fps},
                 "inference": {"fer_model": fer_model, "au_model": au_model}}
    sid = session_id or Path(str(source)).stem
    src = VideoSource(str(source), sid, analysis_fps=analysis_fps, max_frames=max_frames)
    return analyze_frames(iter(src), sid, config=config, overrides=overrides)


def analyze_image(image: str | Path | np.ndarray, *, config: str | None = None,
                  fer_model: str | None = None, au_model: str | None = None) -> pd.DataFrame:
    """Analyse one still image (a path, or an (H, W, 3) uint8 RGB array).

    Returns:
        One row per face (``frame`` 0), columns as in :func:`points_frame`.

    Raises:
        FileNotFoundError: the path does not exist. ValueError: not a readable image / bad shape.
    """
    from affectstream.operators.records import Frame

    if isinstance(image, (str, Path)):
        import cv2

        if not Path(image).is_file():
            raise FileNotFoundError(f"image not found: {image}")
        bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"not a readable image: {image}")
        img, sid = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), Path(image).stem
    else:
        img, sid = np.ascontiguousarray(image), "image"
    # a still has one frame: every detection above detect.score_thresh is a face (no activation)
    overrides = {"inference": {"fer_model": fer_model, "au_model": au_model},
                 "track": {"activation_ms": 0}}
    return analyze_frames([Frame(sid, 0, 0, 0, img)], sid, config=config,
                          overrides=overrides)


def read_timeline(session_id: str, redis_url: str = "redis://127.0.0.1:6379/0",
                  prefix: str = "affect") -> pd.DataFrame:
    """A stored session (written by ``run`` or ``serve``) as the same DataFrame shape as
    :func:`analyze_video` (``frame`` is <NA>: Redis keeps capture and media times, not indices).

    Raises:
        KeyError: no such session. redis.ConnectionError: Redis unreachable.
    """
    from affectstream.pipeline.store.redis_store import TimelineStore, connect

    store = TimelineStore(connect(redis_url), prefix)
    if not store.exists(session_id):
        raise KeyError(f"no session {session_id!r} in {redis_url}")
    return points_frame(store.timeline(session_id))
