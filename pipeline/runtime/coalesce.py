"""Fewer, larger inference calls per stream: requests that arrive while earlier calls are in
flight travel together in the next call.

A Serve call costs CPU on both ends whatever it carries (serialisation, routing, the replica's
event loop), so per-frame calls are the dominant orchestration cost at tens of frames per second
(DESIGN §4). :class:`Coalescer` keeps at most ``max_calls`` calls of one stream in flight;
requests submitted meanwhile queue and leave as one list call when a call returns (Nagle-style).
With ``min_items`` > 1 a call also waits, at most ``linger_s``, until that many requests are
queued: a single stream whose inference is faster than its face tracking would otherwise send one
frame per call, paying the call's fixed cost and a batch-1 forward every frame. Results come back
per request, in order.
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
        min_items: requests a call waits for (at most ``linger_s`` seconds) before it leaves.
        linger_s: longest wait for ``min_items``, seconds (the latency a lone frame may add).

    Raises (from ``await``): whatever ``call_many`` raised, for every request of that call.
    """

    def __init__(self, call_many: CallMany, max_calls: int = 2, max_items: int = 16,
                 min_items: int = 1, linger_s: float = 0.0) -> None:
        if max_calls < 1 or max_items < 1 or not 1 <= min_items <= max_items or linger_s < 0:
            raise ValueError("need max_calls >= 1, 1 <= min_items <= max_items, linger_s >= 0")
        self.call_many = call_many
        self.max_calls, self.max_items = max_calls, max_items
        self.min_items, self.linger_s = min_items, linger_s
        self._timer: asyncio.TimerHandle | None = None
        self.pending: list[tuple[InferRequest, asyncio.Future]] = []
        self.in_flight = 0
        self.calls = 0       # list calls sent
        self.requests = 0    # requests sent

    async def __call__(self, req: InferRequest) -> InferResult:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((req, fut))
        self._pump()
        return await fut

    def _pump(self, force: bool = False) -> None:
        """Send what may leave now; arm the linger timer for a short remainder."""
        while (self.pending and self.in_flight < self.max_calls
               and (force or len(self.pending) >= self.min_items)):
            items = self.pending[:self.max_items]
            del self.pending[:self.max_items]
            self.in_flight += 1
            self.calls += 1
            self.requests += len(items)
            asyncio.ensure_future(self._send(items))
        if not self.pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        elif self.pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._linger_over)

    def _linger_over(self) -> None:
        self._timer = None
        self._pump(force=True)

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
