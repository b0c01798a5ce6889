// affectstream dashboard: drawing only (SVG line charts, canvas heat maps). No data fetching.
// A "track" here is {id, points: [Point]} with Point as in the API's OpenAPI schema (ts_ms epoch
// ms, emotion_probs label -> [0, 1], au_intensity AU id -> FACS 0-5).
"use strict";

window.AffectCharts = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const W = 760;                        // drawing width, px (scaled by CSS)
  const LEFT = 40, RIGHT = 10;          // plot margins, px
  const PLOT_W = W - LEFT - RIGHT;
  const AU_MAX = 5;                     // FACS intensity scale top
  const EMOTION_COLORS = {
    anger: "#d62728", contempt: "#8c564b", disgust: "#6b8e23", fear: "#9467bd",
    happiness: "#ff9f1c", neutral: "#7f7f7f", sadness: "#1f77b4", surprise: "#17becf",
  };
  const FALLBACK = ["#e377c2", "#bcbd22", "#393b79", "#637939"];
  // sequential ramp for AU intensity 0..5 (light yellow -> dark red)
  const RAMP = [[255, 255, 229], [254, 227, 145], [254, 196, 79], [254, 153, 41],
                [217, 95, 14], [153, 52, 4]];

  function emotionColor(label, i) {
    return EMOTION_COLORS[label] || FALLBACK[i % FALLBACK.length];
  }

  function auColor(v) {
    const x = Math.max(0, Math.min(AU_MAX, v)) / AU_MAX * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(x)), f = x - i;
    const c = RAMP[i].map((a, k) => Math.round(a + (RAMP[i + 1][k] - a) * f));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  // "nice" tick step for a span (1, 2 or 5 times a power of ten)
  function tickStep(span, n) {
    const raw = span / Math.max(1, n), p = Math.pow(10, Math.floor(Math.log10(raw)));
    return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) || raw;
  }

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  // x position (px) of epoch ms `ts` in the shared time domain {t0, t1}
  function xOf(ts, domain) {
    const span = Math.max(domain.t1 - domain.t0, 1);
    return LEFT + (ts - domain.t0) / span * PLOT_W;
  }

  function timeAxis(svg, domain, y) {
    el("line", {x1: LEFT, x2: W - RIGHT, y1: y, y2: y, class: "axis"}, svg);
    const spanS = Math.max((domain.t1 - domain.t0) / 1000, 0.001);
    const step = tickStep(spanS, 6);
    for (let s = 0; s <= spanS + 1e-9; s += step) {
      const x = xOf(domain.t0 + s * 1000, domain);
      el("line", {x1: x, x2: x, y1: y, y2: y + 4, class: "axis"}, svg);
      const t = el("text", {x: x, y: y + 14, "text-anchor": "middle"}, svg);
      t.textContent = `${+s.toFixed(3)} s`;
    }
  }

  // Emotion probabilities of one track over time: one polyline per label (a dot per point when
  // the track has a single point), y in [0, 1].
  function drawEmotionChart(svg, track, domain, labels) {
    const H = 170, TOP = 8, BOTTOM = 150;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.replaceChildren();
    const yOf = (p) => BOTTOM - p * (BOTTOM - TOP);
    el("line", {x1: LEFT, x2: LEFT, y1: TOP, y2: BOTTOM, class: "axis"}, svg);
    for (const v of [0, 0.5, 1]) {
      const t = el("text", {x: LEFT - 4, y: yOf(v) + 3, "text-anchor": "end"}, svg);
      t.textContent = v.toFixed(1);
      if (v > 0) el("line", {x1: LEFT, x2: W - RIGHT, y1: yOf(v), y2: yOf(v), stroke: "#eef0f3"}, svg);
    }
    timeAxis(svg, domain, BOTTOM);
    const pts = track.points;
    labels.forEach((lab, i) => {
      const color = emotionColor(lab, i);
      if (pts.length === 1) {
        const p = pts[0];
        el("circle", {cx: xOf(p.ts_ms, domain), cy: yOf(p.emotion_probs[lab] || 0), r: 3,
                      fill: color, "data-label": lab}, svg);
        return;
      }
      const coords = pts.map((p) => `${xOf(p.ts_ms, domain).toFixed(1)},` +
                                    `${yOf(p.emotion_probs[lab] || 0).toFixed(1)}`);
      el("polyline", {points: coords.join(" "), stroke: color, "data-label": lab}, svg);
    });
    svg.dataset.points = String(pts.length);
  }

  // median gap between consecutive points of a track, ms (its sampling interval)
  function medianGap(points) {
    const gaps = [];
    for (let i = 1; i < points.length; i++) gaps.push(points[i].ts_ms - points[i - 1].ts_ms);
    gaps.sort((a, b) => a - b);
    return gaps.length ? Math.max(1, gaps[gaps.length >> 1]) : null;
  }

  // AU heat map of one track: a row per AU, time binned into columns over the shared domain,
  // each cell the mean intensity of the points in it (FACS 0-5).
  function drawHeatmap(canvas, track, domain, aus) {
    const ROW = 14, AXIS = 18, H = aus.length * ROW + AXIS;
    // a column per sampling interval of the track (at least 3 px wide)
    const step = medianGap(track.points), span = Math.max(domain.t1 - domain.t0, 1);
    const bins = Math.max(1, Math.min(Math.floor(PLOT_W / 3),
                                      step ? Math.round(span / step) + 1 : track.points.length));
    canvas.width = W;
    canvas.height = H;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, W, H);
    const sum = new Float64Array(bins * aus.length), cnt = new Uint32Array(bins);
    for (const p of track.points) {
      const b = Math.min(bins - 1, Math.max(0, Math.floor((p.ts_ms - domain.t0) / span * bins)));
      cnt[b] += 1;
      aus.forEach((au, r) => { sum[r * bins + b] += p.au_intensity[au] || 0; });
    }
    const bw = PLOT_W / bins;
    g.fillStyle = "#f3f4f6";
    g.fillRect(LEFT, 0, PLOT_W, aus.length * ROW);
    // an empty column within two sampling intervals of the previous filled one repeats it
    // (timestamp jitter); a longer gap (the face was not seen) stays blank
    const holdBins = step ? 2 * step / span * bins : 0;
    for (let b = 0, src = -1; b < bins; b++) {
      if (cnt[b]) src = b;
      else if (src < 0 || b - src > holdBins) continue;
      aus.forEach((_au, r) => {
        g.fillStyle = auColor(sum[r * bins + src] / cnt[src]);
        g.fillRect(LEFT + b * bw, r * ROW, Math.ceil(bw), ROW - 1);
      });
    }
    g.fillStyle = "#5f6b7a";
    g.font = "10px system-ui, 'DejaVu Sans', sans-serif";
    g.textAlign = "right";
    aus.forEach((au, r) => g.fillText(au, LEFT - 4, r * ROW + ROW - 4));
    g.textAlign = "center";
    const spanS = span / 1000, tick = tickStep(spanS, 6);
    for (let s = 0; s <= spanS + 1e-9; s += tick) {
      g.fillText(`${+s.toFixed(3)} s`, xOf(domain.t0 + s * 1000, domain), H - 4);
    }
    canvas.dataset.points = String(track.points.length);
    canvas.dataset.bins = String(cnt.filter((c) => c > 0).length);
  }

  // colour scale of the heat maps, 0..5
  function drawScale(canvas) {
    canvas.width = 200;
    canvas.height = 12;
    const g = canvas.getContext("2d");
    for (let x = 0; x < 200; x++) {
      g.fillStyle = auColor(x / 199 * AU_MAX);
      g.fillRect(x, 0, 1, 12);
    }
  }

  return {emotionColor, drawEmotionChart, drawHeatmap, drawScale, SVG_NS};
})();
