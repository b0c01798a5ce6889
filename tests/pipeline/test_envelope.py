import cv2
import numpy as np
import pytest

from affectstream.pipeline.kafka.envelope import (SCHEMA, EnvelopeError, FrameEnvelope, Limits, SeqGuard, decode,
                               encode, encode_image, parse_headers, probe_size)


def _img(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    # smooth gradient + a little noise: compresses like a photo, JPEG error stays small
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                     (x + y) * 255 // max(w + h - 2, 1)], -1)
    return np.clip(base + rng.integers(-4, 5, base.shape), 0, 255).astype(np.uint8)


def _replace(headers, name, value):
    return [(n, value if n == name else v) for n, v in headers]


def _drop(headers, name):
    return [(n, v) for n, v in headers if n != name]


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_roundtrip_keeps_metadata_and_pixels(codec):
    img = _img()
    key, value, headers = encode("cam-1", 7, 1_700_000_000_123, img, codec=codec, pts_ms=40)
    assert key == b"cam-1"
    h = dict(headers)
    assert h["schema"] == SCHEMA.encode() and h["codec"] == codec.encode()
    assert (h["seq"], h["ts_ms"], h["width"], h["height"], h["pts_ms"]) == \
        (b"7", b"1700000000123", b"64", b"48", b"40")
    env, out = decode(key, value, headers)
    assert env == FrameEnvelope(session_id="cam-1", seq=7, ts_ms=1_700_000_000_123, codec=codec,
                                width=64, height=48, pts_ms=40)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    err = np.abs(out.astype(int) - img.astype(int)).mean()
    assert err == 0 if codec == "png" else err < 4  # RGB order kept (a swap would be ~80)


def test_encoded_data_without_size_headers_is_accepted():
    data = encode_image(_img(), "png")
    key, value, headers = encode("s", 0, 5, data=data, codec="png")
    assert "width" not in dict(headers)
    env, out = decode(key, value, headers)
    assert env.width is None and out.shape == (48, 64, 3)


def test_unknown_headers_are_ignored():
    key, value, headers = encode("s", 0, 5, _img())
    decode(key, value, headers + [("trace_id", b"\xff\xfe")])


def _good():
    return encode("sess", 3, 1000, _img())


def _bad_cases():
    key, value, headers = _good()
    png = encode_image(_img(), "png")
    return [
        # (name, key, value, headers, limits, reason)
        ("no seq", key, value, _drop(headers, "seq"), None, "missing_header:seq"),
        ("no schema", key, value, _drop(headers, "schema"), None, "missing_header:schema"),
        ("seq not int", key, value, _replace(headers, "seq", b"x1"), None, "bad_header:seq"),
        ("negative seq", key, value, _replace(headers, "seq", b"-1"), None, "bad_header:seq"),
        ("ts float", key, value, _replace(headers, "ts_ms", b"1.5"), None, "bad_header:ts_ms"),
        ("v2 schema", key, value, _replace(headers, "schema", b"affect.frame.v2"), None,
         "bad_header:schema"),
        ("codec gif", key, value, _replace(headers, "codec", b"gif"), None, "bad_header:codec"),
        ("width 0", key, value, _replace(headers, "width", b"0"), None, "bad_header:width"),
        ("sid with brace", b"a{b}", value, _replace(headers, "session_id", b"a{b}"), None,
         "bad_header:session_id"),
        ("not utf8", key, value, _replace(headers, "session_id", b"\xff"), None,
         "bad_header:session_id"),
        ("dup header", key, value, headers + [("seq", b"4")], None, "bad_header:seq"),
        ("key mismatch", b"other", value, headers, None, "key_mismatch"),
        ("no key", None, value, headers, None, "key_mismatch"),
        ("empty", key, b"", headers, None, "empty_image"),
        ("truncated jpeg", key, value[: len(value) // 2], headers, None, "undecodable_image"),
        ("jpeg without EOI", key, value[:-2], headers, None, "undecodable_image"),
        ("text", key, b"hello, this is not an image at all", headers, None,
         "undecodable_image"),
        ("png as jpeg", key, png, headers, None, "codec_mismatch"),
        ("truncated png", key, png[:-20], _replace(headers, "codec", b"png"), None,
         "undecodable_image"),
        ("bytes", key, value, headers, Limits(max_bytes=len(value) - 1), "too_many_bytes"),
        ("pixels", key, value, headers, Limits(max_pixels=64 * 48 - 1), "too_many_pixels"),
        ("size header", key, value, _replace(headers, "width", b"65"), None, "size_mismatch"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_refusals_have_machine_readable_reasons(case):
    _, key, value, headers, limits, reason = case
    with pytest.raises(EnvelopeError) as ei:
        decode(key, value, headers, limits or Limits())
    assert ei.value.reason == reason
    assert str(ei.value).startswith(reason)


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    # a 20000x20000 JPEG header on a tiny body: refused from the SOF, never handed to OpenCV
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    b = bytearray(buf.tobytes())
    i = 2
    while b[i + 1] not in (0xC0, 0xC2):
        i += 2 + (b[i + 2] << 8 | b[i + 3])
    b[i + 5:i + 9] = (20000).to_bytes(2, "big") * 2
    assert probe_size(bytes(b), "jpeg") == (20000, 20000)
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a bomb"))
    headers = [("schema", SCHEMA.encode()), ("session_id", b"s"), ("seq", b"0"),
               ("ts_ms", b"0"), ("codec", b"jpeg")]
    with pytest.raises(EnvelopeError, match="too_many_pixels"):
        decode(b"s", bytes(b), headers)


@pytest.mark.parametrize("shape", [(1, 1), (360, 640), (1080, 1920)])
@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_probe_size_reads_real_encoder_output(shape, codec):
    img = np.zeros(shape + (3,), np.uint8)
    ext = ".jpg" if codec == "jpeg" else ".png"
    ok, buf = cv2.imencode(ext, img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if codec == "jpeg" else [])
    assert probe_size(buf.tobytes(), codec) == (shape[1], shape[0])


def test_seq_guard_refuses_replays_and_reordering_per_session():
    g = SeqGuard()
    k, v, h = encode("a", 5, 0, _img())
    decode(k, v, h, seq_guard=g)
    assert g.last("a") == 5
    for seq, reason in [(5, "duplicate_seq"), (4, "out_of_order_seq")]:
        k2, v2, h2 = encode("a", seq, 0, _img())
        with pytest.raises(EnvelopeError) as ei:
            decode(k2, v2, h2, seq_guard=g)
        assert ei.value.reason == reason
    decode(*encode("b", 0, 0, _img()), seq_guard=g)  # other sessions are independent
    decode(*encode("a", 9, 0, _img()), seq_guard=g)  # gaps are fine
    # a message refused for another reason does not advance the session's seq
    k3, v3, h3 = encode("a", 12, 0, _img())
    with pytest.raises(EnvelopeError):
        decode(k3, v3[:10], h3, seq_guard=g)
    assert g.last("a") == 9
    g.reset(["a"])
    decode(*encode("a", 1, 0, _img()), seq_guard=g)
    assert len(g) == 2


def test_parse_headers_is_cheap_and_strict():
    h = encode("s", 1, 2, _img())[2]
    assert parse_headers(h).seq == 1
    with pytest.raises(EnvelopeError, match="missing_header:ts_ms"):
        parse_headers(_drop(h, "ts_ms"))


def test_encode_validates_its_inputs():
    with pytest.raises(ValueError, match="exactly one"):
        encode("s", 0, 0)
    with pytest.raises(ValueError, match="pattern"):
        encode("bad id", 0, 0, _img())
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        encode("s", 0, 0, np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize(("ts", "broker_ts", "limits", "reason"), [
    (10 ** 20, None, Limits(), "bad_header:ts_ms"),            # beyond a Redis stream id
    ((1 << 64) - 1, None, Limits(), "bad_header:ts_ms"),       # beyond max_ts_ms (2100)
    (5, None, Limits(min_ts_ms=10), "bad_header:ts_ms"),
    (0, 1_700_000_000_000, Limits(max_ts_skew_ms=60_000), "ts_out_of_window"),
    (1_700_000_100_000, 1_700_000_000_000, Limits(max_ts_skew_ms=60_000), "ts_out_of_window"),
    (1_700_000_030_000, 1_700_000_000_000, Limits(max_ts_skew_ms=60_000), None),
    (1_700_000_000_000, None, Limits(max_ts_skew_ms=60_000), None),  # no broker timestamp
])
def test_ts_ms_is_bounded_by_range_and_broker_window(ts, broker_ts, limits, reason):
    k, v, h = encode("s", 1, 1_700_000_000_000, np.zeros((8, 8, 3), np.uint8))
    h = [(n, str(ts).encode() if n == "ts_ms" else x) for n, x in h]
    if reason is None:
        assert decode(k, v, h, limits, broker_ts_ms=broker_ts)[0].ts_ms == ts
    else:
        with pytest.raises(EnvelopeError) as e:
            decode(k, v, h, limits, broker_ts_ms=broker_ts)
        assert e.value.reason == reason


@pytest.mark.parametrize(("name", "value"), [
    ("seq", str(1 << 63)), ("pts_ms", str(1 << 63)), ("width", "65536"), ("height", "0"),
    ("session_id", "x" * 300), ("seq", "9" * 5000)])
def test_every_header_is_bounded(name, value):
    k, v, h = encode("s", 1, 1_700_000_000_000, np.zeros((8, 8, 3), np.uint8))
    h = [(n, x) for n, x in h if n != name] + [(name, value.encode())]
    with pytest.raises(EnvelopeError) as e:
        decode(k, v, h)
    assert e.value.reason == f"bad_header:{name}"
