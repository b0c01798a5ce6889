"""The whole DAG (real Ray, real Serve, real models) on real clips into a real redis-server."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis

from affectstream.pipeline.config import load_config
from affectstream.pipeline.store.redis_store import Keys, TimelineStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_session():
    from affectstream.pipeline.runtime import dag

    cfg = load_config(overrides={"ray_num_cpus": 2})
    dag.init_ray(cfg)
    yield cfg
    dag.shutdown()


def test_two_sources_share_inference_and_rerun_adds_nothing(ray_session, redis_url, media):
    from affectstream.pipeline.runtime.streams import run_streams

    cfg = ray_session
    clip, other = str(media("single_face.mp4")), str(media("noface_face.mov"))
    reports = run_streams([(clip, "e2e-a"), (other, "e2e-b")], cfg, redis_url)
    a, b = reports
    assert a.error is None and b.error is None
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store = TimelineStore(r)

    # single_face.mp4: 72 frames, one person in every frame -> one track, one point per frame
    assert a.frames == 72 and a.frames_with_faces == 72
    assert [t for t, _ in store.tracks("e2e-a")] == [1]
    pts = store.timeline("e2e-a")
    assert len(pts) == 72 == a.points
    assert len({p.ts_ms for p in pts}) == 72
    # every point carries the full record: probabilities sum to 1, AUs on 0-5, box inside frame
    for p in pts:
        assert sum(p.emotion_probs.values()) == pytest.approx(1.0, abs=0.01)
        assert all(0 <= v <= 5 for v in p.au_intensity.values()) and len(p.au_intensity) == 12
        assert p.emotion in p.emotion_probs and set(p.saliency) == {
            "brows", "eyes", "nose", "cheeks", "mouth", "jaw"}
        assert 0 <= p.bbox_xyxy[0] < p.bbox_xyxy[2] <= 640

    # the person in single_face.mp4 breaks into a broad smile: the last second reads happiness
    # with lip corners pulled (AU12) and lips parted (AU25); the smile relaxes and the lips close
    # on the last two frames (visible in the clip), so the bar is on the second's median
    import statistics

    last = [p for p in pts if p.pts_ms >= pts[-1].pts_ms - 1000]
    assert all(p.emotion == "happiness" for p in last)
    assert statistics.median(p.au_intensity["AU12"] for p in last) > 2.0
    assert statistics.median(p.au_intensity["AU25"] for p in last) > 2.0
    # the default AU model (blendshape) adds presence and head pose: a frontal face
    assert all(len(p.au_presence) == 12 and abs(p.yaw) < 30 for p in pts)
    assert pts[0].emotion != "happiness" or pts[0].emotion_probs["happiness"] < 0.5

    # noface_face.mov: the face enters part-way; every frame with a face -> exactly one point
    pb = store.timeline("e2e-b")
    assert 0 < b.frames_with_faces < b.frames
    assert len(pb) == b.points == sum(1 for _ in pb)
    per_track = store.count_points("e2e-b")
    assert sum(per_track.values()) == b.frames_with_faces  # one face at a time in this clip
    assert r.hget(Keys().meta("e2e-a"), "status") == "ended"

    # re-running the same session writes nothing new
    again = run_streams([(clip, "e2e-a")], cfg, redis_url)[0]
    assert again.points == 0 and again.duplicates == 72
    assert store.count_points("e2e-a") == {1: 72}


def test_local_placement_writes_what_ray_writes(ray_session, redis_url, media):
    """The same clip placed in this process (no actor, no Serve) and on Ray: the same frames,
    track and points; values equal within float noise of different batch compositions."""
    from affectstream.pipeline.runtime.streams import run_streams

    clip = str(media("single_face.mp4"))
    (ray_rep,) = run_streams([(clip, "place-ray")], ray_session, redis_url, placement="ray")
    (loc_rep,) = run_streams([(clip, "place-local")], ray_session, redis_url, placement="local")
    assert ray_rep.placement == "ray" and loc_rep.placement == "local"
    assert loc_rep.error is None and loc_rep.frames == ray_rep.frames == 72
    assert loc_rep.points == ray_rep.points == 72 and loc_rep.tracks == ray_rep.tracks == [1]
    store = TimelineStore(redis.Redis.from_url(redis_url, decode_responses=True))
    a, b = store.timeline("place-ray"), store.timeline("place-local")
    assert [p.ts_ms for p in a] == [p.ts_ms for p in b]
    for p, q in zip(a, b):
        assert p.emotion == q.emotion and p.bbox_xyxy == pytest.approx(q.bbox_xyxy, abs=0.01)
        assert p.emotion_probs == pytest.approx(q.emotion_probs, abs=1e-3)
        assert p.au_intensity == pytest.approx(q.au_intensity, abs=1e-3)
        assert p.saliency == pytest.approx(q.saliency, abs=1e-3)


def test_bad_source_fails_alone(ray_session, redis_url, media, tmp_path):
    from affectstream.pipeline.runtime.streams import run_streams

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    reports = run_streams([(str(bad), "bad"), (str(media("single_face.mp4")), "good")],
                              ray_session, redis_url, max_frames=20)
    assert reports[0].error and "broken.mp4" in reports[0].error
    assert reports[1].error is None and reports[1].frames == 20


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "affectstream.pipeline.cli.main", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_clear_errors(tmp_path):
    r = _cli("run", str(tmp_path / "missing.mp4"), "--session", "x")
    assert r.returncode == 1 and "video file not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli("timeline", "x", "--redis-url", "redis://127.0.0.1:1/0")
    assert r.returncode == 1 and "does not answer" in r.stderr


def test_cli_run_then_timeline_csv_and_plot(redis_url, media, tmp_path):
    clip = str(media("single_face.mp4"))
    r = _cli("run", clip, "--session", "cli-1", "--redis-url", redis_url, "--max-frames", "30")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "30 frames analysed" in r.stdout and "1 tracks" in r.stdout
    r = _cli("timeline", "cli-1", "--redis-url", redis_url, "--format", "csv",
             "--plot", str(tmp_path / "t.png"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("session_id,track_id,ts_ms,pts_ms,emotion,p_anger")
    assert len(lines) == 31
    assert (tmp_path / "t.png").stat().st_size > 10_000
