"""The Train tab's live path: one stream of rows from the run store to charts drawn by uPlot.

    run store --(events after seq)--> stream (this module, server-sent events, JSON rows)
              --> dashboard.js in the page --> uPlot charts (workbench/app/vendor/uPlot, MIT)

- **The page** holds one ``gr.HTML`` (``dashboard()``): the run header, five charts and the
  generations table.  Its value says which run to show (``selection_value``): the Start button,
  the Runs tab's "Open dashboard" and page load set it.  Its script (dashboard.js) opens one
  ``EventSource`` on ``<root>/workbench/stream?run=ID&after=SEQ&follow=0|1`` and appends what comes
  down to its charts, redrawn at most 4 times a second and only when on screen.  Hover (the legend
  follows the pointer), drag-to-zoom (double-click resets) and the finished-run view are uPlot's.
- **The server** answers each stream from the store: every time ``RunStore.version()`` changes
  (read once per ``poll_seconds`` for all open streams) it sends an ``update`` event with the rows
  after the page's sequence number (``present.live.rows``), the run's status and header.  A page
  that follows (the default until a run is opened from the Runs tab) is switched to the newest
  active run when its own run has ended (``reset``).  No Gradio event runs while a run trains:
  each Gradio event re-sends every output component's state, which cost a watching browser
  0.15 CPU-s/s before anything was drawn (measured when this path was first built).

Why uPlot: a canvas chart library built for streaming time series (about 50 kB), maintained, MIT
licensed; Plotly re-lays out an SVG document at every update (0.28 CPU-s a step for the five
panels against 0.02 on a canvas, ``benchmarks/dashboard_cost.py`` at the time).  Plotly still
draws the other tabs and the notebooks, where figures do not change every second.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import time
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

from workbench.app.state import AppContext, Selection

STREAM_PATH = "/workbench/stream"
STATIC_PREFIX = "/workbench/static/"
STATIC = {  # served from the package: the vendored chart library and the page's dashboard script
    "uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", b"text/javascript; charset=utf-8"),
    "uPlot.min.css": ("vendor/uPlot.min.css", b"text/css; charset=utf-8"),
    "dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
}
# The longest one stream stays open; then the page opens the next with the sequence number it holds
# (a server that shuts down, or a proxy, never waits on a stream for longer).
STREAM_S = 300.0
# A comment line after this long with nothing to send: a closed page is noticed, proxies keep the stream.
KEEPALIVE_S = 15.0
# The app's root URL in the page (no trailing slash), for the workbench's own endpoints.
ROOT_JS = '((window.gradio_config && window.gradio_config.root) || "").replace(/\\/$/, "")'

NO_RUN = "No run yet: set up the Plan and press Start."


# -- the component ---------------------------------------------------------------------------------

TEMPLATE = """<div class="wb-dash">
<div id="run-header"><div class="wb-header"><div class="wb-title">Loading…</div></div></div>
<div class="wb-row"><div id="loss-plot" class="wb-live-plot"></div><div id="epsilon-plot" class="wb-live-plot"></div></div>
<div class="wb-row"><div id="hist-plot" class="wb-live-plot"></div><div id="heatmap-plot" class="wb-live-plot"></div></div>
<div id="noise-plot" class="wb-live-plot"></div>
<div id="generations"><div class="wb-gen-title">Sample generations at each evaluation</div><table></table></div>
</div>"""

# Loads uPlot and dashboard.js once per page, then hands the element and each new value to it.
LOAD_JS = """
const root = __ROOT__;
function load(src, css) {
  window.__wbLoads = window.__wbLoads || {};
  if (!window.__wbLoads[src]) {
    window.__wbLoads[src] = new Promise((resolve, reject) => {
      const tag = document.createElement(css ? "link" : "script");
      if (css) { tag.rel = "stylesheet"; tag.href = root + src; } else tag.src = root + src;
      tag.onload = resolve; tag.onerror = reject;
      document.head.appendChild(tag);
    });
  }
  return window.__wbLoads[src];
}
const ready = Promise.all([load(__PREFIX__ + "uPlot.min.css", true), load(__PREFIX__ + "uPlot.iife.min.js")])
  .then(() => load(__PREFIX__ + "dashboard.js"))
  .then(() => window.__wbDashboard.mount(element, root + __STREAM__));
ready.then((dash) => dash.select(props.value)).catch((err) => console.error("workbench: dashboard did not load", err));
watch("value", () => ready.then((dash) => dash.select(props.value)));
"""


def dashboard(elem_id: str = "live-dashboard"):
    """The live dashboard (``gr.HTML``); its value is ``selection_value(...)``."""
    import gradio as gr

    js = (
        LOAD_JS.replace("__ROOT__", ROOT_JS)
        .replace("__PREFIX__", json.dumps(STATIC_PREFIX))
        .replace("__STREAM__", json.dumps(STREAM_PATH))
    )
    return gr.HTML(value=None, html_template=TEMPLATE, js_on_load=js, elem_id=elem_id, show_label=False, padding=False)


# Brings the Train tab forward when a new dashboard value asks for it (``show``), as a user's click
# would; Gradio renders a tab's components only once it is opened, so dashboard.js cannot do it.
SHOW_TRAIN_JS = """(value) => {
  const v = value ? JSON.parse(value) : null;
  if (v && v.show) {
    const tab = [...document.querySelectorAll('button[role="tab"]')].find((b) => b.textContent.trim() === "Train");
    if (tab && tab.getAttribute("aria-selected") !== "true") tab.click();
  }
  return [];
}"""

_NONCE = itertools.count(1)


def selection_value(selection: Selection, *, show: bool = False) -> str:
    """The dashboard's value for ``selection``: which run, whether to follow newer runs, and whether
    to bring the Train tab forward (``show``).  A fresh nonce, so choosing the same run again redraws."""
    return json.dumps({"run": selection.run_id, "follow": selection.follow, "show": show, "nonce": next(_NONCE)})


# -- what the stream sends -------------------------------------------------------------------------


def followed(ctx: AppContext, run_id: str | None, follow: bool) -> str | None:
    """The run a page shows: ``run_id``; when it follows and that run has ended (or there is none),
    the newest active run, if any; with no run at all, the newest stored one."""
    from workbench.store.runs import ACTIVE, RunNotFound

    if not follow:
        return run_id
    if run_id is not None:
        try:
            if ctx.store.get(run_id).status in ACTIVE:
                return run_id
        except RunNotFound:
            pass
    newest = ctx.newest_active()
    if newest is not None:
        return newest
    if run_id is None:
        runs = ctx.store.list()
        return runs[0].id if runs else None
    return run_id


def update(ctx: AppContext, run_id: str | None, *, after: int, follow: bool, now: float | None = None) -> dict:
    """One ``update`` event for a page showing ``run_id`` up to event ``after``: the run it should show
    (``reset`` when that is another run: the rows start again from its first event), its status and
    header, and the rows after the page's (``present.live.rows``)."""
    from workbench.present.live import rows
    from workbench.store.runs import RunNotFound

    shown = followed(ctx, run_id, follow)
    reset = shown != run_id
    if reset:
        after = 0
    if shown is None:
        return {"run": None, "reset": reset, "status": None, "header": _message_header(NO_RUN), **rows(())}
    try:
        record = ctx.store.get(shown)
    except RunNotFound:
        ctx.views.forget(shown)
        return {
            "run": shown,
            "reset": reset,
            "status": "deleted",
            "header": _message_header(f"Run {shown} was deleted."),
            **rows(()),
        }
    view = ctx.views.get(shown)
    as_of = view.latest_step.time if view.latest_step is not None and record.status == "running" else now or time.time()
    out = rows(ctx.store.events(shown, after_seq=after), started=view.started)
    out["seq"] = max(out["seq"], after)
    header = header_html(view, record.status, record.reason, now=as_of)
    return {"run": shown, "reset": reset, "status": record.status, "header": header, **out}


def _message_header(message: str) -> str:
    import html

    return f'<div class="wb-header"><div class="wb-title">{html.escape(message)}</div></div>'


def header_html(view, status: str, reason: str | None, *, now: float) -> str:
    """Run, status, a progress bar with ETA, and epsilon spent as a big number."""
    import html

    from workbench.app.common import badge
    from workbench.engine.randomness import SEEDED_LABEL
    from workbench.engine.report import relation_text
    from workbench.present import accountant_label, fmt_eps, progress

    final = view.final_epsilon if view.ended is not None else None  # an ended run: its summary's epsilon
    p = progress(view.started, view.latest_step, now, final_epsilon=final)
    name = f" ({html.escape(view.name)})" if view.name else ""
    model = html.escape(str(view.config.get("model", ""))) if view.config else ""
    title = f'<div class="wb-title">Run <b>{html.escape(view.run_id)}</b>{name} {badge(status)}'
    if view.started is not None:
        s = view.started
        title += (
            f"<br><small>{model} on {html.escape(s.device)} · N = {s.dataset_size:,} · q = {s.sample_rate:.3g} · "
            f"σ = {s.noise_multiplier:.3g} · δ = {s.delta:.0e} · {accountant_label(s.accountant)} · "
            f"{relation_text(s.neighboring, s.privacy_unit)}</small>"
        )
        if s.seeded_randomness:
            title += f'<br><b class="wb-seeded" style="color:#b91c1c">⚠ {SEEDED_LABEL} (noise_seed is set)</b>'
    title += "</div>"
    target = f"<small> of {fmt_eps(p['target_epsilon'])}</small>" if p["target_epsilon"] is not None else ""
    eps_html = f'<div class="wb-eps" id="wb-epsilon">ε = {fmt_eps(p["epsilon"])}{target}</div>'
    if status == "queued":
        text = "queued: waits for the run on this device to finish"
    elif status == "running" and view.started is None:
        text = "preparing: loading the model and the data…"
    elif status == "running" or view.started is not None:
        text = p["text"] if status == "running" else f"step {p['step']} / {p['planned_steps']} ({p['fraction']:.0%})"
    else:
        text = ""
    bar = f'<div class="wb-bar"><div style="width:{100 * p["fraction"]:.1f}%"></div></div>'
    out = (
        f'<div class="wb-header" data-run="{html.escape(view.run_id)}" data-status="{html.escape(status)}">'
        f'{title}{eps_html}{bar}<div class="wb-progress" id="wb-progress">{text}</div>'
    )
    out += _baseline_html(view)
    sentence = _epsilon_sentence(view, p["epsilon"])
    if sentence:
        out += f'<div class="wb-protects" id="wb-protects">{html.escape(sentence)}</div>'
    stop = stop_text(view.ended.summary if view.ended is not None else None)
    if stop:
        out += f'<div class="wb-stop-note" id="wb-stop-note">{html.escape(stop)}</div>'
    if status in ("failed", "interrupted") and reason:
        out += f'<div class="wb-reason">{html.escape(reason)}</div>'
    return out + "</div>"


def _baseline_html(view) -> str:
    """The latest evaluation beside the untuned model's and the majority class's (telemetry from the validation
    data), and, once the run has ended, a plain sentence when it learned nothing beyond the class frequencies."""
    import html

    from workbench.present.diagnostics import baseline_text, class_prior_text, untuned_eval

    untuned = untuned_eval(view.evals)
    final = view.last_eval if view.last_eval is not None and view.last_eval.step > 0 else None
    base = vars(untuned) if untuned is not None else None
    if base is None and final is not None and final.majority_share is not None:  # no step-0 evaluation
        base = {"majority_label": final.majority_label, "majority_share": final.majority_share}
    text = baseline_text(vars(final) if final is not None else None, base)
    if not text:
        return ""
    out = (
        f'<div class="wb-baseline" id="wb-baseline">validation (telemetry, not covered by ε): {html.escape(text)}</div>'
    )
    if view.ended is not None and final is not None:
        private = view.started is not None and view.started.noise_multiplier > 0
        prior = class_prior_text(vars(final), base, private=private, where="app")
        if prior:
            out += f'<div class="wb-baseline wb-prior" id="wb-prior">⚠ {html.escape(prior)}</div>'
    return out


def stop_text(summary: dict | None) -> str:
    """A run stopped by hand: which epsilon it claims (the planned one) and when the smaller one would hold."""
    if not summary or summary.get("steps_done_epsilon") is None:
        return ""
    return (
        f"Stopped by hand: ε above is the planned ε (the full schedule's). The ε of the steps done, "
        f"{summary['steps_done_epsilon']:.3g}, holds only if the stop used public information only."
    )


def _epsilon_sentence(view, epsilon: float | None) -> str:
    """What the epsilon spent so far protects (engine/report.py), once the run has taken a step."""
    from workbench.engine.report import epsilon_sentence

    s = view.started
    if s is None or view.latest_step is None:
        return ""
    summary = view.ended.summary if view.ended is not None else {}
    return epsilon_sentence(
        epsilon,
        delta=s.delta,
        unit=s.privacy_unit,
        neighboring=s.neighboring,
        max_examples_per_user=s.config.get("max_examples_per_user") if s.privacy_unit == "user" else None,
        example_epsilon=summary.get("example_level_epsilon"),
        seeded=s.seeded_randomness,
    )


# -- the server side -------------------------------------------------------------------------------


class LiveMiddleware:
    """ASGI middleware over the Gradio app: the stream endpoint and the static files of the live path
    (behind the app's login when ``--auth`` is set).  ``update(run, after=, follow=)`` makes one event
    (``update`` above, bound to the app's context); ``version()`` is the store's change token."""

    def __init__(self, app, *, update, version, poll_seconds: float) -> None:
        self.app = app
        self.update = update
        self.watch = VersionWatch(version, poll_seconds)

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" and scope.get("method") == "GET" else ""
        root = scope.get("root_path", "").rstrip("/")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path == STREAM_PATH:
            await self._stream(scope, receive, send)
        elif path.startswith(STATIC_PREFIX) and path[len(STATIC_PREFIX) :] in STATIC:
            await _static(send, *STATIC[path[len(STATIC_PREFIX) :]])
        else:
            await self.app(scope, receive, send)

    async def _stream(self, scope, receive, send) -> None:
        """``?run=ID&after=SEQ&follow=0|1``: an ``update`` event at once, then one each time the store
        changes and the page's run has something new; ends after STREAM_S (the page reconnects)."""
        import anyio

        if not await _logged_in(scope):
            await _respond(send, 401, b"log in first")
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            run = query.get("run", [""])[0] or None
            after = int(query.get("after", ["0"])[0])
            follow = query.get("follow", ["1"])[0] not in ("0", "false")
        except ValueError:
            await _respond(send, 400, b"expected ?run=ID&after=SEQ&follow=0|1")
            return
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        gone = asyncio.ensure_future(_disconnected(receive))
        end = time.monotonic() + STREAM_S
        since, last_state = None, None
        try:
            while not gone.done() and time.monotonic() < end:
                version = await self.watch.read(max_age=self.watch.period / 2)
                if version == since:
                    version = await self.watch.changed(since, min(KEEPALIVE_S, max(end - time.monotonic(), 0)), gone)
                    if version is None:
                        break  # the page went away
                    if version == since:
                        await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
                        continue
                since = version
                event = await anyio.to_thread.run_sync(lambda: self.update(run, after=after, follow=follow))
                state = (event["run"], event["status"], event["header"])
                if event["reset"] or event["seq"] > after or state != last_state:
                    data = json.dumps(event, separators=(",", ":"))
                    await send(
                        {
                            "type": "http.response.body",
                            "body": f"event: update\ndata: {data}\n\n".encode(),
                            "more_body": True,
                        }
                    )
                    run, after, last_state = event["run"], event["seq"], state
            await send({"type": "http.response.body", "body": b""})
        except OSError:
            pass  # the connection went away while writing
        finally:
            gone.cancel()


class VersionWatch:
    """The run store's version for every open stream: one store read (in a worker thread, off the
    event loop) per ``period`` while any page waits, shared by all of them."""

    def __init__(self, version, period: float) -> None:
        self._version = version
        self.period = period
        self._value = ""
        self._at = float("-inf")  # when _value was read: never yet
        self._lock = asyncio.Lock()  # one read at a time; later waiters take its value

    async def read(self, *, max_age: float) -> str:
        import anyio

        async with self._lock:
            if time.monotonic() - self._at > max_age:
                self._value = await anyio.to_thread.run_sync(self._version)
                self._at = time.monotonic()
            return self._value

    async def changed(self, since: str, wait: float, gone: asyncio.Future) -> str | None:
        """The version once it differs from ``since``, or ``since`` after ``wait`` seconds; None when
        ``gone`` (the client's disconnect) is done first."""
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return since
            await asyncio.wait({gone}, timeout=min(self.period, left))
            if gone.done():
                return None
            version = await self.read(max_age=self.period / 2)
            if version != since:
                return version


_STATIC_CACHE: dict[str, bytes] = {}


async def _static(send, name: str, content_type: bytes) -> None:
    """A file of the live path from the package (public library code: no login needed)."""
    if name not in _STATIC_CACHE:
        _STATIC_CACHE[name] = files("workbench.app").joinpath(name).read_bytes()
    body = _STATIC_CACHE[name]
    headers = [
        (b"content-type", content_type),
        (b"cache-control", b"no-cache"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(send, status: int, body: bytes) -> None:
    headers = [
        (b"content-type", b"text/plain"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _logged_in(scope) -> bool:
    """Gradio's own rule (routes.py, login_check): no auth configured, or a valid login cookie."""
    import inspect

    from starlette.requests import Request

    app = scope.get("app")
    if app is None or (getattr(app, "auth", None) is None and getattr(app, "auth_dependency", None) is None):
        return True
    request = Request(scope)
    if app.auth_dependency is not None:
        user = app.auth_dependency(request)
        if inspect.isawaitable(user):
            user = await user
        return user is not None
    cookie = app.cookie_id
    token = request.cookies.get(f"access-token-{cookie}") or request.cookies.get(f"access-token-unsecure-{cookie}")
    return app.tokens.get(token) is not None


def bind(ctx: AppContext) -> dict[str, Any]:
    """The middleware's keyword arguments for an app's context."""
    return {"update": functools.partial(update, ctx), "version": ctx.store.version}
