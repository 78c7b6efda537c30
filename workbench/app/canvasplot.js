// The live path's light renderer: draws a Plotly figure's JSON (the same workbench.present figure
// that Plotly draws everywhere else) on one <canvas>, for the subset of Plotly that the Train tab's
// live panels use: scatter (lines, markers), bar, heatmap with its colour bar, line and rect shapes,
// annotations, a title, a legend, linear and category axes, stacked subplots.  Anything else is
// refused (`unsupported` says what) and the panel draws with Plotly.
//
// draw(canvas, figure, width) -> {points: drawn per trace, ranges: {xaxis: [lo, hi], ...}}.
//
// Why our own: a Plotly.react of these five panels costs a watching Chromium 0.1-0.2 s of CPU a step
// (an SVG document rebuilt and laid out), and on a 2-core machine where the same cores train that
// took ~10 % off training (docs/app.md).  No chart library draws Plotly's figure format to a canvas;
// this one does that for the panels' subset in a few milliseconds and no layout at all.  Plotly stays
// for interaction: the panel under the pointer, and every panel once the run is not running.
(() => {
  "use strict";
  const FONT = '"Open Sans", verdana, arial, sans-serif';
  const INK = "#444";
  const COLORWAY = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const TYPED = { f8: Float64Array, f4: Float32Array, i4: Int32Array, u4: Uint32Array, i2: Int16Array,
                  u2: Uint16Array, i1: Int8Array, u1: Uint8Array, u1c: Uint8ClampedArray };

  // Plotly's JSON arrays: plain lists, or {dtype, bdata (base64), shape} (plotly.py >= 6).
  function values(v) {
    if (v == null) return [];
    if (Array.isArray(v)) return v;
    if (typeof v === "object" && typeof v.bdata === "string") {
      const T = TYPED[v.dtype];
      if (!T) throw new Error("array dtype " + v.dtype);
      const bin = atob(v.bdata), bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      const flat = new T(bytes.buffer);
      const shape = v.shape == null ? [] : String(v.shape).split(",").map(Number);
      if (shape.length === 2) {
        const rows = [];
        for (let r = 0; r < shape[0]; r++) rows.push(Array.from(flat.subarray(r * shape[1], (r + 1) * shape[1])));
        return rows;
      }
      return Array.from(flat);
    }
    return [v];
  }

  // null when this renderer can draw the figure, else what it cannot draw
  function unsupported(fig) {
    const layout = fig.layout || {};
    for (const t of fig.data || []) {
      const type = t.type || "scatter";
      if (!["scatter", "bar", "heatmap"].includes(type)) return "trace type " + type;
      if (type === "scatter" && t.fill && t.fill !== "none") return "scatter fill";
      if (type === "bar" && t.orientation === "h") return "horizontal bars";
      if (t.visible === false || t.visible === "legendonly") return "hidden traces";
    }
    if (layout.barmode && !["group", "overlay"].includes(layout.barmode)) return "barmode " + layout.barmode;
    for (const [key, axis] of Object.entries(layout)) {
      if (!/^[xy]axis\d*$/.test(key) || !axis) continue;
      if (axis.type && !["linear", "category", "-"].includes(axis.type)) return key + " type " + axis.type;
      if (axis.autorange === "reversed") return key + " reversed";
    }
    for (const s of layout.shapes || []) if (!["line", "rect"].includes(s.type || "rect")) return "shape " + s.type;
    for (const a of layout.annotations || []) if (a.showarrow) return "annotation arrows";
    return null;
  }

  function axisKey(ref, letter) {  // "x2" -> "xaxis2"
    const n = (ref || letter).slice(1);
    return letter + "axis" + n;
  }

  // Plotly's own rule (axes.js, autoTicks): a rough step of span / count, rounded up to 2, 5 or 10
  // times its power of ten
  function niceStep(span, count) {
    const raw = span / Math.max(count, 1), base = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / base;
    return (f <= 2 ? 2 : f <= 5 ? 5 : 10) * base;
  }

  function tickText(v, step) {
    const a = Math.abs(v);
    if (a >= 1e4 && step >= 1000) return (v / 1000).toLocaleString("en-US", { maximumFractionDigits: 3 }) + "k";
    const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    let text = v.toFixed(Math.min(digits, 10));
    if (text.includes(".")) text = text.replace(/0+$/, "").replace(/\.$/, "");  // 1.0 -> 1, as Plotly
    return text.replace("-", "\u2212");
  }

  function parseColor(c) {
    if (c[0] === "#") {
      const h = c.length === 4 ? c.slice(1).split("").map((d) => d + d).join("") : c.slice(1, 7);
      return [parseInt(h.slice(0, 2), 16), parseInt(h.slice(2, 4), 16), parseInt(h.slice(4, 6), 16)];
    }
    const m = c.match(/[\d.]+/g) || ["0", "0", "0"];
    return m.slice(0, 3).map(Number);
  }

  function colorAt(scale, f) {  // scale: [[0, colour], ..., [1, colour]] (parsed)
    f = Math.min(1, Math.max(0, f));
    for (let i = 1; i < scale.length; i++) {
      if (f <= scale[i][0]) {
        const [f0, c0] = scale[i - 1], [f1, c1] = scale[i], w = f1 > f0 ? (f - f0) / (f1 - f0) : 0;
        return [0, 1, 2].map((k) => Math.round(c0[k] + w * (c1[k] - c0[k])));
      }
    }
    return scale[scale.length - 1][1];
  }

  function dashOf(dash, width) {  // Plotly's dash patterns (drawing/index.js: dashStyle)
    const d = Math.max(width, 3);
    return { dot: [d, d], dash: [3 * d, 3 * d], longdash: [5 * d, 5 * d], dashdot: [3 * d, d, d, d],
             longdashdot: [5 * d, 2 * d, d, 2 * d] }[dash] || [];
  }

  function plainText(s) {  // Plotly's pseudo-HTML: line breaks kept, tags dropped
    return String(s == null ? "" : s).split(/<br\s*\/?>/i).map((line) => line.replace(/<[^>]*>/g, "")
      .replace(/&amp;/g, "&").replace(/&lt;/g, "<").replace(/&gt;/g, ">"));
  }

  function font(size, weight) { return (weight || "") + " " + size + "px " + FONT; }

  // The figure's axes: kind (linear | category), domain, range, and their pixel mapping.
  function buildAxes(fig, box, fontSize) {
    const layout = fig.layout || {}, axes = {};
    const get = (key, letter) => {
      if (!axes[key]) {
        const spec = layout[key] || {};
        axes[key] = { key, letter, spec, domain: spec.domain || [0, 1], kind: spec.type === "category" ? "category" : null,
                      categories: [], lo: Infinity, hi: -Infinity, pad: 0, zero: false };
      }
      return axes[key];
    };
    get("xaxis", "x"); get("yaxis", "y");
    const traces = (fig.data || []).map((t, i) => {
      const type = t.type || "scatter", xa = get(axisKey(t.xaxis, "x"), "x"), ya = get(axisKey(t.yaxis, "y"), "y");
      const tr = { t, i, type, xa, ya, x: values(t.x), y: values(t.y), z: type === "heatmap" ? values(t.z) : null };
      for (const [a, vs] of [[xa, tr.x], [ya, tr.y]]) {
        if (a.kind === null && vs.some((v) => typeof v === "string")) a.kind = "category";
      }
      return tr;
    });
    for (const a of Object.values(axes)) if (a.kind === null) a.kind = "linear";
    const pos = (a, v) => {
      if (a.kind !== "category") return v == null ? NaN : Number(v);
      let k = a.categories.indexOf(String(v));
      if (k < 0) { a.categories.push(String(v)); k = a.categories.length - 1; }
      return k;
    };
    const extend = (a, v) => { if (Number.isFinite(v)) { a.lo = Math.min(a.lo, v); a.hi = Math.max(a.hi, v); } };
    const bars = traces.filter((tr) => tr.type === "bar");
    for (const tr of traces) {
      tr.px = tr.x.map((v) => pos(tr.xa, v));
      tr.py = tr.y.map((v) => pos(tr.ya, v));
      if (tr.type === "scatter") {
        if (!tr.x.length) tr.px = tr.y.map((_, k) => k);
        tr.px.forEach((v) => extend(tr.xa, v));
        tr.py.forEach((v) => extend(tr.ya, v));
        const mode = tr.t.mode || "lines+markers";
        if (mode.includes("markers")) { tr.xa.pad = Math.max(tr.xa.pad, ((tr.t.marker || {}).size || 6) / 2 + 2); }
        tr.ya.soft = true;
      } else if (tr.type === "bar") {
        const group = bars.filter((b) => b.xa === tr.xa && b.ya === tr.ya);
        const n = layout.barmode === "overlay" ? 1 : group.length, slot = layout.barmode === "overlay" ? 0 : group.indexOf(tr);
        const sorted = tr.px.filter(Number.isFinite).slice().sort((p, q) => p - q);
        let spacing = tr.xa.kind === "category" ? 1 : Infinity;
        for (let k = 1; k < sorted.length; k++) if (sorted[k] > sorted[k - 1]) spacing = Math.min(spacing, sorted[k] - sorted[k - 1]);
        if (!Number.isFinite(spacing)) spacing = 1;
        const widths = tr.t.width == null ? null : values(tr.t.width);
        const full = spacing * (1 - (layout.bargap == null ? 0.2 : layout.bargap));
        tr.bars = tr.px.map((x, k) => {
          const w = widths ? (widths.length > 1 ? widths[k] : widths[0]) : full / n;
          const x0 = x - (widths ? w / 2 : full / 2 - slot * w);
          return [x0, x0 + w];
        });
        tr.bars.forEach(([a, b]) => { extend(tr.xa, a); extend(tr.xa, b); });
        if (tr.xa.kind === "category") { extend(tr.xa, -0.5); extend(tr.xa, tr.xa.categories.length - 0.5); }
        tr.py.forEach((v) => extend(tr.ya, v));
        tr.ya.zero = true; tr.ya.soft = true;
      } else {  // heatmap: cell edges half-way between the centres
        const edges = (c) => c.map((v, k) => k === 0 ? v - ((c[1] ?? v + 1) - v) / 2 : (v + c[k - 1]) / 2)
          .concat([c.length > 1 ? c[c.length - 1] + (c[c.length - 1] - c[c.length - 2]) / 2 : c[0] + 0.5]);
        if (!tr.px.length) tr.px = (tr.z[0] || []).map((_, k) => k);
        if (!tr.py.length) tr.py = tr.z.map((_, k) => k);
        tr.ex = edges(tr.px); tr.ey = edges(tr.py);
        tr.ex.forEach((v) => extend(tr.xa, v)); tr.ey.forEach((v) => extend(tr.ya, v));
      }
    }
    // shapes in data units count towards the range, as in Plotly (the target ε line)
    for (const s of layout.shapes || []) {
      for (const letter of ["x", "y"]) {
        const ref = s[letter + "ref"] || letter;
        if (ref === "paper" || ref.endsWith(" domain")) continue;
        const a = axes[axisKey(ref, letter)];
        if (a && a.kind === "linear") { extend(a, Number(s[letter + "0"])); extend(a, Number(s[letter + "1"])); }
      }
    }
    // ranges: given, else the data's (bars from zero, a little room above soft axes)
    for (const a of Object.values(axes)) {
      let lo = a.lo, hi = a.hi;
      if (!Number.isFinite(lo)) { lo = a.kind === "category" ? -0.5 : 0; hi = a.kind === "category" ? 0.5 : 1; }
      if (a.zero || a.spec.rangemode === "tozero") { lo = Math.min(lo, 0); hi = Math.max(hi, 0); }
      if (hi === lo) { lo -= 1; hi += 1; }
      if (a.soft && a.letter === "y") {
        const room = (hi - lo) * 0.05;
        if (!(a.zero || a.spec.rangemode === "tozero") || lo < 0) lo -= room;
        hi += room;
      }
      a.range = Array.isArray(a.spec.range) && a.spec.range.length === 2 ? a.spec.range.map(Number) : [lo, hi];
    }
    for (const a of Object.values(axes)) {  // matches: share the other axis's range
      const other = a.spec.matches && axes[axisKey(a.spec.matches, a.letter)];
      if (other) {
        const r = [Math.min(a.range[0], other.range[0]), Math.max(a.range[1], other.range[1])];
        a.range = other.range = r;
      }
    }
    for (const a of Object.values(axes)) {
      const [d0, d1] = a.domain;
      if (a.letter === "x") { a.p0 = box.x0 + d0 * (box.x1 - box.x0); a.p1 = box.x0 + d1 * (box.x1 - box.x0); }
      else { a.p0 = box.y1 - d0 * (box.y1 - box.y0); a.p1 = box.y1 - d1 * (box.y1 - box.y0); }
      const [r0, r1] = a.range, p0 = a.p0, p1 = a.p1;
      let padLo = 0, padHi = 0;
      if (a.pad && a.letter === "x" && !Array.isArray(a.spec.range)) {  // room for markers at the ends, in pixels
        const per = (r1 - r0) / Math.max(1, Math.abs(p1 - p0) - 2 * a.pad);
        padLo = padHi = a.pad * per;
      }
      const lo = r0 - padLo, hi = r1 + padHi;
      a.range = [lo, hi];
      a.map = (v) => p0 + (v - lo) / (hi - lo) * (p1 - p0);
    }
    return { axes, traces, fontSize };
  }

  function ticksOf(a, fontSize) {
    if (a.spec.showticklabels === false && a.spec.showgrid === false) return [];
    if (a.kind === "category") {
      const n = a.categories.length, room = Math.abs(a.p1 - a.p0) / Math.max(n, 1);
      const every = Math.max(1, Math.ceil((fontSize + 2) / room));
      return a.categories.map((c, k) => ({ v: k, text: c })).filter((_, k) => k % every === 0);
    }
    const [lo, hi] = a.range, len = Math.abs(a.p1 - a.p0);
    const count = Math.min(9, Math.max(4, len / (a.letter === "x" ? 80 : 40))) + 1;  // Plotly's (axes.js, prepTicks)
    const step = niceStep(hi - lo, count);
    const out = [];
    for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
      const r = Math.abs(v) < step * 1e-9 ? 0 : v;
      out.push({ v: r, text: tickText(r, step) });
    }
    return out;
  }

  function draw(canvas, fig, cssWidth) {
    const layout = fig.layout || {}, fontSize = (layout.font || {}).size || 12;
    const W = Math.max(50, Math.round(cssWidth)), H = Math.round(layout.height || 450);
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
      canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    }
    canvas.style.width = W + "px"; canvas.style.height = H + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = layout.paper_bgcolor || "white";
    ctx.fillRect(0, 0, W, H);
    const m = Object.assign({ l: 80, r: 80, t: 100, b: 80 }, layout.margin || {});
    const heat = (fig.data || []).find((t) => t.type === "heatmap" && t.showscale !== false);
    const box = { x0: m.l, x1: W - m.r - (heat ? 75 : 0), y0: m.t, y1: H - m.b };
    const { axes, traces } = buildAxes(fig, box, fontSize);
    const counts = [];

    // grid, zero lines, axis lines, ticks and titles
    const bg = layout.plot_bgcolor || "white";
    ctx.fillStyle = bg; ctx.fillRect(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0);
    const cross = (a) => {  // the other axis of a's subplot: where a's line and grid run
      const anchor = a.spec.anchor && a.spec.anchor !== "free" ? axes[axisKey(a.spec.anchor, a.letter === "x" ? "y" : "x")] : null;
      if (anchor) return anchor;
      return Object.values(axes).find((b) => b.letter !== a.letter) || a;
    };
    const ticksFor = {};
    for (const a of Object.values(axes)) {
      const ticks = ticksFor[a.key] = ticksOf(a, fontSize), o = cross(a);
      ctx.lineWidth = 1;
      for (const { v } of ticks) {
        if (a.kind === "category" || a.spec.showgrid === false) continue;
        const p = Math.round(a.map(v)) + 0.5;
        const isZero = v === 0 && a.spec.zeroline !== false;
        ctx.strokeStyle = isZero ? (a.spec.zerolinecolor || "#444") : (a.spec.gridcolor || "#eee");
        ctx.beginPath();
        if (a.letter === "x") { ctx.moveTo(p, o.p0); ctx.lineTo(p, o.p1); } else { ctx.moveTo(o.p0, p); ctx.lineTo(o.p1, p); }
        ctx.stroke();
      }
    }

    // traces, clipped to their subplot
    const clip = (tr) => {
      ctx.save(); ctx.beginPath();
      ctx.rect(Math.min(tr.xa.p0, tr.xa.p1), Math.min(tr.ya.p0, tr.ya.p1), Math.abs(tr.xa.p1 - tr.xa.p0), Math.abs(tr.ya.p1 - tr.ya.p0));
      ctx.clip();
    };
    for (const tr of traces) {
      const t = tr.t, color = (t.line && t.line.color) || (t.marker && typeof t.marker.color === "string" && t.marker.color) || COLORWAY[tr.i % 10];
      let n = 0;
      clip(tr);
      ctx.globalAlpha = t.opacity == null ? 1 : t.opacity;
      if (tr.type === "scatter") {
        const mode = t.mode || "lines+markers", line = t.line || {};
        if (mode.includes("lines")) {
          ctx.strokeStyle = color; ctx.lineWidth = line.width == null ? 2 : line.width;
          ctx.setLineDash(dashOf(line.dash, ctx.lineWidth)); ctx.lineJoin = "round";
          ctx.beginPath();
          let pen = false;
          for (let k = 0; k < tr.px.length; k++) {
            const x = tr.px[k], y = tr.py[k];
            if (!Number.isFinite(x) || !Number.isFinite(y)) { pen = false; continue; }
            const X = tr.xa.map(x), Y = tr.ya.map(y);
            if (pen) ctx.lineTo(X, Y); else ctx.moveTo(X, Y);
            pen = true; n++;
          }
          ctx.stroke(); ctx.setLineDash([]);
        }
        if (mode.includes("markers")) {
          const mk = t.marker || {}, r = (mk.size || 6) / 2;
          ctx.fillStyle = typeof mk.color === "string" ? mk.color : color;
          let drawn = 0;
          for (let k = 0; k < tr.px.length; k++) {
            const x = tr.px[k], y = tr.py[k];
            if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
            ctx.beginPath(); ctx.arc(tr.xa.map(x), tr.ya.map(y), r, 0, 2 * Math.PI); ctx.fill(); drawn++;
          }
          n = Math.max(n, drawn);
        }
      } else if (tr.type === "bar") {
        const mk = t.marker || {}, colors = Array.isArray(mk.color) ? mk.color : null;
        const base = tr.ya.map(0);
        for (let k = 0; k < tr.bars.length; k++) {
          const y = tr.py[k];
          if (!Number.isFinite(y)) continue;
          const [a, b] = tr.bars[k], X0 = tr.xa.map(a), X1 = tr.xa.map(b), Y = tr.ya.map(y);
          ctx.fillStyle = colors ? colors[k % colors.length] : (typeof mk.color === "string" ? mk.color : color);
          ctx.fillRect(Math.min(X0, X1), Math.min(base, Y), Math.max(Math.abs(X1 - X0), 0.5), Math.abs(Y - base));
          n++;
        }
      } else {
        const z = tr.z, flat = z.flat().filter(Number.isFinite);
        const zmin = t.zmin != null ? t.zmin : Math.min(...flat), zmax = t.zmax != null ? t.zmax : Math.max(...flat);
        const scale = (t.colorscale || [[0, "#440154"], [1, "#fde725"]]).map(([f, c]) => [Number(f), parseColor(c)]);
        tr.scale = scale; tr.zr = [zmin, zmax];
        const cols = tr.px.length, rows = tr.py.length;
        if (!cols || !rows) { ctx.restore(); counts[tr.i] = 0; continue; }
        const img = document.createElement("canvas"); img.width = cols; img.height = rows;
        const ictx = img.getContext("2d"), data = ictx.createImageData(cols, rows);
        for (let r = 0; r < rows; r++) {
          for (let c = 0; c < cols; c++) {
            const v = (z[r] || [])[c], o = ((rows - 1 - r) * cols + c) * 4;  // row 0 at the bottom
            if (!Number.isFinite(v)) continue;
            const rgb = colorAt(scale, zmax > zmin ? (v - zmin) / (zmax - zmin) : 0);
            data.data[o] = rgb[0]; data.data[o + 1] = rgb[1]; data.data[o + 2] = rgb[2]; data.data[o + 3] = 255;
          }
        }
        n = cols;  // points of a heatmap: its columns, as Plotly counts its x
        ictx.putImageData(data, 0, 0);
        ctx.imageSmoothingEnabled = false;
        // uniform cells as one scaled image (the live heatmap's are); otherwise one column at a time
        const X0 = tr.xa.map(tr.ex[0]), X1 = tr.xa.map(tr.ex[cols]), Y0 = tr.ya.map(tr.ey[rows]), Y1 = tr.ya.map(tr.ey[0]);
        const even = (e) => e.every((v, k) => k < 2 || Math.abs((v - e[k - 1]) - (e[1] - e[0])) <= 1e-6 * Math.abs(e[1] - e[0]) + 1e-12);
        if (even(tr.ex) && even(tr.ey)) ctx.drawImage(img, X0, Y0, X1 - X0, Y1 - Y0);
        else {
          for (let c = 0; c < cols; c++) {
            const a = tr.xa.map(tr.ex[c]), b = tr.xa.map(tr.ex[c + 1]);
            for (let r = 0; r < rows; r++) {
              const p = tr.ya.map(tr.ey[r]), q = tr.ya.map(tr.ey[r + 1]);
              ctx.drawImage(img, c, rows - 1 - r, 1, 1, a, q, b - a + 0.5, p - q + 0.5);
            }
          }
        }
      }
      ctx.globalAlpha = 1;
      ctx.restore();
      counts[tr.i] = n;
    }

    // shapes and annotations: x/y in data units of an axis, or "paper" (0..1 of the plot area)
    const px = (ref, v, letter) => {  // no ref: the first axis, as in Plotly
      ref = ref || letter;
      if (ref === "paper" || ref.endsWith(" domain")) {
        return letter === "x" ? box.x0 + v * (box.x1 - box.x0) : box.y1 - v * (box.y1 - box.y0);
      }
      const a = axes[axisKey(ref, letter)];
      return a ? a.map(a.kind === "category" && typeof v === "string" ? a.categories.indexOf(v) : Number(v)) : NaN;
    };
    for (const s of layout.shapes || []) {
      const X0 = px(s.xref, s.x0, "x"), X1 = px(s.xref, s.x1, "x"), Y0 = px(s.yref, s.y0, "y"), Y1 = px(s.yref, s.y1, "y");
      const line = s.line || {}, width = line.width == null ? 2 : line.width;
      ctx.globalAlpha = s.opacity == null ? 1 : s.opacity;
      if ((s.type || "rect") === "rect" && s.fillcolor) { ctx.fillStyle = s.fillcolor; ctx.fillRect(Math.min(X0, X1), Math.min(Y0, Y1), Math.abs(X1 - X0), Math.abs(Y1 - Y0)); }
      if (width > 0) {
        ctx.strokeStyle = line.color || INK; ctx.lineWidth = width; ctx.setLineDash(dashOf(line.dash, width));
        ctx.beginPath();
        if (s.type === "line") { ctx.moveTo(X0, Y0); ctx.lineTo(X1, Y1); } else ctx.rect(X0, Y0, X1 - X0, Y1 - Y0);
        ctx.stroke(); ctx.setLineDash([]);
      }
      ctx.globalAlpha = 1;
    }

    // axis lines, tick labels, axis titles
    ctx.textBaseline = "middle";
    for (const a of Object.values(axes)) {
      const o = cross(a), edge = a.letter === "x" ? Math.max(o.p0, o.p1) : Math.min(o.p0, o.p1);
      if (a.spec.showline) {
        ctx.strokeStyle = a.spec.linecolor || INK; ctx.lineWidth = a.spec.linewidth || 1;
        ctx.beginPath();
        const e = Math.round(edge) + 0.5;
        if (a.letter === "x") { ctx.moveTo(a.p0, e); ctx.lineTo(a.p1, e); } else { ctx.moveTo(e, a.p0); ctx.lineTo(e, a.p1); }
        ctx.stroke();
      }
      ctx.fillStyle = INK; ctx.font = font(fontSize);
      let depth = 0;  // how far the tick labels reach from the axis line
      if (a.spec.showticklabels !== false) {
        const angle = (a.spec.tickangle || 0) * Math.PI / 180;
        for (const { v, text } of ticksFor[a.key]) {
          const p = a.map(v);
          if (a.letter === "x") {
            if (angle) {
              ctx.save(); ctx.translate(p, edge + 6); ctx.rotate(angle); ctx.textAlign = "right";
              ctx.fillText(text, 0, 0); ctx.restore();
              depth = Math.max(depth, Math.abs(Math.sin(angle)) * ctx.measureText(text).width + 10);
            } else { ctx.textAlign = "center"; ctx.fillText(text, p, edge + 6 + fontSize / 2); depth = Math.max(depth, fontSize + 8); }
          } else {
            ctx.textAlign = "right"; ctx.fillText(text, edge - 4, p);
            depth = Math.max(depth, ctx.measureText(text).width + 8);
          }
        }
      }
      const title = plainText(a.spec.title && (a.spec.title.text ?? a.spec.title)).join(" ");
      if (title && typeof title === "string") {
        ctx.font = font(((a.spec.title && a.spec.title.font) || {}).size || Math.round(fontSize * 1.2));
        ctx.textAlign = "center";
        if (a.letter === "x") ctx.fillText(title, (a.p0 + a.p1) / 2, Math.min(H - fontSize / 2 - 2, edge + depth + 12));
        else {
          ctx.save(); ctx.translate(Math.max(fontSize / 2 + 2, edge - depth - 10), (a.p0 + a.p1) / 2); ctx.rotate(-Math.PI / 2);
          ctx.fillText(title, 0, 0); ctx.restore();
        }
      }
    }

    // the colour bar of a heatmap: right of the plot, 0.8 of its height unless told
    const heatTrace = heat && traces.find((tr) => tr.t === heat);
    if (heatTrace && heatTrace.scale) {
      const cb = heat.colorbar || {}, len = (cb.len == null ? 1 : cb.len) * (box.y1 - box.y0);
      const top = (box.y0 + box.y1) / 2 - len / 2, left = box.x1 + 14, thick = 24;
      const grad = ctx.createLinearGradient(0, top + len, 0, top);
      for (const [f, c] of heatTrace.scale) grad.addColorStop(f, "rgb(" + c.join(",") + ")");
      ctx.fillStyle = grad; ctx.fillRect(left, top, thick, len);
      const [z0, z1] = heatTrace.zr, step = niceStep(z1 - z0 || 1, 5);
      ctx.fillStyle = INK; ctx.font = font(fontSize); ctx.textAlign = "left";
      for (let v = Math.ceil(z0 / step - 1e-9) * step; v <= z1 + 1e-9 * step; v += step) {
        ctx.fillText(tickText(v, step), left + thick + 4, top + len - (v - z0) / ((z1 - z0) || 1) * len);
      }
      const t = plainText(cb.title && (cb.title.text ?? cb.title)).join(" ");
      if (t) { ctx.font = font(Math.round(fontSize * 1.2)); ctx.textBaseline = "bottom"; ctx.fillText(t, left, top - 6); ctx.textBaseline = "middle"; }
    }

    // annotations
    for (const a of layout.annotations || []) {
      const lines = plainText(a.text), size = (a.font || {}).size || fontSize;
      ctx.font = font(size); ctx.fillStyle = (a.font || {}).color || INK;
      const X = px(a.xref, a.x, "x"), Y = px(a.yref, a.y, "y");
      if (!Number.isFinite(X) || !Number.isFinite(Y)) continue;
      const lh = size * 1.3, h = lh * lines.length + 2;
      const xa = a.xanchor || "auto", ya = a.yanchor || "auto";
      ctx.textAlign = xa === "left" ? "left" : xa === "right" ? "right" : "center";
      const x = X + (xa === "left" ? 1 : xa === "right" ? -1 : 0);
      const top = ya === "bottom" ? Y - h : ya === "top" ? Y : Y - h / 2;
      lines.forEach((line, k) => ctx.fillText(line, x, top + 1 + lh * (k + 0.5)));
    }

    // title (in the top margin) and legend
    const title = layout.title && plainText(layout.title.text ?? layout.title).join(" ");
    if (title) {
      const tf = layout.title.font || {}, size = tf.size || Math.round(fontSize * 1.4);
      ctx.font = font(size); ctx.fillStyle = tf.color || INK;
      const xa = layout.title.xanchor || "center";
      ctx.textAlign = xa === "left" ? "left" : xa === "right" ? "right" : "center";
      ctx.fillText(title, (layout.title.x == null ? 0.5 : layout.title.x) * W, Math.max(size / 2 + 2, m.t / 2));
    }
    const items = (fig.data || []).map((t, i) => ({ t, i })).filter(({ t }) => t.showlegend !== false && t.name);
    if (items.length && (layout.showlegend === true || (layout.showlegend !== false && (fig.data || []).length > 1))) {
      const lg = layout.legend || {}, horizontal = lg.orientation === "h";
      ctx.font = font(fontSize);
      const widths = items.map(({ t }) => 40 + ctx.measureText(plainText(t.name).join(" ")).width + 10);
      const row = fontSize + 7, totalW = horizontal ? widths.reduce((p, q) => p + q, 0) : Math.max(...widths);
      const totalH = horizontal ? row : row * items.length;
      const X = box.x0 + (lg.x == null ? 1.02 : lg.x) * (box.x1 - box.x0), Y = box.y1 - (lg.y == null ? 1 : lg.y) * (box.y1 - box.y0);
      const xa = lg.xanchor || "left", ya = lg.yanchor || "auto";
      let x = xa === "right" ? X - totalW : xa === "center" ? X - totalW / 2 : X;
      let y = ya === "bottom" ? Y - totalH : ya === "middle" ? Y - totalH / 2 : Y;
      items.forEach(({ t, i }, k) => {
        const cy = y + row / 2, color = (t.line && t.line.color) || (t.marker && typeof t.marker.color === "string" && t.marker.color) || COLORWAY[i % 10];
        const type = t.type || "scatter", mode = t.mode || "lines+markers";
        if (type === "scatter" && mode.includes("lines")) {
          const w = (t.line || {}).width == null ? 2 : t.line.width;
          ctx.globalAlpha = t.opacity == null ? 1 : t.opacity;
          ctx.strokeStyle = color; ctx.lineWidth = Math.min(w, 5); ctx.setLineDash(dashOf((t.line || {}).dash, Math.min(w, 5)));
          ctx.beginPath(); ctx.moveTo(x + 5, cy); ctx.lineTo(x + 35, cy); ctx.stroke(); ctx.setLineDash([]);
          ctx.globalAlpha = 1;
        }
        if (type === "scatter" && mode.includes("markers")) { ctx.fillStyle = color; ctx.beginPath(); ctx.arc(x + 20, cy, 4, 0, 2 * Math.PI); ctx.fill(); }
        if (type !== "scatter") { ctx.fillStyle = Array.isArray((t.marker || {}).color) ? t.marker.color[0] : color; ctx.fillRect(x + 14, cy - 6, 12, 12); }
        ctx.fillStyle = INK; ctx.textAlign = "left"; ctx.fillText(plainText(t.name).join(" "), x + 40, cy);
        if (horizontal) x += widths[k]; else y += row;
      });
    }
    const ranges = {};
    for (const a of Object.values(axes)) ranges[a.key] = a.range.slice();
    return { points: counts, ranges };
  }

  window.__wbCanvasPlot = { unsupported, draw, values };
})();
