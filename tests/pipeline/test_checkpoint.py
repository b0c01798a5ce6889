"""Session checkpoints: a restored session continues exactly as the uninterrupted one, and the
Redis compare-and-set never moves a session's checkpoint back."""

from __future__ import annotations

import copy

import pytest
import redis

from affectstream.pipeline.kafka.checkpoint import (Checkpoint, CheckpointStore, restore_builder, restore_stage,
                                 snapshot_builder, snapshot_stage)


def _ck(source, offset, tag=b"x"):
    return Checkpoint(source, offset, offset, 1000 + offset, b"stage-" + tag, b"builder-" + tag)


@pytest.mark.integration
def test_checkpoint_never_goes_back(redis_url):
    store = CheckpointStore(redis.Redis.from_url(redis_url), ttl_s=60)
    assert store.load("s") is None
    assert store.save("s", _ck("t:0", 10, b"a"))
    assert not store.save("s", _ck("t:0", 10, b"b"))      # same offset: a late duplicate
    assert not store.save("s", _ck("t:0", 7, b"c"))       # older: refused
    got = store.load("s")
    assert (got.source, got.offset, got.seq, got.ts_ms, got.stage, got.builder) == (
        "t:0", 10, 10, 1010, b"stage-a", b"builder-a")
    assert store.save("s", _ck("t:0", 11, b"d")) and store.load("s").stage == b"stage-d"
    # another partition (the topic was re-partitioned): its offsets are not comparable
    assert store.save("s", _ck("t:3", 2, b"e")) and store.load("s").source == "t:3"
    assert 0 < store.r.ttl(store.key("s")) <= 60
    assert store.key("s") == "affect:{s}:ckpt"  # same hash tag as the session's other keys


@pytest.fixture(scope="module")
def base_stage():
    from affectstream.pipeline.config import load_config
    from affectstream.operators.facetrack import FaceTrackStage

    return FaceTrackStage.from_config(load_config("service"))


def _run(stage, builder, frames, analyzer):
    out = []
    for fr in frames:
        tf = stage.process(fr)
        probs, sal, au = analyzer.analyze(tf.crops, tf.points01)
        builder.end_tracks(tf.ended_tracks)
        pts = builder.build(fr.session_id, fr.ts_ms, fr.pts_ms, tf.faces, probs, sal, au)
        out.append((tf.faces.track_id.tolist(), tf.faces.bbox_xyxy.tolist(), pts))
    return out


@pytest.mark.slow
def test_restored_session_continues_exactly_like_the_uninterrupted_one(base_stage, media):
    """Detect-then-follow, tracker, smoother and AU baselines all resume: the frames after the
    checkpoint give the same track ids, boxes and smoothed values as without interruption."""
    from affectstream.operators.analyze import FaceAnalyzer
    from affectstream.operators.facetrack import FaceTrackStage
    from affectstream.operators.records import Frame
    from affectstream.operators.smoothing import Smoother
    from affectstream.operators.timeline import TimelineBuilder
    from affectstream.pipeline.kafka.publish import sampled_frames

    # 10 frames/s: no face until 4.0 s, then one face to the end (6.4 s)
    frames = [Frame("s", i, 10_000 + f.pts_ms, f.pts_ms, f.image)
              for i, f in enumerate(sampled_frames(media("noface_face.mov"), 10))][34:]
    analyzer = FaceAnalyzer("mini_xception", "gradcam", "geometric", "cpu")
    b = base_stage

    def fresh():
        return (FaceTrackStage(b.detector, copy.deepcopy(b.tracker), b.landmarker, b.crop,
                               b.min_face_px, b.min_presence, b.detect_interval_ms),
                TimelineBuilder(Smoother(), analyzer.labels))

    stage, builder = fresh()
    first = _run(stage, builder, frames[:14], analyzer)
    assert any(ids for ids, _, _ in first), "the face enters before the checkpoint"
    blob_s, blob_b = snapshot_stage(stage), snapshot_builder(builder)
    straight = _run(stage, builder, frames[14:], analyzer)
    stage2, builder2 = fresh()
    restore_stage(stage2, blob_s)
    restore_builder(builder2, blob_b)
    resumed = _run(stage2, builder2, frames[14:], analyzer)
    assert [r[0] for r in resumed] == [r[0] for r in straight] and any(r[0] for r in straight)
    assert resumed == straight
    # without the checkpoint the tracker would start over: numbering and smoothing differ
    stage3, builder3 = fresh()
    blank = _run(stage3, builder3, frames[14:], analyzer)
    assert blank != straight


def test_state_codec_round_trips_operator_state_without_pickle():
    import collections

    import numpy as np

    from affectstream.operators.records import Faces
    from affectstream.operators.tracking.kalman import BoxKalman
    from affectstream.pipeline.kafka.checkpoint import decode_state, encode_state

    kf = BoxKalman(np.array([10, 20, 50, 90], np.float32))
    faces = Faces(np.ones((1, 4), np.float32), np.ones(1, np.float32), np.ones(1, np.int64))
    state = {"a": [1, 2.5, None, True, float("nan")], 3: collections.deque([np.arange(3)], 4),
             "k": kf, "f": faces, "s": np.float32(0.25), "t": (1, "x")}
    blob = encode_state(state)
    assert b"pickle" not in blob and blob.startswith(b"{")
    got = decode_state(blob)
    assert got["k"].q == kf.q and np.array_equal(got["k"].P, kf.P) and type(got["k"]) is BoxKalman
    assert got[3].maxlen == 4 and np.array_equal(got[3][0], np.arange(3))
    assert got["s"] == np.float32(0.25) and isinstance(got["s"], np.float32)
    assert np.array_equal(got["f"].track_id, faces.track_id) and got["t"] == (1, "x")
    with pytest.raises(TypeError):
        encode_state({"x": object()})


@pytest.mark.parametrize("blob", [
    b"\x80\x05K\x01.",                                             # a pickle
    b'{"$obj": "Popen", "attrs": {}}',                             # a class not on the list
    b'{"$obj": "BoxKalman", "attrs": {"x": 1}}',                   # wrong attributes
    b'{"$nd": ["object", [1], "AA=="]}',                           # object arrays
    b'{"$nd": ["float32", [4], "AA=="]}',                          # data does not fill shape
    b'{"$dict": [[[1], 2]]}',                                      # unhashable key
])
def test_foreign_state_is_refused(blob):
    from affectstream.pipeline.kafka.checkpoint import CheckpointError, decode_state

    with pytest.raises(CheckpointError):
        decode_state(blob)


@pytest.mark.integration
def test_signed_checkpoints_refuse_tampering_and_foreign_layouts(redis_url):
    import pickle

    from affectstream.pipeline import metrics

    def rejected(reason):
        return metrics.CHECKPOINTS_REJECTED.labels(reason=reason)._value.get()

    r = redis.Redis.from_url(redis_url)
    key = b"k" * 32
    store = CheckpointStore(r, ttl_s=60, key=key)
    assert store.save("sg", _ck("t:0", 5))
    assert store.load("sg").offset == 5
    assert CheckpointStore(r, key=b"x" * 32).load("sg") is None          # another key
    before = rejected("bad_signature")
    r.hset(store.key("sg"), "offset", 6)                                  # tampered
    assert store.load("sg") is None and rejected("bad_signature") == before + 1
    assert CheckpointStore(r).save("un", _ck("t:0", 1))                  # unsigned
    assert store.load("un") is None
    r.hset(store.key("old"), mapping={"source": "t:0", "offset": 1, "v": 1,
                                      "stage": pickle.dumps(1), "builder": b""})
    before = rejected("foreign")
    assert store.load("old") is None and rejected("foreign") == before + 1
    r.set(store.key("str"), pickle.dumps(1))                              # not a hash
    assert store.load("str") is None
    assert store.save("str", _ck("t:0", 1)) and store.load("str").offset == 1


def test_checkpoint_key_from_env_or_file(tmp_path, monkeypatch):
    from affectstream.pipeline.kafka.checkpoint import KEY_ENV, load_key

    monkeypatch.delenv(KEY_ENV, raising=False)
    assert load_key(None) is None
    f = tmp_path / "key"
    f.write_bytes(b"0123456789abcdef0123\n")
    assert load_key(str(f)) == b"0123456789abcdef0123"
    monkeypatch.setenv(KEY_ENV, "from-the-environment-x")
    assert load_key(str(f)) == b"from-the-environment-x"
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ValueError):
        load_key(None)
