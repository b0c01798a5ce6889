"""Per-track aggregates of a stored timeline (``TimelineStore.summary``, ``/v1/.../summary``):
emotion shares, AU means and peaks (FACS 0-5), valence/arousal means; computed in one streaming
pass over the track's entries."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrackSummary:
    """Aggregates of one track's timeline.

    Attributes:
        track_id: track.
        n_points: timeline points.
        first_ts_ms / last_ts_ms: capture times of the first and last point, epoch ms.
        duration_ms: ``last_ts_ms - first_ts_ms``.
        emotion_shares: dominant label -> fraction of points with that label (sums to 1).
        au_mean: AU id -> mean intensity (FACS 0–5) over the points carrying it.
        au_peak: AU id -> ``(max intensity, ts_ms of its first occurrence)``.
        valence_mean / arousal_mean: means in [-1, 1], or None when no point has them.
    """

    track_id: int
    n_points: int
    first_ts_ms: int
    last_ts_ms: int
    duration_ms: int
    emotion_shares: dict[str, float]
    au_mean: dict[str, float]
    au_peak: dict[str, tuple[float, int]]
    valence_mean: float | None = None
    arousal_mean: float | None = None


class _SummaryAcc:
    """Streaming accumulator behind :meth:`TimelineStore.summary`."""

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.n = 0
        self.first = self.last = 0
        self.labels: dict[str, int] = {}
        self.au_sum: dict[str, float] = {}
        self.au_n: dict[str, int] = {}
        self.au_peak: dict[str, tuple[float, int]] = {}
        self.va = [0.0, 0, 0.0, 0]

    def add(self, ts: int, f: dict[str, str]) -> None:
        if self.n == 0:
            self.first = ts
        self.last = ts
        self.n += 1
        lab = f.get("emotion")
        if lab:
            self.labels[lab] = self.labels.get(lab, 0) + 1
        for k, v in f.items():
            if k.startswith("AU"):
                x = float(v)
                self.au_sum[k] = self.au_sum.get(k, 0.0) + x
                self.au_n[k] = self.au_n.get(k, 0) + 1
                if k not in self.au_peak or x > self.au_peak[k][0]:
                    self.au_peak[k] = (x, ts)
        if "valence" in f:
            self.va[0] += float(f["valence"])
            self.va[1] += 1
        if "arousal" in f:
            self.va[2] += float(f["arousal"])
            self.va[3] += 1

    def result(self) -> TrackSummary:
        n_lab = sum(self.labels.values())
        shares = {k: v / n_lab for k, v in sorted(self.labels.items())} if n_lab else {}
        means = {k: self.au_sum[k] / self.au_n[k] for k in sorted(self.au_sum)}
        return TrackSummary(
            self.tid, self.n, self.first, self.last, self.last - self.first, shares, means,
            dict(sorted(self.au_peak.items())),
            self.va[0] / self.va[1] if self.va[1] else None,
            self.va[2] / self.va[3] if self.va[3] else None)
