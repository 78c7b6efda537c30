"""Live panels for the Train tab: one div per panel, updated in place, drawn by one of two renderers.

``gr.Plot`` re-creates its Plotly div for every new value and draws it twice (see page.py); on a
dashboard that changes at every step that is most of what a watching browser costs.  A live panel
is a ``gr.HTML`` whose value is the figure as Plotly JSON (``plot_value``), and whose script
(Gradio 6's ``js_on_load`` with ``watch``) draws each new value once:

- while the run on show is running, on a ``<canvas>`` by the light renderer (``canvasplot.js``,
  ``window.__wbCanvasPlot``, placed in the page by page.py): the same figure, the same colours,
  lines, bars, heatmap, shapes and labels, in 1-3 ms a panel and no page layout.  A Plotly.react of
  the five panels cost a watching Chromium 0.28 CPU-s a step against 0.02 for the canvas
  (``benchmarks/dashboard_cost.py``), and on a 2-core machine that shares its cores with the trainer
  that difference is the 95 % throughput target (docs/app.md);
- otherwise with ``Plotly.react``: a run that is not running, the panel under the pointer (so hover,
  zoom and the mode bar are there whenever someone reaches for them), and any figure the light
  renderer refuses (``__wbCanvasPlot.unsupported`` names what it cannot draw).  Setting
  ``window.__wbRenderer = "plotly"`` in the page keeps every panel on Plotly.

A panel that is off screen (scrolled away, or on a hidden tab) is not drawn until it comes into
view, and then only its latest value.  The figures are the same ``workbench.present`` figures the
widgets and the other tabs draw; the host's ``data-renderer``, ``data-draws`` and ``__wbPoints``
(points drawn per trace) say what was drawn, for the tests and benchmarks.

Plotly itself: the one Gradio loaded for its own plots (``window.Plotly``), else the plotly
package's bundle, served by the app at ``<root>/workbench/plotly.min.js`` (page.py).
"""

from __future__ import annotations

import json
from typing import Any

PLOTLY_PATH = "/workbench/plotly.min.js"
# The app's root URL in the page (no trailing slash), for the workbench's own endpoints; page.py too.
ROOT_JS = '((window.gradio_config && window.gradio_config.root) || "").replace(/\\/$/, "")'

LIVE_PLOT_JS = """
const host = element.querySelector(".wb-live-plot");
const config = { responsive: true, displaylogo: false };
function withPlotly(then) {
  if (window.Plotly) return then(window.Plotly);
  if (!window.__workbenchPlotly) {
    window.__workbenchPlotly = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = __ROOT__ + __PATH__;
      script.onload = () => resolve(window.Plotly);
      script.onerror = reject;
      document.head.appendChild(script);
    });
  }
  window.__workbenchPlotly.then(then).catch((err) => console.error("workbench: Plotly did not load", err));
}
// Two surfaces: a canvas for the light renderer (workbench/app/canvasplot.js) while the run on show
// trains, and Plotly's div for everything else: a run that is not running, the panel under the
// pointer (hover, zoom), and a figure the light renderer cannot draw.
const canvas = document.createElement("canvas"), plot = document.createElement("div");
canvas.className = "wb-canvas"; plot.className = "wb-plotly";
canvas.style.display = "none";  // canvas is inline by default: block, when on show
host.append(canvas, plot);
// latest: the newest figure, from Gradio (props.value) or from the page's live path (host.__wbShow,
// workbench/app/page.py); drawn: the one on show, by `renderer`, at `width`
let onScreen = false, pointer = false, latest = null, parsed = null, drawn = null, renderer = null, width = 0;
function running() {
  const head = document.querySelector("#run-header .wb-header[data-run]");
  return !!head && head.dataset.status === "running";
}
function shown(kind, points) {
  renderer = kind; host.dataset.renderer = kind; host.__wbPoints = points;
  host.dataset.draws = String(Number(host.dataset.draws || 0) + 1);  // for tests and the curious
}
function draw() {
  followHeader();
  const value = latest;
  if (!value || !onScreen) return;  // off screen: drawn when scrolled into view
  if (parsed === null || parsed.value !== value) parsed = { value, fig: typeof value === "string" ? JSON.parse(value) : value };
  const fig = parsed.fig, light = window.__wbCanvasPlot;
  const kind = light && !pointer && !parsed.failed && running() && !light.unsupported(fig)
    && window.__wbRenderer !== "plotly" ? "canvas" : "plotly";
  if (value === drawn && kind === renderer && (kind === "plotly" || width === host.clientWidth)) return;
  if (kind === "canvas") {
    try {
      width = host.clientWidth;
      const { points } = light.draw(canvas, fig, width);
      if (renderer === "plotly" && window.Plotly) window.Plotly.purge(plot);  // its SVG and state go
      plot.style.display = "none"; canvas.style.display = "block";
      drawn = value; shown("canvas", points);
      return;
    } catch (err) {  // a figure the light renderer got wrong: Plotly draws it (and this value stays Plotly's)
      console.error("workbench: the light renderer failed, Plotly draws this figure", err);
      parsed.failed = true;
    }
  }
  withPlotly((Plotly) => {
    if (latest !== value) return;  // a newer value came while Plotly loaded: that one draws
    canvas.style.display = "none"; plot.style.display = "";
    Plotly.react(plot, fig.data, Object.assign({}, fig.layout, { autosize: true }), config);
    drawn = value; shown("plotly", (plot._fullData || []).map((d) => (d.x ? d.x.length : 0)));
  });
}
new IntersectionObserver((entries) => {
  onScreen = entries[entries.length - 1].isIntersecting;
  draw();
}, { rootMargin: "200px" }).observe(host);
// a resize redraws the canvas; a Plotly panel drawn while its tab was hidden (zero width) is fitted
new ResizeObserver(() => {
  if (renderer === "canvas") draw();
  else if (plot._fullLayout && host.offsetWidth) window.Plotly.Plots.resize(plot);
}).observe(host);
host.addEventListener("pointerenter", () => { pointer = true; draw(); });
host.addEventListener("pointerleave", () => { pointer = false; draw(); });
// the run on show starts or stops running: the renderer follows (the header may mount after this panel)
let header = null;
function followHeader() {
  if (header) return;
  header = document.getElementById("run-header");
  if (header) new MutationObserver(() => { if ((renderer === "canvas") !== running()) draw(); })
    .observe(header, { childList: true, subtree: true, attributes: true, attributeFilter: ["data-status"] });
}
watch("value", () => { latest = props.value; draw(); });
host.__wbShow = (figure) => { latest = figure; draw(); };
latest = props.value;
""".replace("__PATH__", json.dumps(PLOTLY_PATH)).replace("__ROOT__", ROOT_JS)


def live_plot(elem_id: str, *, height: int = 380):
    """A live panel (``gr.HTML``); give it ``plot_value(figure)`` as its value."""
    import gradio as gr

    return gr.HTML(
        value=None,
        html_template=f'<div class="wb-live-plot" style="min-height:{height}px"></div>',
        js_on_load=LIVE_PLOT_JS,
        elem_id=elem_id,
        show_label=False,
        padding=False,
    )


def plot_value(figure: Any) -> str:
    """A plotly Figure as the live panel's value: its Plotly JSON as a string (arrays in Plotly's
    base64 form).  A string, not a dict: Gradio's browser side copies every output's value at every
    event (see page.py), and copying one string is far cheaper than copying a figure's objects."""
    return figure.to_json()
