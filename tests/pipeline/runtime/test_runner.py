"""The session runner's contract, in-process: real frames, real models, in-memory sink."""

from __future__ import annotations

import asyncio

import pytest

from affectstream.operators.analyze import FaceAnalyzer
from affectstream.operators.decode import VideoSource
from affectstream.pipeline.config import load_config
from affectstream.pipeline.runtime.local_inference import LocalInference
from affectstream.pipeline.runtime.memory import ListSink, ListSource
from affectstream.pipeline.runtime.parts import new_builder, new_stage
from affectstream.pipeline.runtime.runner import SessionRunner, SinkOutage


@pytest.fixture(scope="module")
def cfg():
    return load_config()


@pytest.fixture(scope="module")
def analyzer(cfg):
    i = cfg.inference
    return FaceAnalyzer(i.fer_model, i.saliency, i.au_model, "cpu")


@pytest.fixture(scope="module")
def frames(media):
    return list(VideoSource(str(media("single_face.mp4")), "s1", max_frames=24))


def _run(cfg, analyzer, source, sink, *, window=4, sid="s1", base=None, results=None, **kw):
    async def main():
        infer = LocalInference(analyzer, max_batch_size=8)
        runner = SessionRunner(sid, new_stage(cfg, base), new_builder(cfg, analyzer.labels),
                               infer, sink, window=window,
                               on_result=(results.append if results is not None else None), **kw)
        await runner.open("test")
        for frame, meta in source:
            await runner.submit(frame, meta, tag=frame.seq)
        await runner.close()
        infer.close()
        return runner

    return asyncio.run(main())


def test_points_in_frame_order_one_track(cfg, analyzer, frames):
    sink, results = ListSink(), []
    runner = _run(cfg, analyzer, ListSource(frames), sink, results=results)
    assert [r.tag for r in results] == list(range(len(frames)))  # in order, every frame
    pts = sink.all_points("s1")
    assert len(pts) == len(frames) and {p.track_id for p in pts} == {1}
    assert [p.ts_ms for p in pts] == sorted(p.ts_ms for p in pts)
    assert all(abs(sum(p.emotion_probs.values()) - 1) < 1e-3 for p in pts)
    assert sink.status["s1"] == "ended" and runner.counts["errors"] == 0
    assert max(r.batch_faces for r in results) >= 1


def test_replay_is_absorbed_by_the_sink(cfg, analyzer, frames):
    sink = ListSink()
    _run(cfg, analyzer, ListSource(frames[:12]), sink)
    # a restart from frame 0 with blank state replays 12 frames: the same track id, rejected
    _run(cfg, analyzer, ListSource(frames), sink)
    pts = sink.all_points("s1")
    assert len(pts) == len(frames)
    assert len({p.ts_ms for p in pts}) == len(pts)


def test_window_bounds_frames_in_flight(cfg, analyzer, frames):
    in_flight, peak = 0, 0

    class SlowSink(ListSink):
        def write(self, points):
            import time
            time.sleep(0.02)
            return super().write(points)

    async def main():
        nonlocal in_flight, peak
        infer = LocalInference(analyzer)
        runner = SessionRunner("s1", new_stage(cfg), new_builder(cfg, analyzer.labels), infer,
                               SlowSink(), window=3, on_result=lambda r: done())
        await runner.open("test")
        for frame, meta in ListSource(frames[:12]):
            in_flight += 1
            peak = max(peak, in_flight)
            await runner.submit(frame, meta)
        await runner.close()
        infer.close()

    def done():
        nonlocal in_flight
        in_flight -= 1

    asyncio.run(main())
    assert peak <= 3 + 2  # window + the frame being tracked + the one being written


def test_a_failing_frame_does_not_stop_the_session(cfg, analyzer, frames):
    class FlakyInference(LocalInference):
        calls = 0

        async def __call__(self, req):
            FlakyInference.calls += 1
            if FlakyInference.calls == 5:
                raise RuntimeError("model exploded")
            return await super().__call__(req)

    class PickySink(ListSink):
        def write(self, points):
            if points[0].ts_ms == frames[8].ts_ms:
                raise ValueError("refused by the store")
            return super().write(points)

    sink, results = PickySink(), []

    async def main():
        infer = FlakyInference(analyzer)
        runner = SessionRunner("s1", new_stage(cfg), new_builder(cfg, analyzer.labels), infer,
                               sink, window=1, on_result=results.append)
        await runner.open("test")
        for frame, meta in ListSource(frames[:12]):
            await runner.submit(frame, meta, tag=frame.seq)
        await runner.close()
        infer.close()
        return runner

    runner = asyncio.run(main())
    errors = {r.tag: r.error for r in results if r.error}
    assert set(errors) == {4, 8}, errors
    assert "model exploded" in errors[4] and "refused by the store" in errors[8]
    assert len(sink.all_points("s1")) == 10 and runner.counts["errors"] == 2


def test_sink_outage_beyond_tolerance_ends_the_session(cfg, analyzer, frames):
    class DownSink(ListSink):
        def write(self, points):
            raise SinkOutage("store unreachable for 300 s")

    with pytest.raises(SinkOutage):
        _run(cfg, analyzer, ListSource(frames[:4]), DownSink(), window=1)


def test_two_sessions_share_inference_forwards(cfg, analyzer, frames):
    sink, results = ListSink(), []

    async def main():
        # a forward waits 0.2 s for company: the two sessions' frames, submitted together, meet
        infer = LocalInference(analyzer, max_batch_size=8, batch_wait_s=0.2)
        base = new_stage(cfg)
        runners = [SessionRunner(sid, new_stage(cfg, base), new_builder(cfg, analyzer.labels),
                                 infer, sink, window=4, on_result=results.append)
                   for sid in ("a", "b")]
        for r in runners:
            await r.open("test")

        async def feed(r):
            for frame, meta in ListSource(frames[:12]):
                await r.submit(frame, meta)
        await asyncio.gather(*(feed(r) for r in runners))
        for r in runners:
            await r.close()
        infer.close()

    asyncio.run(main())
    assert len(sink.all_points("a")) == 12 == len(sink.all_points("b"))
    # the frames of both sessions met in forwards of more than one face
    assert max(r.batch_faces for r in results) >= 2


def test_saliency_at_a_per_track_rate_still_fills_every_point(cfg, analyzer, frames):
    asked = []

    class CountingInference(LocalInference):
        async def __call__(self, req):
            asked.append(int(req.saliency_mask.sum()))
            return await super().__call__(req)

    sink = ListSink()

    async def main():
        infer = CountingInference(analyzer)
        runner = SessionRunner("s1", new_stage(cfg), new_builder(cfg, analyzer.labels), infer,
                               sink, window=4, saliency_interval_ms=300)
        await runner.open("test")
        for frame, meta in ListSource(frames):
            await runner.submit(frame, meta)
        await runner.close()
        infer.close()

    asyncio.run(main())
    span_ms = frames[-1].pts_ms - frames[0].pts_ms
    # one map on the track's first frame, then one per 300 ms of media time
    assert 1 + span_ms // 300 - 1 <= sum(asked) <= 1 + span_ms // 300
    pts = sink.all_points("s1")
    assert len(pts) == len(frames)
    assert all(set(p.saliency) == {"brows", "eyes", "nose", "cheeks", "mouth", "jaw"} for p in pts)


def test_each_failed_step_has_its_error_kind_and_async_results_come_in_order(cfg, analyzer,
                                                                             frames):
    """A frame whose tracking raises, whose inference fails, whose timeline step raises or whose
    points the store refuses yields a result with that step's ``error_kind``; the others are
    written. An async ``on_result`` is awaited in frame order; ``on_tracked`` sees every frame
    before its result; each result carries a private copy of the tracker state."""
    from affectstream.pipeline.runtime.runner import ERROR_KINDS

    class FlakyInference(LocalInference):
        calls = 0

        async def __call__(self, req):
            FlakyInference.calls += 1
            if FlakyInference.calls == 4:  # frame 4 (every frame has a face; 2 never asks)
                raise RuntimeError("model exploded")
            return await super().__call__(req)

    class PickySink(ListSink):
        def write(self, points):
            if points[0].ts_ms == frames[8].ts_ms:
                raise ValueError("refused by the store")
            return super().write(points)

    stage, builder = new_stage(cfg), new_builder(cfg, analyzer.labels)
    process, build = stage.process, builder.build

    def bad_process(frame, meta=None):
        if frame.seq == 2:
            raise MemoryError("no room for the landmarks")
        return process(frame, meta)

    def bad_build(sid, ts_ms, *a, **kw):
        if ts_ms == frames[6].ts_ms:
            raise FloatingPointError("smoother diverged")
        return build(sid, ts_ms, *a, **kw)

    stage.process, builder.build = bad_process, bad_build
    sink, results, tracked = PickySink(), [], []

    async def on_result(r):
        await asyncio.sleep(0.001 * (r.seq % 3))  # uneven: order must still hold
        assert r.tag in tracked
        results.append(r)

    async def main():
        infer = FlakyInference(analyzer)
        runner = SessionRunner("s1", stage, builder, infer, sink, window=3,
                               on_result=on_result, on_tracked=tracked.append,
                               snapshot_stage=True)
        await runner.open("test")
        for frame, meta in ListSource(frames[:12]):
            await runner.submit(frame, meta, tag=frame.seq)
        await runner.close(None)  # the session goes on elsewhere: status untouched
        infer.close()
        return runner

    runner = asyncio.run(main())
    assert [r.tag for r in results] == list(range(12)) == tracked
    kinds = {r.tag: r.error_kind for r in results if r.error_kind}
    assert kinds == {2: "track_error", 4: "inference_error", 6: "timeline_error",
                     8: "store_error"}, kinds
    assert set(kinds.values()) == set(ERROR_KINDS)
    assert "no room" in results[2].error and results[2].stage_state is None
    assert len(sink.all_points("s1")) == 8 and runner.counts["errors"] == 4
    assert sink.status["s1"] == "running"
    # private copies: the state after frame 0 is not the state after frame 11
    states = [r.stage_state for r in results if r.stage_state is not None]
    assert states[0]["tracker"].last_ms == frames[0].pts_ms
    assert states[-1]["tracker"].last_ms == frames[11].pts_ms


def test_blendshape_points_carry_presence_pose_and_gaze(cfg, analyzer, frames):
    """The default AU model: learned AUs from the batched inference bypass the geometric
    estimator; each point has presence agreeing with its smoothed intensity, head pose, gaze."""
    from affectstream.operators.records import DISFA_AUS

    assert cfg.inference.au_model == "blendshape"
    sink, results = ListSink(), []
    runner = _run(cfg, analyzer, ListSource(frames[:12]), sink, results=results)
    pts = sink.all_points("s1")
    assert len(pts) == 12 and not any(r.error for r in results)
    assert all("au" in r.timings_ms for r in results)
    for p in pts:
        assert set(p.au_presence) == set(DISFA_AUS) == set(p.au_intensity)
        assert all(p.au_presence[a] == int(p.au_intensity[a] >= 2.0) for a in DISFA_AUS)
        assert all(0 <= v <= 5 for v in p.au_intensity.values())
        assert all(abs(v) < 45 for v in (p.yaw, p.pitch, p.roll, p.gaze_yaw, p.gaze_pitch))
        assert p.landmarks is None  # off by default
    assert runner.builder.geo.snapshot() == {}  # the geometric estimator never ran


def test_geometric_preset_and_stored_landmarks(frames):
    cfg = load_config("fast", overrides={"inference": {"store_landmarks": True}})
    assert cfg.inference.au_model == "geometric"
    i = cfg.inference
    geo = FaceAnalyzer(i.fer_model, i.saliency, i.au_model, "cpu")
    sink = ListSink()
    _run(cfg, geo, ListSource(frames[:4]), sink)
    pts = sink.all_points("s1")
    assert len(pts) == 4
    assert all(p.au_presence == {} and p.yaw is None and p.gaze_yaw is None for p in pts)
    assert all(p.landmarks.shape == (468, 2) for p in pts)

    cfg3 = load_config(overrides={"inference": {"store_landmarks": True}})
    sink3 = ListSink()
    _run(cfg3, FaceAnalyzer(i.fer_model, i.saliency, "blendshape", "cpu"),
         ListSource(frames[:2]), sink3)
    assert all(p.landmarks.shape == (478, 3) for p in sink3.all_points("s1"))
