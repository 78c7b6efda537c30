"""The one patch of Gradio's internals the app keeps: its status tracker's frame loop, at 10 Hz.

Gradio 6's status tracker (its ``statustracker-*.js`` module) animates an elapsed-time counter with
a ``requestAnimationFrame`` loop, and a tracker removed while its event is pending never stops that
loop: every Gradio page, even an idle one, renders 60 frames a second.  Measured on this 2-core
machine with the app idle on the Train tab in a headless Chromium (``benchmarks/idle_page.py``):
0.118 browser CPU-s a second without this patch and 0.022 with it on a quiet machine (60 frames a
second, then none asked of the browser), about 4.8 % of the two cores that also train; ``benchmarks/app_overhead.py
--no-frame-patch`` measures it against training throughput.  The issue that asked for one live path
allowed a patch only where it is worth more than 3 % of training throughput; this one is, so it
stays, here and nowhere else.

The script routes the frame requests of that module (only those: it looks at the caller's script
name in the stack) through a 100 ms timer while a tracker shows its elapsed time on the page (its
``.progress-text``; the counter shows tenths of a second, so it looks the same), and through a 1 s timer
otherwise: then the loops asking are those of trackers already removed, which draw nothing.  On an
idle page those orphaned loops were about half of the renderer's CPU at 100 ms (a CPU profile of the
Train tab: some 200 timer tasks in 20 s).  If a Gradio release renames the module, the patch does nothing, and
``tests/app/test_live.py`` fails (it checks the module exists and still asks for frames, and a
browser test counts the frames of an idle page).

``launch(head=...)`` cannot carry the script: Gradio adds that HTML after its modules have loaded,
when the tracker already holds the original ``requestAnimationFrame``.  So an ASGI middleware puts
it right after ``<head>`` of the HTML pages the app serves.  ``WORKBENCH_FRAME_PATCH=0`` turns it
off (to measure it).
"""

from __future__ import annotations

import os

GRADIO_MODULE = "statustracker-"  # the name of the Gradio module whose frames are slowed

SCRIPT = b"""<script data-workbench="frames">
(() => {
  const raf = window.requestAnimationFrame.bind(window), caf = window.cancelAnimationFrame.bind(window);
  const timers = new Map();
  let next = -1;
  window.requestAnimationFrame = function (callback) {
    if (!(new Error().stack || "").includes("/statustracker-")) return raf(callback);
    const id = next--;  // negative ids: never equal to a real frame request's
    // 10 Hz while a tracker shows its timer on the page; 1 Hz for the loops of trackers already removed
    const wait = document.querySelector(".progress-text") ? 100 : 1000;
    timers.set(id, setTimeout(() => { timers.delete(id); callback(performance.now()); }, wait));
    return id;
  };
  window.cancelAnimationFrame = function (id) {
    if (timers.has(id)) { clearTimeout(timers.get(id)); timers.delete(id); } else caf(id);
  };
})();
</script>"""


def enabled() -> bool:
    return os.environ.get("WORKBENCH_FRAME_PATCH", "1") != "0"


class FramePatchMiddleware:
    """Inserts ``SCRIPT`` right after ``<head>`` in the HTML pages the app serves (GET, uncompressed)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        start: dict | None = None
        body: list[bytes] = []

        async def patched_send(message):
            nonlocal start
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if headers.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in headers:
                    start = message  # held back: the length changes
                    return
                await send(message)
            elif message["type"] == "http.response.body" and start is not None:
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                page = b"".join(body)
                head = page.find(b"<head>")
                if head >= 0 and SCRIPT not in page:
                    page = page[: head + 6] + SCRIPT + page[head + 6 :]
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(page)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": page})
            else:
                await send(message)

        await self.app(scope, receive, patched_send)
