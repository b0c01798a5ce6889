"""In-process batched inference for the session runner (no Ray, no Serve).

Requests that arrive while a forward pass runs are gathered into the next one, so several
sessions (or several frames of one session in flight) share forwards exactly as they do behind
the Serve deployment. Used by tests, by the Python API and by single-process tools.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from affectstream.operators.analyze import FaceAnalyzer
from affectstream.pipeline.runtime.batch import InferRequest, InferResult, analyze_batch


class LocalInference:
    """``await infer(request) -> InferResult`` with dynamic batching on one worker thread.

    Args:
        analyzer: the models (expression, optional learned AUs, saliency).
        max_batch_size: most requests (frames) in one forward.
        batch_wait_s: how long a forward waits for more requests when fewer than
            ``max_batch_size`` are queued, seconds (as Serve's ``batch_wait_timeout_s``; 0 = take
            what is queued).
    """

    def __init__(self, analyzer: FaceAnalyzer, max_batch_size: int = 16,
                 batch_wait_s: float = 0.0) -> None:
        if max_batch_size < 1 or batch_wait_s < 0:
            raise ValueError(f"need max_batch_size >= 1 and batch_wait_s >= 0, got "
                             f"{max_batch_size}, {batch_wait_s}")
        self.analyzer = analyzer
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "local-inference")
        self._waiting: list[tuple[InferRequest, asyncio.Future]] = []
        self._busy = False

    async def __call__(self, req: InferRequest) -> InferResult:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.append((req, fut))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                await asyncio.sleep(0)  # let requests submitted in the same tick join
                if self.batch_wait_s and len(self._waiting) < self.max_batch_size:
                    await asyncio.sleep(self.batch_wait_s)
                batch = self._waiting[:self.max_batch_size]
                del self._waiting[:len(batch)]
                try:
                    results = await loop.run_in_executor(
                        self._pool, analyze_batch, self.analyzer, [r for r, _ in batch])
                except Exception as e:  # noqa: BLE001  (every caller of this forward sees it)
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(e)
                    continue
                for (_, f), res in zip(batch, results):
                    if not f.done():
                        f.set_result(res)
        finally:
            self._busy = False

    def close(self) -> None:
        """Stop the worker thread (pending calls must have finished)."""
        self._pool.shutdown(wait=False)
