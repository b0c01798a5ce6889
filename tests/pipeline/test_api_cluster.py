"""``GET /v1/cluster`` outside a Ray cluster: behind the API token, and a clear 503 (its answer
on a real multi-node cluster is checked in tests/e2e/test_multinode.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from affectstream.pipeline.api.app import create_app

pytestmark = pytest.mark.integration


def test_cluster_route_needs_the_token_and_a_ray_cluster(redis_url):
    import ray

    app = create_app(redis_url, auth_token="tok")
    with TestClient(app) as c:
        assert c.get("/v1/cluster").status_code == 401
        if ray.is_initialized():
            pytest.skip("Ray runs in this test process; the 503 case needs a process without")
        r = c.get("/v1/cluster", headers={"Authorization": "Bearer tok"})
        assert r.status_code == 503
        assert r.json()["detail"] == "not running inside a Ray cluster"
        assert "/v1/cluster" in c.get("/openapi.json").json()["paths"]
