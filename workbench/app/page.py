"""The script placed first in the app's HTML page, and the endpoints it reads.

Both exist for one reason: a browser watching a run must cost the training machine next to no CPU
(issue: 95 % of `workbench train`'s throughput with a browser watching, measured on 2 cores where
the browser and the trainer share them).  Profiling the page in Chromium showed two costs that
Gradio 6 has on every page, and a third in its Plot component; none is ours to fix upstream:

1. Frames.  Gradio's status tracker (``statustracker-*.js``) animates its elapsed-time counter with
   a ``requestAnimationFrame`` loop, and a tracker that is removed while its event is pending never
   stops that loop.  Every Gradio page, even one with a single Markdown, is left with one running:
   the browser renders 60 frames a second on an idle page, about 0.07 CPU-s/s here.  The script
   routes the frame requests of that module (only those: it looks at the caller's script) through
   a 10 Hz timer.  The counter shows tenths of a second, so it looks the same, and no frame is
   rendered unless something changed.  If a Gradio release renames the module, nothing happens.

2. Events.  Each Gradio event, even one whose outputs are all ``gr.skip()``, re-sends the loading
   status of *every* component that was ever an event's output, which snapshots each one's value
   (deep copies of the Plotly figures): a ``gr.Timer`` polling once a second cost the browser about
   0.15 CPU-s/s before anything was drawn.  So the dashboard does not poll with a Gradio event.
   Polling of any kind costs more than its CPU shows: a page that GOT a token once a second cost
   the browser about 100 thread wake-ups and 0.02-0.04 CPU-s a second, and that alone took 10 %
   off a training run on the same 2 cores.  So the page opens one stream (server-sent events,
   ``<root>/workbench/stream?since=TOKEN``) that the server holds and writes to only when
   ``RunStore.version()`` (a 16-character token that changes when any run is written) differs;
   it reads the store once per ``poll_seconds`` for all open streams.  While the run on show is
   running, each change is a ``live`` event: the header and the changed live panels as JSON
   (``train.live_update``), which the page draws itself, so a step costs no Gradio event and no
   new request.  Otherwise (the run ended, another run is followed, a new evaluation) it is a
   ``refresh`` event: the page clicks the Train tab's hidden refresh button, and that refresh
   sends only the panels that changed.  A stream with nothing new for 15 s ends and the page opens
   the next.  ``<root>/workbench/version`` (the token, with an optional long-poll) and
   ``<root>/workbench/live`` (one live update) answer the same questions for scripts.

3. Redraws.  Gradio's Plot component re-creates its Plotly div for every new value (a ``{#key}``
   block) and draws twice: once into the old div, once into the new one, each a full Plotly render
   (20-70 ms of JavaScript here, plus the repaint).  The Train tab's live panels are therefore
   ``workbench.app.liveplot`` panels: a ``gr.HTML`` whose script keeps one Plotly div and calls
   ``Plotly.react`` on it once per new value; and while the run trains, not even that: even a
   ``Plotly.react`` of the five panels rebuilds and lays out an SVG document (0.28 CPU-s a step),
   so a running run's panels are drawn on a canvas by ``canvasplot.js`` (0.02), which this
   middleware places in the page after the script below.  Plotly's own bundle is served at
   ``<root>/workbench/plotly.min.js`` (from the plotly package), for pages where Gradio has not
   loaded its copy yet.

``launch(head=...)`` cannot carry the script: Gradio adds that HTML after its modules have loaded,
when the status tracker already holds the original ``requestAnimationFrame``.  Hence this ASGI
middleware, which inserts the script right after ``<head>`` of the HTML pages the app serves and
answers the stream, version and live endpoints itself (behind the app's login when ``--auth`` is set).  No library
offers either, so both are ours.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from urllib.parse import parse_qs

from workbench.app.liveplot import PLOTLY_PATH, ROOT_JS

VERSION_PATH = "/workbench/version"
LIVE_PATH = "/workbench/live"
STREAM_PATH = "/workbench/stream"
REFRESH_ELEM_ID = "wb-refresh"
# How long the version endpoint holds a request whose ``since`` is still current.  Short enough that
# a server shutdown or a proxy's idle timeout never waits on it for long.
LONG_POLL_S = 15.0
# The longest a stream stays open, however busy: then the page opens a new one (a server that shuts
# down, or a proxy, never waits on a stream for longer than this).
STREAM_S = 300.0

_SCRIPT = """<script data-workbench="page">
(() => {
  // 1. Gradio's status-tracker frame loop at 10 Hz instead of 60 (workbench/app/page.py).
  const raf = window.requestAnimationFrame.bind(window), caf = window.cancelAnimationFrame.bind(window);
  const timers = new Map();
  let next = -1;
  window.requestAnimationFrame = function (callback) {
    if (!(new Error().stack || "").includes("/statustracker-")) return raf(callback);
    const id = next--;  // negative ids: never equal to a real frame request's
    timers.set(id, setTimeout(() => { timers.delete(id); callback(performance.now()); }, 100));
    return id;
  };
  window.cancelAnimationFrame = function (id) {
    if (timers.has(id)) { clearTimeout(timers.get(id)); timers.delete(id); } else caf(id);
  };
  // 2. The dashboard's stream: one EventSource on <root>/workbench/stream, which the server holds open
  // and writes to when the run store changes (its version token differs from `since`): while the run
  // on show is running and has no new evaluation, a "live" event with the header and the changed
  // panels, drawn here with no Gradio event and no request; otherwise a "refresh" event, which clicks
  // the Train tab's hidden refresh button and ends the stream.  A stream also ends after WAIT_S
  // with nothing new; the page opens the next one PERIOD_MS later, with its header's new state.
  const PERIOD_MS = __PERIOD_MS__, WAIT_S = __WAIT_S__, STREAM = __STREAM__, BUTTON = __BUTTON__;
  let last = null, source = null, retry = null;  // last: the version on show; source: the open stream
  function connect() {
    if (source || document.hidden) return;  // a hidden tab holds no stream (browsers allow 6 connections a host)
    const params = { since: last === null ? "" : last, wait: WAIT_S };
    const head = document.querySelector("#run-header .wb-header[data-run]");
    if (head && head.dataset.status === "running") {
      Object.assign(params, { run: head.dataset.run, steps: head.dataset.steps, evals: head.dataset.evals });
    }
    source = new EventSource(__ROOT__ + STREAM + "?" + new URLSearchParams(params));
    source.addEventListener("live", (event) => {
      const { version, update } = JSON.parse(event.data);
      if (show(update)) last = version; else refresh(version);
    });
    source.addEventListener("refresh", (event) => refresh(event.data));
    // the stream ended (nothing new for WAIT_S, or the server's bound) or failed (the server restarts:
    // Gradio shows its own message): the next one, with the page's state as it is then
    source.onerror = () => reopen(PERIOD_MS);
  }
  function close() {
    if (source) source.close();
    source = null;
  }
  function reopen(ms) {
    close();
    if (retry === null && !document.hidden) retry = setTimeout(() => { retry = null; connect(); }, ms);
  }
  function refresh(version) {
    const button = document.getElementById(BUTTON);
    if (button) {  // else the Train tab is not drawn yet: `last` stays, and the next stream tries again
      button.click();
      last = version;
    }
    reopen(PERIOD_MS);  // after the refresh the page may show another run, or new counts
  }
  // 3. A live event: the header and the live panels (workbench/app/liveplot.py) of the running run.
  // False: only the Gradio refresh can update the page (a panel is not drawn yet).
  function show(update) {
    for (const [id, figure] of Object.entries(update.panels)) {
      const host = document.querySelector("#" + id + " .wb-live-plot");
      if (!host || !host.__wbShow) return false;
      host.__wbShow(figure);
    }
    const head = document.querySelector("#run-header .wb-header[data-run]");
    if (head) head.outerHTML = update.header;
    return true;
  }
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { close(); clearTimeout(retry); retry = null; } else connect();
  });
  connect();
})();
</script>"""


def page_script(poll_seconds: float) -> str:
    """The page's script, then the live panels' light renderer (canvasplot.js, ``window.__wbCanvasPlot``)."""
    from importlib.resources import files

    canvas = files("workbench.app").joinpath("canvasplot.js").read_text(encoding="utf-8")
    return (
        (
            _SCRIPT.replace("__PERIOD_MS__", str(max(100, int(poll_seconds * 1000))))
            .replace("__WAIT_S__", json.dumps(LONG_POLL_S))
            .replace("__STREAM__", json.dumps(STREAM_PATH))
            .replace("__BUTTON__", json.dumps(REFRESH_ELEM_ID))
            .replace("__ROOT__", ROOT_JS)
        )
        + '<script data-workbench="canvasplot">\n'
        + canvas
        + "</script>"
    )


class PageMiddleware:
    """ASGI middleware over the Gradio app: the page script in every HTML page (GET), and the version
    and live endpoints.  ``store``: the app's RunStore; ``poll_seconds``: the dashboard's refresh
    period; ``live(run_id, steps=, evals=)``: the live path's JSON text or None (train.live_update)."""

    def __init__(self, app, *, store, poll_seconds: float, live) -> None:
        self.app = app
        self.live = live
        self.script = page_script(poll_seconds).encode()
        self.watch = VersionWatch(store.version, poll_seconds)
        self._plotly_js: bytes | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "").rstrip("/")
        root = scope.get("root_path", "").rstrip("/")
        if path in (VERSION_PATH, root + VERSION_PATH):
            await self._version(scope, receive, send)
            return
        if path in (LIVE_PATH, root + LIVE_PATH):
            await self._live(scope, send)
            return
        if path in (STREAM_PATH, root + STREAM_PATH):
            await self._stream(scope, receive, send)
            return
        if path in (PLOTLY_PATH, root + PLOTLY_PATH):
            await self._plotly(send)
            return
        start: dict | None = None
        body: list[bytes] = []

        async def patched_send(message):
            nonlocal start
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                is_html = headers.get(b"content-type", b"").startswith(b"text/html")
                if is_html and b"content-encoding" not in headers:
                    start = message  # held back: the length changes
                    return
                await send(message)
            elif message["type"] == "http.response.body" and start is not None:
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                page = b"".join(body)
                head = page.find(b"<head>")
                if head >= 0 and self.script not in page:
                    page = page[: head + 6] + self.script + page[head + 6 :]
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(page)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": page})
            else:
                await send(message)

        await self.app(scope, receive, patched_send)

    async def _plotly(self, send) -> None:
        """The plotly package's own plotly.js bundle (a public library file: no login needed)."""
        if self._plotly_js is None:
            from importlib.resources import files

            self._plotly_js = files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/javascript; charset=utf-8"),
                    (b"cache-control", b"public, max-age=86400"),
                    (b"content-length", str(len(self._plotly_js)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self._plotly_js})

    async def _live(self, scope, send) -> None:
        """``?run=ID&steps=N&evals=M`` -> 200 with ``live(ID, steps=N, evals=M)``'s JSON, or 204 when
        only a Gradio refresh can update that page; 400 for a malformed query, 401 without login."""
        import anyio

        query = await _query(scope, send)
        if query is None:
            return
        try:
            run_id = query["run"][0]
            steps, evals = int(query["steps"][0]), int(query["evals"][0])
        except (KeyError, IndexError, ValueError):
            await _respond(send, 400, b"expected ?run=ID&steps=N&evals=M")
            return
        text = await anyio.to_thread.run_sync(lambda: self.live(run_id, steps=steps, evals=evals))
        if text is None:
            await _respond(send, 204, b"")
        else:
            await _respond(send, 200, text.encode(), content_type=b"application/json")

    async def _version(self, scope, receive, send) -> None:
        """The store's version token.  ``?since=TOKEN&wait=S`` (the page's long-poll): answer when the
        version differs from TOKEN, or after S seconds (at most LONG_POLL_S) with the same TOKEN; the
        store is read once per ``poll_seconds`` however many pages wait.  401 without login."""
        query = await _query(scope, send)
        if query is None:
            return
        try:
            since = query.get("since", [None])[0]
            wait = min(max(float(query.get("wait", ["0"])[0]), 0.0), LONG_POLL_S) if since is not None else 0.0
        except ValueError:
            await _respond(send, 400, b"expected ?since=TOKEN&wait=SECONDS")
            return
        version = await self.watch.read(max_age=0.0)
        if version == since and wait > 0:
            gone = asyncio.ensure_future(_disconnected(receive))
            try:
                version = await self.watch.changed(since, wait, gone)
            finally:
                gone.cancel()
            if version is None:
                return  # the page went away (closed, or hidden and aborted): nobody to answer
        await _respond(send, 200, version.encode())

    async def _stream(self, scope, receive, send) -> None:
        """The page's stream (server-sent events).  ``?since=TOKEN&wait=S[&run=ID&steps=N&evals=M]``:
        whenever the store's version differs from the last one sent (first: TOKEN), a ``live`` event
        (``{"version", "update"}``: ``live(ID, ...)``'s JSON, for a page showing N steps and M
        evaluations of the running run ID, then N and M follow what was sent) or, when there is no
        such run or only a Gradio refresh can update the page, a ``refresh`` event (the version) that
        ends the stream.  It also ends after S seconds (at most LONG_POLL_S) with nothing new, or
        after STREAM_S in all.  400 for a malformed query, 401 without login."""
        import anyio

        query = await _query(scope, send)
        if query is None:
            return
        try:
            since = query.get("since", [""])[0]
            wait = min(max(float(query.get("wait", [str(LONG_POLL_S)])[0]), 0.1), LONG_POLL_S)
            run_id = query.get("run", [None])[0]
            steps, evals = int(query.get("steps", ["0"])[0]), int(query.get("evals", ["0"])[0])
        except ValueError:
            await _respond(send, 400, b"expected ?since=TOKEN&wait=SECONDS[&run=ID&steps=N&evals=M]")
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        gone = asyncio.ensure_future(_disconnected(receive))
        end = time.monotonic() + STREAM_S
        try:
            while not gone.done() and time.monotonic() < end:
                version = await self.watch.read(max_age=self.watch.period / 2)
                if version == since:
                    version = await self.watch.changed(since, min(wait, max(end - time.monotonic(), 0.0)), gone)
                if version is None or version == since:
                    break  # the page went away, or nothing new for `wait`: the page opens the next stream
                since = version
                text = None
                if run_id is not None:
                    text = await anyio.to_thread.run_sync(lambda: self.live(run_id, steps=steps, evals=evals))
                if text is None:
                    await send({"type": "http.response.body", "body": _event("refresh", version), "more_body": True})
                    break
                counts = _COUNTS.match(text)
                steps, evals = int(counts.group(1)), int(counts.group(2))
                data = f'{{"version": {json.dumps(version)}, "update": {text}}}'
                await send({"type": "http.response.body", "body": _event("live", data), "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except OSError:
            pass  # the connection went away while writing
        finally:
            gone.cancel()


class VersionWatch:
    """The run store's version for every open stream and long-poll: one store read (in a worker
    thread, off the event loop) per ``period`` while any page waits, shared by all of them."""

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


async def _query(scope, send) -> dict[str, list[str]] | None:
    """The request's query parameters; None (after answering 401) without the app's login."""
    if not await _logged_in(scope):
        await _respond(send, 401, b"log in first")
        return None
    return parse_qs(scope.get("query_string", b"").decode("latin-1"))


# the counts that live_update's JSON starts with: what the page shows after this update
_COUNTS = re.compile(r'\{"steps": (\d+), "evals": (\d+),')


def _event(name: str, data: str) -> bytes:
    """One server-sent event; each line of ``data`` its own ``data:`` field (the browser rejoins them)."""
    return (f"event: {name}\n" + "".join(f"data: {line}\n" for line in data.split("\n")) + "\n").encode()


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(send, status: int, body: bytes, *, content_type: bytes = b"text/plain") -> None:
    headers = [(b"content-type", content_type), (b"cache-control", b"no-store")]
    if status != 204:
        headers.append((b"content-length", str(len(body)).encode()))
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
