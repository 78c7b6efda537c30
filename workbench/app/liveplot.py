"""Live Plotly panels for the Train tab: one Plotly div per panel, updated in place.

``gr.Plot`` re-creates its Plotly div for every new value and draws it twice (see page.py); on a
dashboard that changes at every step that is most of what a watching browser costs.  A live panel
is a ``gr.HTML`` whose value is the figure as Plotly JSON (``plot_value``), and whose script
(Gradio 6's ``js_on_load`` with ``watch``) keeps one div and calls ``Plotly.react`` on it once per
new value, so Plotly updates the traces instead of building the whole plot again.  A panel that is
off screen (scrolled away, or on a hidden tab) is not drawn until it comes into view, and then
only its latest value.  The figures are the same ``workbench.present`` figures the widgets and
the other tabs draw.

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
// latest: the newest figure, from Gradio (props.value) or from the page's live path (host.__wbShow,
// workbench/app/page.py); drawn: the one on show
let onScreen = false, latest = null, drawn = null;
function draw() {
  const value = latest;
  if (!value || value === drawn || !onScreen) return;  // off screen: drawn when scrolled into view
  withPlotly((Plotly) => {
    const fig = typeof value === "string" ? JSON.parse(value) : value;
    Plotly.react(host, fig.data, Object.assign({}, fig.layout, { autosize: true }), config);
    drawn = value;
    host.dataset.draws = String(Number(host.dataset.draws || 0) + 1);  // for tests and the curious
  });
}
new IntersectionObserver((entries) => {
  onScreen = entries[entries.length - 1].isIntersecting;
  draw();
}, { rootMargin: "200px" }).observe(host);
// drawn while its tab was hidden (zero width): fit it once it is shown
new ResizeObserver(() => { if (host._fullLayout && host.offsetWidth) window.Plotly.Plots.resize(host); }).observe(host);
watch("value", () => { latest = props.value; draw(); });
host.__wbShow = (figure) => { latest = figure; draw(); };
latest = props.value;
""".replace("__PATH__", json.dumps(PLOTLY_PATH)).replace("__ROOT__", ROOT_JS)


def live_plot(elem_id: str, *, height: int = 380):
    """A live panel (``gr.HTML``); give it ``plot_value(figure)`` as its value."""
    import gradio as gr

    return gr.HTML(value=None, html_template=f'<div class="wb-live-plot" style="min-height:{height}px"></div>',
                   js_on_load=LIVE_PLOT_JS, elem_id=elem_id, show_label=False, padding=False)


def plot_value(figure: Any) -> str:
    """A plotly Figure as the live panel's value: its Plotly JSON as a string (arrays in Plotly's
    base64 form).  A string, not a dict: Gradio's browser side copies every output's value at every
    event (see page.py), and copying one string is far cheaper than copying a figure's objects."""
    return figure.to_json()
