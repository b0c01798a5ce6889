"""Coalescer: requests submitted while a call is in flight leave together, in order; a failed
call fails exactly its own requests; an idle stream sends at once (pure logic, no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from affectstream.pipeline.runtime.coalesce import Coalescer


class Backend:
    """Answers each list call after ``release`` is set; records the calls' sizes."""

    def __init__(self, fail_call: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_call = fail_call

    async def __call__(self, reqs: list[int]) -> list[str]:
        self.calls.append(list(reqs))
        n = len(self.calls)
        await self.release.wait()
        if n == self.fail_call:
            raise ConnectionError("replica died")
        return [f"r{x}" for x in reqs]


def test_groups_requests_while_calls_are_in_flight() -> None:
    async def main() -> None:
        be = Backend()
        c = Coalescer(be, max_calls=1, max_items=16)
        tasks = [asyncio.ensure_future(c(i)) for i in range(6)]
        await asyncio.sleep(0.01)
        assert be.calls == [[0]]  # the first leaves at once; the rest wait for it
        be.release.set()
        assert await asyncio.gather(*tasks) == [f"r{i}" for i in range(6)]
        assert be.calls == [[0], [1, 2, 3, 4, 5]]
        assert (c.calls, c.requests) == (2, 6)

    asyncio.run(main())


def test_max_items_and_max_calls() -> None:
    async def main() -> None:
        be = Backend()
        c = Coalescer(be, max_calls=2, max_items=2)
        tasks = [asyncio.ensure_future(c(i)) for i in range(7)]
        await asyncio.sleep(0.01)
        assert be.calls == [[0], [1]]
        be.release.set()
        await asyncio.gather(*tasks)
        assert sorted(len(x) for x in be.calls) == [1, 1, 1, 2, 2]
        assert [x for call in be.calls for x in call] == list(range(7))

    asyncio.run(main())


def test_a_failed_call_fails_only_its_requests() -> None:
    async def main() -> None:
        be = Backend(fail_call=2)
        c = Coalescer(be, max_calls=1)
        tasks = [asyncio.ensure_future(c(i)) for i in range(4)]
        await asyncio.sleep(0.01)
        be.release.set()
        res = await asyncio.gather(*tasks, return_exceptions=True)
        assert res[0] == "r0"
        assert all(isinstance(r, ConnectionError) for r in res[1:])
        assert await c(9) == "r9"  # the coalescer goes on after a failure

    asyncio.run(main())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Coalescer(Backend(), max_calls=0)


def test_min_items_waits_for_company_but_not_longer_than_linger() -> None:
    async def main() -> None:
        be = Backend()
        be.release.set()
        c = Coalescer(be, max_calls=1, min_items=3, linger_s=0.05)
        first = [asyncio.ensure_future(c(i)) for i in range(2)]
        await asyncio.sleep(0.01)
        assert be.calls == []  # two queued: waiting for a third
        third = asyncio.ensure_future(c(2))
        await asyncio.gather(*first, third)
        assert be.calls == [[0, 1, 2]]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await c(3) == "r3"  # alone: leaves when the linger is over
        assert 0.04 <= loop.time() - t0 < 1.0
        assert be.calls[-1] == [3]

    asyncio.run(main())
