"""The script placed first in the app's HTML page, and the tiny endpoint its poller reads.

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
   The script long-polls ``<root>/workbench/version?since=TOKEN`` (``RunStore.version()``: a
   16-character token that changes when any run is written): the server holds the request until
   the token differs (it reads the store once per ``poll_seconds`` for all waiting pages) or 15 s
   pass.  A page that asked once a second cost the browser about 100 thread wake-ups and
   0.02-0.04 CPU-s a second, and that alone took 10 % off a training run on the same 2 cores; a
   waiting page costs nothing.  The page acts on a change at most once per ``poll_seconds``.
   While the run on show is running, it then GETs ``<root>/workbench/live`` (``train.live_update``:
   the header and the live panels as JSON) and draws them itself, so a step costs no Gradio event
   at all; otherwise (the run ended, another run is followed, a new evaluation) it clicks the Train
   tab's hidden refresh button, and that refresh sends only the panels that changed.

3. Redraws.  Gradio's Plot component re-creates its Plotly div for every new value (a ``{#key}``
   block) and draws twice: once into the old div, once into the new one, each a full Plotly render
   (20-70 ms of JavaScript here, plus the repaint).  The Train tab's live panels are therefore
   ``workbench.app.liveplot`` panels: a ``gr.HTML`` whose script keeps one Plotly div and calls
   ``Plotly.react`` on it once per new value.  That module also serves Plotly's own bundle at
   ``<root>/workbench/plotly.min.js`` (from the plotly package), for pages where Gradio has not
   loaded its copy yet.

``launch(head=...)`` cannot carry the script: Gradio adds that HTML after its modules have loaded,
when the status tracker already holds the original ``requestAnimationFrame``.  Hence this ASGI
middleware, which inserts the script right after ``<head>`` of the HTML pages the app serves and
answers the version and live endpoints itself (behind the app's login when ``--auth`` is set).  No library
offers either, so both are ours.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import parse_qs

from workbench.app.liveplot import PLOTLY_PATH, ROOT_JS

VERSION_PATH = "/workbench/version"
LIVE_PATH = "/workbench/live"
REFRESH_ELEM_ID = "wb-refresh"
# How long the version endpoint holds a request whose ``since`` is still current.  Short enough that
# a server shutdown or a proxy's idle timeout never waits on it for long.
LONG_POLL_S = 15.0

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
  // 2. The dashboard's poll: a long-poll of the store's version (the server answers when it differs
  // from `since`, or after WAIT_S), so a page costs no wake-up while nothing changes; acted on at most
  // once per PERIOD_MS, with a Gradio event only when the live path cannot do.
  const PERIOD_MS = __PERIOD_MS__, WAIT_S = __WAIT_S__, PATH = __PATH__, LIVE = __LIVE__, BUTTON = __BUTTON__;
  let last = null, waiting = null;  // waiting: the pending request's AbortController
  async function poll() {
    if (waiting || document.hidden) return;  // a hidden tab holds no request (browsers allow 6 a host)
    waiting = new AbortController();
    let again = PERIOD_MS;  // ms before the next request
    try {
      again = await check(waiting.signal);
    } catch (err) {
      // aborted (the tab was hidden), or the server is restarting: Gradio shows its own message
    } finally {
      waiting = null;
    }
    if (!document.hidden) setTimeout(poll, again);
  }
  async function check(signal) {
    const query = last === null ? "" : "?" + new URLSearchParams({ since: last, wait: WAIT_S });
    const response = await fetch(__ROOT__ + PATH + query, { cache: "no-store", credentials: "same-origin", signal });
    if (!response.ok) return PERIOD_MS;
    const version = await response.text();
    if (version === last) return 0;  // the wait ran out with nothing new: ask again at once
    if (!(await live())) {
      const button = document.getElementById(BUTTON);
      if (!button) return PERIOD_MS;  // the Train tab is not drawn yet: try again
      button.click();
    }
    last = version;
    return PERIOD_MS;
  }
  // 3. The live path: while the run on show is running and has no new evaluation, the header and
  // the live panels come from <root>/workbench/live and are drawn here, with no Gradio event.
  // False: the Gradio refresh must run (nothing on show, the run ended, a new evaluation).
  async function live() {
    const head = document.querySelector("#run-header .wb-header[data-run]");
    if (!head || head.dataset.status !== "running") return false;
    const query = new URLSearchParams({ run: head.dataset.run, steps: head.dataset.steps, evals: head.dataset.evals });
    const response = await fetch(__ROOT__ + LIVE + "?" + query, { cache: "no-store", credentials: "same-origin" });
    if (response.status !== 200) return false;  // 204: only a Gradio refresh can update the page
    const update = await response.json();
    for (const [id, figure] of Object.entries(update.panels)) {
      const host = document.querySelector("#" + id + " .wb-live-plot");
      if (!host || !host.__wbShow) return false;
      host.__wbShow(figure);
    }
    head.outerHTML = update.header;
    return true;
  }
  document.addEventListener("visibilitychange", () => { if (document.hidden) waiting?.abort(); else poll(); });
  poll();
})();
</script>"""


def page_script(poll_seconds: float) -> str:
    return (_SCRIPT.replace("__PERIOD_MS__", str(max(100, int(poll_seconds * 1000))))
            .replace("__WAIT_S__", json.dumps(LONG_POLL_S))
            .replace("__PATH__", json.dumps(VERSION_PATH)).replace("__LIVE__", json.dumps(LIVE_PATH))
            .replace("__BUTTON__", json.dumps(REFRESH_ELEM_ID))
            .replace("__ROOT__", ROOT_JS))


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
                    page = page[: head + 6] + self.script + page[head + 6:]
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
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/javascript; charset=utf-8"),
                                (b"cache-control", b"public, max-age=86400"),
                                (b"content-length", str(len(self._plotly_js)).encode())]})
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
            version = await self.watch.changed(since, wait, receive)
            if version is None:
                return  # the page went away (closed, or hidden and aborted): nobody to answer
        await _respond(send, 200, version.encode())


class VersionWatch:
    """The run store's version for the long-polls of every open page: one store read (in a worker
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

    async def changed(self, since: str, wait: float, receive) -> str | None:
        """The version once it differs from ``since``, or ``since`` after ``wait`` seconds; None when
        the client disconnects first."""
        deadline = time.monotonic() + wait
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
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
        finally:
            gone.cancel()


async def _query(scope, send) -> dict[str, list[str]] | None:
    """The request's query parameters; None (after answering 401) without the app's login."""
    if not await _logged_in(scope):
        await _respond(send, 401, b"log in first")
        return None
    return parse_qs(scope.get("query_string", b"").decode("latin-1"))


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
