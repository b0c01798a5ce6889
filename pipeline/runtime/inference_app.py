"""The inference stage as a Ray Serve deployment shared by every stream.

One call = the face crops of one frame, or of several consecutive frames of one stream
(``infer_many``; a Serve call costs ~2 ms of CPU whatever it carries, so streams send a few frames
per call). ``@serve.batch`` gathers the calls of many streams into one forward pass;
``max_batch_size`` (calls) and the batch waits are tunable live via ``reconfigure``. The wait
adapts to the load: ``batch_wait_timeout_s`` while one stream calls, ``batch_wait_multi_s``
while several do (counted from the requests' ``stream`` over the last :data:`ACTIVE_S`), so
several streams' calls meet in one forward and one stream alone pays no extra latency.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve

from affectstream.operators.analyze import FaceAnalyzer
from affectstream.pipeline.runtime.batch import InferRequest, InferResult, analyze_batch, warm_up

__all__ = ["Inference", "InferRequest", "InferResult", "analyze_batch"]

ACTIVE_S = 1.0
"""A stream that called within this many seconds counts as active (batch wait choice)."""


@serve.deployment(name="Inference", ray_actor_options={"num_cpus": 0})
class Inference:
    """Batched FER / AU / saliency inference (Serve deployment).

    Args:
        fer_model, saliency, au_model, device, half: see :class:`operators.analyze.FaceAnalyzer`.
        torch_threads: intra-op threads (0 = torch default).
        max_batch_size: calls per forward (each one or more frames).
        batch_wait_timeout_s: wait to fill a batch while one stream calls, seconds.
        batch_wait_multi_s: wait to fill a batch while several streams call, seconds (None:
            the same as ``batch_wait_timeout_s``).
    """

    def __init__(self, fer_model: str = "mini_xception", saliency: str = "gradcam",
                 au_model: str = "geometric", device: str = "auto", half: bool = False,
                 torch_threads: int = 0, max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.005,
                 batch_wait_multi_s: float | None = None) -> None:
        import torch

        from affectstream.pipeline.runtime.ray_net import serve_replica_on_loopback

        serve_replica_on_loopback()

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.analyzer = FaceAnalyzer(fer_model, saliency, au_model, device, half)
        self._seen: dict[str, float] = {}  # stream -> last call (time.monotonic)
        self._apply(max_batch_size, batch_wait_timeout_s, batch_wait_multi_s)
        warm_up(self.analyzer)

    def _apply(self, max_batch_size: int, wait_one: float, wait_many: float | None) -> None:
        self.infer.set_max_batch_size(max_batch_size)
        self._waits = (wait_one, wait_one if wait_many is None else wait_many)
        self._wait_now = wait_one
        self.infer.set_batch_wait_timeout_s(wait_one)

    def reconfigure(self, user_config: dict) -> None:
        """Live tuning: ``{"max_batch_size": int, "batch_wait_timeout_s": float,
        "batch_wait_multi_s": float}``."""
        many = user_config.get("batch_wait_multi_s")
        self._apply(int(user_config.get("max_batch_size", 16)),
                    float(user_config.get("batch_wait_timeout_s", 0.005)),
                    None if many is None else float(many))

    def _adapt_wait(self, calls: list[list[InferRequest]]) -> None:
        """Pick the next batches' wait from the streams active now."""
        now = time.monotonic()
        for reqs in calls:
            if reqs:
                self._seen[reqs[0].stream] = now
        self._seen = {s: t for s, t in self._seen.items() if now - t < ACTIVE_S}
        want = self._waits[1] if len(self._seen) > 1 else self._waits[0]
        if want != self._wait_now:
            self.infer.set_batch_wait_timeout_s(want)
            self._wait_now = want

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def infer(self, calls: list[list[InferRequest]]) -> list[list[InferResult]]:
        """One forward over every frame of every queued call (a call = one frame, or several
        frames of one stream from its :class:`~pipeline.runtime.coalesce.Coalescer`)."""
        self._adapt_wait(calls)
        flat = [r for reqs in calls for r in reqs]
        res = await asyncio.to_thread(analyze_batch, self.analyzer, flat)
        out, i = [], 0
        for reqs in calls:
            out.append(res[i:i + len(reqs)])
            i += len(reqs)
        return out

    async def __call__(self, req: InferRequest) -> InferResult:
        return (await self.infer([req]))[0]

    async def infer_many(self, reqs: list[InferRequest]) -> list[InferResult]:
        """Several frames in one call; they share one forward with the other queued calls."""
        return await self.infer(list(reqs))


def deploy(cfg: Any) -> Any:
    """Deploy (or update) the shared Inference app (``INFERENCE_APP``)
    without an HTTP proxy, from a :class:`~pipeline.config.PipelineConfig`; returns its handle."""
    from affectstream.pipeline.runtime.stream_actor import INFERENCE_APP

    quiet = {"log_level": "WARNING", "enable_access_log": False}
    serve.start(proxy_location="Disabled", logging_config=quiet)
    from affectstream.pipeline.service.options import inference_options

    i = cfg.inference
    app = Inference.options(**inference_options(cfg), logging_config=quiet).bind(
        i.fer_model, i.saliency, i.au_model, i.device, i.half, i.torch_threads or 1,
        i.max_batch_size, i.batch_wait_timeout_s)
    return serve.run(app, name=INFERENCE_APP, route_prefix=None, logging_config=quiet)
