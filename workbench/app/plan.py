"""The Plan tab: choose the data, move the privacy knobs, see epsilon against steps at once."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from workbench.app import forms, sweep_panel
from workbench.app.common import error_text
from workbench.app.controls import control, field_controls, field_spec
from workbench.app.data_panel import data_markdown
from workbench.app.state import AppContext
from workbench.config import RunConfig
from workbench.planning.stages import PlanResult, UserLevel, plan_stages
from workbench.planning.wording import relation_text
from workbench.present import accountant_label, empty_figure, fmt_eps, plan_figure
from workbench.present.recommend import recommend_figure, recommend_markdown

DATA_FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


@dataclass
class PlanControls:
    """The Plan tab's components by forms.PLAN_FIELDS name (the Train tab reads them too): callbacks get them
    by name (Gradio's ``inputs_kwargs``), never by position."""

    components: dict[str, Any]
    data_info: Any
    error: Any  # a plan error that names none of the fields (under the last one)
    load: dict = field(default_factory=dict)  # the plan event's arguments (fn, inputs, ...), run on page load
    row_errors: dict[str, Any] = field(default_factory=dict)  # ERROR_ROWS name -> the Markdown under that row
    sweep: Any = None  # the Sweep panel (app/sweep_panel.py), wired by build_app once the Train tab exists
    warm: list = field(default_factory=list)  # workshop mode: the settings whose plans the server computes first


# -- callbacks (plain functions; the tests call them directly) ------------------------------------


PLAN_TITLE = "ε against steps"

# Where a plan error is shown: under the row of the first field its message names (``<row>-error``);
# one that names none under the last row (``plan-error``); a dataset error beside the dataset choice.
ERROR_ROWS = {
    "batch": ("batch_size", "max_grad_norm"),
    "length": ("epochs", "max_steps", "length_mode"),
    "privacy": ("target_epsilon", "noise_multiplier", "privacy_mode"),
    "delta": ("delta", "accountant"),
    "user": ("max_examples_per_user", "max examples per user", "neighboring"),
    "unit": ("privacy_unit", "privacy.unit", "user_sampling"),  # a message names the field or its dotted key
    "public": ("public_dataset_size", "labels"),
}


def error_row(message: str) -> str | None:
    """The ERROR_ROWS row whose field ``message`` names first, or None."""
    import re

    found = [
        (m.start(), row)
        for row, names in ERROR_ROWS.items()
        for name in names
        for m in [re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message)]
        if m
    ]
    return min(found)[1] if found else None


def route_error(update: tuple[Any, ...]) -> tuple[Any, ...]:
    """A ``plan_updates`` tuple with its error moved to where it belongs: (data info, plot, summary,
    general error, one text per ERROR_ROWS row)."""
    data, figure, summary, error = update
    row = error_row(error) if error else None
    return (data, figure, summary, "" if row else error, *(error if name == row else "" for name in ERROR_ROWS))


def plan_updates(ctx: AppContext, values: dict[str, Any], user: str | None = None) -> Iterator[tuple[Any, ...] | None]:
    """(data info, plot, plan summary, error), progressively: RDP within a second, then PLD and PRV,
    then the user-level epsilon (one user with up to k examples) in the summary.

    ``None`` marks a point where the caller may stop (the Gradio wrapper sends no-op updates
    there, so a newer knob change can cancel the rest).
    """
    try:
        _check_sources(ctx, values, user)
    except Exception as err:  # noqa: BLE001 - shown beside the dataset choice
        yield error_text(err), empty_figure(PLAN_TITLE, "choose a usable dataset"), "", ""
        return
    yield from plan_updates_for(values, forms.ctx_base(ctx))


def plan_updates_for(values: dict[str, Any], base: RunConfig) -> Iterator[tuple[Any, ...] | None]:
    """``plan_updates`` for data the caller may read (its sources checked), over the app's ``base`` config."""
    try:
        info = chosen_data(values, base)
    except Exception as err:  # noqa: BLE001 - shown beside the dataset choice
        yield error_text(err), empty_figure(PLAN_TITLE, "choose a usable dataset"), "", ""
        return
    data_md = info.describe(_int_or_none(values.get("batch_size")))
    panel = data_markdown(info.description, labels_set=values.get("labels"))
    data_md += f"\n\n{panel}" if panel else ""
    try:
        config = forms.config_from_values(values, base=base)
        last = None
        examples, users = info.sizes(config)
        for stage in plan_stages(config, dataset_size=examples, num_users=users):
            if stage is None:
                yield None
                continue
            figure = plan_figure(
                stage.curves, stage.target_epsilon, noise_multiplier=stage.noise_multiplier, selected=stage.accountant
            )
            last = (stage, figure, plan_summary(stage))
            yield data_md, figure, last[2], ""
        if last is not None:  # the finished plan, with the pre-flight privacy check under it
            stage, figure, text = last
            yield data_md, figure, text + "\n\n" + checks_markdown(config, info, stage), ""
    except Exception as err:  # noqa: BLE001 - shown under the knobs
        yield data_md, empty_figure(PLAN_TITLE, "no plan: see the message under the settings"), "", error_text(err)


def plan_answer(values: dict[str, Any], defaults: dict[str, Any], first: bool = False) -> tuple[Any, ...]:
    """The first (``first``) or the complete update of ``plan_updates_for`` (data info, plot, summary, error), from
    plain values: what a worker process of app/plan_pool.py computes (the caller checked the data's sources)."""
    answer = None
    for update in plan_updates_for(values, RunConfig().with_overrides(defaults)):
        if update is not None:
            answer = update
            if first:
                break
    return answer


def pooled_updates(
    ctx: AppContext, pool: Any, values: dict[str, Any], user: str | None, stale: Any = lambda: False
) -> Iterator[tuple[Any, ...] | None]:
    """``plan_updates`` in workshop mode: a cached answer at once, else the first answer and the complete one
    from ``pool``'s worker processes (app/plan_pool.py), without holding the app's GIL; stops waiting when
    ``stale()`` (a newer edit), leaving a complete answer under way to the cache. A pool that fails answers in process."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from workbench.app.plan_pool import settings_key

    try:
        _check_sources(ctx, values, user)
    except Exception:  # noqa: BLE001 - plan_updates shows it, as outside a workshop
        yield from plan_updates(ctx, values, user)
        return
    defaults = dict(ctx.defaults)
    key = settings_key(values, defaults)
    answer = pool.cached(key)
    if answer is not None:
        yield answer
        return
    # the first answer, then the complete one, shared with anyone asking for the same settings meanwhile
    first, full = pool.answer(key, plan_answer, dict(values), defaults)
    if full is None:
        yield from plan_updates(ctx, values, user)
        return
    pending = {full, first}
    while full in pending:
        done, pending = wait(pending, timeout=POOL_STALE_CHECK_S, return_when=FIRST_COMPLETED)
        if stale():  # the jobs nobody else waits for and not started yet are dropped
            pool.leave(key)
            yield None  # the caller stops here
            return
        if first in done and full not in done and not first.cancelled() and first.exception() is None:
            yield first.result()
    pool.leave(key)
    if full.cancelled() or full.exception() is not None:  # the pool failed, not the plan (its errors are answers)
        pool.broken(full)
        yield from plan_updates(ctx, values, user)
        return
    yield full.result()


def _check_sources(ctx: AppContext, values: dict[str, Any], user: str | None) -> None:
    """In a workshop, the data and validation files the controls name must be open to ``user`` (AppContext)."""
    ctx.check_data(user, forms.resolve_data(values["data_mode"], values.get("upload_path"), values.get("data_path")))
    ctx.check_data(user, str(values.get("validation_data") or "").strip())


def chosen_data(values: dict[str, Any], base: RunConfig) -> forms.DataInfo:
    """The data the Plan tab's controls name, read with their columns and validation file (forms.dataset_info)."""
    source = forms.resolve_data(values["data_mode"], values.get("upload_path"), values.get("data_path"))
    return forms.info_for(source, {**base.to_dict(), **forms.data_options(values, base)})


def update_plan(ctx: AppContext, values: dict[str, Any]) -> tuple[Any, ...]:
    """The complete plan update (the last of ``plan_updates``)."""
    *_, last = (u for u in plan_updates(ctx, values) if u is not None)
    return last


RECOMMEND_STALE = "⏳ *the settings changed: press Recommend for these values.*"


def recommend_updates(
    ctx: AppContext, values: dict[str, Any], budget: Any, min_steps: Any, user: str | None = None
) -> Iterator[tuple[Any, str, str] | None]:
    """(figure, text, error) of the batch-size recommendation for the Plan tab's data, target ε, δ,
    accountant, relation and privacy unit (planning/recommend.py), one update per calibrated candidate;
    ``None`` marks a place where a newer request may stop it."""
    from workbench.planning.recommend import recommend_for_config

    base = forms.ctx_base(ctx)
    try:
        _check_sources(ctx, values, user)
        info = chosen_data(values, base)
        config = forms.config_from_values({**values, "privacy_mode": "target"}, base=base)
        examples, users = info.sizes(config)
        stages = recommend_for_config(
            config,
            dataset_size=examples,
            num_users=users,
            budget_examples=forms.whole_number("compute budget", budget),
            min_steps=forms.whole_number("fewest steps", min_steps),
            stages=True,
        )
        for rec in stages:
            if rec is not None:
                yield recommend_figure(rec), recommend_markdown(rec), ""
            yield None
    except Exception as err:  # noqa: BLE001 - shown beside the budget
        yield recommend_figure(None, message="no recommendation: see the message above"), "", error_text(err)


SEVERITY_MARK = {"error": "⛔", "warning": "⚠", "info": "ℹ"}


def checks_markdown(config: RunConfig, info: forms.DataInfo, plan: PlanResult) -> str:
    """The pre-flight privacy check of these settings (privacy/checks.py), one line per finding."""
    from workbench.planning.plan import make_plan
    from workbench.privacy.checks import preflight

    fixed = config.with_overrides({"noise_multiplier": plan.noise_multiplier})  # the sigma the plan found
    examples, users = info.sizes(config)
    resolved = make_plan(fixed, dataset_size=examples, num_users=users)
    findings = preflight(config, resolved, task=info.task)
    lines = [f"- {SEVERITY_MARK[f.severity]} **{f.severity}**: {f.message} → {f.advice}" for f in findings]
    return "**Privacy check** (`workbench check`)\n\n" + ("\n".join(lines) or "- nothing to report")


def plan_summary(plan: PlanResult) -> str:
    """The plan in two sentences, with epsilon at the last step for each accountant, then the
    example-level and user-level epsilon side by side."""
    head = f"{plan.steps:,} steps at q = {plan.sample_rate:.4g}, δ = {plan.delta:.0e}"
    if plan.noise_multiplier == 0:
        return f"**Non-private run** (noise multiplier 0): ε = ∞ for one example and for one user. {head}."
    chosen = accountant_label(plan.bound)
    if plan.accountant != plan.bound:
        chosen += f"; {accountant_label(plan.accountant)} is shown beside it, never sets σ"
    if plan.provisional:
        text = (
            f"RDP needs **σ = {plan.noise_multiplier:.4g}** for ε = {fmt_eps(plan.target_epsilon)} over {head}; "
            f"calibrating with {chosen}…"
        )
    elif plan.target_epsilon is not None:
        text = (
            f"To stay within **ε = {fmt_eps(plan.target_epsilon)}** over {head}, the noise multiplier must be "
            f"**σ = {plan.noise_multiplier:.4g}** ({chosen})."
        )
    else:
        text = f"With **σ = {plan.noise_multiplier:.4g}** over {head}."
    shown = [a for a in ("rdp", "prv", "pld", "edgeworth") if a in plan.curves]
    finals = [f"{accountant_label(a)} {fmt_eps(plan.final_epsilon(a))}" for a in shown]
    if finals and not plan.provisional:
        text += "  \nε after the last step: " + " · ".join(finals) + "."
    unit = "user" if plan.user_level is not None and plan.user_level.charged else "example"
    text += f"  \nε is for neighbouring datasets with {relation_text(plan.neighboring, unit)}" + (
        " (the exact dataset size is public)."
        if plan.neighboring == "replace_one"
        else " (q, δ and the size come from the size you declared public, never from the data's own count)."
    )
    if plan.pending and not plan.provisional:
        text += f"  \n_computing {', '.join(accountant_label(a) for a in plan.pending)}…_"
    if plan.user_level is not None and not plan.provisional:
        text += "\n\n" + user_level_summary(plan.user_level, plan)
    return text


USER_LEVEL_HEAD = "| protects | ε | δ |\n|---|---|---|"


def user_level_summary(user: UserLevel, plan: PlanResult) -> str:
    """Example-level and user-level epsilon side by side, as a markdown table and a note."""
    if user.sampling == "uls":
        return (
            f"**User-level (ULS)**: users are sampled (q = users sampled / users = {plan.sample_rate:.4g}), so the "
            f"ε above is already user-level: example-level accounting with users as the unit.{_users_note(user)}"
        )
    k = f"k = {user.k} example" + ("s" if user.k > 1 else "")
    rows = [
        f"| one example ({accountant_label(plan.accountant)}) | {fmt_eps(user.example_epsilon)} | {plan.delta:.0e} |"
    ]
    if user.error:
        rows.append(f"| one user with up to {k} | ⚠️ {user.error.replace('|', '/')} | |")
    elif user.pending:
        rows.append(f"| one user with up to {k} (ELS) | _computing user-level ε…_ | |")
    else:
        rows.append(
            f"| **one user with up to {k}** (ELS, mixture-of-Gaussians PLD) | "
            f"**{fmt_eps(user.epsilon)}** | {plan.delta:.0e} |"
        )
        rows.append(
            f"| one user, group-privacy bound (k ε at δ_k = δ (e^kε − 1)/(e^ε − 1)) | "
            f"{fmt_eps(user.group_epsilon)} | {_fmt_delta(user.group_delta)} |"
        )
    note = (
        "k = 1: one example per user, so user-level ε equals example-level ε."
        if user.k == 1
        else f"ELS: examples are sampled at q and each user keeps at most {user.k}."
    )
    if user.charged:
        note += " This run is user-level (privacy_unit = user): its budget is the user-level ε."
    return (
        f"**Example-level vs user-level ε** after {plan.steps:,} steps\n\n{USER_LEVEL_HEAD}\n"
        + "\n".join(rows)
        + (f"\n\n{note}{_users_note(user)}")
    )


def _fmt_delta(delta: float) -> str:
    return "1 (vacuous)" if delta >= 1 else f"{delta:.2g}"


def _users_note(user: UserLevel) -> str:
    if user.num_users:
        return f" The dataset has {user.num_users:,} users."
    return " The dataset has no user_id column, so k is an assumption about how many examples one person gave."


def store_upload(ctx: AppContext, temp_path: str | None, user: str | None = None) -> tuple[str | None, str]:
    """Move an uploaded file into $WORKBENCH_HOME/uploads and delete Gradio's copy.

    Returns (stored path or None, message).  The stored copy is never served by the app.
    """
    if not temp_path:
        return None, ""
    src = Path(temp_path)
    try:
        size = src.stat().st_size
        if size > ctx.max_upload_mb * 1024 * 1024:
            raise _UploadError(f"{src.name} is {size / 2**20:.1f} MB; the limit is {ctx.max_upload_mb} MB.")
        if src.suffix.lower() not in DATA_FORMATS:
            raise _UploadError(
                f"{src.name}: unsupported file type {src.suffix or '(none)'}. Use one of {', '.join(DATA_FORMATS)}."
            )
        digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
        safe = re.sub(r"[^\w.\-]", "_", src.name)[-80:]
        folder = ctx.uploads_for(user)  # in a workshop: the participant's own folder
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{digest}-{safe}"
        shutil.copyfile(src, target)
        return str(target), f"Stored **{src.name}** ({size / 1024:.0f} kB) in the app's uploads folder."
    except _UploadError as err:
        return None, "⚠️ " + str(err)
    finally:
        _remove_gradio_copy(src)


class _UploadError(ValueError):
    pass


def _remove_gradio_copy(path: Path) -> None:
    """Delete the temporary upload (only inside the system temp dir or GRADIO_TEMP_DIR)."""
    roots = [Path(tempfile.gettempdir()).resolve()]
    if os.environ.get("GRADIO_TEMP_DIR"):
        roots.append(Path(os.environ["GRADIO_TEMP_DIR"]).resolve())
    try:
        resolved = path.resolve()
        if any(resolved.is_relative_to(r) for r in roots) and resolved.is_file():
            resolved.unlink()
            if not any(resolved.parent.iterdir()):
                resolved.parent.rmdir()
    except OSError:
        pass


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# -- layout ---------------------------------------------------------------------------------------


def build(ctx: AppContext) -> PlanControls:
    """Lay out the Plan tab and wire its events; call inside ``gr.Tab``. The field-backed controls come from
    the config's fields (controls.py); the ones listed in controls.HAND_MADE are made here."""
    import gradio as gr

    base = forms.ctx_base(ctx)
    c: dict[str, Any] = {}  # the controls by forms.PLAN_FIELDS name
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            upload, upload_msg, data_info = _data_controls(ctx, base, c)
            rows = _privacy_knobs(base, c)
            error = gr.Markdown("", elem_classes="wb-error", elem_id="plan-error")
        with gr.Column(scale=3):
            plot = gr.Plot(label="Privacy plan", elem_id="plan-plot")
            summary = gr.Markdown("", elem_id="plan-summary")
            with gr.Accordion("Recommend a batch size and steps (noise-batch ratio σ/B)", open=False):
                with gr.Row():
                    budget = gr.Number(
                        20_000,
                        label="Compute budget (examples processed, B × T)",
                        info="Minutes × the measured examples per second, or what you can afford.",
                        elem_id="recommend-budget",
                    )
                    min_steps = gr.Number(100, label="Fewest steps", elem_id="recommend-min-steps")
                    button = gr.Button("Recommend", elem_id="recommend-button")
                rec_error = gr.Markdown("", elem_classes="wb-error", elem_id="recommend-error")
                rec_plot = gr.Plot(label="Noise-batch ratio", elem_id="recommend-plot")
                rec_text = gr.Markdown("", elem_id="recommend-summary")
            with gr.Accordion("Sweep: a grid of settings × seeds", open=False, elem_id="sweep-panel"):
                sweep = sweep_panel.layout()
    controls = PlanControls(c, data_info, error, row_errors=rows, sweep=sweep)
    _wire(ctx, controls, upload, upload_msg, plot, summary, stale=rec_text)
    _wire_recommend(ctx, controls, button, [budget, min_steps], [rec_plot, rec_text, rec_error])
    return controls


def _data_controls(ctx: AppContext, base: RunConfig, c: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The Data section's controls, into ``c``; (the upload box, its message, the data's description)."""
    import gradio as gr

    data_mode = "demo" if base.data == "demo" else "path"
    gr.Markdown("### Data")
    c["data_mode"] = gr.Radio(
        [("Demo dataset", "demo"), ("Upload a file", "upload"), ("Path on this machine", "path")],
        value=data_mode,
        label="Dataset",
        elem_id="data-mode",
    )
    upload = gr.File(
        label=f"Data file ({', '.join(DATA_FORMATS)}; at most {ctx.max_upload_mb} MB)",
        file_types=list(DATA_FORMATS),
        type="filepath",
        visible=data_mode == "upload",
        elem_id="data-upload",
    )
    upload_msg = gr.Markdown("", elem_id="upload-msg")
    c["upload_path"] = gr.State(None)
    c["data_path"] = gr.Textbox(
        value=base.data if data_mode == "path" else "",
        label="Path",
        placeholder="/data/train.jsonl",
        visible=data_mode == "path",
        elem_id="data-path",
    )
    with gr.Row():
        c["columns"] = gr.Textbox(
            ", ".join(f"{k}={v}" for k, v in base.columns.items()),
            label="Columns (role=column)",
            placeholder="auto; e.g. text=sentence, label=label",
            info="Which of your columns plays which role: text, label, prompt, response, instruction, input, "
            "output, messages, user_id. Empty: recognised by name.",
            elem_id="columns",
        )
        c["validation_data"] = control("validation_data", base, placeholder="empty: hold out a fraction of the data")
    return upload, upload_msg, gr.Markdown("", elem_id="data-info")


def _privacy_knobs(base: RunConfig, c: dict[str, Any]) -> dict[str, Any]:
    """The Privacy knobs section's controls, into ``c``, a row at a time; the Markdown under each row (ERROR_ROWS),
    where a plan error that names one of its fields is shown."""
    import gradio as gr

    rows: dict[str, Any] = {}
    steps_mode, sigma_mode = bool(base.max_steps), base.noise_multiplier is not None
    gr.Markdown("### Privacy knobs")
    with gr.Row():
        c |= field_controls(["batch_size", "max_grad_norm"], base)
    rows["batch"] = _row_error("batch")
    with gr.Row():
        c["length_mode"] = gr.Radio(
            [("Epochs", "epochs"), ("Steps", "steps")], value="steps" if steps_mode else "epochs", label="Length in"
        )
        c["epochs"] = control("epochs", base, value=base.epochs or 1.0, interactive=not steps_mode)
        c["max_steps"] = control("max_steps", base, value=base.max_steps or 100, interactive=steps_mode)
    rows["length"] = _row_error("length")
    with gr.Row():
        c["privacy_mode"] = gr.Radio(
            [("Target ε", "target"), ("Noise multiplier σ", "sigma")],
            value="sigma" if sigma_mode else "target",
            label="Set",
        )
        c["target_epsilon"] = control(
            "target_epsilon", base, value=base.target_epsilon or 8.0, interactive=not sigma_mode
        )
        noise = base.noise_multiplier if sigma_mode else 1.0
        c["noise_multiplier"] = control("noise_multiplier", base, value=noise, interactive=sigma_mode)
    rows["privacy"] = _row_error("privacy")
    with gr.Row():
        c["delta"] = gr.Textbox(
            "" if base.delta is None else f"{base.delta:g}",
            label="δ",
            placeholder="auto: below 1/N",
            info="Empty: the largest power of ten ≤ 1/(10 N).",
            elem_id="delta",
        )
        c["accountant"] = control("accountant", base)
    rows["delta"] = _row_error("delta")
    with gr.Row():  # k unbounded (controls.UNBOUNDED): a bad k gets the plan's message under its row, not Gradio's
        c["max_examples_per_user"] = control("max_examples_per_user", base)
        c["neighboring"] = control("neighboring", base)
    rows["user"] = _row_error("user")
    c["privacy_unit"] = gr.Dropdown(
        forms.PRIVACY_UNIT_CHOICES,
        value=forms.privacy_unit_value(base),
        label="Privacy unit: what ε protects",
        info=field_spec("privacy_unit").help + " " + field_spec("user_sampling").help,
        elem_id="privacy-unit",
    )
    rows["unit"] = _row_error("unit")
    with gr.Row():
        c["public_size"] = gr.Checkbox(
            base.public_dataset_size is not None,
            label="The training set's size is public (add/remove neighbours)",
            info="Tick when you may publish how many training units you hold (most papers do): ε is then for "
            "one unit added or removed, with less noise than replace-one for the same ε, and q, the steps "
            "and δ come from that declared size (public_dataset_size), never from the data's own count.",
            elem_id="public-size",
        )
        c["labels"] = gr.Textbox(
            ", ".join(base.labels or ()),
            label="Labels (classification)",
            placeholder="e.g. negative, positive",
            info="The classes, in order, comma-separated. A private classification run needs them: they are "
            "released with the adapter, so they must not be read from the private data.",
            elem_id="labels",
        )
    rows["public"] = _row_error("public")
    return rows


def _editable_by(radio: Any, first_mode: str, first: Any, second: Any) -> None:
    """Only the field ``radio`` chooses is editable: ``first`` in ``first_mode``, else ``second``."""
    import gradio as gr

    def mode_changed(mode):
        return gr.update(interactive=mode == first_mode), gr.update(interactive=mode != first_mode)

    radio.change(mode_changed, radio, [first, second], api_visibility="private", show_progress="hidden")


def _row_error(row: str):
    import gradio as gr

    return gr.Markdown("", elem_classes="wb-error", elem_id=f"{row}-error")


def _wire_recommend(ctx: AppContext, controls: PlanControls, button: Any, fields: list, outputs: list) -> None:
    """The Recommend button: progressive, and a newer press stops an older computation."""
    import gradio as gr

    latest = gr.State({})

    from workbench.app.workshop import takes_request, user_of

    @takes_request
    def run(budget, min_steps, session, request=None, **values):
        asked = session["request"] = (budget, min_steps, values)
        for update in recommend_updates(ctx, values, budget, min_steps, user_of(request)):
            if session.get("request") != asked:
                return
            yield (gr.skip(),) * len(outputs) if update is None else update

    button.click(
        run,
        [*fields, latest],
        outputs,
        inputs_kwargs=controls.components,
        api_name="recommend",
        trigger_mode="always_last",
        show_progress="minimal",
    )


STALE_NOTE = "⏳ *computing the plan for the values in the fields…*"
TYPING_DEBOUNCE_MS = 400  # a text field's plan waits this long after the last keystroke

# Each edit of a plan field gets the next number of this page (window.__wbPlanSeq); the server keeps the
# newest number each browser session has shown it and drops a computation as soon as a newer one exists,
# so a plan computed for older values (queued behind another session's, or overtaken while typing) never
# replaces the "computing" mark. The hidden "plan-seq" input, the events' first input, carries the number.
_BUMP_JS = "(...v) => { window.__wbPlanSeq = (window.__wbPlanSeq || 0) + 1; v[0] = window.__wbPlanSeq; return v; }"
_CURRENT_JS = "(...v) => { v[0] = window.__wbPlanSeq || 0; return v; }"
_DEBOUNCED_JS = (  # the edit's number, sent after a pause: an edit typed meanwhile makes it a no-op on the server
    "async (...v) => { const mine = window.__wbPlanSeq || 0;"
    f" await new Promise((r) => setTimeout(r, {TYPING_DEBOUNCE_MS})); v[0] = mine; return v; }}"
)


POOLED_CONCURRENCY = 16  # plan requests served at once in workshop mode (each waits on a worker or the cache)
POOL_STALE_CHECK_S = 0.25  # a request waiting on the pool looks this often whether a newer edit made it stale
WARM_BATCH_SIZES = (8, 16, 32, 64, 128)  # a room's first tries: round batch sizes...
WARM_TARGETS = (2.0, 4.0, 8.0)  # ...and the lesson plan's targets (docs/workshop.md: "target epsilon 2 to 8")


def warm_values(opening: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings a workshop's server plans before the room asks (``warm_plans``): the page's opening values
    first, then with each of WARM_BATCH_SIZES, then each of WARM_TARGETS (when the page sets a target)."""
    batches = dict.fromkeys([opening.get("batch_size"), *WARM_BATCH_SIZES])
    targets = [opening.get("target_epsilon")]
    if opening.get("privacy_mode") == "target":
        targets = list(dict.fromkeys([*targets, *WARM_TARGETS]))
    return [{**opening, "batch_size": b, "target_epsilon": t} for t in targets for b in batches]


def warm_plans(ctx: AppContext, settings: list[dict[str, Any]]) -> int:
    """Workshop mode: compute the complete plans of ``settings`` in the pool's workers, behind every participant's
    request, into its cache (and the accounting into the workshop's disk cache); returns how many were queued.
    The server starts it (app.serve); WORKBENCH_PLAN_WARM=0 turns it off."""
    from workbench.app.plan_pool import settings_key

    if ctx.workshop is None or os.environ.get("WORKBENCH_PLAN_WARM", "1") == "0":
        return 0
    defaults = dict(ctx.defaults)
    jobs = [(settings_key(v, defaults), (dict(v), defaults)) for v in settings]
    return ctx.workshop.plan_pool.warm(plan_answer, jobs)


def plan_pool(ctx: AppContext) -> Any:
    """In workshop mode the workshop's PlanPool (app/plan_pool.py), closed with the app (the Blocks being built,
    when there is one, and at exit); None outside a workshop, where plans are computed in the app's process."""
    if ctx.workshop is None:
        return None
    pool = ctx.workshop.plan_pool
    try:
        import gradio as gr

        blocks = gr.context.Context.root_block
    except Exception:  # noqa: BLE001 - no Blocks being built: the workshop's close and exit still close it
        blocks = None
    if blocks is not None and blocks not in _CLOSES_POOL:
        close = blocks.close

        workshop = ctx.workshop

        def close_with_pool(*args, **kwargs):
            try:
                return close(*args, **kwargs)
            finally:
                workshop.close()  # the plan pool, and the training workers (training_pool.py)

        blocks.close = close_with_pool
        _CLOSES_POOL.add(blocks)
    return pool


_CLOSES_POOL: "weakref.WeakSet[Any]" = weakref.WeakSet()  # the Blocks whose close also closes the plan pool


def newest_first(session: dict, seq: Any) -> int | None:
    """Record edit number ``seq`` in a browser session's plan state; None when a newer edit is already known."""
    seq = int(seq or 0)
    if seq < session.get("seq", 0):
        return None
    session["seq"] = seq
    return seq


def _wire(
    ctx: AppContext, controls: PlanControls, upload: Any, upload_msg: Any, plot: Any, summary: Any, stale: Any = None
) -> None:
    import gradio as gr

    c = controls.components
    outputs = [controls.data_info, plot, summary, controls.error, *(controls.row_errors[r] for r in ERROR_ROWS)]

    # The newest edit number this browser session sent (see _BUMP_JS): a State is one object per session
    # (Gradio keeps it in the session, not in the page, and it is not an API input).
    latest = gr.State({})
    seq = gr.Number(0, visible=False, elem_id="plan-seq")
    plan_inputs = dict(inputs=[seq, latest], inputs_kwargs=c, outputs=outputs)  # the controls by name

    pool = plan_pool(ctx)
    if pool is not None:  # what the server plans before the room asks (warm_plans)
        controls.warm = warm_values({name: getattr(comp, "value", None) for name, comp in c.items()})

    def register(seq, session):  # unqueued: runs at once on every edit, so a running older plan stops
        newest_first(session, seq)

    from workbench.app.workshop import takes_request, user_of

    @takes_request
    def refresh(seq, session, request=None, **values):
        # A newer edit makes this computation stale: it stops at its next stage boundary, so an older plan
        # never lands after a newer edit (the queue then runs the newer one).
        session = session if isinstance(session, dict) else {}
        # A dropped computation still yields once (no changes): a generator that yields nothing ends with
        # empty outputs in Gradio, which wiped a newer plan's message (a debounced keystroke after Enter).
        skip = (gr.skip(),) * len(outputs)
        mine = newest_first(session, seq)
        if mine is None:
            yield skip
            return
        user = user_of(request)
        if pool is not None:  # workshop mode: in worker processes, cached by settings
            updates = pooled_updates(ctx, pool, values, user, stale=lambda: session.get("seq", 0) != mine)
        else:
            updates = plan_updates(ctx, values, user)
        for update in updates:
            if session.get("seq", 0) != mine:
                yield skip
                return
            yield skip if update is None else route_error(update)

    fields = [comp for comp in c.values() if not isinstance(comp, gr.State)]
    typed = [comp for comp in fields if isinstance(comp, gr.Textbox)]  # refreshed as typed, debounced
    knobs = [comp for comp in fields if not isinstance(comp, gr.Textbox)]  # Number, Radio, Dropdown, Checkbox
    # The dataset choice is a trigger of the one plan event too (not a chained refresh of its own): a
    # separate chain reading the same controls could run with the old choice and be dropped.
    at_once = [k.change for k in knobs] + [t.submit for t in typed]
    as_typed = [t.input for t in typed]
    # every keystroke in a field marks the shown plan out of date at once, in the browser (a Number's
    # change may wait for the browser to accept the number; its input event does not)
    keystrokes = [comp.input for comp in fields if isinstance(comp, (gr.Textbox, gr.Number))]
    hidden = dict(api_visibility="private", show_progress="hidden")
    mark = f"() => {STALE_NOTE!r}"
    gr.on(at_once + keystrokes, None, None, summary, js=mark, **hidden)
    gr.on(at_once + as_typed, register, [seq, latest], None, js=_BUMP_JS, queue=False, **hidden)
    plan_event = dict(trigger_mode="always_last", concurrency_id="plan", show_progress="hidden")
    if pool is not None:  # a new plan waits on a worker process, never blocking the cached answers of others
        plan_event["concurrency_limit"] = POOLED_CONCURRENCY
    gr.on(at_once, refresh, **plan_inputs, js=_CURRENT_JS, api_name="plan", **plan_event)
    gr.on(as_typed, refresh, **plan_inputs, js=_DEBOUNCED_JS, api_visibility="private", **plan_event)
    if stale is not None:  # a shown recommendation is for the old settings: say so at once
        js = f"(text) => text ? {RECOMMEND_STALE!r} : text"
        gr.on(at_once + keystrokes, None, stale, stale, js=js, **hidden)

    def mode_changed(mode):
        return gr.update(visible=mode == "upload"), gr.update(visible=mode == "path")

    c["data_mode"].change(
        mode_changed, c["data_mode"], [upload, c["data_path"]], api_visibility="private", show_progress="hidden"
    )

    _editable_by(c["length_mode"], "epochs", c["epochs"], c["max_steps"])  # only the field that counts is editable
    _editable_by(c["privacy_mode"], "target", c["target_epsilon"], c["noise_multiplier"])

    @takes_request
    def uploaded(path, request=None):
        stored, message = store_upload(ctx, path, user_of(request))
        return None, stored, message

    upload.upload(None, None, summary, js=mark, **hidden)
    upload.upload(uploaded, upload, [upload, c["upload_path"], upload_msg], api_visibility="private").then(
        refresh, **plan_inputs, js=_BUMP_JS, **plan_event, api_visibility="private"
    )
    controls.load = dict(fn=refresh, **plan_inputs)
