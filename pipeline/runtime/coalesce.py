"""Fewer, larger inference calls per stream: requests that arrive while earlier calls are in
flight travel together in the next call.

A Serve call costs CPU on both ends whatever it carries (serialisation, routing, the replica's
event loop), so per-frame calls are the dominant orchestration cost at tens of frames per second
(DESIGN §4). :class:`Coalescer` keeps at most ``max_calls`` calls of one stream in flight;
requests submitted meanwhile queue and leave as one list call when a call returns (Nagle-style:
no timer, so an idle stream pays no added latency, and a busy one batches by itself). Results
come back per request, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from affectstream.pipeline.runtime.batch import InferRequest, InferResult

CallMany = Callable[[list[InferRequest]], Awaitable[list[InferResult]]]


class Coalescer:
    """``await coalescer(request) -> InferResult``, with requests grouped into list calls.

    Args:
        call_many: sends a list of requests, returns their results in the same order
            (e.g. ``lambda reqs: handle.infer_many.remote(reqs)``).
        max_calls: list calls of this stream in flight at once (>= 1).
        max_items: most requests per list call.

    Raises (from ``await``): whatever ``call_many`` raised, for every request of that call.
    """

    def __init__(self, call_many: CallMany, max_calls: int = 2, max_items: int = 16) -> None:
        if max_calls < 1 or max_items < 1:
            raise ValueError("max_calls and max_items must be >= 1")
        self.call_many = call_many
        self.max_calls, self.max_items = max_calls, max_items
        self.pending: list[tuple[InferRequest, asyncio.Future]] = []
        self.in_flight = 0
        self.calls = 0       # list calls sent
        self.requests = 0    # requests sent

    async def __call__(self, req: InferRequest) -> InferResult:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((req, fut))
        self._pump()
        return await fut

    def _pump(self) -> None:
        while self.pending and self.in_flight < self.max_calls:
            items = self.pending[:self.max_items]
            del self.pending[:self.max_items]
            self.in_flight += 1
            self.calls += 1
            self.requests += len(items)
            asyncio.ensure_future(self._send(items))

    async def _send(self, items: list[tuple[InferRequest, asyncio.Future]]) -> None:
        try:
            results: Any = await self.call_many([r for r, _ in items])
            if len(results) != len(items):
                raise RuntimeError(f"inference returned {len(results)} results for "
                                   f"{len(items)} requests")
        except BaseException as e:  # noqa: BLE001  (handed to every waiting request)
            for _, f in items:
                if not f.done():
                    f.set_exception(e)
        else:
            for (_, f), res in zip(items, results):
                if not f.done():
                    f.set_result(res)
        finally:
            self.in_flight -= 1
            self._pump()
