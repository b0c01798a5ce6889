"""Secrets of a running service (API token, Redis password) reach every replica, yet appear in
no Serve deployment argument nor in the Serve config/status a cluster user can read."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import httpx
import pytest
import redis

from affectstream.pipeline.store.redis_server import find_redis_server
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

TOKEN = "api-" + uuid.uuid4().hex
REDIS_PASSWORD = "redis-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory):
    port = free_port()
    proc = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--requirepass", REDIS_PASSWORD,
         "--dir", str(tmp_path_factory.mktemp("redis-auth"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    c = redis.Redis(port=port, password=REDIS_PASSWORD)
    for _ in range(200):
        try:
            c.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


def test_secrets_reach_replicas_but_no_deployment_arg(kafka_broker, locked_redis, monkeypatch):
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client

    from affectstream.pipeline.runtime import dag
    from affectstream.pipeline.config import load_config
    from affectstream.pipeline.service.lifecycle import APP_NAME, start_service

    for var in ("AFFECTSTREAM_API_TOKEN", "AFFECTSTREAM_REDIS_PASSWORD", "AFFECTSTREAM_SECRETS_DIR"):
        monkeypatch.delenv(var, raising=False)
    tag = uuid.uuid4().hex[:8]
    port = free_port()
    # secrets given as explicit config (like CLI flags), not through this process's environment:
    # the replicas can only have them from the service's secret files
    cfg = load_config("service", overrides={
        "kafka": {"bootstrap": kafka_broker, "topic": f"frames-{tag}",
                  "dlq_topic": f"frames-{tag}.dlq", "group_id": f"svc-{tag}"},
        "redis": {"url": f"redis://127.0.0.1:{locked_redis}/0", "password": REDIS_PASSWORD},
        "api": {"port": port, "auth_token": TOKEN}, "ray_num_cpus": 2})
    svc = start_service(cfg)
    try:
        base = svc.url
        # the QueryAPI replica has the token and the Redis password
        assert httpx.get(f"{base}/v1/sessions", timeout=10).status_code == 401
        r = httpx.get(f"{base}/v1/sessions", timeout=10,
                      headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        # the KafkaIngest replica has the Redis password: it pushes its metrics there
        rc = redis.Redis(port=locked_redis, password=REDIS_PASSWORD)
        deadline = time.monotonic() + 120
        while not rc.exists("affect:metrics:instances"):
            assert time.monotonic() < deadline, "the consumer never wrote to Redis"
            time.sleep(1)

        controller = _get_global_client()._controller
        secrets = (TOKEN.encode(), REDIS_PASSWORD.encode())
        for name in ("QueryAPI", "KafkaIngest", "Inference"):
            raw = ray.get(controller.get_deployment_info.remote(name, APP_NAME))
            assert not [s for s in secrets if s in raw], f"a secret is in {name}'s deployment"
            if name != "Inference":  # the config does travel there (so the check can fail)
                assert f"frames-{tag}".encode() in raw
        status = json.dumps(serve.status().to_dict() if hasattr(serve.status(), "to_dict")
                            else str(serve.status()))
        details = json.dumps(ray.get(controller.get_serve_instance_details.remote()),
                             default=str)
        for text in (status, details):
            assert TOKEN not in text and REDIS_PASSWORD not in text
        sdir = svc.secrets_dir
        assert sdir is not None
    finally:
        try:
            svc.stop()
        finally:
            dag.shutdown()
    assert not os.path.exists(sdir), "the secret files outlive the service"
