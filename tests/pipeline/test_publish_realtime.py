"""``publish --realtime --loop`` against a real Kafka-protocol broker: paced by PTS, looping."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from tests.pipeline.test_kafka_io import _read_all

pytestmark = pytest.mark.integration


def test_publish_realtime_loop_paces_by_pts_and_continues_media_time(kafka_broker, media):
    topic = "rt-" + uuid.uuid4().hex[:8]
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "affectstream.pipeline.cli.main", "publish",
                        str(media("single_face.mp4")), "--bootstrap", kafka_broker, "--topic",
                        topic, "--session", "cam", "--realtime", "--loop", "--max-frames", "80"],
                       capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    assert "published 80 frames" in r.stdout
    recs = _read_all(kafka_broker, topic, 80)
    pts = [int(dict(r.headers)["pts_ms"]) for r in recs]
    seq = [int(dict(r.headers)["seq"]) for r in recs]
    assert seq == list(range(80)) and all(b > a for a, b in zip(pts, pts[1:]))
    assert pts[72] == pts[71] + (pts[71] - pts[70])  # the second pass follows the first
    assert wall >= pts[-1] / 1000  # 80 frames at 30 fps take at least 2.6 s of wall time
