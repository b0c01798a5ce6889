// affectstream dashboard: sessions list, live session view (SSE read with fetch so that the
// bearer token travels in the Authorization header), summary. Plain JS, no dependencies.
"use strict";

(() => {
  const C = window.AffectCharts;
  const ROOT = document.querySelector('meta[name="api-root"]').content;
  const TOKEN_KEY = "affectstream.api_token";
  const HISTORY_LIMIT = 5000;           // points fetched with /timeline before going live
  const MAX_POINTS_PER_TRACK = 4000;    // points kept (and drawn) per track; older ones drop
  const SESSIONS_EVERY_MS = 5000;       // session list refresh period
  const SUMMARY_EVERY_MS = 4000;        // summary refresh period while points arrive
  const RECONNECT_MS = 2000;            // wait before re-opening a dropped live tail
  const RENDER_EVERY_MS = 250;          // redraw period (only when new points arrived)
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  let view = null;                      // the open session's state (see openSession)
  let listFailed = false;               // the message shown is the session list's failure

  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function authHeaders() {
    const t = sessionStorage.getItem(TOKEN_KEY);
    return t ? {Authorization: `Bearer ${t}`} : {};
  }

  async function failure(r) {
    let detail = r.statusText;
    try {
      const b = await r.json();
      detail = typeof b.detail === "string" ? b.detail : JSON.stringify(b.detail);
    } catch (_e) { /* not JSON */ }
    return new HttpError(r.status, `${r.status}: ${detail}`);
  }

  async function api(path) {
    const r = await fetch(ROOT + path, {headers: authHeaders(), cache: "no-store"});
    if (!r.ok) throw await failure(r);
    return r.json();
  }

  function say(text, isError) {
    const m = $("message");
    m.hidden = !text;
    m.textContent = text || "";
    m.classList.toggle("error", !!isError);
  }

  function report(err) {
    if (err.status === 401) say("The API needs a token: type it above and press Use.", true);
    else say(`Request failed: ${err.message}`, true);
  }

  function fmtTime(ms) {
    return ms == null ? "" : new Date(ms).toLocaleString();
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function badge(status) {
    const s = document.createElement("span");
    s.className = `status ${status}`;
    s.textContent = status === "running" ? "live" : status;
    return s;
  }

  // ---------------------------------------------------------------- sessions list

  async function loadSessions() {
    const body = await api("/v1/sessions?limit=500");
    const rows = body.sessions.slice().sort((a, b) =>
      (b.status === "running") - (a.status === "running") || b.updated_ms - a.updated_ms);
    const tbody = $("sessions").tBodies[0];
    tbody.replaceChildren();
    for (const s of rows) {
      const tr = document.createElement("tr");
      tr.dataset.sid = s.session_id;
      tr.dataset.status = s.status;
      if (view && view.sid === s.session_id) tr.classList.add("selected");
      cell(tr, s.session_id);
      cell(tr, "").appendChild(badge(s.status));
      cell(tr, fmtTime(s.updated_ms));
      // a file's name (the whole path or URL on hover)
      const src = s.source || "";
      cell(tr, src.includes("://") ? src : src.split("/").pop(), "source").title = src;
      tr.addEventListener("click", () => { location.hash = `#session=${enc(s.session_id)}`; });
      tbody.appendChild(tr);
    }
    $("session-count").textContent = rows.length < body.total
      ? `(${rows.length} of ${body.total})` : `(${body.total})`;
    if (listFailed) say("");
    listFailed = false;
  }

  // ---------------------------------------------------------------- one session

  function renderMeta(d) {
    const dl = $("session-meta");
    dl.replaceChildren();
    const rows = [["status", d.status], ["source", d.source], ["models", d.models],
                  ["created", fmtTime(d.created_ms)], ["last point", fmtTime(d.updated_ms)],
                  ["ended", fmtTime(d.ended_ms)], ["tracks", d.n_tracks],
                  ["stored points", d.n_points]];
    for (const [k, v] of rows) {
      if (v == null || v === "") continue;
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = String(v);
      dd.dataset.field = k;
      dl.append(dt, dd);
    }
  }

  function addPoint(p) {
    let t = view.tracks.get(p.track_id);
    if (!t) {
      t = {id: p.track_id, points: [], lastTs: -Infinity};
      view.tracks.set(p.track_id, t);
    }
    if (p.ts_ms <= t.lastTs) return;    // already shown (a resumed tail overlaps by 1 ms)
    t.points.push(p);
    t.lastTs = p.ts_ms;
    if (t.points.length > MAX_POINTS_PER_TRACK * 1.25) {
      t.points.splice(0, t.points.length - MAX_POINTS_PER_TRACK);
    }
    for (const k of Object.keys(p.emotion_probs)) view.labels.add(k);
    for (const k of Object.keys(p.au_intensity)) view.aus.add(k);
    view.t0 = Math.min(view.t0, p.ts_ms);
    view.t1 = Math.max(view.t1, p.ts_ms);
    view.received += 1;
    view.dirty = true;
  }

  function newestTs() {
    let m = -1;
    for (const t of view.tracks.values()) m = Math.max(m, t.lastTs);
    return m;
  }

  function trackBlock(parent, kind, id) {
    let div = parent.querySelector(`[data-track="${id}"]`);
    if (div) return div;
    div = document.createElement("div");
    div.className = "track-block";
    div.dataset.track = String(id);
    const h = document.createElement("h4");
    div.appendChild(h);
    const g = kind === "svg" ? document.createElementNS(C.SVG_NS, "svg")
      : document.createElement("canvas");
    g.setAttribute("class", kind === "svg" ? "emotion" : "au-heatmap");
    g.dataset.track = String(id);
    div.appendChild(g);
    // keep tracks in id order
    const after = [...parent.children].find((c) => +c.dataset.track > id);
    parent.insertBefore(div, after || null);
    return div;
  }

  function legendItem(parent, color, text) {
    const span = document.createElement("span");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = color;
    span.append(sw, document.createTextNode(text));
    parent.appendChild(span);
  }

  function render() {
    if (!view || !view.dirty) return;
    view.dirty = false;
    const labels = [...view.labels].sort(), aus = [...view.aus].sort();
    const domain = {t0: view.t0, t1: view.t1};
    if (labels.join() !== view.legendFor) {
      view.legendFor = labels.join();
      const lg = $("emotion-legend");
      lg.replaceChildren();
      labels.forEach((lab, i) => legendItem(lg, C.emotionColor(lab, i), lab));
    }
    const ids = [...view.tracks.keys()].sort((a, b) => a - b);
    let shown = 0;
    for (const id of ids) {
      const t = view.tracks.get(id);
      shown += t.points.length;
      const last = t.points[t.points.length - 1];
      const eb = trackBlock($("emotion-charts"), "svg", id);
      eb.querySelector("h4").textContent =
        `track ${id}: ${t.points.length} points, now ${last.emotion}` +
        ` (${Math.round((last.emotion_probs[last.emotion] || 0) * 100)} %)`;
      C.drawEmotionChart(eb.querySelector("svg"), t, domain, labels);
      const hb = trackBlock($("au-heatmaps"), "canvas", id);
      hb.querySelector("h4").textContent = `track ${id}`;
      C.drawHeatmap(hb.querySelector("canvas"), t, domain, aus);
    }
    $("point-count").textContent = String(shown);
    $("track-count").textContent = String(ids.length);
  }

  function setLive(state) {
    const o = $("live-state");
    o.textContent = state;
    o.className = state === "live" ? "live" : "";
  }

  async function loadSummary() {
    if (!view) return;
    const sid = view.sid;
    const [d, s] = await Promise.all([api(`/v1/sessions/${enc(sid)}`),
                                      api(`/v1/sessions/${enc(sid)}/summary`)]);
    if (!view || view.sid !== sid) return;
    renderMeta(d);
    const top = (obj, n, fmt) => Object.entries(obj).sort((a, b) => b[1] - a[1]).slice(0, n)
      .map(([k, v]) => `${k} ${fmt(v)}`).join(", ");
    const pct = (v) => `${Math.round(v * 100)} %`;
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const h of ["track", "points", "duration", "dominant emotion (share of points)",
                     "strongest AUs (mean, FACS 0–5)", "valence"]) {
      const th = document.createElement("th");
      th.textContent = h;
      head.appendChild(th);
    }
    const body = table.createTBody();
    for (const t of s.tracks) {
      const tr = body.insertRow();
      tr.dataset.track = String(t.track_id);
      cell(tr, String(t.track_id), "num");
      cell(tr, String(t.n_points), "num");
      cell(tr, `${(t.duration_ms / 1000).toFixed(1)} s`, "num");
      cell(tr, top(t.emotion_shares, 3, pct));
      cell(tr, top(t.au_mean, 3, (v) => v.toFixed(2)));
      cell(tr, t.valence_mean == null ? "" : t.valence_mean.toFixed(2), "num");
    }
    const all = body.insertRow();
    cell(all, "all");
    cell(all, String(s.n_points), "num");
    cell(all, "");
    cell(all, top(s.emotion_shares, 3, pct));
    $("summary").replaceChildren(table);
    view.summaryAt = Date.now();
  }

  // Server-sent events from /live, parsed from a fetch body stream. Resolves when the stream
  // closes; returns the last event name seen ("end" when the session ended).
  async function tail(sid, afterMs, signal) {
    const url = `${ROOT}/v1/sessions/${enc(sid)}/live?after_ms=${afterMs}&heartbeat_s=10`;
    const r = await fetch(url, {headers: authHeaders(), signal, cache: "no-store"});
    if (!r.ok) throw await failure(r);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "", last = null;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return last;
      buf += value.replace(/\r\n?/g, "\n");
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (!data) continue;                 // a heartbeat comment or a retry line
        last = event;
        if (event === "ready") setLive("live");
        else if (event === "point") addPoint(JSON.parse(data));
      }
    }
  }

  async function goLive(v) {
    while (view === v) {
      setLive("connecting");
      let last;
      try {
        last = await tail(v.sid, Math.max(0, newestTs() - 1), v.abort.signal);
      } catch (e) {
        if (e.name === "AbortError" || view !== v) return;
        report(e);
      }
      if (view !== v) return;
      if (last === "end") {
        render();
        await Promise.all([loadSummary(), loadSessions()]).catch(report);
        if (view === v) setLive("ended");
        return;
      }
      setLive("reconnecting");
      await new Promise((ok) => setTimeout(ok, RECONNECT_MS));
    }
  }

  async function openSession(sid) {
    if (view) view.abort.abort();
    view = {sid, tracks: new Map(), labels: new Set(), aus: new Set(), t0: Infinity,
            t1: -Infinity, received: 0, dirty: true, abort: new AbortController(),
            summaryAt: 0, summaryFor: 0, legendFor: null};
    const v = view;
    for (const id of ["emotion-charts", "au-heatmaps", "summary", "emotion-legend"]) {
      $(id).replaceChildren();
    }
    $("session-title").textContent = `Session ${sid}`;
    $("session-view").hidden = false;
    for (const tr of $("sessions").tBodies[0].rows) {
      tr.classList.toggle("selected", tr.dataset.sid === sid);
    }
    setLive("loading");
    try {
      await loadSummary();
      const tl = await api(`/v1/sessions/${enc(sid)}/timeline?limit=${HISTORY_LIMIT}`);
      if (view !== v) return;
      for (const p of tl.points) addPoint(p);
      render();
    } catch (e) {
      setLive("off");
      report(e);
      return;
    }
    goLive(v);
  }

  function route() {
    const m = /^#session=(.+)$/.exec(location.hash);
    if (m) {
      openSession(decodeURIComponent(m[1]));
    } else {
      if (view) view.abort.abort();
      view = null;
      $("session-view").hidden = true;
    }
  }

  function tick() {
    render();
    if (view && view.received !== view.summaryFor && Date.now() - view.summaryAt > SUMMARY_EVERY_MS
        && $("live-state").textContent === "live") {
      view.summaryAt = Date.now();
      view.summaryFor = view.received;
      loadSummary().catch(report);
    }
  }

  function listFailure(err) {
    report(err);
    listFailed = true;
  }

  function start() {
    $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token").value.trim();
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      else sessionStorage.removeItem(TOKEN_KEY);
      say("");
      loadSessions().then(route).catch(listFailure);
    });
    window.addEventListener("hashchange", route);
    const scale = Object.assign(document.createElement("canvas"), {className: "au-scale"});
    C.drawScale(scale);
    const lg = $("au-legend");
    lg.append(document.createTextNode("0"), scale, document.createTextNode("5"));
    loadSessions().then(route).catch(listFailure);
    setInterval(() => loadSessions().catch(listFailure), SESSIONS_EVERY_MS);
    setInterval(tick, RENDER_EVERY_MS);
  }

  start();
})();
