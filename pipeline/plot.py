"""Timeline plots with matplotlib: per track, emotion probabilities and AU intensities over time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from affectstream.operators.records import TimelinePoint  # noqa: E402


def plot_timeline(points: Sequence[TimelinePoint], path: Path, title: str = "",
                  t0_ms: int | None = None) -> Path:
    """Write a PNG: one row per track, emotion probabilities (top) and AU intensities (bottom).

    Args:
        points: timeline points (any tracks), time-ordered.
        path: output PNG path.
        title: figure title.
        t0_ms: capture time shown as 0 s (default: the first point's).

    Raises:
        ValueError: no points.
    """
    if not points:
        raise ValueError("no points to plot")
    t0 = points[0].ts_ms if t0_ms is None else t0_ms
    tracks = sorted({p.track_id for p in points})
    fig, axes = plt.subplots(2 * len(tracks), 1, figsize=(11, 3.2 * 2 * len(tracks)),
                             squeeze=False, sharex=True)
    for i, tid in enumerate(tracks):
        pts = [p for p in points if p.track_id == tid]
        t = [(p.ts_ms - t0) / 1000 for p in pts]
        ax = axes[2 * i, 0]
        for lab in pts[0].emotion_probs:
            ax.plot(t, [p.emotion_probs[lab] for p in pts], label=lab, lw=1.2)
        ax.set_ylabel("probability")
        ax.set_ylim(0, 1)
        ax.set_title(f"track {tid}: emotion")
        ax.legend(ncol=4, fontsize=7, loc="upper right")
        ax = axes[2 * i + 1, 0]
        cmap = plt.get_cmap("tab20")  # 12 AUs: distinct colours
        for k, au in enumerate(pts[0].au_intensity):
            ax.plot(t, [p.au_intensity[au] for p in pts], label=au, lw=1, color=cmap(k % 20))
        ax.set_ylabel("intensity (0–5)")
        ax.set_ylim(0, 5)
        ax.set_title(f"track {tid}: action units")
        ax.legend(ncol=6, fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
