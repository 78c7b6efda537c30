"""Helpers every tab uses: error messages instead of tracebacks, and the page's styling."""

from __future__ import annotations

import html
import logging

from workbench.errors import UserError

log = logging.getLogger("workbench.app")

CSS = """
.wb-error { color: #b00020; font-weight: 500; min-height: 0; }
.wb-error p { margin: 2px 0; }
.wb-ok { color: #1b5e20; }
.wb-header { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: center; padding: 10px 14px;
             border: 1px solid #e0e0e0; border-radius: 8px; background: #fafafa; }
.wb-header .wb-title { font-size: 15px; flex: 1 1 320px; }
.wb-header .wb-eps { font-size: 28px; font-weight: 700; color: #2ca02c; font-variant-numeric: tabular-nums; }
.wb-header .wb-eps small { font-size: 13px; color: #666; font-weight: 400; }
.wb-bar { flex: 1 1 100%; height: 10px; background: #e8e8e8; border-radius: 5px; overflow: hidden; }
.wb-bar > div { height: 100%; background: #1f77b4; transition: width 0.5s; }
.wb-progress { flex: 1 1 100%; font-size: 13px; color: #333; font-variant-numeric: tabular-nums; }
.wb-badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; color: white; }
.wb-hidden { display: none !important; }
.wb-dash .wb-row { display: flex; gap: 8px; }
.wb-dash .wb-row > .wb-live-plot { flex: 1 1 0; min-width: 0; }
.wb-live-plot { position: relative; contain: layout paint; margin-top: 8px; }
.wb-chart-title { font-size: 14px; font-weight: 600; margin: 4px 0 0 8px; }
.wb-note { position: absolute; top: 45%; width: 100%; text-align: center; color: #7f7f7f; pointer-events: none; }
.wb-readout { position: absolute; top: 4px; right: 8px; font-size: 12px; color: #333; }
.wb-dash .u-legend { font-size: 12px; margin: 0 auto; border: none; width: auto; }
.wb-dash .u-legend tr, .wb-dash .u-legend th, .wb-dash .u-legend td { border: none !important; padding: 0 3px !important;
  background: none !important; font-weight: 400; }
.wb-dash .u-legend .u-series > * { padding: 0 2px !important; }
.wb-gen-title { font-size: 14px; font-weight: 600; margin: 12px 0 4px 8px; }
#generations { max-height: 320px; overflow: auto; }
#generations table { width: 100%; border-collapse: collapse; font-size: 13px; }
#generations th, #generations td { border-bottom: 1px solid #eee; padding: 3px 6px; text-align: left; vertical-align: top; }
.wb-reason { flex: 1 1 100%; font-size: 13px; color: #b00020; }
.wb-baseline { flex: 1 1 100%; font-size: 13px; color: #333; font-variant-numeric: tabular-nums; }
.wb-protects { flex: 1 1 100%; font-size: 12px; color: #555; }
.wb-telemetry { font-size: 11px; color: #8a6d3b; margin: 0 8px; line-height: 1.3; }
"""


def error_text(err: BaseException) -> str:
    """A user error as one Markdown line; anything else is logged with its traceback and summarised."""
    if isinstance(err, UserError):
        message = str(err).strip() or type(err).__name__
    else:
        log.exception("unexpected error in an app callback")
        message = f"internal error ({type(err).__name__}: {err}). The server log has the details."
    return "⚠️ " + html.escape(message)


def badge(status: str) -> str:
    from workbench.present import STATUS_COLORS

    color = STATUS_COLORS.get(status, "#7f7f7f")
    return f'<span class="wb-badge" style="background:{color}">{html.escape(status)}</span>'
