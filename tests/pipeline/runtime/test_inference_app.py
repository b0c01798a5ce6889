"""The shared inference deployment on real Ray Serve: its batch wait follows the active streams."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from affectstream.pipeline.config import load_config
from affectstream.pipeline.runtime.batch import InferRequest


@pytest.fixture(scope="module")
def handle(tmp_path_factory):
    import os

    os.environ.pop("RAY_ADDRESS", None)
    os.environ["AFFECTSTREAM_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))  # no warm join
    from affectstream.pipeline.runtime import dag

    # one stream: no wait at all; several: a wide window, so the test does not race the clock
    cfg = load_config("fast", overrides={"inference": {
        "batch_wait_timeout_s": 0.0, "batch_wait_multi_s": 0.5, "saliency": "off"},
        "ray_num_cpus": 2})
    dag.init_ray(cfg)
    try:
        yield dag.start_inference(cfg)
    finally:
        dag.shutdown()
        os.environ.pop("AFFECTSTREAM_STATE_DIR")


@pytest.fixture(scope="module")
def face(media) -> np.ndarray:
    grey = cv2.cvtColor(cv2.imread(str(media("single_face.jpg"))), cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, (64, 64))[None]  # (1, 64, 64) uint8


def _call(handle, face, stream: str):
    reqs = [InferRequest(face, np.full((1, 468, 2), 0.5, np.float32), stream=stream)
            for _ in range(2)]  # two frames of one face each
    return handle.infer_many.remote(reqs)


def test_calls_of_several_streams_share_a_forward_and_one_stream_waits_for_none(handle, face):
    alone = _call(handle, face, "a").result()
    assert [r.batch_faces for r in alone] == [2, 2]  # its own two frames
    assert [r.batch_faces for r in _call(handle, face, "b").result()] == [2, 2]
    # both streams are active now: the deployment waits for more calls before a forward
    first = _call(handle, face, "a")
    time.sleep(0.1)
    second = _call(handle, face, "b")
    merged = [r.batch_faces for r in first.result() + second.result()]
    assert merged == [4, 4, 4, 4], merged
    time.sleep(1.5)  # "b" went quiet: stream "a" alone again, so no wait
    t0 = time.monotonic()
    _call(handle, face, "a").result()  # formed under the 0.5 s window, which it then lifts
    t1 = time.monotonic()
    again = _call(handle, face, "a").result()
    t2 = time.monotonic()
    assert [r.batch_faces for r in again] == [2, 2]
    assert t1 - t0 >= 0.45 and t2 - t1 < 0.45, (t1 - t0, t2 - t1)
