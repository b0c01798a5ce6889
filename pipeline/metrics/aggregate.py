"""Cluster-wide Prometheus metrics through Redis: actors push, the query API renders.

Under Ray every actor is its own process with its own ``prometheus_client`` registry, so the
counters a Kafka consumer actor increments never reach the API replica's ``/metrics`` by
themselves. The pipeline's choice (over ``ray.util.metrics``, which Ray exports on each node's
metrics-agent port, not on the API's ``/metrics``):

* every process that produces pipeline metrics runs a :class:`RedisMetricsPusher`; about once a
  second it adds the *increase* of each counter and histogram sample since its last push to one
  Redis hash (``HINCRBYFLOAT``), so the hash holds cumulative totals over all processes, past
  and present (a crashed actor loses at most its last unpushed second);
* gauges are per process: each pusher replaces its own hash (with a TTL) and registers itself in
  a sorted set with the push time; a process that stopped pushing drops out after ``stale_s``;
* ``/metrics`` (:func:`render_merged`) renders the ``affectstream_*`` families with the Redis
  totals added to the API process's own values (left out where this process is itself a pusher,
  so nothing counts twice); a gauge series reported by several processes shows the largest
  value (the one gauge today, consumer lag, is per partition and a partition has one owner).

Redis keys (one prefix, the timeline's ``redis.key_prefix``)::

    <p>:metrics                    HASH  "<sample name>|<labels JSON>" -> cumulative value
    <p>:metrics:gauges:<instance>  HASH  same fields -> current value          (TTL gauge_ttl_s)
    <p>:metrics:instances          ZSET  instance -> last push, epoch ms
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

NAMESPACE = "affectstream_"
_pushing = False  # set once this process runs a pusher: its own values then come from Redis


def _field(name: str, labels: dict[str, str]) -> str:
    return name + "|" + json.dumps(labels, sort_keys=True, separators=(",", ":"))


def _parse(field: str) -> tuple[str, dict[str, str]]:
    name, _, lab = field.partition("|")
    return name, (json.loads(lab) if lab else {})


class Keys:
    """Key names of the metrics hashes for one prefix."""

    def __init__(self, prefix: str = "affect") -> None:
        self.totals = f"{prefix}:metrics"
        self.instances = f"{prefix}:metrics:instances"
        self._gauges = f"{prefix}:metrics:gauges:"

    def gauges(self, instance: str) -> str:
        return self._gauges + instance


class RedisMetricsPusher:
    """Pushes this process's ``affectstream_*`` metrics to Redis (see the module docstring).

    Args:
        client: ``redis.Redis`` (``decode_responses=True``).
        prefix: key prefix.
        instance: this process's name among pushers (default ``host-pid``).
        registry: registry to read (default: prometheus_client's default registry).
        gauge_ttl_s: TTL of this process's gauge hash, seconds.
    """

    def __init__(self, client: Any, prefix: str = "affect", instance: str | None = None,
                 registry: CollectorRegistry = REGISTRY, gauge_ttl_s: int = 60) -> None:
        global _pushing
        _pushing = True
        self.r = client
        self.k = Keys(prefix)
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self.registry = registry
        self.gauge_ttl_s = gauge_ttl_s
        self._last: dict[str, float] = {}

    def _read(self) -> tuple[dict[str, float], dict[str, float]]:
        totals: dict[str, float] = {}
        gauges: dict[str, float] = {}
        for fam in self.registry.collect():
            if not fam.name.startswith(NAMESPACE):
                continue
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                f = _field(s.name, s.labels)
                (gauges if fam.type == "gauge" else totals)[f] = float(s.value)
        return totals, gauges

    def push(self) -> int:
        """Send the increases since the last push and the current gauges; returns the number of
        samples that changed. Raises ``redis.RedisError`` when Redis is unreachable (the same
        increases are sent by the next successful push)."""
        totals, gauges = self._read()
        deltas = {f: v - self._last.get(f, 0.0) for f, v in totals.items()}
        deltas = {f: d for f, d in deltas.items() if d != 0.0 and math.isfinite(d)}
        p = self.r.pipeline(transaction=False)
        for f, d in deltas.items():
            p.hincrbyfloat(self.k.totals, f, d)
        gk = self.k.gauges(self.instance)
        p.delete(gk)
        if gauges:
            p.hset(gk, mapping={f: repr(v) for f, v in gauges.items()})
            p.expire(gk, self.gauge_ttl_s)
        p.zadd(self.k.instances, {self.instance: int(time.time() * 1000)})
        p.execute()
        for f in deltas:
            self._last[f] = totals[f]
        return len(deltas)


class _Families:
    """A stand-in registry for :func:`prometheus_client.generate_latest`."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _family_of(fam: Metric) -> list[str]:
    if fam.type == "counter":
        return [fam.name + "_total"]
    if fam.type in ("histogram", "gaugehistogram"):
        return [fam.name + s for s in ("_bucket", "_count", "_sum", "_gcount", "_gsum")]
    if fam.type == "summary":
        return [fam.name, fam.name + "_count", fam.name + "_sum"]
    return [fam.name]


def _order(name: str, labels: dict[str, str]) -> tuple:
    le = labels.get("le")
    rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
    kind = 0 if name.endswith("_bucket") else 1 if name.endswith("count") else 2
    return rest, kind, float(le) if le is not None else 0.0


def read_remote(client: Any, prefix: str = "affect", stale_s: float = 60.0
                ) -> tuple[dict[str, float], dict[str, float]]:
    """``(totals, gauges)`` from Redis: cumulative totals per sample field, and per gauge field the
    largest value among pushers seen in the last ``stale_s`` seconds."""
    k = Keys(prefix)
    now_ms = int(time.time() * 1000)
    p = client.pipeline(transaction=False)
    p.hgetall(k.totals)
    p.zrangebyscore(k.instances, now_ms - int(stale_s * 1000), "+inf")
    raw, live = p.execute()
    gauges: dict[str, float] = {}
    if live:
        p = client.pipeline(transaction=False)
        for inst in live:
            p.hgetall(k.gauges(inst))
        for h in p.execute():
            for f, v in h.items():
                gauges[f] = max(float(v), gauges.get(f, -math.inf))
    return {f: float(v) for f, v in raw.items()}, gauges


def merged_families(client: Any | None, prefix: str = "affect",
                    registry: CollectorRegistry = REGISTRY, stale_s: float = 60.0
                    ) -> list[Metric]:
    """The registry's families with the Redis totals and gauges merged into ``affectstream_*``.

    Redis errors are logged and leave the local values alone (``/metrics`` keeps answering).
    """
    totals: dict[str, float] = {}
    gauges: dict[str, float] = {}
    if client is not None:
        try:
            totals, gauges = read_remote(client, prefix, stale_s)
        except Exception as e:  # noqa: BLE001  (metrics must not fail the scrape)
            log.warning("metrics: Redis unreachable (%s: %s); local values only",
                        type(e).__name__, e)
    remote: dict[str, list[tuple[dict[str, str], float, bool]]] = {}
    for table, is_gauge in ((totals, False), (gauges, True)):
        for f, v in table.items():
            name, labels = _parse(f)
            remote.setdefault(name, []).append((labels, v, is_gauge))
    out: list[Metric] = []
    for fam in registry.collect():
        if not fam.name.startswith(NAMESPACE):
            out.append(fam)
            continue
        merged: dict[tuple[str, tuple], tuple[str, dict[str, str], float]] = {}
        if not _pushing:
            for s in fam.samples:
                if not s.name.endswith("_created"):
                    merged[(s.name, tuple(sorted(s.labels.items())))] = (s.name, s.labels,
                                                                         float(s.value))
        for name in _family_of(fam):
            for labels, v, is_gauge in remote.get(name, ()):
                key = (name, tuple(sorted(labels.items())))
                old = merged.get(key)
                if old is None:
                    merged[key] = (name, labels, v)
                elif is_gauge:
                    merged[key] = (name, labels, max(old[2], v))
                else:
                    merged[key] = (name, labels, old[2] + v)
        m = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        for name, labels, v in sorted(merged.values(), key=lambda t: _order(t[0], t[1])):
            m.add_sample(name, labels, v)
        out.append(m)
    return out


def render_merged(client: Any | None, prefix: str = "affect",
                  registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """Prometheus text exposition of :func:`merged_families`: ``(body, content type)``."""
    return generate_latest(_Families(merged_families(client, prefix, registry))), \
        CONTENT_TYPE_LATEST
