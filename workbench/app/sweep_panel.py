"""The Plan tab's Sweep panel: one or two settings with their values, a number of seeds, the grid's size and its
total privacy cost before anything trains, and "Start sweep".

The sweep is the one ``workbench sweep`` runs (workbench/sweeps.py): the same grid parsing and validation
(``parse_grid``, ``validate``), the same stored group (``create_sweep``) and the same loop (``execute``), here on a
background thread of the app's process. Each run is a ``Session`` like the Train tab's, so it queues on the device
behind any other run and its Stop button stops it; its runs appear in the Runs tab, the sweep in the Compare tab's
picker. The base settings are the Plan and Train tabs' current values (``forms.config_from_values``, as Start).
"""

from __future__ import annotations

import html
import logging
import threading
from dataclasses import dataclass
from typing import Any, Sequence

from workbench.app import forms
from workbench.app.common import error_text
from workbench.app.state import AppContext
from workbench.config import ConfigError, RunConfig
from workbench.errors import UserError

log = logging.getLogger("workbench.app")

# The settings offered (any RunConfig key can be typed: the sweep's validation names unknown ones).
KNOBS = [
    ("target ε", "target_epsilon"),
    ("noise multiplier σ", "noise_multiplier"),
    ("expected batch size B", "batch_size"),
    ("steps T", "max_steps"),
    ("epochs", "epochs"),
    ("learning rate", "learning_rate"),
    ("clipping norm C", "max_grad_norm"),
    ("LoRA r", "lora_r"),
    ("max examples per user k", "max_examples_per_user"),
    ("noise allocation", "allocation"),
]
NO_KNOB = ("(none)", "")
# Sweeping one of a pair clears the other in the base: a noise sweep is not capped by the Plan tab's target ε.
PARTNERS = {
    "noise_multiplier": {"target_epsilon": None},
    "target_epsilon": {"noise_multiplier": None},
    "max_steps": {"epochs": None},
    "epochs": {"max_steps": None},
}
MAX_RUNS = 48  # larger sweeps: `workbench sweep` (resumable from a terminal)
ENDED = ("finished", "stopped", "failed")
TIMER_SECONDS = 5.0  # the progress line's refresh while a sweep runs (the app avoids chatty polling)


class SweepInputError(UserError, ValueError):
    """Bad values in the panel; the message says what to change."""


@dataclass(frozen=True)
class SweepRequest:
    """The panel's values, checked: the base config, the grid as ``--grid`` items, the seeds, the members."""

    base: RunConfig
    items: list[str]
    seeds: int
    members: list[tuple[str, dict[str, Any]]]
    keys: list[str]


def _message(err: BaseException) -> str:
    """A sweep's or the panel's error as Markdown (a list of problems stays a list); others via error_text."""
    from workbench.sweeps import SweepError

    if isinstance(err, (SweepError, SweepInputError)):
        return "⚠️ " + html.escape(str(err), quote=False).replace("\n  - ", "\n- ").replace(":\n- ", ":\n\n- ", 1)
    return error_text(err)


def request(ctx: AppContext, values: dict[str, Any], knobs: Sequence[tuple[Any, Any]], seeds: Any) -> SweepRequest:
    """Check the panel: ``knobs`` are (setting, "v1, v2, ...") pairs (an empty setting is unused), ``seeds`` a count.
    Raises SweepError / SweepInputError / the config's errors with a message."""

    from workbench.sweeps import parse_grid, parse_seeds, validate

    items, keys = [], []
    for key, text in knobs:
        key, text = str(key or "").strip(), str(text or "").strip()
        if not key:
            if text:
                raise SweepInputError(f"values {text!r} have no setting: choose the setting they are for.")
            continue
        items.append(f"{key}={text}")
        keys.append(key)
    try:
        count = forms.whole_number("seeds", seeds)
    except Exception:  # noqa: BLE001 - its own message below
        raise SweepInputError(f"seeds must be a whole number ≥ 1 (runs per setting). Found {seeds!r}.") from None
    if not items and count == 1:
        raise SweepInputError("the grid is empty: choose a setting and type its values (e.g. 2, 4, 8), or 2 seeds.")
    config = forms.config_from_values(values, base=forms.ctx_base(ctx))
    forms.check_model(config.model)
    pairs = parse_grid(items)
    partners: dict[str, Any] = {}
    for key in keys:
        partners.update({k: v for k, v in PARTNERS.get(key, {}).items() if k not in keys})
    base = config
    if partners:  # e.g. a noise sweep from the target mode: no target in the base, the first σ in its place
        try:
            base = config.with_overrides({**partners, **{k: v[0] for k, v in pairs if v}})
        except ConfigError:
            pass  # a bad first value: the validation below names it with the others
    members = validate(base, pairs, parse_seeds(count, base.seed))
    if len(members) > MAX_RUNS:
        raise SweepInputError(
            f"this grid has {len(members)} runs; the app runs at most {MAX_RUNS}. Use fewer values or seeds, or "
            "`workbench sweep` in a terminal for a larger sweep."
        )
    return SweepRequest(base, items, count, members, keys)


def _sizes(cfg: RunConfig) -> tuple[int, int | None]:
    return forms.info_for(cfg.data, cfg).sizes(cfg)


def _checked(ctx: AppContext, values: dict[str, Any], knobs: Sequence[tuple[Any, Any]], seeds: Any):
    """(request, its preview text): every run's plan made (sigma calibrated, batch and delta checked against the
    data) and their total privacy cost."""
    from workbench.present.sweeps import cost_line
    from workbench.sweeps import planned_cost

    req = request(ctx, values, knobs, seeds)
    cost = planned_cost(req.base, req.members, sizes=_sizes)
    return req, grid_text(req) + "\n\n**Privacy**: " + cost_line(cost)


def preview(ctx: AppContext, values: dict[str, Any], knobs: Sequence[tuple[Any, Any]], seeds: Any) -> tuple[str, str]:
    """(the grid's size, its runs and their total privacy cost, error): what "Start sweep" would train."""
    try:
        return _checked(ctx, values, knobs, seeds)[1], ""
    except Exception as err:  # noqa: BLE001 - a message beside the panel
        return "", _message(err)


def grid_text(req: SweepRequest) -> str:
    """'**8 runs** = target_epsilon (2 values) × batch_size (2 values) × 2 seeds: eps2-B16-s0, ...'."""
    factors = []
    for item in req.items:
        key, _, raw = item.partition("=")
        n = len([v for v in raw.split(",") if v.strip()])
        factors.append(f"{key} ({n} value{'s' if n != 1 else ''})")
    if req.seeds > 1:
        factors.append(f"{req.seeds} seeds")
    labels = [label for label, _ in req.members]
    shown = ", ".join(f"`{label}`" for label in labels[:6]) + (", …" if len(labels) > 6 else "")
    n = len(labels)
    return f"**{n} run{'s' if n != 1 else ''}** = {' × '.join(factors)}: {shown}"


class SweepJob:
    """One sweep run by this server on a background thread (``sweeps.execute``); each of its runs is a Session
    registered in ``ctx.sessions`` (so the Train tab's Stop stops it)."""

    def __init__(self, ctx: AppContext, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.error = ""
        self.current = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"workbench-sweep-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _on_session(self, session) -> None:
        self.current = session
        self.ctx.sessions[session.run_id] = session

    def _run(self) -> None:
        from workbench.sweeps import execute

        try:
            execute(self.name, store=self.ctx.store, on_session=self._on_session, should_stop=self._stop.is_set)
        except Exception as err:  # noqa: BLE001 - shown in the progress line; the stored runs stay
            log.exception("sweep %s ended with an error", self.name)
            self.error = str(err) or type(err).__name__

    def stop(self) -> None:
        """Stop the run training now (within a step) and start no other; `workbench sweep resume` continues."""
        self._stop.set()
        if self.current is not None:
            self.current.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.done


def start(
    ctx: AppContext, values: dict[str, Any], knobs: Sequence[tuple[Any, Any]], seeds: Any, name: Any = None
) -> tuple[str, str, str]:
    """Check every run's plan, store the sweep and start it on a background thread; (error, preview, progress).
    The plans' calibrations are cached from the preview, so this is quick after it."""
    from workbench.sweeps import create_sweep

    try:
        req, text = _checked(ctx, values, knobs, seeds)
        rec = create_sweep(
            req.base,
            grid=req.items,
            seeds=req.seeds,
            name=str(name or "").strip() or None,
            store=ctx.store,
        )
    except Exception as err:  # noqa: BLE001 - a message beside the panel, nothing stored or started
        return _message(err), "", ""
    job = SweepJob(ctx, rec.name)
    ctx.sweep_jobs[rec.name] = job
    job.start()
    return (
        "",
        text,
        (
            f"Started sweep **{rec.name}**: {len(rec.members)} runs, one at a time (queued behind any other run on the "
            "device). Its runs appear in the **Runs** tab; compare them in the **Compare** tab.\n\n"
            + progress_text(ctx)
        ),
    )


def latest_job(ctx: AppContext) -> SweepJob | None:
    return next(reversed(ctx.sweep_jobs.values()), None) if ctx.sweep_jobs else None


def progress_text(ctx: AppContext, name: str | None = None) -> str:
    """'sweep NAME: 3 of 8 runs done (3 finished, 1 running, 4 pending)' for ``name`` (default: the newest sweep
    this server started); '' when there is none."""
    from workbench.store.sweeps import SweepNotFound, SweepStore

    job = ctx.sweep_jobs.get(name) if name else latest_job(ctx)
    name = name or (job.name if job else None)
    if not name:
        return ""
    sweeps = SweepStore(ctx.store)
    try:
        rec = sweeps.get(name)
    except SweepNotFound as err:
        return "⚠️ " + html.escape(str(err), quote=False)
    counts = sweeps.counts(rec)
    done = sum(counts.get(s, 0) for s in ENDED)
    parts = ", ".join(f"{v} {k}" for k, v in counts.items())
    line = f"sweep {name}: {done} of {len(rec.members)} runs done ({parts})"
    if job is not None and job.error:
        line += f" · ⚠️ stopped by an error: {html.escape(job.error, quote=False)}"
    elif job is not None and job.done and done < len(rec.members):
        line += f" · stopped: `workbench sweep resume {name}` trains the rest"
    elif job is not None and job.stopping:
        line += " · stopping…"
    return line


def stop(ctx: AppContext) -> str:
    """Stop the newest running sweep this server started (its current run within a step)."""
    job = latest_job(ctx)
    if job is None or job.done:
        return progress_text(ctx) or "No sweep is running."
    job.stop()
    return progress_text(ctx)


def running(ctx: AppContext) -> bool:
    return any(not job.done for job in ctx.sweep_jobs.values())


def on_load(ctx: AppContext) -> tuple[Any, Any]:
    """On page load: the progress line and its timer while this server runs a sweep; nothing otherwise."""
    import gradio as gr

    if not running(ctx):
        return gr.skip(), gr.skip()
    return progress_text(ctx), gr.Timer(active=True)


# -- layout ---------------------------------------------------------------------------------------


@dataclass
class SweepControls:
    knobs: list[tuple[Any, Any]]  # (setting dropdown, values textbox) pairs
    seeds: Any
    name: Any
    check: Any
    start: Any
    stop: Any
    preview: Any
    error: Any
    progress: Any
    timer: Any

    @property
    def inputs(self) -> list[Any]:
        return [c for pair in self.knobs for c in pair] + [self.seeds]


def layout() -> SweepControls:
    """The panel's components (call inside the Plan tab's accordion); ``wire`` connects them once the Train tab's
    controls exist."""
    import gradio as gr

    gr.Markdown(
        "Train every combination of one or two settings × seeds, one run after another, from the Plan and Train "
        "tabs' current settings (the same sweep as `workbench sweep`)."
    )
    knobs = []
    for i, (default, placeholder) in enumerate((("target_epsilon", "2, 4, 8"), ("", "e.g. 0.1, 1"))):
        with gr.Row():
            choices = KNOBS if i == 0 else [NO_KNOB, *KNOBS]
            knob = gr.Dropdown(
                choices,
                value=default,
                allow_custom_value=True,
                label=f"Setting {i + 1}" + (" (optional)" if i else ""),
                elem_id=f"sweep-knob-{i + 1}",
                scale=2,
            )
            text = gr.Textbox(
                "", label="Values (comma-separated)", placeholder=placeholder, elem_id=f"sweep-values-{i + 1}", scale=3
            )
        knobs.append((knob, text))
    with gr.Row():
        seeds = gr.Number(1, label="Seeds per setting", precision=0, elem_id="sweep-seeds")
        name = gr.Textbox("", label="Sweep name (optional)", placeholder="sweep-DATE-TIME", elem_id="sweep-name")
    with gr.Row():
        check = gr.Button("Check grid and privacy cost", elem_id="sweep-check")
        start_btn = gr.Button("Start sweep", variant="primary", elem_id="sweep-start")
        stop_btn = gr.Button("Stop sweep", variant="stop", elem_id="sweep-stop")
    error = gr.Markdown("", elem_classes="wb-error", elem_id="sweep-error")
    preview_md = gr.Markdown("", elem_id="sweep-preview")
    progress = gr.Markdown("", elem_id="sweep-progress")
    timer = gr.Timer(TIMER_SECONDS, active=False)
    return SweepControls(knobs, seeds, name, check, start_btn, stop_btn, preview_md, error, progress, timer)


def wire(ctx: AppContext, c: SweepControls, form: dict[str, Any]) -> None:
    """Connect the panel: ``form`` holds the Plan and Train tabs' controls by name (passed to the callbacks by
    name, as Gradio's ``inputs_kwargs``)."""
    import gradio as gr

    from workbench.app.workshop import takes_request, user_of

    def on_preview(sweep_knob1, sweep_values1, sweep_knob2, sweep_values2, sweep_seeds, **values):
        return preview(ctx, values, [(sweep_knob1, sweep_values1), (sweep_knob2, sweep_values2)], sweep_seeds)

    @takes_request
    def on_start(
        sweep_knob1, sweep_values1, sweep_knob2, sweep_values2, sweep_seeds, sweep_name, request=None, **values
    ):
        if ctx.workshop is not None:  # a sweep's runs would bypass the fair queue: not in a workshop
            return (
                "⚠️ Sweeps are off in workshop mode: start runs one by one from the Train tab.",
                "",
                gr.skip(),
                gr.skip(),
            )
        knobs = [(sweep_knob1, sweep_values1), (sweep_knob2, sweep_values2)]
        error, text, line = start(ctx, values, knobs, sweep_seeds, sweep_name)
        if error:
            return error, "", gr.skip(), gr.skip()
        return "", text, line, gr.Timer(active=True)

    def on_tick():
        return progress_text(ctx), gr.Timer(active=running(ctx))

    inputs = c.inputs
    (knob1, text1), (knob2, text2) = c.knobs
    triggers = [c.check.click, knob1.input, knob2.input, text1.submit, text1.blur, text2.submit, text2.blur]
    triggers += [c.seeds.submit, c.seeds.blur]
    gr.on(
        triggers,
        on_preview,
        inputs,
        [c.preview, c.error],
        inputs_kwargs=form,
        api_visibility="private",
        trigger_mode="always_last",
        show_progress="minimal",
    )
    c.start.click(
        on_start,
        [*inputs, c.name],
        [c.error, c.preview, c.progress, c.timer],
        inputs_kwargs=form,
        api_visibility="private",
        concurrency_limit=1,
    )

    @takes_request
    def on_stop(request=None):
        if ctx.workshop is not None and not ctx.workshop.is_instructor(user_of(request)):
            return "⚠️ Sweeps are off in workshop mode."
        return stop(ctx)

    c.stop.click(on_stop, None, c.progress, api_visibility="private")
    c.timer.tick(on_tick, None, [c.progress, c.timer], api_visibility="private", show_progress="hidden")
