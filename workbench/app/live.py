"""The Train tab's live path: one stream of rows from the run store to charts drawn by uPlot.

    run store --(events after seq)--> stream (this module, server-sent events, JSON rows)
              --> dashboard.js in the page --> uPlot charts (workbench/app/vendor/uPlot, MIT)

- **The page** holds one ``gr.HTML`` (``dashboard()``): the run header, five charts and the
  generations table.  Its value says which run to show (``selection_value``): the Start button,
  the Runs tab's "Open dashboard" and page load set it.  Its script (dashboard.js) asks Gradio's API
  for the stream's key once (``KEY_API``), opens one ``EventSource`` on
  ``<root>/workbench/stream?run=ID&after=SEQ&follow=0|1&key=KEY`` and draws what comes down: the
  rows carry the smoothed loss and the titles computed in Python (``present.live``), so the script
  only draws, at most 4 times a second and only the charts on screen.  Hover (the legend follows the
  pointer), drag-to-zoom (double-click resets) and the finished-run view are uPlot's.
- **The server** answers each stream from the store: every time ``RunStore.version()`` changes
  (read once per ``poll_seconds`` for all open streams) it sends an ``update`` event with the rows
  after the page's sequence number (``present.live.rows``), the run's status and header.  A page
  that follows (the default until a run is opened from the Runs tab) is switched to the newest
  active run when its own run has ended (``reset``).  No Gradio event runs while a run trains:
  each Gradio event re-sends every output component's state, which cost a watching browser
  0.15 CPU-s/s before anything was drawn (measured when this path was first built).
- **Mounting and login, on Gradio's public surface.**  The stream and the static files are FastAPI
  routes (``router``) that ``serve`` hands to ``Blocks.launch(app_kwargs={"routes": ...})``, Gradio's
  documented way to configure its FastAPI app (the same routes fit a FastAPI app that mounts the
  workbench with ``gr.mount_gradio_app``).  With a login, the stream asks for a key that only Gradio's
  API hands out (``stream_key_api``, a ``gr.api`` endpoint): Gradio serves its API to logged-in
  clients only, so the workbench never reads Gradio's cookies or tokens.

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
import secrets
import time
from importlib.resources import files

from workbench.app.state import AppContext, Selection

STREAM_PATH = "/workbench/stream"
STATIC_PREFIX = "/workbench/static/"
STATIC = {  # served from the package: the vendored chart library and the page's dashboard script
    "uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
}
# The Gradio API endpoint that hands a page the stream's key (``stream_key_api``), and where Gradio serves
# it: POST <root>/gradio_api/call/NAME, then GET .../NAME/EVENT_ID (Gradio's documented REST API).
KEY_API = "workbench_stream_key"
KEY_PATH = "/gradio_api/call/" + KEY_API
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
  .then(() => window.__wbDashboard.mount(element, root + __STREAM__, root + __KEY__));
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
        .replace("__KEY__", json.dumps(KEY_PATH))
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


def followed(ctx: AppContext, run_id: str | None, follow: bool, user: str | None = None) -> str | None:
    """The run a page shows: ``run_id``; when it follows and that run has ended (or there is none),
    the newest active run, if any; with no run at all, the newest stored one (in a workshop: of ``user``'s)."""
    from workbench.store.runs import ACTIVE, RunNotFound

    if not follow:
        return run_id
    if run_id is not None:
        try:
            if ctx.store.get(run_id).status in ACTIVE:
                return run_id
        except RunNotFound:
            pass
    newest = ctx.newest_active(user)
    if newest is not None:
        return newest
    if run_id is None:
        runs = ctx.runs(user)
        return runs[0].id if runs else None
    return run_id


def update(
    ctx: AppContext, run_id: str | None, *, after: int, follow: bool, now: float | None = None, user: str | None = None
) -> dict:
    """One ``update`` event for a page showing ``run_id`` up to event ``after``: the run it should show
    (``reset`` when that is another run: the rows start again from its first event), its status and
    header, and the rows after the page's (``present.live.rows``, with the smoothed loss over the steps
    the page holds and the new ones)."""
    from workbench.events import StepMetrics
    from workbench.present.live import rows
    from workbench.store.runs import RunNotFound

    shown = followed(ctx, run_id, follow, user)
    reset = shown != run_id
    if reset:
        after = 0
    if shown is None:
        return {"run": None, "reset": reset, "status": None, "header": _message_header(NO_RUN), **rows(())}
    try:
        ctx.check_run(user, shown)  # in a workshop: a participant's own runs only (RunNotYours, below)
        record = ctx.store.get(shown)
    except RunNotFound as err:
        if err.__class__ is not RunNotFound:  # RunNotYours: nothing of the run is sent
            return {"run": shown, "reset": reset, "status": None, "header": _message_header(str(err)), **rows(())}
        ctx.views.forget(shown)
        return {
            "run": shown,
            "reset": reset,
            "status": "deleted",
            "header": _message_header(f"Run {shown} was deleted."),
            **rows(()),
        }
    events = list(ctx.store.events(shown, after_seq=after))
    view = ctx.views.get(shown)  # read after the events: it holds each of them, and perhaps newer ones
    first = next((e.step for _, e in events if isinstance(e, StepMetrics)), None)
    earlier = _steps_before(view.steps, first) if after and first is not None else ()
    as_of = view.latest_step.time if view.latest_step is not None and record.status == "running" else now or time.time()
    out = rows(events, started=view.started, earlier=earlier)
    out["seq"] = max(out["seq"], after)
    header = header_html(view, record.status, record.reason, now=as_of, queued=_queued_text(ctx, shown))
    return {"run": shown, "reset": reset, "status": record.status, "header": header, **out}


def _steps_before(steps: list, step: int) -> list:
    """The steps of a run's view before its latest step numbered ``step`` (the first one a page lacks)."""
    for i in range(len(steps) - 1, -1, -1):
        if steps[i].step == step:
            return steps[:i]
    return list(steps)


def _message_header(message: str) -> str:
    import html

    return f'<div class="wb-header"><div class="wb-title">{html.escape(message)}</div></div>'


def _queued_text(ctx: AppContext, run_id: str) -> str | None:
    """In a workshop, a queued run's place and estimate ("3rd in line, about 4 min"); else None."""
    if ctx.workshop is None:
        return None
    from workbench.running.queue import wait_text

    place = ctx.workshop.queue.position(run_id)
    if place is None or place.status != "queued":
        return None
    paused = " (the queue is paused)" if ctx.workshop.queue.paused else ""
    return f"queued: {wait_text(place.position, place.wait_s)}{paused}"


def header_html(view, status: str, reason: str | None, *, now: float, queued: str | None = None) -> str:
    """Run, status, a progress bar with ETA, and epsilon spent as a big number."""
    import html

    from workbench.app.common import badge
    from workbench.engine.randomness import SEEDED_LABEL
    from workbench.planning.wording import relation_text
    from workbench.present import accountant_label, fmt_eps, progress
    from workbench.present.diagnostics import prefix_cache_text

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
        # the cached frozen prefix: what it will cache, then (ended) what it did; "" when it was off
        summary = view.ended.summary if view.ended is not None else {}
        cache = prefix_cache_text(summary.get("prefix_cache")) or prefix_cache_text(
            s.prefix_cache, lora_layers=(view.config or {}).get("lora_layers")
        )
        if cache:
            title += f'<br><small class="wb-prefix-cache" id="wb-prefix-cache">{html.escape(cache)}</small>'
    title += "</div>"
    target = f"<small> of {fmt_eps(p['target_epsilon'])}</small>" if p["target_epsilon"] is not None else ""
    eps_html = f'<div class="wb-eps" id="wb-epsilon">ε = {fmt_eps(p["epsilon"])}{target}</div>'
    if status == "queued":
        text = queued or "queued: waits for the run on this device to finish"
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
    unevaluated = evaluation_note(view, status)
    if unevaluated:
        out += f'<div class="wb-stop-note" id="wb-eval-note">{html.escape(unevaluated)}</div>'
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


def evaluation_note(view, status: str) -> str:
    """A run that ended without evaluating its last weights (a Stop skips that evaluation, to land in seconds): says
    so, which step the numbers shown are from, and where to evaluate it now."""
    if status not in ("stopped", "finished") or view.ended is None or view.latest_step is None:
        return ""
    last = view.last_eval.step if view.last_eval is not None else 0
    if last >= view.latest_step.step:
        return ""
    shown = f" (the validation numbers above are step {last}'s)" if last else ""
    return (
        f"Not evaluated after step {view.latest_step.step}{shown}: the Stop skipped that evaluation. Evaluate in the "
        f"Runs tab (or `workbench runs evaluate {view.run_id}`) measures it now."
    )


def stop_text(summary: dict | None) -> str:
    """A run stopped by hand: which epsilon it claims (the planned one) and when the smaller one would hold."""
    if not summary or summary.get("steps_done_epsilon") is None:
        return ""
    return (
        f"Stopped by hand: ε above is the planned ε (the full schedule's). The ε of the steps done, "
        f"{summary['steps_done_epsilon']:.3g}, holds only if the stop used public information only."
    )


def _epsilon_sentence(view, epsilon: float | None) -> str:
    """What the epsilon spent so far protects (planning/wording.py), once the run has taken a step."""
    from workbench.planning.wording import epsilon_sentence

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


def stream_key_api(ctx: AppContext) -> None:
    """Inside the app's ``gr.Blocks``: the Gradio API endpoint ``KEY_API`` that hands a page the stream's key
    (``ctx.stream_key``).  Gradio answers its API only to a client it has let in (the login of ``launch(auth=...)``,
    or an ``auth_dependency``), so holding the key is holding a login; the stream asks for it when the app has one."""
    import gradio as gr

    def stream_key() -> str:
        """The key of the Train tab's live stream (workbench/app/live.py)."""
        return ctx.stream_key

    if ctx.workshop is not None:  # a key of each participant's own: the stream serves them their runs only
        from workbench.app.workshop import takes_request, user_key, user_of

        @takes_request
        def stream_key(request=None) -> str:
            """The key of the Train tab's live stream for the logged-in participant (workbench/app/workshop.py)."""
            return user_key(ctx, user_of(request))

    gr.api(stream_key, api_name=KEY_API, api_visibility="undocumented", concurrency_limit=None)


def router(ctx: AppContext, *, poll_seconds: float, login: bool):
    """The live path's routes (a FastAPI ``APIRouter``): the stream and its static files.  ``serve`` hands them
    to Gradio's FastAPI app through ``launch(app_kwargs={"routes": ...})``; a FastAPI app that mounts the
    workbench with ``gr.mount_gradio_app`` can ``include_router`` them.  ``login``: the stream asks for the key
    of ``stream_key_api`` (set it when the app has a login); ``poll_seconds``: how often the store's version is
    read for all open streams."""
    from fastapi import APIRouter
    from fastapi.responses import PlainTextResponse, Response, StreamingResponse

    watch = VersionWatch(ctx.store.version, poll_seconds)
    bound = functools.partial(update, ctx)

    async def stream(request):
        """``?run=ID&after=SEQ&follow=0|1&key=KEY``: an ``update`` event at once, then one each time the store
        changes and the page's run has something new; ends after STREAM_S (the page reconnects)."""
        query = request.query_params
        user = None
        if ctx.workshop is not None:  # whose key: they are served their own runs (the instructor: all)
            from workbench.app.workshop import key_user

            user = key_user(ctx, query.get("key", ""))
            if user is None:
                return PlainTextResponse("log in first", status_code=401, headers={"cache-control": "no-store"})
        elif login and not secrets.compare_digest(query.get("key", "").encode(), ctx.stream_key.encode()):
            return PlainTextResponse("log in first", status_code=401, headers={"cache-control": "no-store"})
        try:
            run = query.get("run") or None
            after = int(query.get("after", "0"))
            follow = query.get("follow", "1") not in ("0", "false")
        except ValueError:
            return PlainTextResponse(
                "expected ?run=ID&after=SEQ&follow=0|1", status_code=400, headers={"cache-control": "no-store"}
            )
        return StreamingResponse(
            _updates(functools.partial(bound, user=user) if user else bound, watch, run, after=after, follow=follow),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def static(request):
        """A file of the live path from the package (public library code: no login needed)."""
        name = request.path_params["name"]
        if name not in STATIC:
            return PlainTextResponse("not found", status_code=404)
        path, media_type = STATIC[name]
        if path not in _STATIC_CACHE:
            _STATIC_CACHE[path] = files("workbench.app").joinpath(path).read_bytes()
        return Response(_STATIC_CACHE[path], media_type=media_type, headers={"cache-control": "no-cache"})

    routes = APIRouter()  # Starlette-style endpoints (they take the request): no parameters for FastAPI to read
    routes.add_route(STREAM_PATH, stream, methods=["GET"], include_in_schema=False)
    routes.add_route(STATIC_PREFIX + "{name}", static, methods=["GET"], include_in_schema=False)
    return routes


async def _updates(update, watch: "VersionWatch", run: str | None, *, after: int, follow: bool):
    """The stream's body: ``update`` events as the store changes, a keep-alive comment after KEEPALIVE_S of
    nothing, for STREAM_S.  A page that goes away cancels it (Starlette's StreamingResponse)."""
    import anyio

    end = time.monotonic() + STREAM_S
    since, last_state = None, None
    while time.monotonic() < end:
        version = await watch.read(max_age=watch.period / 2)
        if version == since:
            version = await watch.changed(since, min(KEEPALIVE_S, max(end - time.monotonic(), 0)))
            if version == since:
                yield b": keep-alive\n\n"
                continue
        since = version
        event = await anyio.to_thread.run_sync(lambda: update(run, after=after, follow=follow))
        state = (event["run"], event["status"], event["header"])
        if event["reset"] or event["seq"] > after or state != last_state:
            yield f"event: update\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
            run, after, last_state = event["run"], event["seq"], state


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

    async def changed(self, since: str, wait: float) -> str:
        """The version once it differs from ``since``, or ``since`` after ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return since
            await asyncio.sleep(min(self.period, left))
            version = await self.read(max_age=self.period / 2)
            if version != since:
                return version


_STATIC_CACHE: dict[str, bytes] = {}
