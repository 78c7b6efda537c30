// The Train tab's live dashboard (workbench/app/live.py): one stream of rows in, five uPlot charts,
// the run header and the generations table out.  uPlot (workbench/app/vendor, MIT) draws every chart;
// the heatmap's cells are painted in a uPlot draw hook over uPlot's own scales and axes.  This script only
// draws: the smoothed loss and the titles come computed from Python (workbench/present/live.py).
(() => {
  if (window.__wbDashboard) return;
  const BLUE = "#1f77b4", ORANGE = "#ff7f0e", GREEN = "#2ca02c", RED = "#d62728", GREY = "#7f7f7f", PURPLE = "#9467bd";
  const REDRAW_MS = 250;  // at most 4 redraws a second: what a person can follow
  const HEAT_COLUMNS = 400;  // the heatmap sums adjacent steps beyond this many columns
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

  const fmt = (v, digits = 3) => (v == null || !isFinite(v) ? "–" : Number(v.toPrecision(digits)).toString());
  const viridis = (t) => {
    const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1), i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
    const c = VIRIDIS[i].map((a, k) => Math.round(a + f * (VIRIDIS[i + 1][k] - a)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  };
  const line = (label, stroke, extra = {}) => Object.assign({ label, stroke, width: 2, spanGaps: true, points: { show: false } }, extra);
  const bars = (label, fill, extra = {}) =>
    Object.assign({ label, fill, stroke: fill, width: 0, paths: uPlot.paths.bars({ size: [0.9, Infinity], ...(extra.bar || {}) }), points: { show: false } }, extra);
  const axis = (label, extra = {}) => Object.assign({ label, stroke: "#444", grid: { stroke: "#e5e5e5", width: 1 }, ticks: { stroke: "#ccc", width: 1 } }, extra);
  const fromZero = (u, min, max) => [0, max > 0 ? max * 1.05 : 1];
  // Log axes are drawn as log10 values on a linear scale (bars and heatmap cells keep their widths), ticked at
  // whole decades and labelled as plain numbers (0.01, 1, 100); rows carry the bins as [low, high] in log10(norm / C).
  const decades = (u, axisIdx, min, max) => { const out = []; for (let k = Math.ceil(min - 1e-9); k <= Math.floor(max + 1e-9); k++) out.push(k); return out; };
  const decadeLabels = (u, splits) => splits.map((k) => fmt(10 ** k, 2));
  const pow10 = (u, v) => (v == null ? "–" : fmt(10 ** v, 2));
  // A run stored before the log bins has step rows with "hist" (linear bins, 0 to 3 C) and no "loghist".
  const logBins = (r) => { const last = r.steps.length ? r.steps[r.steps.length - 1] : null; return !(last && last.hist && !last.loghist); };
  const linearBounds = (r) => (r.started ? r.started.bins.map((e) => [e, e + 0.1]) : []);
  const linearLabels = (r) => (r.started ? r.started.bins.map((e, j, all) => (j === all.length - 1 ? `> ${e}` : `${e.toFixed(1)}–${(e + 0.1).toFixed(1)}`)) : []);
  const telemetry = (r) => (r.started && r.started.telemetry_note) || "";

  // Each chart: the uPlot options, and data(rows) -> [x, y1, ...] (plus the title and a note when empty).
  const CHARTS = {
    "loss-plot": {
      options: () => ({
        series: [{ label: "step" }, line("train", "rgba(31,119,180,0.35)", { width: 1 }), line("train (smoothed)", BLUE, { width: 2.5 }),
          line("validation", ORANGE, { points: { show: true, size: 7 } })],
        axes: [axis("step"), axis("loss (per token)")],
      }),
      data(r) {
        const steps = new Map(r.steps.map((s) => [s.step, s.loss]));
        const evals = new Map(r.evals.map((e) => [e.step, e.val_loss]));
        const x = [...new Set([...steps.keys(), ...evals.keys()])].sort((a, b) => a - b);
        const get = (m) => x.map((s) => (m.has(s) ? m.get(s) : null));
        return { title: "Loss", data: [x, get(steps), get(r.smoothed), get(evals)], note: x.length ? "" : "no steps yet" };
      },
    },
    "epsilon-plot": {
      options: () => ({
        series: [{ label: "step" }, line("planned", GREY, { dash: [6, 4] }), line("spent", GREEN, { width: 3 }),
          line("audit: empirical lower bound (final)", PURPLE, { points: { show: true, size: 8 } }),
          line("audit: interim reading (not a bound)", PURPLE, { dash: [2, 4], width: 1, points: { show: true, size: 4 } }),
          line("target ε", RED, { dash: [2, 3], width: 1.5 })],
        axes: [axis("step"), axis("ε")],
        scales: { x: { time: false }, y: { range: fromZero } },
      }),
      data(r) {
        const planned = new Map((r.started ? r.started.planned : []).map(([s, e]) => [s, e]));
        const spent = new Map(r.steps.map((s) => [s.step, s.epsilon]));
        const audit = new Map(r.steps.filter((s) => s.audit != null).map((s) => [s.step, s.audit]));
        const interim = new Map(r.steps.filter((s) => s.audit_interim != null).map((s) => [s.step, s.audit_interim]));
        const x = [...new Set([...planned.keys(), ...spent.keys()])].sort((a, b) => a - b);
        const target = r.started && r.started.target != null ? r.started.target : null;
        const get = (m) => x.map((s) => (m.has(s) ? m.get(s) : null));
        const nonPrivate = r.steps.length > 0 && r.steps.every((s) => s.epsilon == null) && !audit.size && !interim.size;
        return {
          title: r.started ? r.started.epsilon_title : "Privacy spent ε",
          data: [x, get(planned), get(spent), get(audit), get(interim), x.map(() => target)],
          note: nonPrivate ? "non-private run (noise multiplier 0): ε = ∞" : x.length ? "" : "no steps yet",
        };
      },
    },
    "hist-plot": {
      options: (host) => (host.__wbLog
        ? {
          series: [{ label: "norm / C", value: pow10 }, bars("below C", BLUE), bars("clipped (≥ C)", RED)],
          axes: [axis("norm / C, log scale (outer bars: < 0.01 C, ≥ 100 C)", { splits: decades, values: decadeLabels }), axis("examples")],
          scales: { x: { time: false, range: () => host.__wbRange || [-2.3, 2.3] }, y: { range: fromZero } },
          hooks: { draw: [(u) => vline(u, 0, RED, "clip C")] },
        }
        : {
          series: [{ label: "norm / C" }, bars("below C", BLUE), bars("clipped (≥ C)", RED)],
          axes: [axis("norm / C (last bar: > 3 C)"), axis("examples")],
          scales: { x: { time: false, range: [0, 3.15] }, y: { range: fromZero } },
          hooks: { draw: [(u) => vline(u, 1.0, RED, "clip C")] },
        }),
      data(r, host) {
        const last = r.steps.length ? r.steps[r.steps.length - 1] : null;
        const log = (host.__wbLog = logBins(r));
        const bounds = log ? (r.started ? r.started.log_bins : []) : linearBounds(r);
        if (log && bounds.length) host.__wbRange = [bounds[0][0] - 0.05, bounds[bounds.length - 1][1] + 0.05];
        const x = bounds.map(([lo, hi]) => (lo + hi) / 2), cut = log ? 0 : 1;
        const counts = ((last && (log ? last.loghist : last.hist)) || bounds.map(() => 0)).slice(0, bounds.length);
        const total = counts.reduce((a, b) => a + b, 0);
        return {
          title: last ? last.norm_title : "Per-example gradient norms",
          layout: log ? "log" : "linear",
          caption: telemetry(r),
          data: [x, counts.map((c, i) => (bounds[i][0] < cut - 1e-9 ? c : null)), counts.map((c, i) => (bounds[i][0] >= cut - 1e-9 ? c : null))],
          note: !last ? "no examples yet" : total ? "" : `step ${last.step}: empty batch`,
        };
      },
    },
    "heatmap-plot": {
      options: (host) => ({
        series: [{ label: "step" }, { label: "norm / C", stroke: "transparent", points: { show: false } }],
        axes: [axis("step"), host.__wbLog ? axis("norm / C (log scale)", { splits: decades, values: decadeLabels }) : axis("norm / C")],
        scales: { x: { time: false }, y: { range: host.__wbLog ? () => host.__wbRange || [-2.25, 2.25] : [0, 3.1] } },
        legend: { show: false },
        hooks: {
          draw: [(u) => { paintHeat(u, host.__wbHeat); vline(u, host.__wbLog ? 0 : 1.0, "white", "clip C", true); }],
          setCursor: [(u) => heatReadout(u, host)],
        },
      }),
      data(r, host) {
        const log = (host.__wbLog = logBins(r)), key = log ? "loghist" : "hist";
        const bounds = log ? (r.started ? r.started.log_bins : []) : linearBounds(r);
        if (log && bounds.length) host.__wbRange = [bounds[0][0], bounds[bounds.length - 1][1]];
        const cols = heatColumns(r.steps.filter((s) => s[key] && s[key].some((c) => c > 0)), key);
        cols.bounds = bounds;
        cols.labels = log ? (r.started ? r.started.log_labels : []) : linearLabels(r);
        return {
          title: "Gradient-norm distribution over steps",
          layout: log ? "log" : "linear",
          caption: telemetry(r),
          data: [cols.x, cols.x.map(() => null)],
          heat: cols,
          note: cols.x.length ? "" : "no steps yet",
        };
      },
    },
    "noise-plot": {
      height: 340,
      options: (host) => ({
        series: [{ label: "module", value: (u, v) => (v == null || !host.__wbNames ? "–" : host.__wbNames[v] || "") },
          bars("SNR = ‖S_l‖ / (√d_l σ_l C_l)", GREEN, { scale: "snr", value: pow10, bar: { size: [0.4, 60], align: 1 } }),
          bars("noise std per coordinate σ_l C_l", PURPLE, { scale: "noise", bar: { size: [0.4, 60], align: -1 } })],
        axes: [
          axis("", { values: (u, splits) => splits.map((i) => (host.__wbNames && Number.isInteger(i) ? host.__wbNames[i] || "" : "")), rotate: -45, size: 90 }),
          axis("SNR (log scale)", { scale: "snr", splits: decades, values: decadeLabels }),
          axis("noise std per coordinate", { scale: "noise", side: 1, grid: { show: false } }),
        ],
        scales: {
          x: { time: false, range: (u, min, max) => [min - 0.6, max + 0.6] },
          snr: { range: (u, min, max) => (min == null ? [-1, 1] : [Math.min(0, Math.floor(min)), Math.max(0, Math.ceil(max)) + (Math.ceil(max) === Math.floor(min) ? 1 : 0)]) },
          noise: { range: fromZero },
        },
        hooks: { draw: [(u) => hline(u, "snr", 0, GREY)], setCursor: [(u) => noiseReadout(u, host)] },
      }),
      data(r, host) {
        const m = (host.__wbModules = r.modules);
        host.__wbNames = m ? m.short : [];
        const snr = m ? (m.snr || m.names.map(() => null)).map((v) => (v != null && v > 0 ? Math.log10(v) : null)) : [];
        const noNoise = m && !m.noise.some((v) => v > 0);
        return {
          title: m ? m.title : "Signal to noise per LoRA module",
          caption: telemetry(r),
          data: m ? [m.short.map((_, i) => i), snr, m.noise] : [[], [], []],
          note: !m ? "no steps yet" : snr.some((v) => v != null) ? "" : noNoise ? "SNR: non-private run, no noise" : "SNR: no module sizes (a run stored before)",
        };
      },
    },
  };

  function vline(u, x, color, text, right) {
    const ctx = u.ctx, px = u.valToPos(x, u.series[0].scale || "x", true);
    const horizontal = u.scales.y && u.scales.y.min != null && right;
    ctx.save();
    ctx.strokeStyle = color; ctx.lineWidth = 2 * devicePixelRatio; ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
    ctx.beginPath();
    if (horizontal) {  // the heatmap's C is on its y axis
      const py = u.valToPos(x, "y", true);
      ctx.moveTo(u.bbox.left, py); ctx.lineTo(u.bbox.left + u.bbox.width, py);
    } else {
      ctx.moveTo(px, u.bbox.top); ctx.lineTo(px, u.bbox.top + u.bbox.height);
    }
    ctx.stroke();
    ctx.fillStyle = color; ctx.font = `${12 * devicePixelRatio}px sans-serif`;
    if (horizontal) ctx.fillText(text, u.bbox.left + u.bbox.width - 50 * devicePixelRatio, u.valToPos(x, "y", true) - 4 * devicePixelRatio);
    else ctx.fillText(text, px + 4 * devicePixelRatio, u.bbox.top + 14 * devicePixelRatio);
    ctx.restore();
  }
  // A dotted horizontal line at value v of scale ``scale`` (the noise panel's SNR = 1).
  function hline(u, scale, v, color) {
    if (!u.scales[scale] || u.scales[scale].min == null) return;
    const ctx = u.ctx, py = u.valToPos(v, scale, true);
    ctx.save();
    ctx.strokeStyle = color; ctx.lineWidth = 1.5 * devicePixelRatio; ctx.setLineDash([2 * devicePixelRatio, 3 * devicePixelRatio]);
    ctx.beginPath(); ctx.moveTo(u.bbox.left, py); ctx.lineTo(u.bbox.left + u.bbox.width, py); ctx.stroke();
    ctx.restore();
  }
  function noiseReadout(u, host) {
    const m = host.__wbModules, out = host.querySelector(".wb-readout"), i = u.cursor.idx;
    if (!m || i == null || i < 0 || i >= m.names.length) { out.textContent = ""; return; }
    const get = (key) => (m[key] ? m[key][i] : null);
    out.textContent = `${m.short[i]} · ‖S_l‖ ${fmt(get("grad"))} against noise √d_l σ_l C_l ${fmt(get("noise_norm"))} · SNR ${fmt(get("snr"), 2)}`;
  }
  // Steps x bins (the rows' ``key``: "loghist" or "hist"), summed over adjacent steps beyond HEAT_COLUMNS columns;
  // each column a fraction of its batch.
  function heatColumns(steps, key) {
    const groups = Math.min(steps.length, HEAT_COLUMNS), x = [], frac = [];
    for (let g = 0; g < groups; g++) {
      const from = Math.round((g * steps.length) / groups), to = Math.round(((g + 1) * steps.length) / groups);
      const sum = steps[from][key].map(() => 0);
      for (let k = from; k < to; k++) steps[k][key].forEach((c, j) => { sum[j] += c; });
      const total = sum.reduce((a, b) => a + b, 0);
      x.push(steps[to - 1].step); frac.push(sum.map((c) => c / total));
    }
    return { x, frac };
  }
  function paintHeat(u, heat) {
    if (!heat || !heat.x.length) return;
    const ctx = u.ctx, n = heat.x.length, bins = heat.frac[0].length;
    const dx = n > 1 ? (heat.x[n - 1] - heat.x[0]) / (n - 1) : 1;
    ctx.save();
    ctx.beginPath(); ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height); ctx.clip();
    for (let i = 0; i < n; i++) {
      const x0 = u.valToPos(heat.x[i] - dx / 2, "x", true), x1 = u.valToPos(heat.x[i] + dx / 2, "x", true);
      for (let j = 0; j < bins; j++) {
        const f = heat.frac[i][j];
        if (!(f > 0)) continue;
        if (!heat.bounds[j]) continue;
        const y0 = u.valToPos(heat.bounds[j][0], "y", true), y1 = u.valToPos(heat.bounds[j][1], "y", true);
        ctx.fillStyle = viridis(Math.sqrt(f));
        ctx.fillRect(x0, y1, Math.max(x1 - x0, 1), Math.max(y0 - y1, 1));
      }
    }
    ctx.restore();
  }
  function heatReadout(u, host) {
    const heat = host.__wbHeat, out = host.querySelector(".wb-readout");
    const { left, top } = u.cursor;
    if (!heat || !heat.x.length || left == null || left < 0) { out.textContent = ""; return; }
    const step = u.posToVal(left, "x"), norm = u.posToVal(top, "y");
    let i = 0;
    heat.x.forEach((s, k) => { if (Math.abs(s - step) < Math.abs(heat.x[i] - step)) i = k; });
    let j = heat.bounds.findIndex(([lo, hi]) => norm >= lo && norm < hi);
    if (j < 0) j = norm < (heat.bounds.length ? heat.bounds[0][0] : 0) ? 0 : heat.frac[i].length - 1;
    out.textContent = `step ${heat.x[i]} · norm ${heat.labels[j] || ""} C · ${Math.round(100 * heat.frac[i][j])}% of batch`;
  }

  // The stream's key from Gradio's API (workbench/app/live.py, stream_key_api), which answers logged-in pages
  // only: POST <root>/gradio_api/call/NAME, then GET .../NAME/EVENT_ID ("event: complete", "data: [key]").
  async function fetchKey(url) {
    const call = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: '{"data":[]}' });
    if (!call.ok) throw new Error(`stream key: HTTP ${call.status}`);
    const { event_id: id } = await call.json();
    const text = await (await fetch(`${url}/${id}`)).text();
    const data = /event: complete\r?\ndata: (.*)/.exec(text);
    if (!data) throw new Error(`stream key: ${text.slice(0, 200)}`);
    return JSON.parse(data[1])[0];
  }

  function mount(element, streamUrl, keyUrl) {
    const state = { run: undefined, follow: true, seq: 0, nonce: null, rows: empty() };
    const charts = {};  // id -> { host, plot, dirty, visible, zoomed }
    let source = null, retry = null, timer = null, lastDraw = 0, key = null, keyCall = null, epoch = 0;

    // smoothed: step -> smoothed train loss, as the server sends it (present.live.smoothed_loss)
    function empty() { return { started: null, steps: [], evals: [], modules: null, smoothed: new Map() }; }
    for (const id of Object.keys(CHARTS)) {
      const host = element.querySelector("#" + id);
      const title = document.createElement("div"), note = document.createElement("div"), readout = document.createElement("div");
      const caption = document.createElement("div");  // the telemetry note (present.diagnostics.TELEMETRY_NOTE)
      title.className = "wb-chart-title"; note.className = "wb-note"; readout.className = "wb-readout"; caption.className = "wb-telemetry";
      caption.style.display = "none";
      host.append(title, caption, readout, note);
      // width: the host's, kept by the ResizeObserver (reading clientWidth in draw() would force a layout per chart)
      const chart = (charts[id] = { host, title, caption, note, plot: null, layout: null, dirty: true, visible: false, zoomed: false, width: 0 });
      new IntersectionObserver((entries) => {
        chart.visible = entries[entries.length - 1].isIntersecting;
        if (chart.visible && chart.dirty) schedule();
      }, { rootMargin: "200px" }).observe(host);
      new ResizeObserver((entries) => {
        chart.width = Math.floor(entries[entries.length - 1].contentRect.width);
        if (chart.plot && chart.width) chart.plot.setSize({ width: chart.width, height: CHARTS[id].height || 280 });
        else if (chart.width) schedule();
      }).observe(host);
    }
    const header = element.querySelector("#run-header"), table = element.querySelector("#generations table");

    function draw() {
      clearTimeout(timer); timer = null; lastDraw = performance.now();
      for (const [id, chart] of Object.entries(charts)) {
        if (!chart.dirty || !chart.visible || !chart.width) continue;
        const spec = CHARTS[id], out = spec.data(state.rows, chart.host);
        chart.host.__wbHeat = out.heat;
        if (chart.plot && (out.layout || null) !== chart.layout) {  // another axis (e.g. a run stored before the log bins)
          chart.plot.destroy(); chart.plot = null; chart.zoomed = false;
        }
        chart.layout = out.layout || null;
        if (!chart.plot) {
          const opts = Object.assign({ width: chart.width, height: spec.height || 280, scales: { x: { time: false } },
            cursor: { drag: { x: true, y: false } }, legend: { live: true } }, spec.options(chart.host));
          opts.hooks = Object.assign({}, opts.hooks, { setSelect: [() => { chart.zoomed = true; }] });
          chart.plot = new uPlot(opts, out.data, chart.host);
          chart.plot.over.addEventListener("dblclick", () => { chart.zoomed = false; });
        } else {
          chart.plot.setData(out.data, !chart.zoomed);
        }
        chart.title.textContent = out.title;
        if (chart.caption.textContent !== (out.caption || "")) chart.caption.textContent = out.caption || "";
        chart.caption.style.display = out.caption ? "" : "none";
        chart.note.textContent = out.note; chart.note.style.display = out.note ? "" : "none";
        chart.host.__wbPoints = out.data.slice(1).map((ys) => ys.filter((y) => y != null).length);
        chart.host.dataset.draws = String(Number(chart.host.dataset.draws || 0) + 1);
        chart.dirty = false;
      }
    }
    // A step's update is drawn in the task that brought it (header and charts: one rendering update, one
    // burst of browser work per step), unless the last draw was under REDRAW_MS ago.
    function schedule() {
      if (timer !== null) return;
      const wait = REDRAW_MS - (performance.now() - lastDraw);
      if (wait <= 0) draw();
      else timer = setTimeout(draw, wait);
    }
    function touch() { for (const chart of Object.values(charts)) chart.dirty = true; schedule(); }

    function generations() {
      const rows = [];
      for (const e of state.rows.evals) for (const g of e.generations) rows.push([e.step, g.prompt, g.output]);
      table.replaceChildren();
      const head = table.insertRow();
      for (const h of ["step", "prompt", "output"]) { const th = document.createElement("th"); th.textContent = h; head.appendChild(th); }
      for (const row of rows.slice(-200).reverse()) {
        const tr = table.insertRow();
        for (const cell of row) tr.insertCell().textContent = String(cell);
      }
    }
    function apply(update) {
      if (update.reset || update.run !== state.run) { state.rows = empty(); state.run = update.run; }
      state.seq = update.seq;
      const r = state.rows;
      if (update.started) r.started = update.started;
      if (update.steps.length) r.steps.push(...update.steps);
      if (update.smoothed) {
        if (update.smoothed.reset) r.smoothed.clear();
        for (const [step, value] of update.smoothed.points) r.smoothed.set(step, value);
      }
      if (update.modules) r.modules = update.modules;
      if (update.evals.length) { r.evals.push(...update.evals); generations(); }
      if (update.reset && !update.evals.length) generations();
      if (update.header !== header.__wbHtml) header.innerHTML = header.__wbHtml = update.header;  // built and escaped by the server (live.header_html)
      if (update.reset || update.steps.length || update.evals.length || update.started || !r.steps.length) touch();
      element.dataset.run = update.run || "";
      element.dataset.status = update.status || "";
    }

    function later() { clearTimeout(retry); retry = setTimeout(() => { retry = null; connect(); }, 1000); }
    function connect() {
      if (source || document.hidden) return;  // a hidden tab holds no stream (browsers allow 6 per host)
      const mine = epoch;
      if (!key) {  // first the key (once per page, again after a stream that never opened)
        keyCall = keyCall || fetchKey(keyUrl).finally(() => { keyCall = null; });
        keyCall.then((k) => { key = k; if (mine === epoch) connect(); }, () => { if (mine === epoch) later(); });
        return;
      }
      const params = new URLSearchParams({ run: state.run || "", after: String(state.seq), follow: state.follow ? "1" : "0", key });
      const opened = { yes: false };
      source = new EventSource(streamUrl + "?" + params);
      source.onopen = () => { opened.yes = true; };
      source.addEventListener("update", (event) => apply(JSON.parse(event.data)));
      // the stream ended (its bound, or the server restarts): the next one, from the rows the page holds
      source.onerror = () => { close(); if (!opened.yes) key = null; later(); };
    }
    function close() {
      epoch++;
      if (source) source.close();
      source = null;
      clearTimeout(retry); retry = null;
    }
    document.addEventListener("visibilitychange", () => (document.hidden ? close() : connect()));

    return {
      // A new value of the dashboard component (live.selection_value): show that run, from its first row.
      select(value) {
        const v = value ? (typeof value === "string" ? JSON.parse(value) : value) : { run: null, follow: true };
        if (v.nonce != null && v.nonce === state.nonce) return;
        state.nonce = v.nonce;
        close();
        state.run = v.run === undefined ? null : v.run; state.follow = v.follow !== false; state.seq = 0; state.rows = empty();
        for (const chart of Object.values(charts)) chart.zoomed = false;
        touch();
        connect();
      },
    };
  }
  window.__wbDashboard = { mount };
})();
