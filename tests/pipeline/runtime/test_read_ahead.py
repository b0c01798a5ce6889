"""The stream worker's read-ahead buffer (pure logic: an endless in-memory source)."""

from __future__ import annotations

import itertools

from affectstream.pipeline.runtime.stream_worker import _ReadAhead


class _Endless:
    last_decode_ms = 1.0

    def __iter__(self):
        return iter(itertools.count())


def test_a_full_file_buffer_waits_and_close_ends_the_reader():
    reader = _ReadAhead(_Endless(), live=False, size=2)
    reader.start()
    assert reader.next()[0] == 0 and reader.next()[0] == 1  # in order, nothing dropped
    reader.thread.join(0.2)
    assert reader.thread.is_alive()  # blocked on the full buffer, as a file should be
    reader.close()
    reader.thread.join(2)
    assert not reader.thread.is_alive()  # before: it waited for room for good
    assert reader.next() is None


def test_a_live_buffer_drops_the_oldest_frames():
    reader = _ReadAhead(_Endless(), live=True, size=2)
    reader.start()
    reader.thread.join(0.2)
    first = reader.next()[0]
    assert first > 0 and reader.dropped >= first  # the reader never waits on a live source
    reader.close()
    reader.thread.join(2)
    assert not reader.thread.is_alive()
