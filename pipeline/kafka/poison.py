"""Poison-pill rule: count, durably, how often the processing of a Kafka message was started and
not finished, so a message that keeps crashing its consumer is dead-lettered instead of killing
every consumer that reads it.

A consumer crash cannot be observed by the consumer that crashed; it shows as a message whose
processing began and never ended. Each message is therefore counted in Redis *before* each
step that might crash on it and uncounted after the step:

* before decoding it (``FrameConsumer.poll``): :meth:`DeliveryAttempts.begin`; after decoding
  (whatever the outcome): :meth:`DeliveryAttempts.step_done`;
* before face-tracking it: :meth:`begin`; once its points are written, or it went to the DLQ:
  :meth:`finish`.

So the count of a message is the number of times a consumer died (or lost its partition) while
it was being processed. On each delivery :meth:`begin` returns the count including this attempt;
a count above ``kafka.max_delivery_attempts`` means the previous attempts all ended in a crash
and the message is dead-lettered as ``poison_pill`` without being decoded or analysed. Frames
that were merely in flight beside the culprit also get a count, but they are finished (and
cleared) by the replay that follows, so only a message that never completes accumulates.

Storage: one hash per partition, ``<prefix>:deliveries:<topic>:<partition>``, field = offset,
value = count; the key expires ``ttl_s`` after its last change.
"""

from __future__ import annotations

from typing import Any

# KEYS[1] = hash, ARGV[1] = field: decrement; delete the field at 0
_STEP_DONE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return n
"""


class DeliveryAttempts:
    """Per-message counts of unfinished processing attempts in Redis (module docstring).

    Args:
        client: ``redis.Redis``.
        prefix: key prefix.
        ttl_s: expiry of a partition's hash after its last change, seconds.
    """

    def __init__(self, client: Any, prefix: str = "affect", ttl_s: int = 7 * 24 * 3600) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._step_done = client.register_script(_STEP_DONE)

    def key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:deliveries:{topic}:{partition}"

    def begin(self, topic: str, partition: int, offset: int) -> int:
        """Count an attempt that starts now; returns the count including it (>= 1)."""
        k = self.key(topic, partition)
        p = self.r.pipeline(transaction=False)
        p.hincrby(k, str(offset), 1)
        p.expire(k, self.ttl_s)
        return int(p.execute()[0])

    def step_done(self, topic: str, partition: int, offset: int) -> None:
        """Uncount the attempt begun last: the step ended without a crash."""
        self._step_done(keys=[self.key(topic, partition)], args=[str(offset)])

    def finish(self, topic: str, partition: int, offset: int) -> None:
        """The message is done (points written, skipped or dead-lettered): forget it."""
        self.r.hdel(self.key(topic, partition), str(offset))

    def count(self, topic: str, partition: int, offset: int) -> int:
        """The stored count (0 when none)."""
        return int(self.r.hget(self.key(topic, partition), str(offset)) or 0)

    def set(self, topic: str, partition: int, offset: int, n: int) -> None:
        """Store a count (tests, operators clearing a false positive with 0)."""
        if n <= 0:
            self.finish(topic, partition, offset)
        else:
            self.r.hset(self.key(topic, partition), str(offset), n)
