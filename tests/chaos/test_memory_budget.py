"""60 valid 4096x4096 JPEGs at once: the consumer holds decoded frames only up to its byte budget
(it pauses the partition), so its resident memory grows by less than 600 MB (it grew by 1.7 GB
before the budget)."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from tests.chaos.conftest import T0
from tests.pipeline.kafka_clips import produce

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

SIDE = 4096


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _big_jpeg() -> bytes:
    from affectstream.pipeline.kafka.envelope import encode_image

    y, x = np.indices((SIDE, SIDE), dtype=np.uint16)
    img = np.stack([(x // 16) % 256, (y // 16) % 256, ((x + y) // 64) % 256], -1)
    return encode_image(img.astype(np.uint8), "jpeg", 85)


def test_sixty_4096_jpegs_raise_consumer_memory_by_less_than_600_mb(chaos_service):
    from affectstream.pipeline.kafka.envelope import encode

    k = chaos_service.cfg.kafka
    (st,) = chaos_service.stats()
    pid, frames0 = st["pid"], st["frames"]
    data = _big_jpeg()
    sid = "big-" + uuid.uuid4().hex[:6]
    msgs = [encode(sid, i, T0 + 66 * i, data=data, width=SIDE, height=SIDE) for i in range(60)]
    assert len(data) < k.max_message_bytes
    base = _rss_bytes(pid)
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes(pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        produce(k.bootstrap, k.topic, msgs)
        deadline = time.monotonic() + 400
        while (st := chaos_service.stats()[0])["frames"] - frames0 < 60:
            assert time.monotonic() < deadline, f"only {st['frames'] - frames0}/60 analysed"
            time.sleep(0.5)
    finally:
        done.set()
        t.join()
    grew = (peak[0] - base) / 2**20
    print(f"\nconsumer RSS {base / 2**20:.0f} MB -> peak {peak[0] / 2**20:.0f} MB "
          f"(+{grew:.0f} MB) for 60 x {SIDE}x{SIDE} JPEG ({len(data) / 1024:.0f} KB each), "
          f"budget {k.max_inflight_frame_bytes / 2**20:.0f} MB")
    assert grew < 600
    assert st["held_bytes"] == 0
