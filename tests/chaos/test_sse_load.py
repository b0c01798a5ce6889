"""The query API under Ray Serve with its live-tail (SSE) cap full: probes still answer, the
connection beyond the cap gets 503, and a closed tail gives its slot back."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import redis
import yaml

from affectstream.pipeline.store.redis_store import RedisSink
from tests.conftest import free_port
from tests.pipeline.test_api import S1

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAP = 50


@pytest.fixture()
def api(redis_url, tmp_path):
    from ray import serve

    from affectstream.pipeline.runtime import dag
    from affectstream.pipeline.service.application import build_app
    from affectstream.pipeline.config import load_config

    sink = RedisSink(redis.Redis.from_url(redis_url, decode_responses=True))
    sink.start_session("s1", source="clip.mp4")  # running: its tails stay open
    sink.write(S1)
    cfg_path = tmp_path / "api.yaml"
    cfg_path.write_text(yaml.safe_dump({"redis": {"url": redis_url},
                                        "api": {"max_sse_connections": CAP}}))
    port = free_port()
    dag.init_ray(load_config(overrides={"ray_num_cpus": 1}))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"config": str(cfg_path), "ingest": False}), name="query",
                  route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "API did not come up"
            time.sleep(0.5)
        yield base
    finally:
        serve.shutdown()
        dag.shutdown()


async def _open_tail(c: httpx.AsyncClient, url: str, opened: asyncio.Event | None = None
                     ) -> int:
    """Open a live tail; return its status once the `ready` event came (or the error status),
    then keep reading until cancelled."""
    async with c.stream("GET", url, params={"block_ms": 200}) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return resp.status_code
        lines = resp.aiter_lines()  # one iterator: a second aiter_lines() would end the stream
        async for line in lines:
            if line.startswith("event: ready"):
                break
        if opened is not None:
            opened.set()
        async for _ in lines:
            pass
    return 200


def test_probes_stay_fast_and_the_tail_beyond_the_cap_gets_503(api):
    live = f"{api}/v1/sessions/s1/live"

    async def scenario() -> dict:
        limits = httpx.Limits(max_connections=CAP + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as c:
            events = [asyncio.Event() for _ in range(CAP)]
            tails = [asyncio.create_task(_open_tail(c, live, e)) for e in events]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 120)
            async with httpx.AsyncClient(timeout=2.0) as probe:
                t0 = time.perf_counter()
                health = await probe.get(f"{api}/healthz")
                health_s = time.perf_counter() - t0
                ready = await probe.get(f"{api}/readyz")
                query = await probe.get(f"{api}/v1/sessions/s1")
                over = await probe.get(live, params={"block_ms": 200})
            for t in tails:
                t.cancel()
            await asyncio.gather(*tails, return_exceptions=True)
            # the server notices the closed tails within a block_ms loop or two
            deadline = time.monotonic() + 30
            while True:
                again = await asyncio.wait_for(_first_status(c, live), 30)
                if again == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        return {"health": health.status_code, "health_s": health_s, "ready": ready.status_code,
                "query": query.status_code, "over": over.status_code,
                "retry_after": over.headers.get("retry-after"), "again": again}

    out = asyncio.run(scenario())
    assert out["health"] == 200 and out["health_s"] < 2.0
    assert out["ready"] == 200 and out["query"] == 200
    assert out["over"] == 503 and out["retry_after"] == "5"
    assert out["again"] == 200


async def _first_status(c: httpx.AsyncClient, url: str) -> int:
    async with c.stream("GET", url, params={"block_ms": 200, "max_events": 1,
                                            "max_duration_s": 1}) as resp:
        await resp.aread()
        return resp.status_code
