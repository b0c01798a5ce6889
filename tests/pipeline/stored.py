"""Test helper: write a real session to Redis with the session runner and the Redis sink (the
same operators and sink as ``affectstream run``, in this process: no Ray)."""

from __future__ import annotations

import asyncio
from pathlib import Path


def write_session(redis_url: str, video: Path, session_id: str, analysis_fps: float | None = None,
                  max_frames: int | None = None, overrides: dict | None = None) -> int:
    """Analyse ``video`` and store its timeline as ``session_id``; returns the frames analysed."""
    from affectstream.operators.analyze import FaceAnalyzer
    from affectstream.operators.decode import VideoSource
    from affectstream.pipeline.config import load_config
    from affectstream.pipeline.runtime.local_inference import LocalInference
    from affectstream.pipeline.runtime.parts import new_builder, new_stage
    from affectstream.pipeline.runtime.runner import SessionRunner
    from affectstream.pipeline.runtime.sinks import redis_session_sink

    cfg = load_config(overrides=overrides)
    frames = list(VideoSource(str(video), session_id, analysis_fps=analysis_fps,
                              max_frames=max_frames))
    i = cfg.inference
    analyzer = FaceAnalyzer(i.fer_model, i.saliency, i.au_model, "cpu")
    sink, retry = redis_session_sink(redis_url, cfg)

    async def main() -> None:
        infer = LocalInference(analyzer)
        runner = SessionRunner(session_id, new_stage(cfg), new_builder(cfg, analyzer.labels),
                               infer, sink, sink_retry=retry)
        await runner.open(str(video))
        for f in frames:
            await runner.submit(f)
        await runner.close()
        infer.close()

    asyncio.run(main())
    return len(frames)
