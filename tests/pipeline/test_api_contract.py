"""The query API's OpenAPI contract, checked by the schemathesis CLI against the real app served by
uvicorn over a real redis-server that holds a session written by the real runner.

Generated requests use realistic values much of the time (the real session id, its track ids and
capture times, via schemathesis dictionaries), so the checks also see answers with data, not only
404s and 422s. Every default check must pass: no 5xx, status codes, bodies, content types and
headers as documented (422 bodies are the documented validation-error list), schema-valid
requests accepted and invalid ones rejected, and, with a token configured, no ``/v1`` answer
without it. Both deployments are run: loopback without a token, and with a bearer token.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from affectstream.pipeline.api.app import create_app
from affectstream.pipeline.store.redis_store import TimelineStore
from tests.pipeline.stored import write_session
from tests.pipeline.web.live import serve_app

pytestmark = pytest.mark.integration

SID = "contract-clip"
TOKEN = "contract-test-token"
MAX_EXAMPLES = 100  # per operation and phase (schemathesis' default)


def _cli() -> list[str]:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[test]'")
    return [exe]


def _config(path: Path, ts: list[int], tracks: list[int]) -> Path:
    """A schemathesis config: dictionaries of real values and the parameters that draw on them."""
    lines = [
        "[dictionaries.sid]", f"values = {json.dumps([SID])}",
        "[dictionaries.ts]", f"values = {json.dumps(ts)}",
        "[dictionaries.track]", f"values = {json.dumps(tracks)}",
        "[parameters]",
        '"path.sid" = { dictionary = "sid", probability = 0.8 }',
        '"query.track" = { dictionary = "track", probability = 0.5 }',
        '"query.from_ms" = { dictionary = "ts", probability = 0.5 }',
        '"query.to_ms" = { dictionary = "ts", probability = 0.5 }',
        '"query.after_ms" = { dictionary = "ts", probability = 0.5 }',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("token", [None, TOKEN], ids=["loopback-no-token", "bearer-token"])
def test_schemathesis_finds_no_contract_failure(redis_url, media, tmp_path, token):
    write_session(redis_url, media("single_face.mp4"), SID, analysis_fps=10)
    points = TimelineStore(redis.Redis.from_url(redis_url, decode_responses=True)).timeline(SID)
    assert points, "the clip gave no timeline points"
    ts = [p.ts_ms for p in points]
    cfg = _config(tmp_path / "schemathesis.toml",
                  sorted({ts[0] - 1, ts[0], ts[len(ts) // 2], ts[-1], ts[-1] + 1}),
                  sorted({p.track_id for p in points}))
    args = ["--config-file", str(cfg), "--no-color", "run", "--max-examples", str(MAX_EXAMPLES),
            "--seed", "1", "--workers", "1", "--request-timeout", "20", "--suppress-health-check",
            "all", "--report", "junit", "--report-dir", str(tmp_path / "report")]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    with serve_app(create_app(redis_url, auth_token=token)) as base:
        r = subprocess.run(_cli() + args + [f"{base}/openapi.json"], capture_output=True,
                           text=True, timeout=300, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    assert "No issues found" in out, out[-4000:]
