"""The floor under what a watching browser costs per step: the live panels' Plotly.react, bare.

    python benchmarks/plotly_floor.py [--source HOME] [--updates N]

dashboard_cost.py measures the app's own page; this one takes Gradio, the app and the network away
and asks what plotly.js alone needs to bring the five live panels up to date at one step.  It
builds the Train tab's live figures (``workbench.app.train`` LIVE_PANELS, the same
``workbench.present`` functions) for the last 12 steps of a stored run (``--source``: a
WORKBENCH_HOME; default: a fresh 30-step run of the tiny model), loads the plotly package's
plotly.min.js into an empty page in headless Chromium, and redraws ``--updates`` times, one step's
figures per update, 50 ms apart, as:

  none        nothing (the harness's own timers: subtracted from the others)
  five        one div per panel, one ``Plotly.react`` each (what the Train tab does)
  <panel>     each panel alone
  one         the five as subplots of one figure (one react per step)
  transition  five, with ``layout.transition = {duration: 0}``: Plotly's animation path, which
              skips most of the redraw when every change is animatable (x/y data) and defers the
              rest to a later frame (counted here, since the page's total time is what is measured)

For each: the renderer's main-thread time per update (CDP ``Performance.getMetrics``
TaskDuration, so layout, style and paint are in) and the median synchronous JavaScript of the
reacts.  Prints JSON.  No library measures this, so the harness is ours.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_overhead import CHROMIUM_ARGS  # noqa: E402
from dashboard_cost import source_run  # noqa: E402

UPDATE_JS = """async ([steps, mode, reps]) => {
  const ids = Object.keys(steps[0].five);
  const react = (id, fig, extra) => Plotly.react(id, fig.data, Object.assign({}, fig.layout, extra || {}), { responsive: true });
  const times = [];
  for (let r = 0; r < reps; r++) {
    const step = steps[r % steps.length];
    const t = performance.now();
    if (mode === "five") ids.forEach((id) => react(id, step.five[id]));
    else if (mode === "transition") ids.forEach((id) => react(id, step.five[id], { transition: { duration: 0 } }));
    else if (mode === "one") react("one", step.one);
    else if (mode === "none") {}  // the harness alone (its timers), subtracted from the others
    else react(mode, step.five[mode]);
    times.push(performance.now() - t);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return times;
}"""


def step_figures(home: Path, last: int = 12) -> list[dict]:
    """The live panels (by element id) and one combined figure, for each of the run's last steps."""
    from plotly.subplots import make_subplots

    from workbench.app.train import LIVE_PANELS, dashboard
    from workbench.present.view import RunView
    from workbench.store.runs import RunStore

    store = RunStore(home)
    run = store.list()[0]
    events = list(store.events(run.id))
    out = []
    for k in range(len(events) - last, len(events)):
        panels = dashboard(RunView.from_events(run.id, events[:k]))
        five = {elem: panels[name] for elem, name in LIVE_PANELS.items()}
        one = make_subplots(
            rows=3,
            cols=2,
            specs=[[{}, {}], [{}, {}], [{"colspan": 2}, None]],
            subplot_titles=[f.layout.title.text for f in five.values()],
            vertical_spacing=0.08,
        )
        for fig, (row, col) in zip(five.values(), [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]):
            for trace in fig.data:
                one.add_trace(trace, row=row, col=col)
        one.update_layout(height=1100, template="none", showlegend=False, margin=dict(l=60, r=20, t=48, b=48))
        out.append(
            {"five": {elem: json.loads(fig.to_json()) for elem, fig in five.items()}, "one": json.loads(one.to_json())}
        )
    return out


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--source", default=None, help="a WORKBENCH_HOME whose first run is drawn (default: a new tiny run)"
    )
    ap.add_argument("--updates", type=int, default=40, help="updates measured per mode")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="wb-plotly-floor-"))
    try:
        source = Path(args.source) if args.source else scratch / "source"
        if not args.source:
            source_run(source)
        steps = step_figures(source)
        ids = list(steps[0]["five"])
        heights = {elem: steps[0]["five"][elem]["layout"].get("height", 320) for elem in ids}
        page_html = (
            "<html><body style='margin:0;width:1400px'>"
            + "".join(
                f'<div id="{elem}" style="width:650px;height:{heights[elem]}px;display:inline-block"></div>'
                for elem in ids
            )
            + '<div id="one" style="width:1300px;height:1100px"></div></body></html>'
        )
        result: dict = {"figure_json_bytes": {elem: len(json.dumps(steps[-1]["five"][elem])) for elem in ids}}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 3000})
            page.set_content(page_html)
            page.add_script_tag(content=files("plotly").joinpath("package_data", "plotly.min.js").read_text())
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")

            def task_seconds() -> float:
                return next(
                    m["value"] for m in cdp.send("Performance.getMetrics")["metrics"] if m["name"] == "TaskDuration"
                )

            base = 0.0
            for mode in ("none", "five", *ids, "one", "transition"):
                page.evaluate(UPDATE_JS, [steps, mode, 8])  # first draws and warm-up, not measured
                t0 = task_seconds()
                sync = page.evaluate(UPDATE_JS, [steps, mode, args.updates])
                task_ms = (task_seconds() - t0) * 1000 / args.updates
                if mode == "none":
                    base = task_ms
                    continue
                task_ms -= base
                result[mode] = {
                    "main_thread_ms_per_update": round(task_ms, 1),
                    "react_js_ms_median": round(statistics.median(sync), 1),
                }
                print(mode, json.dumps(result[mode]), file=sys.stderr)
            result["harness_ms_per_update"] = round(base, 1)
            browser.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
