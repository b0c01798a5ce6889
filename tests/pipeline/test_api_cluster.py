"""``GET /v1/cluster`` outside a Ray cluster: behind the API token, and ``in_cluster: false``
with empty lists (its answer on a real multi-node cluster is checked in
tests/e2e/test_multinode.py)."""

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
            pytest.skip("Ray runs in this test process; this case needs a process without")
        r = c.get("/v1/cluster", headers={"Authorization": "Bearer tok"})
        assert r.status_code == 200
        assert r.json() == {"in_cluster": False, "nodes": [], "replicas": [],
                            "controller_node_id": None, "proxy_node_ids": []}
        op = c.get("/openapi.json").json()["paths"]["/v1/cluster"]["get"]
        assert set(op["responses"]) == {"200", "401"}
