"""Timeline plot: every panel shows data (single-point tracks too), legends outside the panels."""

from __future__ import annotations

import matplotlib.pyplot as plt

from affectstream.operators.records import TimelinePoint
from affectstream.pipeline.viz.plot import plot_timeline, timeline_figure


def _pt(track, ts):
    aus = {f"AU{k:02d}": (k * 0.3 + ts / 1000) % 5 for k in (1, 2, 4, 6, 12, 25)}
    return TimelinePoint("s", track, ts, ts, "happiness", {"happiness": 0.7, "neutral": 0.3},
                         aus, (0, 0, 10, 10), 0.9)


def test_single_point_tracks_are_drawn_and_legends_sit_outside(tmp_path):
    pts = sorted([_pt(1, 0), _pt(2, 0), _pt(2, 100), _pt(2, 200)] +
                 [_pt(3, 50 * i) for i in range(40)], key=lambda p: p.ts_ms)
    fig = timeline_figure(pts, title="t1")
    fig.canvas.draw()
    emo = fig.axes[0:6:2]
    heat = fig.axes[1:6:2]
    for ax in emo:  # one line per label; the lone point of track 1 is a visible marker
        lines = ax.get_lines()
        assert len(lines) == 2 and all(len(ln.get_xdata()) >= 1 for ln in lines)
        leg = ax.get_legend().get_window_extent()
        assert leg.x0 >= ax.get_window_extent().x1  # right of the panel, not over the curves
    assert emo[0].get_lines()[0].get_marker() == "o"
    assert emo[2].get_lines()[0].get_marker() in (None, "None", "")  # long track: lines only
    for ax in heat:
        (mesh,) = ax.collections
        assert mesh.get_array().size > 0 and [t.get_text() for t in ax.get_yticklabels()][0] \
            == "AU01"
    title = fig._suptitle.get_window_extent()
    assert title.y0 >= emo[0].title.get_window_extent().y1 - 1  # above panel 1 and its title
    plt.close(fig)
    out = plot_timeline(pts, tmp_path / "p.png", title="t1")
    assert out.stat().st_size > 10_000
