"""``run``'s Ray placement: one actor per stream holding a
:class:`~pipeline.runtime.stream_worker.StreamWorker` (source + session runner); inference is the
shared Serve deployment, batched across frames and streams, called a few frames at a time
(:class:`~pipeline.runtime.coalesce.Coalescer`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import ray

from affectstream.pipeline.runtime.stream_worker import Progress, StreamWorker

__all__ = ["INFERENCE_APP", "POOL_NAMESPACE", "Progress", "StreamActor", "inference_running",
           "pool_name"]

log = logging.getLogger(__name__)

INFERENCE_APP = "affectstream-inference"
"""Serve application name of ``run``'s shared inference deployment."""

POOL_NAMESPACE = "affectstream"
"""Ray namespace of the warm cluster's pooled stream actors (named ``affectstream-stream-<i>``)."""


def inference_running() -> bool:
    """Whether the shared inference app (:data:`INFERENCE_APP`) is RUNNING in the connected
    cluster (imports Ray Serve)."""
    from ray import serve

    try:
        return serve.status().applications[INFERENCE_APP].status == "RUNNING"
    except (KeyError, AttributeError):
        return False


def pool_name(i: int) -> str:
    """Name of the warm pool's ``i``-th stream actor."""
    return f"affectstream-stream-{i}"


@ray.remote(num_cpus=0, max_concurrency=4)
class StreamActor(StreamWorker):
    """:class:`StreamWorker` in a Ray actor, calling the shared inference Serve app (arguments
    and errors as :class:`StreamWorker`)."""

    _handle: Any = None  # the Serve deployment's handle, once connected

    def inference_running(self) -> bool:
        """:func:`inference_running`, asked here where Ray Serve is loaded anyway, so a driver
        joining a warm cluster need not import it."""
        return inference_running()

    async def connect(self) -> Any:
        """Resolve the inference deployment's handle and route one empty call through it (the
        first frame should not pay for it); returns the handle."""
        if self._handle is None:
            from ray import serve

            logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its import set INFO
            from affectstream.pipeline.runtime.batch import InferRequest

            handle = serve.get_deployment_handle("Inference", app_name=INFERENCE_APP)
            h, w = self.base.crop.size
            await handle.remote(InferRequest(np.zeros((0, h, w), np.uint8), None))  # routing
            self._handle = handle
        return self._handle

    async def inference(self) -> Any:
        """The Serve deployment, called with a few consecutive frames at a time (a Serve call
        costs ~2 ms of CPU whatever it carries)."""
        from affectstream.pipeline.runtime.coalesce import Coalescer

        many = (await self.connect()).options(method_name="infer_many")
        i = self.cfg.inference
        return Coalescer(lambda reqs: many.remote(reqs), max_calls=2,
                         max_items=max(i.stream_batch_frames, i.max_batch_size),
                         min_items=i.stream_batch_frames, linger_s=i.stream_linger_ms / 1000)
