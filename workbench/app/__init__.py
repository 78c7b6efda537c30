"""The Gradio workbench: Plan, Train, Compare and Runs tabs over the run store.

``build_app()`` returns the ``gr.Blocks``; ``launch()`` serves it (``workbench app``).  Nothing is
built at import time, and importing this package does not import gradio.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["build_app", "launch", "serve"]


def build_app(
    store=None,
    *,
    defaults: Mapping[str, Any] | None = None,
    max_upload_mb: int = 50,
    poll_seconds: float | None = None,
    workshop=None,
):
    """Build the app over ``store`` (default: the RunStore under $WORKBENCH_HOME).

    ``defaults``: RunConfig overrides that preset the controls, e.g. ``{"model": "tiny"}``.
    ``poll_seconds``: how often the dashboard's stream reads whether the run store changed (default
    1, or the environment variable WORKBENCH_APP_POLL_SECONDS); the page redraws only then.
    The app's shared state is ``app.workbench`` (an ``AppContext``), for tests and tooling.
    ``workshop``: a ``workbench.app.workshop.Workshop`` over the same store (``workbench app --workshop``): each
    participant sees their own runs, runs go through its fair queue, and a Workshop tab shows the queue and the class
    view; ``serve`` then logs people in through it. None: the app as it always was.
    """
    # Gradio summarises per-event analytics in a pandas DataFrame after every event, monitoring on
    # or off; with browsers polling each second that is CPU taken from training. Its queue reads
    # these when the Blocks is created.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(10**9))
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "100")
    import gradio as gr

    from workbench.app import compare as compare_tab
    from workbench.app import federated as federated_tab
    from workbench.app import plan as plan_tab
    from workbench.app import runs as runs_tab
    from workbench.app import sweep_panel
    from workbench.app import train as train_tab
    from workbench.app.live import SHOW_TRAIN_JS, selection_value, stream_key_api
    from workbench.app.state import AppContext, Selection
    from workbench.config import RunConfig
    from workbench.store.runs import RunStore

    RunConfig().with_overrides(dict(defaults or {}))  # a bad default fails here, with its message
    ctx = AppContext(store or RunStore(), defaults=dict(defaults or {}), max_upload_mb=max_upload_mb)
    if workshop is not None:
        ctx.store, ctx.workshop = workshop.store, workshop
    with gr.Blocks(title="DP Workbench", delete_cache=(3600, 3600)) as app:
        selection = gr.State(Selection())
        gr.Markdown("## DP Workbench · differentially private LoRA fine-tuning")
        with gr.Tabs(selected="plan"):
            with gr.Tab("Plan", id="plan"):
                plan = plan_tab.build(ctx)
            with gr.Tab("Train", id="train"):
                train = train_tab.build(ctx, plan, selection)
            with gr.Tab("Compare", id="compare") as compare_page:
                compare = compare_tab.build(ctx, compare_page, selection, train.dashboard)
            with gr.Tab("Runs", id="runs") as runs_page:
                runs = runs_tab.build(ctx, runs_page, selection, train.dashboard)
            federated_tab.mount(ctx, {**plan.components, **train.components})  # none in workshop mode
            if ctx.workshop is not None:
                from workbench.app import workshop as workshop_tab

                with gr.Tab("Workshop", id="workshop") as workshop_page:
                    class_view = workshop_tab.build_tab(ctx)
                workshop_page.select(
                    class_view["show"], None, class_view["outputs"], api_visibility="private", show_progress="hidden"
                )
        runs["opened"].then(None, train.dashboard, None, js=SHOW_TRAIN_JS)
        compare["opened"].then(None, train.dashboard, None, js=SHOW_TRAIN_JS)
        # the Plan tab's Sweep panel starts from the Plan and Train tabs' values, as Start does
        sweep = plan.sweep
        sweep_panel.wire(ctx, sweep, {**plan.components, **train.components})
        gr.on(  # the sweep's progress line follows the Runs tab's refresh too
            [runs_page.select, runs["refresh"].click],
            lambda: sweep_panel.progress_text(ctx),
            None,
            sweep.progress,
            api_visibility="private",
            show_progress="hidden",
        )

        from workbench.app.workshop import takes_request, user_of

        @takes_request
        def on_load(request=None):
            # the newest active run (and the Train tab brought forward), else the newest run (of the user's)
            user = user_of(request)
            chosen = ctx.default_selection(user)
            return chosen, selection_value(chosen, show=ctx.newest_active(user) is not None)

        app.load(on_load, None, [selection, train.dashboard], api_visibility="private", show_progress="hidden").then(
            None, train.dashboard, None, js=SHOW_TRAIN_JS
        )
        app.load(**plan.load, api_visibility="private", show_progress="hidden")
        app.load(  # a page opened while this server runs a sweep: its progress line, refreshed
            lambda: sweep_panel.on_load(ctx),
            None,
            [sweep.progress, sweep.timer],
            api_visibility="private",
            show_progress="hidden",
        )
        stream_key_api(ctx)  # the live stream's key, for logged-in pages (workbench/app/live.py)
    app.workbench = ctx
    app.plan_warm = plan.warm
    app.poll_seconds = poll_seconds or float(os.environ.get("WORKBENCH_APP_POLL_SECONDS") or train_tab.POLL_SECONDS)
    app.max_upload_mb = max_upload_mb
    return app


def serve(
    app,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    share: bool = False,
    auth: str | None = None,
    block: bool = True,
    quiet: bool = False,
    warm: bool = False,
):
    """Launch a built app with the workbench's safety settings; returns (fastapi app, local url, share url).
    Only ``launch()``'s documented parameters: the live stream's routes go to Gradio's FastAPI app through
    ``app_kwargs`` (workbench/app/live.py), behind the login when ``auth`` is set. ``warm``: in workshop mode,
    plan the settings a room is likely to try first in the background (app/plan.py, ``warm_plans``)."""
    from starlette.middleware import Middleware

    from workbench.app import frames, live
    from workbench.app.common import CSS

    ctx = app.workbench
    credentials = tuple(auth.split(":", 1)) if auth else None
    home = Path(ctx.store.home)
    routes = live.router(ctx, poll_seconds=app.poll_seconds, login=credentials is not None or ctx.workshop is not None)
    routes = list(routes.routes)
    login, message = credentials, None
    if ctx.workshop is not None:  # Gradio's login asks the workshop (app/workshop.py); joining has a page of its own
        from workbench.app.workshop import JOIN_PATH, join_routes

        login = ctx.workshop.auth
        message = "Log in with your workshop name and password."
        if ctx.workshop.join_code:
            routes += join_routes(ctx)
            message += f' New here? <a href="{JOIN_PATH}">Join with the workshop\'s code</a> first.'

    if ctx.workshop is not None:  # the runs train in worker processes: the server's own threads yield to them
        ctx.workshop.yield_to_training()
    if warm and getattr(app, "plan_warm", None):  # workshop mode: the likely settings' plans, before the room asks
        from workbench.app.plan import warm_plans

        warm_plans(ctx, app.plan_warm)
    return app.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=login,
        auth_message=message,
        max_file_size=f"{app.max_upload_mb}mb",
        enable_monitoring=False,
        mcp_server=False,
        ssr_mode=False,
        show_error=False,
        footer_links=["gradio", "settings"],
        blocked_paths=[str(home / "uploads"), str(home / "runs"), str(home / "runs.sqlite")],
        prevent_thread_lock=not block,
        quiet=quiet,
        css=CSS,
        theme="soft",
        # the live dashboard's stream and static files (workbench/app/live.py); Gradio's idle frame loop
        # slowed (workbench/app/frames.py)
        app_kwargs={
            "routes": routes,
            "middleware": [Middleware(frames.FramePatchMiddleware)] if frames.enabled() else [],
        },
    )


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    auth: str | None = None,
    max_upload_mb: int = 50,
    defaults: Mapping[str, Any] | None = None,
    workshop: Mapping[str, Any] | None = None,
) -> None:
    """Serve the workbench until interrupted (``workbench app``): default model, demo data preselected
    (``defaults``: RunConfig keys that preset the controls, e.g. those of assets/demo.yaml). ``workshop``: the
    keywords of ``Workshop.from_options`` (participants_file, join_code, instructor, slots, max_queued)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if share and not auth and not workshop:
        raise ValueError("share=True publishes the app on the internet; pass auth='USER:PASS' too.")
    room = None
    if workshop is not None:
        from workbench.app.workshop import Workshop
        from workbench.store.runs import RunStore

        room = Workshop.from_options(RunStore(), **workshop)  # runs train in worker processes (training_pool.py)
    serve(
        build_app(max_upload_mb=max_upload_mb, defaults=defaults, workshop=room),
        host=host,
        port=port,
        share=share,
        auth=auth,
        block=True,
        warm=True,
    )
