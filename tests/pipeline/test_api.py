import json
import threading

import jsonschema
import pytest
import redis
from fastapi.testclient import TestClient

from affectstream.operators.records import TimelinePoint
from affectstream.pipeline import metrics
from affectstream.pipeline.api.app import ApiConfigError, check_bind, create_app, is_loopback
from affectstream.pipeline.service.application import build_app
from affectstream.pipeline.store.redis_store import RedisSink

pytestmark = pytest.mark.integration


def _pt(sid, tid, ts, emo, au12, au06, valence=None):
    return TimelinePoint(sid, tid, ts, ts - 10_000, emo, {emo: 0.8, "neutral": 0.2},
                         {"AU06": au06, "AU12": au12}, (10.0, 20.0, 110.0, 140.0), 0.95,
                         {"mouth": 0.5}, valence=valence)


# track 1: 4 points, track 2: 2 points (hand-computed aggregates in test_summary)
S1 = [_pt("s1", 1, 10_000, "happiness", 1.0, 0.5, 0.2),
      _pt("s1", 2, 10_050, "surprise", 0.0, 1.0),
      _pt("s1", 1, 10_100, "happiness", 3.0, 0.5, 0.4),
      _pt("s1", 1, 10_200, "neutral", 2.0, 0.5, 0.0),
      _pt("s1", 2, 10_250, "fear", 1.0, 1.0),
      _pt("s1", 1, 10_300, "happiness", 4.0, 2.0, 0.6)]


@pytest.fixture()
def data(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    sink = RedisSink(r)
    sink.start_session("s1", source="clip.mp4", models="mini_xception", config_digest="abc123",
                       now_ms=9_000)
    sink.write(S1)
    sink.start_session("s2", source="rtsp://cam/1", now_ms=19_000)
    sink.write([_pt("s2", 7, 20_000, "sadness", 0.0, 0.0)])
    sink.end_session("s2")
    return r


@pytest.fixture()
def client(redis_url, data):
    with TestClient(create_app(redis_url)) as c:
        yield c


_SPEC: dict = {}


def ok(c: TestClient, path: str, template: str, status: int = 200, **params):
    """GET and validate the body against the app's own OpenAPI response schema."""
    resp = c.get(path, params=params)
    assert resp.status_code == status, resp.text
    if not _SPEC:
        _SPEC.update(c.get("/openapi.json").json())
    content = _SPEC["paths"][template]["get"]["responses"][str(status)]["content"]
    schema = {**content["application/json"]["schema"], "components": _SPEC["components"]}
    jsonschema.Draft202012Validator(schema).validate(resp.json())
    return resp.json()


def test_probes_and_metrics(client):
    assert ok(client, "/healthz", "/healthz") == {"status": "ok"}
    assert ok(client, "/readyz", "/readyz")["status"] == "ready"
    metrics.DLQ_MESSAGES.labels(reason="bad_header:seq").inc()
    metrics.STAGE_LATENCY_MS.labels(stage="detect").observe(12.0)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'affectstream_dlq_messages_total{reason="bad_header:seq"}' in r.text
    assert 'affectstream_stage_latency_ms_bucket{le="20.0",stage="detect"}' in r.text
    for name, kind in [("frames_in_total", "counter"), ("frames_analysed_total", "counter"),
                       ("frames_dropped_total", "counter"), ("faces_total", "counter"),
                       ("timeline_points_written_total", "counter"),
                       ("inference_batch_size", "histogram"),
                       ("stage_latency_ms", "histogram"),
                       ("consumer_lag_messages", "gauge")]:
        assert f"# TYPE affectstream_{name} {kind}\n" in r.text


def test_sessions_list_and_detail(client):
    body = ok(client, "/v1/sessions", "/v1/sessions")
    assert body["total"] == 2
    assert [(s["session_id"], s["updated_ms"], s["status"]) for s in body["sessions"]] == \
        [("s2", 20_000, "ended"), ("s1", 10_300, "running")]
    page = ok(client, "/v1/sessions", "/v1/sessions", offset=1, limit=1)
    assert [s["session_id"] for s in page["sessions"]] == ["s1"]
    d = ok(client, "/v1/sessions/s1", "/v1/sessions/{sid}")
    assert d == {"session_id": "s1", "status": "running", "source": "clip.mp4",
                 "created_ms": 9_000, "updated_ms": 10_300, "ended_ms": None,
                 "models": "mini_xception", "config_digest": "abc123", "n_tracks": 2,
                 "n_points": 6}


def test_tracks(client):
    body = ok(client, "/v1/sessions/s1/tracks", "/v1/sessions/{sid}/tracks")
    assert body["tracks"] == [{"track_id": 1, "first_seen_ms": 10_000, "n_points": 4},
                              {"track_id": 2, "first_seen_ms": 10_050, "n_points": 2}]


@pytest.mark.parametrize("params, expected", [
    ({}, [(10_000, 1), (10_050, 2), (10_100, 1), (10_200, 1), (10_250, 2), (10_300, 1)]),
    ({"track": 2}, [(10_050, 2), (10_250, 2)]),
    ({"track": 1, "from_ms": 10_100, "to_ms": 10_200}, [(10_100, 1), (10_200, 1)]),
    ({"track": 1, "every_ms": 200}, [(10_000, 1), (10_200, 1)]),
    ({"every_ms": 1000}, [(10_000, 1), (10_050, 2)]),
    ({"from_ms": 10_260}, [(10_300, 1)]),
    ({"limit": 3}, [(10_000, 1), (10_050, 2), (10_100, 1)]),
    ({"track": 9}, []),
])
def test_timeline(client, params, expected):
    body = ok(client, "/v1/sessions/s1/timeline", "/v1/sessions/{sid}/timeline", **params)
    assert [(p["ts_ms"], p["track_id"]) for p in body["points"]] == expected
    assert body["count"] == len(expected)
    assert body["truncated"] == ("limit" in params)


def test_timeline_point_content(client):
    body = ok(client, "/v1/sessions/s1/timeline", "/v1/sessions/{sid}/timeline", track=1,
              to_ms=10_000)
    assert body["points"] == [{
        "track_id": 1, "ts_ms": 10_000, "pts_ms": 0, "emotion": "happiness",
        "emotion_probs": {"happiness": 0.8, "neutral": 0.2},
        "au_intensity": {"AU06": 0.5, "AU12": 1.0}, "bbox_xyxy": [10.0, 20.0, 110.0, 140.0],
        "det_score": 0.95, "saliency": {"mouth": 0.5}, "valence": 0.2, "arousal": None,
        # points without presence / pose (geometric AUs, or stored before they existed)
        "au_presence": {}, "yaw": None, "pitch": None, "roll": None, "gaze_yaw": None,
        "gaze_pitch": None, "landmarks": None}]


def test_timeline_point_with_presence_pose_gaze_and_landmarks(redis_url):
    import dataclasses

    import numpy as np

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    sink = RedisSink(r)
    sink.start_session("s3", source="clip.mp4")
    lm = np.array([[1.25, 2.0, -3.0], [4.0, 5.5, 6.0]], np.float32)
    pt = dataclasses.replace(_pt("s3", 1, 30_000, "happiness", 3.0, 1.0),
                             au_presence={"AU06": 0, "AU12": 1}, yaw=-10.5, pitch=4.25,
                             roll=1.0, gaze_yaw=-20.0, gaze_pitch=2.5, landmarks=lm)
    sink.write([pt])
    with TestClient(create_app(redis_url)) as c:
        body = ok(c, "/v1/sessions/s3/timeline", "/v1/sessions/{sid}/timeline")
    got = body["points"][0]
    assert got["au_presence"] == {"AU06": 0, "AU12": 1}
    assert (got["yaw"], got["pitch"], got["roll"]) == (-10.5, 4.25, 1.0)
    assert (got["gaze_yaw"], got["gaze_pitch"]) == (-20.0, 2.5)
    assert np.allclose(got["landmarks"], lm, atol=0.05)


def test_summary_matches_hand_computed_values(client):
    body = ok(client, "/v1/sessions/s1/summary", "/v1/sessions/{sid}/summary")
    assert body["n_tracks"] == 2 and body["n_points"] == 6
    assert body["emotion_shares"] == pytest.approx(
        {"fear": 1 / 6, "happiness": 0.5, "neutral": 1 / 6, "surprise": 1 / 6})
    t1, t2 = body["tracks"]
    assert (t1["track_id"], t1["n_points"], t1["first_ts_ms"], t1["last_ts_ms"],
            t1["duration_ms"]) == (1, 4, 10_000, 10_300, 300)
    assert t1["emotion_shares"] == {"happiness": 0.75, "neutral": 0.25}
    assert t1["au_mean"] == pytest.approx({"AU06": 0.875, "AU12": 2.5})
    assert t1["au_peak"] == {"AU06": {"value": 2.0, "ts_ms": 10_300},
                             "AU12": {"value": 4.0, "ts_ms": 10_300}}
    assert t1["valence_mean"] == pytest.approx(0.3) and t1["arousal_mean"] is None
    assert (t2["track_id"], t2["n_points"], t2["duration_ms"]) == (2, 2, 200)
    assert t2["emotion_shares"] == {"fear": 0.5, "surprise": 0.5}
    assert t2["au_mean"] == pytest.approx({"AU06": 1.0, "AU12": 0.5})
    assert t2["au_peak"]["AU06"] == {"value": 1.0, "ts_ms": 10_050}  # first time reached
    assert t2["valence_mean"] is None
    part = ok(client, "/v1/sessions/s1/summary", "/v1/sessions/{sid}/summary", track=1,
              from_ms=10_100, to_ms=10_200)
    assert part["tracks"][0]["au_mean"] == pytest.approx({"AU06": 0.5, "AU12": 2.5})
    assert part["tracks"][0]["duration_ms"] == 100


@pytest.mark.parametrize("path, template", [
    ("/v1/sessions/nope", "/v1/sessions/{sid}"),
    ("/v1/sessions/nope/tracks", "/v1/sessions/{sid}/tracks"),
    ("/v1/sessions/nope/timeline", "/v1/sessions/{sid}/timeline"),
    ("/v1/sessions/nope/summary", "/v1/sessions/{sid}/summary"),
    ("/v1/sessions/nope/live", "/v1/sessions/{sid}/live"),
])
def test_unknown_session_is_404_with_a_clear_message(client, path, template):
    body = ok(client, path, template, status=404)
    assert body == {"detail": "unknown session 'nope' (never written, or expired)"}


def test_bad_parameters_are_422(client):
    assert client.get("/v1/sessions/a%20b").status_code == 422          # not a session id
    assert client.get("/v1/sessions/s1/timeline?every_ms=0").status_code == 422
    r = client.get("/v1/sessions/s1/timeline?every_ms=0")
    assert r.json()["detail"][0]["loc"] == ["query", "every_ms"]  # the documented list form


def test_from_after_to_selects_nothing(client):
    body = ok(client, "/v1/sessions/s1/timeline", "/v1/sessions/{sid}/timeline",
              from_ms=10_200, to_ms=10_100)
    assert body["count"] == 0 and body["points"] == []
    body = ok(client, "/v1/sessions/s1/summary", "/v1/sessions/{sid}/summary",
              from_ms=10_200, to_ms=10_100)
    assert body["n_points"] == 0 and body["tracks"] == []


def _events(resp):
    """Parse server-sent events from a streaming response: yields (event, id, data)."""
    ev, eid, data = None, None, []
    for line in resp.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if ev or data:
                yield ev, eid, "\n".join(data)
            ev, eid, data = None, None, []
            continue
        field, _, value = line.partition(": ")
        if field == "event":
            ev = value
        elif field == "id":
            eid = value
        elif field == "data":
            data.append(value)


def test_live_tail_receives_points_written_after_connecting(client, data):
    sink = RedisSink(data)
    with client.stream("GET", "/v1/sessions/s1/live",
                       params={"block_ms": 100, "max_events": 3, "max_duration_s": 15}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = _events(resp)
        ev, _, d = next(events)
        assert ev == "ready" and json.loads(d) == {"session_id": "s1", "tracks": [1, 2]}
        # written after the subscription is live: a known track, then a brand-new track
        sink.write([_pt("s1", 1, 10_400, "anger", 1.5, 0.0)])
        sink.write([_pt("s1", 3, 10_450, "contempt", 0.5, 0.0),
                    _pt("s1", 3, 10_500, "contempt", 0.5, 0.0)])
        got = [(e, i, json.loads(x)) for e, i, x in events]
    assert [e for e, _, _ in got] == ["point"] * 3
    assert sorted((p["track_id"], p["ts_ms"], p["emotion"]) for _, _, p in got) == \
        [(1, 10_400, "anger"), (3, 10_450, "contempt"), (3, 10_500, "contempt")]
    assert {i for _, i, _ in got} == {"10400", "10450", "10500"}


def test_live_resumes_after_ms_and_ends_with_the_session(client, data):
    with client.stream("GET", "/v1/sessions/s1/live",
                       params={"block_ms": 50, "after_ms": 10_200, "track": 1,
                               "max_duration_s": 15}) as resp:
        events = _events(resp)
        assert next(events)[0] == "ready"
        ev, eid, d = next(events)
        assert (ev, eid, json.loads(d)["ts_ms"]) == ("point", "10300", 10_300)
        threading.Timer(0.2, lambda: RedisSink(data).end_session("s1")).start()
        ev, _, d = next(events)
        assert ev == "end" and json.loads(d) == {"status": "ended"}
        assert list(events) == []


def test_auth_on(redis_url, data):
    with TestClient(create_app(redis_url, auth_token="s3cret")) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/metrics").status_code == 200
        r = c.get("/v1/sessions")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/sessions", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/v1/sessions/s1/live",
                     headers={"Authorization": "Basic czNjcmV0"}).status_code == 401
        r = c.get("/v1/sessions/s1", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["n_points"] == 6
        spec = c.get("/openapi.json").json()
        assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_auth_off_by_default_on_loopback(redis_url, data):
    with TestClient(create_app(redis_url, host="127.0.0.1")) as c:
        assert c.get("/v1/sessions").status_code == 200
        spec = c.get("/openapi.json").json()  # no bearer scheme declared that is not enforced
        assert "securitySchemes" not in spec.get("components", {})
        assert all("security" not in op and "401" not in op["responses"]
                   for ops in spec["paths"].values() for op in ops.values())


@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("127.8.0.1", True),
                                        ("localhost", True), ("::1", True), ("[::1]", True),
                                        ("0.0.0.0", False), ("::", False),
                                        ("10.0.0.5", False), ("api.example.com", False)])
def test_non_loopback_bind_requires_a_token(redis_url, host, loop):
    assert is_loopback(host) == loop
    check_bind(host, "tok")
    if loop:
        check_bind(host, None)
        create_app(redis_url, host=host)
    else:
        with pytest.raises(ApiConfigError, match="without an auth token"):
            create_app(redis_url, host=host)


def test_build_app_checks_args_and_bind(monkeypatch, redis_url):
    monkeypatch.delenv("AFFECTSTREAM_API_TOKEN", raising=False)
    with pytest.raises(ApiConfigError, match="without an auth token"):
        build_app({"host": "0.0.0.0", "redis_url": redis_url})
    with pytest.raises(ApiConfigError, match="unknown build_app args"):
        build_app({"redsi_url": redis_url})
    with pytest.raises(ApiConfigError, match="secrets are not build_app args.*AFFECTSTREAM_API"):
        build_app({"redis_url": redis_url, "host": "0.0.0.0", "auth_token": "t"})
    monkeypatch.setenv("AFFECTSTREAM_API_TOKEN", "t")
    app = build_app({"config": "service", "redis_url": redis_url, "host": "0.0.0.0",
                     "num_replicas": 2})
    assert type(app).__name__ == "Application"
    with pytest.raises(ApiConfigError, match="either config or config_json"):
        build_app({"config": "service", "config_json": "{}"})


def test_build_app_is_the_whole_service_unless_ingest_is_off(redis_url):
    from ray.serve._private.build_app import build_app as build_serve_app

    from affectstream.pipeline.config import load_config

    def deployments(args):
        return {d.name: d for d in build_serve_app(build_app(args), name="a").deployments}

    full = deployments({"config": "service", "redis_url": redis_url, "consumers": 3,
                        "bootstrap": "kafka:9092"})
    assert set(full) == {"QueryAPI", "Inference", "KafkaIngest"}
    assert full["KafkaIngest"].num_replicas == 3  # one replica per consumer
    assert set(deployments({"redis_url": redis_url, "ingest": False})) == {"QueryAPI"}
    # a resolved config travels whole (as `affectstream serve` passes it)
    cfg = load_config("service", overrides={"kafka": {"consumers": 2}})
    d = deployments({"config_json": cfg.model_dump_json(), "redis_url": redis_url})
    assert d["KafkaIngest"].num_replicas == 2


def test_redis_down_is_503(data):
    from tests.conftest import free_port

    with TestClient(create_app(f"redis://127.0.0.1:{free_port()}/0")) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "redis unreachable" in r.json()["detail"]
        assert c.get("/v1/sessions").status_code == 503
        assert c.get("/healthz").status_code == 200


@pytest.mark.slow
def test_serve_ingress_answers_over_http(redis_url, data):
    import os
    import shutil
    import tempfile
    import time

    import httpx
    import ray
    from ray import serve

    from tests.conftest import free_port

    os.environ["RAY_AUTH_MODE"] = "disabled"
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=tmp, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"redis_url": redis_url, "ingest": False}), name="query",
                  route_prefix="/")
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/sessions/s1", timeout=5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert r.status_code == 200 and r.json()["n_points"] == 6
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["status"] == "ready"
        assert httpx.get(f"http://127.0.0.1:{port}/v1/sessions/zz").status_code == 404
        for page in ("/", "/dashboard-assets/dashboard.js", "/docs", "/docs-assets/swagger-ui.css"):
            assert httpx.get(f"http://127.0.0.1:{port}{page}").status_code == 200, page
        with httpx.stream("GET", f"http://127.0.0.1:{port}/v1/sessions/s2/live",
                          params={"block_ms": 50, "max_duration_s": 15}, timeout=20) as resp:
            assert [e for e, _, _ in _events(resp)] == ["ready", "end"]  # s2 has ended
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


BAD_QUERIES = [
    ("/v1/sessions/s1/timeline", {"from_ms": 10**23}),
    ("/v1/sessions/s1/timeline", {"to_ms": 10**23}),
    ("/v1/sessions/s1/timeline", {"from_ms": 2**64}),
    ("/v1/sessions/s1/timeline", {"from_ms": -1}),
    ("/v1/sessions/s1/timeline", {"every_ms": -5}),
    ("/v1/sessions/s1/timeline", {"every_ms": 0}),
    ("/v1/sessions/s1/timeline", {"every_ms": 10**30}),
    ("/v1/sessions/s1/timeline", {"track": 10**20}),
    ("/v1/sessions/s1/timeline", {"track": -1}),
    ("/v1/sessions/s1/timeline", {"limit": 10**9}),
    ("/v1/sessions/s1/timeline", {"from_ms": "abc"}),
    ("/v1/sessions/s1/timeline", {"from_ms": "1e5"}),
    ("/v1/sessions/s1/summary", {"from_ms": 10**23}),
    ("/v1/sessions/s1/summary", {"track": 10**20}),
    ("/v1/sessions", {"offset": 10**20}),
    ("/v1/sessions", {"limit": -3}),
    ("/v1/sessions/s1/live", {"after_ms": 10**23}),
    ("/v1/sessions/s1/live", {"block_ms": -1}),
    ("/v1/sessions/s1/live", {"max_duration_s": 1e300}),
    ("/v1/sessions/s1/live", {"max_events": 0}),
]


@pytest.mark.parametrize("path, params", BAD_QUERIES)
def test_bad_query_values_answer_4xx(client, path, params):
    r = client.get(path, params=params)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


def test_bad_last_event_id_is_ignored_not_500(redis_url, data):
    with TestClient(create_app(redis_url)) as c:
        for bad in ("-5", str(10**23), "x"):
            r = c.get("/v1/sessions/s2/live", params={"block_ms": 10, "max_duration_s": 2},
                      headers={"Last-Event-ID": bad})
            assert r.status_code == 200 and "event: end" in r.text


def test_live_tails_beyond_the_cap_get_503_and_slots_come_back(redis_url, data):
    app = create_app(redis_url, max_sse=1)
    with TestClient(app) as c:
        # s2 has ended: its tail answers ready + end and closes, giving the slot back each time
        for _ in range(3):
            r = c.get("/v1/sessions/s2/live", params={"block_ms": 10})
            assert r.status_code == 200 and "event: end" in r.text
        assert app.state.sse_open() == 0
        assert c.get("/v1/sessions/zz/live").status_code == 404  # a failed open frees it too
        assert app.state.sse_open() == 0
