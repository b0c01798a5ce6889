"""Timeline plots with matplotlib: per track, emotion probabilities over time and an AU heat map."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from affectstream.operators.records import TimelinePoint  # noqa: E402

MARKERS_BELOW = 30
"""Tracks with fewer points than this get markers on their curves (one point is a dot)."""


def timeline_figure(points: Sequence[TimelinePoint], title: str = "",
                    t0_ms: int | None = None) -> plt.Figure:
    """The figure of :func:`plot_timeline` (caller closes it).

    Layout: two rows per track: emotion probabilities (0–1, one line per label, markers when the
    track is short, legend right of the panel) and AU intensities as a heat map (AUs x time,
    FACS 0–5, colour bar right of the panel). The title sits above all panels.

    Raises:
        ValueError: no points.
    """
    if not points:
        raise ValueError("no points to plot")
    t0 = points[0].ts_ms if t0_ms is None else t0_ms
    tracks = sorted({p.track_id for p in points})
    fig, axes = plt.subplots(2 * len(tracks), 1, figsize=(12, 2.6 * 2 * len(tracks) + 0.6),
                             squeeze=False, layout="constrained")
    t_all = [(p.ts_ms - t0) / 1000 for p in points]
    lo, hi = min(t_all), max(t_all)
    pad = max(0.05 * (hi - lo), 0.1)
    cmap = plt.get_cmap("tab10")
    for i, tid in enumerate(tracks):
        pts = [p for p in points if p.track_id == tid]
        t = np.array([(p.ts_ms - t0) / 1000 for p in pts])
        ax = axes[2 * i, 0]
        marker = "o" if len(pts) < MARKERS_BELOW else None
        for k, lab in enumerate(pts[0].emotion_probs):
            ax.plot(t, [p.emotion_probs.get(lab, np.nan) for p in pts], label=lab, lw=1.2,
                    marker=marker, ms=4, color=cmap(k % 10))
        ax.set_ylabel("probability")
        ax.set_ylim(0, 1)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_title(f"track {tid}: emotion ({len(pts)} points)", loc="left", fontsize=10)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        ax = axes[2 * i + 1, 0]
        aus = list(pts[0].au_intensity)
        grid = np.array([[p.au_intensity.get(a, np.nan) for p in pts] for a in aus])
        # cell edges halfway between points; a lone point gets a cell 2 * pad wide
        if len(t) > 1:
            mids = (t[1:] + t[:-1]) / 2
            edges = np.concatenate([[t[0] - (mids[0] - t[0])], mids, [t[-1] + (t[-1] - mids[-1])]])
        else:
            edges = np.array([t[0] - pad, t[0] + pad])
        mesh = ax.pcolormesh(edges, np.arange(len(aus) + 1), grid, cmap="magma", vmin=0, vmax=5,
                             shading="flat")
        ax.set_yticks(np.arange(len(aus)) + 0.5, aus, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_title(f"track {tid}: action units", loc="left", fontsize=10)
        fig.colorbar(mesh, ax=ax, pad=0.01, label="intensity (0–5)")
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    return fig


def plot_timeline(points: Sequence[TimelinePoint], path: Path, title: str = "",
                  t0_ms: int | None = None) -> Path:
    """Write a PNG: per track, emotion probabilities (top) and an AU heat map (bottom).

    Args:
        points: timeline points (any tracks), time-ordered.
        path: output PNG path.
        title: figure title.
        t0_ms: capture time shown as 0 s (default: the first point's).

    Raises:
        ValueError: no points.
    """
    fig = timeline_figure(points, title, t0_ms)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
