// The pbx-voice operations dashboard: polls /dashboard/data and draws the cluster's figures on canvases.
// Plain ES module, no build step, no library. The server answers every process's figures as they stand
// (counters and histograms cumulative); rates and percentiles are worked out here, per process, between
// two snapshots of that process (by the snapshot's own time), so a poll that sees a snapshot again, a
// process that restarts (a new process id) or another frontend answering the next poll changes nothing.

const $ = (id) => document.getElementById(id);

// Polls as often as the processes publish (the answer's `every`, seconds), at most twice a second.
let pollMs = 1000;
const HIDDEN_POLL_MS = 10000; // a tab nobody looks at costs the server little
const RETRY_MS = 3000;
const params = new URLSearchParams(location.search);
// Seconds of history drawn: 5 minutes, or ?span=<seconds> (30 s to an hour).
const SPAN_S = Math.min(Math.max(Number(params.get("span")) || 300, 30), 3600);
const QUANTILE_WINDOW_S = 30; // percentiles over the observations of the last this many seconds
const KEEP_S = QUANTILE_WINDOW_S + 5;
const COLORS = ["#2f6fde", "#1f8a4c", "#cf3a3a", "#b07800", "#7b4bd6", "#0f8ca8", "#d25e9c", "#5b6478",
  "#8a5a2b", "#3a9e9e"];
const CALL_TYPES = ["websocket", "webrtc", "sip"];

// With API_TOKEN set the page was opened as /dashboard?token=...; its fetches send the token as a header.
const token = params.get("token") || "";

// What tests (and curious people in the console) can see of the page.
const dash = {
  polls: 0, // answers drawn
  failures: 0, // polls that failed
  lastError: null,
  data: null, // the last answer
  latest: {}, // chart id -> series name -> last value drawn (null: no value)
  series: (chart) => Object.fromEntries([...charts[chart].series].map(([name, s]) => [name, s.points])),
  quantile,
  windowHistogram,
  rates,
};
window.dash = dash;

// Answers of the last KEEP_S seconds, newest last: {t (s, this browser's clock), data, procs: Map}.
const samples = [];

// ---------------------------------------------------------------- figures

/** The `q` quantile of a histogram's per-bucket `counts` (the last bucket is +Inf), interpolated within its
 * bucket as Prometheus's histogram_quantile does; null when there is no observation. */
function quantile(q, bounds, counts) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!(total > 0)) return null;
  const rank = q * total;
  let below = 0;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] > 0 && below + counts[i] >= rank) {
      if (i >= bounds.length) return bounds[bounds.length - 1]; // +Inf: the highest finite bound
      const lower = i === 0 ? 0 : bounds[i - 1];
      return lower + ((bounds[i] - lower) * (rank - below)) / counts[i];
    }
    below += counts[i];
  }
  return bounds[bounds.length - 1];
}

function sameBounds(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Histogram `name` of the whole cluster over the observations between `old` and `now` (two samples):
 * each process's counts less its counts in `old` (all of them for a process `old` does not have). */
function windowHistogram(now, old, name) {
  let bounds = null;
  let counts = null;
  for (const p of now.data.procs) {
    const h = p.histograms && p.histograms[name];
    if (!h) continue;
    if (bounds === null) {
      bounds = h.bounds;
      counts = new Array(h.counts.length).fill(0);
    } else if (!sameBounds(bounds, h.bounds)) {
      continue; // another version's buckets: left out
    }
    const before = old.procs.get(p.proc);
    const o = before && before.histograms[name];
    // A process (or histogram) that `old` does not have is new: all its observations are in the window.
    let delta = h.counts;
    if (o && sameBounds(o.bounds, h.bounds)) {
      delta = h.counts.map((c, i) => c - o.counts[i]);
      if (delta.some((d) => d < 0)) delta = h.counts;
    } else if (o) {
      continue; // its buckets changed: no telling what is new
    }
    delta.forEach((d, i) => (counts[i] += d));
  }
  return bounds === null ? null : { bounds, counts };
}

/** Per second, summed over the processes: how much `get(process)` (an object of figures by key) grew
 * since each process's previous snapshot in `samples`. A process seen once so far adds nothing; a key no
 * process has two snapshots of yet is missing. */
function rates(now, get) {
  const out = {};
  for (const p of now.data.procs) {
    for (const [key, r] of Object.entries(procRates(p, get))) out[key] = (out[key] || 0) + r;
  }
  return out;
}

/** Per second: how much `get(p)` grew since process `p`'s previous snapshot in `samples` ({} if none). */
function procRates(p, get) {
  const current = get(p);
  if (!current) return {};
  let then = null;
  for (let i = samples.length - 1; i >= 0; i--) {
    const q = samples[i].procs.get(p.proc);
    if (!q) break;
    if (q.at < p.at) {
      then = q;
      break;
    }
  }
  if (!then) return {};
  const previous = get(then) || {};
  const out = {};
  for (const key of Object.keys(current)) {
    const grew = current[key] - (previous[key] || 0);
    out[key] = grew >= 0 ? grew / (p.at - then.at) : 0;
  }
  return out;
}

const sum = (obj) => Object.values(obj || {}).reduce((a, b) => a + b, 0);
const one = (key) => (p) => (key in p ? { "": p[key] } : null);

function procLabel(p, manyHosts) {
  // `{role}-{host}-{pid or slot}-{random}`: the host is said once, by the chart of hosts.
  let label = p.proc;
  if (p.host && label.startsWith(`${p.role}-${p.host}-`)) {
    label = `${p.role}-${label.slice(p.role.length + p.host.length + 2)}`;
    if (manyHosts) label = `${p.host}/${label}`;
  }
  return label;
}

// ---------------------------------------------------------------- charts

// "2.50" -> "2.5", "3.0" -> "3".
const trim = (text) => (text.includes(".") ? text.replace(/\.?0+$/, "") : text);

const FORMATS = {
  count: (v) => trim(v.toFixed(1)),
  rate: (v) => (v >= 100 ? v.toFixed(0) : trim(v.toFixed(v >= 10 ? 1 : 2))),
  seconds: (v) => (v >= 1 ? `${trim(v.toFixed(2))} s` : `${trim((v * 1000).toFixed(v >= 0.01 ? 0 : 1))} ms`),
  percent: (v) => `${trim((v * 100).toFixed(v >= 0.1 ? 0 : 1))} %`,
  bytes: (v) => (v >= 1e9 ? `${trim((v / 1e9).toFixed(2))} GB` : `${(v / 1e6).toFixed(0)} MB`),
};

class Chart {
  constructor(section) {
    this.id = section.id.replace(/^chart-/, "");
    this.format = FORMATS[section.dataset.format] || FORMATS.count;
    const title = document.createElement("h2");
    title.textContent = section.dataset.title;
    this.canvas = document.createElement("canvas");
    this.legend = document.createElement("div");
    this.legend.className = "legend";
    section.append(title, this.canvas, this.legend);
    this.series = new Map(); // name -> {color, points: [[t, v]]}
    this.colors = new Map(); // name -> color, kept when a series goes and comes back
  }

  color(name) {
    if (!this.colors.has(name)) this.colors.set(name, COLORS[this.colors.size % COLORS.length]);
    return this.colors.get(name);
  }

  /** Add the values of one moment (`values`: name -> number or null for none). */
  push(t, values) {
    for (const [name, v] of Object.entries(values)) {
      let s = this.series.get(name);
      if (!s) {
        s = { color: this.color(name), points: [] };
        this.series.set(name, s);
      }
      s.points.push([t, v === null || Number.isFinite(v) ? v : null]);
    }
    for (const [name, s] of this.series) {
      const given = name in values;
      if (!given) s.points.push([t, null]);
      while (s.points[0][0] < t - SPAN_S) s.points.shift();
      // A series no longer given (a process gone, a failure reason no longer seen) goes once its drawn
      // values have scrolled out.
      if (!given && s.points.every(([, v]) => v === null)) this.series.delete(name);
    }
    dash.latest[this.id] = Object.fromEntries(
      [...this.series].map(([name, s]) => [name, s.points[s.points.length - 1][1]]),
    );
  }

  draw(now) {
    const dpr = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth;
    const height = this.canvas.clientHeight;
    if (!width || !height) return;
    if (this.canvas.width !== Math.round(width * dpr)) this.canvas.width = Math.round(width * dpr);
    if (this.canvas.height !== Math.round(height * dpr)) this.canvas.height = Math.round(height * dpr);
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);

    let top = 0;
    for (const s of this.series.values()) for (const [, v] of s.points) if (v !== null && v > top) top = v;
    const [ymax, step] = niceScale(top);
    ctx.font = "11px system-ui, sans-serif";
    const labels = [];
    for (let y = 0; y <= ymax + step / 2; y += step) labels.push([y, this.format(y)]);
    const left = 8 + Math.max(...labels.map(([, text]) => ctx.measureText(text).width));
    const right = width - 6;
    const plotTop = 6;
    const bottom = height - 18;
    const x = (t) => left + ((t - (now - SPAN_S)) / SPAN_S) * (right - left);
    const y = (v) => bottom - (v / ymax) * (bottom - plotTop);

    ctx.strokeStyle = "#eceef2";
    ctx.fillStyle = "#687185";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const [v, text] of labels) {
      const py = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, py);
      ctx.lineTo(right, py);
      ctx.stroke();
      ctx.fillText(text, left - 4, py);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const every = [10, 15, 30, 60, 120, 300, 600, 900].find((s) => SPAN_S / s <= 6) || 900;
    for (let ago = Math.floor(SPAN_S / every) * every; ago >= 0; ago -= every) {
      const px = Math.round(x(now - ago)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(px, plotTop);
      ctx.lineTo(px, bottom);
      ctx.stroke();
      const text = ago === 0 ? "now" : ago % 60 ? `-${ago}s` : `-${ago / 60}m`;
      ctx.fillText(text, Math.min(Math.max(px, left + 12), right - 12), bottom + 4);
    }

    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    for (const s of this.series.values()) {
      ctx.strokeStyle = s.color;
      ctx.beginPath();
      let drawing = false;
      for (const [t, v] of s.points) {
        if (v === null) {
          drawing = false;
          continue;
        }
        if (drawing) ctx.lineTo(x(t), y(v));
        else ctx.moveTo(x(t), y(v));
        drawing = true;
      }
      ctx.stroke();
    }
    this.drawLegend();
  }

  drawLegend() {
    const items = [];
    for (const [name, s] of this.series) {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = s.color;
      const value = document.createElement("b");
      const last = s.points[s.points.length - 1][1];
      value.textContent = last === null ? "–" : this.format(last);
      item.append(swatch, document.createTextNode(name), value);
      items.push(item);
    }
    if (!items.length) {
      const none = document.createElement("span");
      none.className = "none";
      none.textContent = "no data yet";
      items.push(none);
    }
    this.legend.replaceChildren(...items);
  }
}

/** The top of the y axis and the step of its 4-5 grid lines, for values up to `top`. */
function niceScale(top) {
  if (!(top > 0)) return [1, 0.25];
  const raw = top / 4;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  return [Math.ceil(top / step) * step, step];
}

const charts = Object.fromEntries(
  [...document.querySelectorAll("section.chart")].map((el) => {
    const chart = new Chart(el);
    return [chart.id, chart];
  }),
);

// ---------------------------------------------------------------- each answer

function record(data) {
  const t = Date.now() / 1000;
  const now = { t, data, procs: new Map(data.procs.map((p) => [p.proc, p])) };
  const media = data.procs.filter((p) => p.role === "media");
  const hosts = new Set(data.procs.map((p) => p.host));
  const manyHosts = hosts.size > 1;

  const byType = { ...data.active.by_type };
  const activeType = {};
  for (const type of CALL_TYPES) activeType[type] = byType[type] || 0;
  for (const [type, n] of Object.entries(byType)) if (!(type in activeType)) activeType[type] = n;
  activeType.all = data.active.total;
  charts["active-type"].push(t, activeType);
  const activeHost = {};
  for (const p of media) activeHost[p.host || "?"] = data.active.by_host[p.host] || 0;
  charts["active-host"].push(t, activeHost);

  const started = rates(now, (p) => (p.started ? { "": sum(p.started) } : null))[""];
  const ended = rates(now, (p) => (p.ended ? { "": sum(p.ended) } : null))[""];
  const answered = rates(now, (p) => (p.histograms.setup ? { "": sum(p.histograms.setup.counts) } : null))[""];
  const calls = { started: started ?? 0, answered: answered ?? 0, ended: ended ?? 0 };
  for (const [reason, r] of Object.entries(rates(now, (p) => p.failed))) {
    // A failure reason is drawn from its first failure on.
    if (r > 0 || charts.calls.series.has(`failed: ${reason}`)) calls[`failed: ${reason}`] = r;
  }
  charts.calls.push(t, calls);

  const frames = {
    in: rates(now, one("frames_in"))[""] ?? 0,
    out: rates(now, one("frames_out"))[""] ?? 0,
  };
  const dropped = rates(now, (p) => p.dropped);
  frames.dropped = sum(dropped);
  for (const [reason, r] of Object.entries(dropped)) {
    if (r > 0 || charts.frames.series.has(`dropped: ${reason}`)) frames[`dropped: ${reason}`] = r;
  }
  charts.frames.push(t, frames);

  // The oldest answer of the window (this one alone at first: no observation yet).
  const old = samples.find((s) => s.t >= t - QUANTILE_WINDOW_S) || now;
  const percentiles = (name, prefix = "") => {
    const h = windowHistogram(now, old, name);
    return {
      [`${prefix}p50`]: h && quantile(0.5, h.bounds, h.counts),
      [`${prefix}p99`]: h && quantile(0.99, h.bounds, h.counts),
    };
  };
  charts.command.push(t, percentiles("command"));
  charts.setup.push(t, percentiles("setup"));
  charts.speech.push(t, {
    ...percentiles("asr_final", "ASR final "),
    ...percentiles("tts_first_audio", "TTS first audio "),
  });

  const cpu = {};
  const rss = {};
  for (const p of data.procs) {
    const label = procLabel(p, manyHosts);
    cpu[label] = procRates(p, one("cpu"))[""] ?? null;
    if ("rss" in p) rss[label] = p.rss;
  }
  charts.cpu.push(t, cpu);
  charts.rss.push(t, rss);

  samples.push(now);
  while (samples.length && samples[0].t < t - KEEP_S) samples.shift();

  $("sum-calls").textContent = String(data.active.total);
  $("sum-capacity").textContent = String(data.capacity);
  const webCount = data.procs.length - media.length;
  $("sum-procs").textContent = `${webCount} web + ${media.length} media`;
  $("sum-hosts").textContent = String(hosts.size);
  $("sum-hosts-unit").textContent = hosts.size === 1 ? "host" : "hosts";
}

function drawAll() {
  const now = Date.now() / 1000;
  for (const chart of Object.values(charts)) chart.draw(now);
}

function setState(text, kind, title = "") {
  const state = $("state");
  state.textContent = text;
  state.className = `state state-${kind}`;
  state.title = title;
}

async function poll() {
  let wait = document.hidden ? HIDDEN_POLL_MS : pollMs;
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const resp = await fetch("/dashboard/data", { headers, cache: "no-store" });
    let body = null;
    try {
      body = await resp.json();
    } catch {
      // Reported by its status below.
    }
    if (resp.status === 401) {
      throw new Error(
        token
          ? "the server refused the API token given as ?token="
          : "the server asks for an API token: open /dashboard?token=<API_TOKEN>",
      );
    }
    if (!resp.ok) throw new Error(`HTTP ${resp.status}${body && body.error ? `: ${body.error}` : ""}`);
    record(body);
    pollMs = Math.max(500, (body.every || 1) * 1000);
    dash.data = body;
    dash.polls += 1;
    drawAll();
    setState("live", "live");
    $("updated").textContent = new Date().toLocaleTimeString([], { hour12: false });
  } catch (err) {
    dash.failures += 1;
    dash.lastError = String(err.message || err);
    setState("no data", "error", dash.lastError);
    wait = RETRY_MS;
  } finally {
    setTimeout(poll, wait);
  }
}

window.addEventListener("resize", drawAll);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) drawAll();
});
poll();
