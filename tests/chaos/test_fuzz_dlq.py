"""10,000+ malformed messages of every kind the envelope refuses, interleaved with a real session:
every one lands in the DLQ with its reason, the good session is complete (nothing lost, nothing
doubled) and the consumer keeps running."""

from __future__ import annotations

import random
import struct
import uuid
import zlib

import pytest

from tests.chaos.conftest import MAX_BYTES, T0, read_dlq, with_header
from tests.pipeline.kafka_clips import (clip_messages, expected_points, produce, stored_points,
                                        tiny_jpeg, wait_points)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

N = 10_000

_HEADERS = ("schema", "session_id", "seq", "ts_ms", "codec")
_BAD_VALUES = {"schema": b"affect.frame.v0", "session_id": b"has space", "seq": b"-1",
               "ts_ms": str(10 ** 20).encode(), "codec": b"gif", "width": b"0",
               "height": b"70000", "pts_ms": b"x"}


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def _kinds() -> list[str]:
    return ([f"missing_header:{n}" for n in _HEADERS] + [f"bad_header:{n}" for n in _BAD_VALUES]
            + ["key_mismatch", "empty_image", "too_many_bytes", "codec_mismatch",
               "undecodable_image", "too_many_pixels", "size_mismatch", "ts_out_of_window",
               "duplicate_seq", "out_of_order_seq"])


def _bad(kind: str, i: int, rng: random.Random, good: list, j: int) -> tuple:
    """A malformed message of ``kind``; ``good[j]`` is the last good frame produced before it."""
    from affectstream.pipeline.kafka.envelope import encode

    sid = f"junk-{i % 13}"
    k, v, h = encode(sid, 1_000_000 + i, T0 + i, data=tiny_jpeg(), width=8, height=8)
    if kind.startswith("missing_header:"):
        name = kind.split(":")[1]
        h = [(n, x) for n, x in h if n != name]
    elif kind.startswith("bad_header:"):
        name = kind.split(":")[1]
        k, v, h = with_header((k, v, h), name, _BAD_VALUES[name])
    elif kind == "key_mismatch":
        k = rng.choice([b"other", b"", None, bytes(rng.randrange(256) for _ in range(40))])
    elif kind == "empty_image":
        v = b""
    elif kind == "too_many_bytes":
        v = b"\xff\xd8\xff" + bytes(MAX_BYTES)
    elif kind == "codec_mismatch":
        v, h = _png_header(8, 8) + b"\x00" * 16, h
    elif kind == "undecodable_image":
        v = rng.choice([b"\xff\xd8\xff\xd9" + rng.randbytes(rng.randrange(8, 400)),  # no SOF
                        tiny_jpeg()[:-40],                                          # truncated
                        b"\x00" + rng.randbytes(rng.randrange(1, 200))])           # no magic
    elif kind == "too_many_pixels":
        k, v, h = with_header((k, _png_header(100_000, 100_000), h), "codec", b"png")
        h = [(n, x) for n, x in h if n not in ("width", "height")]
    elif kind == "size_mismatch":
        k, v, h = with_header((k, v, h), "width", b"9")
    elif kind == "ts_out_of_window":  # 0 is in range but 50+ years from the broker clock
        k, v, h = with_header((k, v, h), "ts_ms", b"0")
    elif kind == "duplicate_seq":  # the good frame just accepted, again
        k, v, h = good[j]
    elif kind == "out_of_order_seq":  # an older frame of the good session
        assert j > 0
        k, v, h = good[rng.randrange(0, j)]
    return k, v, list(h) + [("fuzz_index", str(i).encode())]


def test_ten_thousand_malformed_messages_all_land_in_the_dlq_and_a_good_session_is_complete(
        chaos_service, chaos_stage, media, r):
    kf = chaos_service.cfg.kafka
    rng = random.Random(10)
    sid = "fuzzgood-" + uuid.uuid4().hex[:6]
    good = clip_messages(str(media("single_face.mp4")), sid, 15, T0)
    want = expected_points(chaos_stage, good)
    kinds = _kinds()
    assert len(kinds) == 23
    # every kind at least 40 times (too_many_bytes: 20 x 1 MB), the rest drawn at random
    plan = [kd for kd in kinds if kd != "too_many_bytes" for _ in range(40)]
    plan += ["too_many_bytes"] * 20
    cheap = [kd for kd in kinds if kd != "too_many_bytes"]
    plan += [rng.choice(cheap) for _ in range(N - len(plan))]
    rng.shuffle(plan)
    # seq kinds need an accepted good frame before them: they go right after good frame j >= 1
    per: dict[int, list[int]] = {j: [] for j in range(len(good))}
    for i, kd in enumerate(plan):
        j = 1 + i * (len(good) - 1) // N
        per[j].append(i)
    msgs = [good[0]]
    for j in range(1, len(good)):
        msgs.append(good[j])
        msgs += [_bad(plan[i], i, rng, good, j) for i in per[j]]
    assert len(msgs) == N + len(good)
    for b in range(0, len(msgs), 2000):  # produced in batches
        produce(kf.bootstrap, kf.topic, msgs[b:b + 2000])
    counts = wait_points(r, {sid: len(want)}, timeout_s=300)
    got = stored_points(r, sid)
    assert len(got) == len(set(got)) == counts[sid]                  # nothing doubled
    assert set(got) == want                                          # nothing lost
    dlq = read_dlq(chaos_service, N, lambda x: any(n == "fuzz_index" for n, _ in x.headers),
                   timeout_s=180)
    by_index = {int(dict(x.headers)["fuzz_index"]): dict(x.headers)["error"].decode()
                for x in dlq}
    assert len(dlq) == len(by_index) == N                            # each exactly once
    wrong = {i: (plan[i], e) for i, e in by_index.items() if e != plan[i]}
    assert not wrong, list(wrong.items())[:10]
    assert set(by_index.values()) == set(kinds)
    assert [st["state"] for st in chaos_service.stats()] == ["consuming"]
