"""PrivacyPlanner: sliders for the privacy settings, epsilon curves for every accountant.

Two modes: give the noise multiplier and read epsilon, or give a target epsilon and read the
noise each accountant needs.  Either way the panel shows the noise that lands on the update:
std sigma*C on the summed clipped gradient, sigma*C/(qN) on the averaged one.

Accounting can take a second (PRV most), so it runs on a worker thread: moving a slider only
records the newest settings, and the worker always computes the newest ones, dropping any that
were overtaken.  ``update()`` computes synchronously (tests and scripts).

Layout note: ``self.results`` is a row of result columns: example-level DP per accountant, then
user-level DP (ELS, one user with up to k examples: the mixture-of-Gaussians PLD, about a second,
computed after the curves) beside the example-level epsilon and the older group-privacy bound.
"""

from __future__ import annotations

import html
import threading
from dataclasses import dataclass, replace
from typing import Any

import ipywidgets as w

from workbench import privacy
from workbench.config import ConfigError, RunConfig
from workbench.planning.stages import PlanResult, plan_stages
from workbench.planning.wording import relation_text
from workbench.present import accountant_label, fmt_eps, plan_figure
from workbench.present.recommend import recommend_figure, recommend_html
from workbench.widgets._live import figure_widget, sync_figure

NOISE, TARGET = "noise multiplier → ε", "target ε → noise"
_SIZES = [int(m * 10**e) for e in range(1, 8) for m in (1, 2, 5)] + [100_000_000]
_BATCHES = [2**i for i in range(0, 17)]
_STEPS = [int(m * 10**e) for e in range(0, 6) for m in (1, 2, 5)] + [1_000_000]
_DELTAS = [10.0**-e for e in range(3, 13)]


_RUN = RunConfig.model_fields  # the run's defaults: the planner shows the epsilon a run of these settings gets


@dataclass(frozen=True)
class PlanSettings:
    """What the sliders say. Every privacy default is the run config's (``RunConfig``), so the planner, the
    app's Plan tab and a run show the same epsilon for the same settings."""

    dataset_size: int = 10_000
    batch_size: int = _RUN["batch_size"].default
    steps: int = 1000
    delta: float = 1e-5  # RunConfig.default_delta(10_000)
    mode: str = NOISE
    noise_multiplier: float = 1.0
    target_epsilon: float = _RUN["target_epsilon"].default
    max_grad_norm: float = _RUN["max_grad_norm"].default
    accountants: tuple[str, ...] = privacy.ACCOUNTANTS
    selected: str = _RUN["accountant"].default
    max_examples_per_user: int = _RUN["max_examples_per_user"].default  # k, for the user-level column
    neighboring: str = _RUN["neighboring"].default  # auto: add/remove, the N typed here being public
    privacy_unit: str = "example"  # or "user:els" (k examples per user) or "user:uls" (N counts users), as the app

    @property
    def sample_rate(self) -> float:
        return min(1.0, self.batch_size / self.dataset_size)

    @property
    def epochs(self) -> float:
        return self.sample_rate * self.steps

    @property
    def num_users(self) -> int | None:
        """Users behind N: N itself under ULS; under ELS the fewest N capped examples can come from (k each),
        which makes the check delta < 1/users the strictest one."""
        if self.privacy_unit == "user:uls":
            return self.dataset_size
        return -(-self.dataset_size // self.max_examples_per_user) if self.privacy_unit == "user:els" else None

    def config(self) -> RunConfig:
        """The run config these sliders describe. The N typed here is a public number (a calculator, like
        `workbench plan --dataset-size`), so add/remove (and auto) publish it as ``public_dataset_size``."""
        target = self.mode == TARGET
        unit, _, sampling = self.privacy_unit.partition(":")
        return RunConfig(
            privacy_unit=unit,
            user_sampling=sampling or _RUN["user_sampling"].default,
            batch_size=self.batch_size,
            max_steps=self.steps,
            delta=self.delta,
            noise_multiplier=None if target else self.noise_multiplier,
            target_epsilon=self.target_epsilon if target else None,
            max_grad_norm=self.max_grad_norm,
            accountant=self.selected,
            neighboring=self.neighboring,
            max_examples_per_user=self.max_examples_per_user,
            public_dataset_size=None if self.neighboring == "replace_one" else self.dataset_size,
        )


USER_LEVEL = "user-level"  # the key of its message in PlannerResult.errors


@dataclass(frozen=True)
class PlannerResult:
    """What the panel draws: the settings it was computed for and the plan (``planning.stages.PlanResult``,
    the one the app's Plan tab shows), or the message that stopped it."""

    settings: PlanSettings
    plan: PlanResult | None = None
    failure: str = ""

    curves = property(lambda self: self.plan.curves if self.plan else {})
    epsilon = property(lambda self: self.plan.epsilon if self.plan else {})
    sigma_needed = property(lambda self: self.plan.sigma_needed if self.plan else {})
    noise_multiplier = property(lambda self: self.plan.noise_multiplier if self.plan else None)
    example_epsilon = property(lambda self: self.plan.example_epsilon if self.plan else None)
    user_epsilon = property(lambda self: self.plan.user_epsilon if self.plan else None)
    group_bound = property(lambda self: self.plan.group_bound if self.plan else None)
    neighboring = property(lambda self: self.plan.neighboring if self.plan else self.settings.neighboring)

    @property
    def errors(self) -> dict[str, str]:
        out = dict(self.plan.errors) if self.plan else {}
        if self.plan and self.plan.user_level and self.plan.user_level.error:
            out[USER_LEVEL] = self.plan.user_level.error
        if self.failure:
            out["planner"] = self.failure
        return out


class _Stale(Exception):
    """Newer settings arrived while computing; drop this result."""


def compute_plan(settings: PlanSettings, *, is_current=lambda: True, on_partial=None) -> PlannerResult:
    """Curves and readouts for ``settings``: the one progressive plan the app's Plan tab computes too
    (``planning.stages.plan_stages`` of ``settings.config()``), with each upper bound's own sigma for the target
    beside it.

    ``on_partial(result)`` is called after each curve, so a panel can draw RDP at once and PRV when
    it arrives; ``is_current`` lets a worker abandon stale work (``_Stale``).
    """
    out = PlannerResult(settings)
    try:
        stages = plan_stages(
            settings.config(),
            dataset_size=settings.dataset_size,
            num_users=settings.num_users,
            accountants=tuple(settings.accountants),
            compare_sigmas=True,
            failures_as_results=True,
        )
        for stage in stages:
            if not is_current():
                raise _Stale
            if stage is None:  # between slow computations: only the check above
                continue
            new = set(stage.curves) - set(out.curves)
            out = PlannerResult(settings, stage)
            if new and on_partial is not None:  # the user-level column comes after the last curve
                on_partial(out)
    except (ConfigError, privacy.PrivacyError) as err:
        return PlannerResult(settings, out.plan, failure=str(err))
    return out


def _options(values: list, fmt) -> list[tuple[str, Any]]:
    return [(fmt(v), v) for v in values]


class PrivacyPlanner:
    """Sliders -> epsilon curves per accountant and the noise needed; display it in a notebook."""

    def __init__(
        self, settings: PlanSettings | None = None, *, background: bool = True, width: int = 1080, **overrides: Any
    ) -> None:
        settings = replace(settings or PlanSettings(), **overrides)
        self.plot_width = max(360, width - 490)  # the controls take 480 px; plotly widgets have a fixed size
        self.background = background
        self._lock = threading.Lock()
        self._version = 0
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._worker: threading.Thread | None = None
        self.result: PlannerResult | None = None
        self._build(settings)
        self.update()

    # -- widgets -----------------------------------------------------------------------------------
    def _build(self, s: PlanSettings) -> None:
        style = {"description_width": "150px"}

        def wide() -> w.Layout:  # one Layout per control: hiding one must not hide the others
            return w.Layout(width="460px")

        def sel(description, values, value, fmt, tooltip):
            values = sorted(set(values) | {value})
            return w.SelectionSlider(
                options=_options(values, fmt),
                value=value,
                description=description,
                style=style,
                layout=wide(),
                tooltip=tooltip,
            )

        self.dataset_size = sel(
            "dataset size N", _SIZES, s.dataset_size, lambda v: f"{v:,}", "Training examples (the unit of privacy)"
        )
        self.batch_size = sel(
            "expected batch qN",
            _BATCHES,
            s.batch_size,
            lambda v: f"{v:,}",
            "Expected Poisson batch size; the sampling rate is q = batch / N",
        )
        self.steps = sel("steps T", _STEPS, s.steps, lambda v: f"{v:,}", "Number of DP-SGD steps")
        self.delta = sel("δ", _DELTAS, s.delta, lambda v: f"{v:.0e}", "δ of (ε, δ)-DP; keep it well below 1/N")
        self.mode = w.ToggleButtons(options=[NOISE, TARGET], value=s.mode, style={"button_width": "170px"})

        def slider(kind, description: str, value: float, readout: str, **bounds):  # bounds: min, max, step (base)
            return kind(
                value=value, description=description, style=style, layout=wide(), readout_format=readout, **bounds
            )

        self.noise_multiplier = slider(
            w.FloatSlider, "noise multiplier σ", s.noise_multiplier, ".2f", min=0.3, max=10.0, step=0.05
        )
        self.target_epsilon = slider(
            w.FloatLogSlider, "target ε", s.target_epsilon, ".3g", base=10, min=-1, max=2, step=0.02
        )
        self.max_grad_norm = slider(
            w.FloatLogSlider, "clipping norm C", s.max_grad_norm, ".3g", base=10, min=-2, max=2, step=0.05
        )
        self.accountants = w.SelectMultiple(
            options=[(accountant_label(a), a) for a in privacy.ACCOUNTANTS],
            value=tuple(a for a in s.accountants if a in privacy.ACCOUNTANTS),
            description="accountants",
            rows=4,
            style=style,
            layout=w.Layout(width="400px"),
        )
        self.selected = w.Dropdown(
            options=[(accountant_label(a), a) for a in privacy.ACCOUNTANTS],
            value=s.selected,
            description="calibrate with",
            style=style,
        )
        self.neighboring = w.Dropdown(
            options=[
                ("auto (add or remove: N is public here)", "auto"),
                ("add or remove one example", "add_remove"),
                ("replace one example (PLD only)", "replace_one"),
            ],
            value=s.neighboring,
            description="neighbouring datasets",
            style=style,
            tooltip="The relation every epsilon here is for (replace one: N is public)",
        )
        self.privacy_unit = w.Dropdown(
            options=[
                ("one example", "example"),
                ("one user: ELS (examples sampled, k per user)", "user:els"),
                ("one user: ULS (users sampled; N counts users)", "user:uls"),
            ],
            value=s.privacy_unit,
            description="privacy unit",
            style=style,
            tooltip="What the target epsilon protects, as the app's Plan tab and a run's privacy_unit",
        )
        self.max_examples_per_user = w.IntSlider(
            value=min(64, max(1, s.max_examples_per_user)),
            min=1,
            max=64,
            description="max examples per user k",
            style=style,
            layout=wide(),
            tooltip="User-level DP: each user's examples are capped at k",
        )
        self.figure = figure_widget(plan_figure({}, None).update_layout(width=self.plot_width, autosize=False))
        self.status = w.HTML()
        self.example_level = w.HTML()
        self.user_level = w.HTML()
        self.results = w.HBox(
            [
                w.VBox([w.HTML("<b>Example-level DP</b>"), self.example_level]),
                w.VBox(
                    [w.HTML("<b>User-level DP (ELS, k examples per user)</b>"), self.user_level],
                    layout=w.Layout(margin="0 0 0 24px"),
                ),
            ]
        )
        self.recommendation = None  # planning.recommend.Recommendation, after recommend()
        self.budget = w.BoundedIntText(
            value=20_000,
            min=1,
            max=10**12,
            description="budget (examples)",
            style=style,
            layout=w.Layout(width="300px"),
        )
        self.min_steps = w.BoundedIntText(
            value=100, min=1, max=10**6, description="fewest steps", style=style, layout=w.Layout(width="300px")
        )
        self.recommend_button = w.Button(description="Recommend", tooltip="The batch and steps with the smallest σ/B")
        self.recommend_button.on_click(lambda _: self._recommend_clicked())
        self.recommend_figure = figure_widget(recommend_figure(None).update_layout(width=self.plot_width + 480))
        self.recommend_text = w.HTML()
        self.recommend_section = w.VBox(
            [
                w.HTML("<b>Recommend a batch size and steps</b> (noise-batch ratio σ/B, a heuristic)"),
                w.HBox([self.budget, self.min_steps, self.recommend_button]),
                self.recommend_text,
                self.recommend_figure,
            ]
        )
        controls = [
            self.dataset_size,
            self.batch_size,
            self.steps,
            self.delta,
            self.mode,
            self.noise_multiplier,
            self.target_epsilon,
            self.max_grad_norm,
            self.accountants,
            self.selected,
            self.neighboring,
            self.privacy_unit,
            self.max_examples_per_user,
        ]
        for control in controls:
            control.observe(self._changed, names="value")
        left = w.VBox(controls + [self.status], layout=w.Layout(width="480px"))
        self.widget = w.VBox([w.HBox([left, self.figure]), self.results, self.recommend_section])
        self.widget.add_class("workbench-planner")
        self._show_mode()

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def settings(self) -> PlanSettings:
        return PlanSettings(
            dataset_size=self.dataset_size.value,
            batch_size=self.batch_size.value,
            steps=self.steps.value,
            delta=self.delta.value,
            mode=self.mode.value,
            noise_multiplier=float(self.noise_multiplier.value),
            target_epsilon=float(self.target_epsilon.value),
            max_grad_norm=float(self.max_grad_norm.value),
            accountants=tuple(self.accountants.value),
            selected=self.selected.value,
            max_examples_per_user=int(self.max_examples_per_user.value),
            neighboring=self.neighboring.value,
            privacy_unit=self.privacy_unit.value,
        )

    def _show_mode(self) -> None:
        target = self.mode.value == TARGET
        self.noise_multiplier.layout.display = "none" if target else None
        self.target_epsilon.layout.display = None if target else "none"
        self.selected.layout.display = None if target else "none"

    # -- recommending -------------------------------------------------------------------------------
    def recommend(self, budget_examples: int | None = None, min_steps: int | None = None):
        """The batch size and steps with the smallest σ/B for N, target ε, δ, accountant and relation of
        the sliders within the budget (planning/recommend.py), drawn as they are calibrated; returns the
        Recommendation, or None with the message shown."""
        from workbench.planning.recommend import recommend_for_config

        if budget_examples is not None:
            self.budget.value = budget_examples
        if min_steps is not None:
            self.min_steps.value = min_steps
        s = self.settings
        self.recommendation = None
        try:
            for rec in recommend_for_config(
                replace(s, mode=TARGET).config(),  # the sliders' run config, at their target epsilon
                dataset_size=s.dataset_size,
                num_users=s.num_users,
                budget_examples=int(self.budget.value),
                min_steps=int(self.min_steps.value),
                stages=True,
            ):
                if rec is not None:
                    self.recommendation = rec
                    fig = recommend_figure(rec).update_layout(width=self.plot_width + 480, autosize=False)
                    sync_figure(self.recommend_figure, fig)
                    self.recommend_text.value = recommend_html(rec)
        except (privacy.PrivacyError, ConfigError) as err:
            sync_figure(self.recommend_figure, recommend_figure(None, message="no recommendation"))
            self.recommend_text.value = f"<div style='color:#d62728'>{html.escape(str(err))}</div>"
            return None
        return self.recommendation

    def _recommend_clicked(self) -> None:
        self.recommend_text.value = "<i style='color:#777'>calibrating σ for each batch size…</i>"
        if self.background:
            threading.Thread(target=self.recommend, name="workbench-recommend", daemon=True).start()
        else:
            self.recommend()

    # -- computing ---------------------------------------------------------------------------------
    def _changed(self, change: dict) -> None:
        if change.get("owner") is self.mode:
            self._show_mode()
        if self.recommendation is not None:  # drawn for the old sliders: say so
            self.recommend_text.value = "<i style='color:#777'>the settings changed: press Recommend again.</i>"
        if self.background:
            self.schedule()
        else:
            self.update()

    def update(self) -> PlannerResult:
        """Recompute for the current sliders now, in this thread, and redraw."""
        with self._lock:
            self._version += 1
        result = compute_plan(self.settings)
        self._draw(result)
        return result

    def schedule(self) -> None:
        """Recompute on the worker thread; only the newest settings are ever drawn."""
        with self._lock:
            self._version += 1
            self._idle.clear()
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="workbench-planner", daemon=True)
                self._worker.start()
        self.status.value = "<i style='color:#777'>computing…</i>"
        self._wake.set()

    def wait(self, timeout: float | None = None) -> PlannerResult | None:
        """Block until the worker has drawn the newest settings."""
        self._idle.wait(timeout)
        return self.result

    def _work(self) -> None:
        while True:
            self._wake.wait(30.0)
            with self._lock:
                if not self._wake.is_set():  # idle for 30 s: end the thread; schedule() restarts it
                    self._worker = None
                    return
                self._wake.clear()
                version = self._version
            settings = self.settings

            def partial(result: PlannerResult, version=version) -> None:
                if self._version == version:
                    self._draw(result, busy=True)

            try:
                result = compute_plan(settings, is_current=lambda: self._version == version, on_partial=partial)
            except _Stale:
                continue
            except Exception as err:  # shown in the panel: the planner must stay usable
                result = PlannerResult(settings, failure=f"{type(err).__name__}: {err}")
            with self._lock:
                if self._version != version:
                    continue
            self._draw(result)
            with self._lock:
                if self._version == version:
                    self._idle.set()

    # -- drawing -----------------------------------------------------------------------------------
    def _draw(self, result: PlannerResult, *, busy: bool = False) -> None:
        s = result.settings
        self.result = result
        target = s.target_epsilon if s.mode == TARGET else None
        fig = plan_figure(
            result.curves,
            target,
            noise_multiplier=result.noise_multiplier,
            selected=s.selected if s.mode == TARGET else None,
        )
        fig.update_layout(width=self.plot_width, autosize=False)
        sync_figure(self.figure, fig)
        self.example_level.value = self._table(result)
        self.user_level.value = self._user_table(result)
        errors = "".join(
            f"<div style='color:#d62728'>{html.escape(a)}: {html.escape(m)}</div>" for a, m in result.errors.items()
        )
        waiting = [a for a in s.accountants if a not in result.curves and a not in result.errors]
        if result.noise_multiplier is not None and result.user_epsilon is None and USER_LEVEL not in result.errors:
            waiting.append("user-level ε")
        self.status.value = (
            errors
            + (
                f"<span style='color:#555'>q = {s.sample_rate:.4g}, {s.epochs:.3g} epochs, "
                f"δ = {s.delta:.0e}{'' if s.delta < 1 / s.dataset_size else ' — δ is not below 1/N!'}; "
                f"ε for neighbouring datasets with {relation_text(result.neighboring, 'example')}"
                + (
                    "; Edgeworth is an approximation: PLD sets σ"
                    if "edgeworth" in s.accountants and s.mode == TARGET
                    else ""
                )
                + "</span>"
            )
            + (f"<br><i style='color:#777'>computing {', '.join(waiting)}…</i>" if busy and waiting else "")
        )

    @staticmethod
    def _table(result: PlannerResult) -> str:
        s = result.settings
        cell = "border:1px solid #ddd;padding:3px 8px;text-align:right;"
        expected = s.sample_rate * s.dataset_size
        rows = []
        for acc in s.accountants:
            sigma = result.sigma_needed.get(acc) if s.mode == TARGET else result.noise_multiplier
            eps = result.epsilon.get(acc)
            if sigma is None and eps is None:
                continue
            std = sigma * s.max_grad_norm if sigma is not None else None
            rows.append(
                "<tr>"
                + "".join(
                    f"<td style='{cell}'>{v}</td>"
                    for v in (
                        html.escape(accountant_label(acc)),
                        f"{sigma:.4g}" if sigma is not None else "–",
                        fmt_eps(eps) if s.mode == NOISE else fmt_eps(s.target_epsilon),
                        f"{std:.4g}" if std is not None else "–",
                        f"{std / expected:.3g}" if std is not None else "–",
                    )
                )
                + "</tr>"
            )
        if not rows:
            return "<i style='color:#777'>no accountant selected</i>"
        head = "".join(
            f"<th style='{cell}background:#f5f5f5'>{h}</th>"
            for h in (
                "accountant",
                "noise multiplier σ",
                f"ε after {s.steps:,} steps",
                "noise std σC (on the sum)",
                "noise std σC/(qN) (on the update)",
            )
        )
        return f"<table style='border-collapse:collapse;font-size:12px'><tr>{head}</tr>{''.join(rows)}</table>"

    @staticmethod
    def _user_table(result: PlannerResult) -> str:
        """Example-level epsilon, user-level epsilon (ELS) and the group-privacy bound, one row each."""
        s = result.settings
        if result.noise_multiplier is None:
            return "<i style='color:#777'>no noise multiplier</i>"
        if result.user_epsilon is None or result.group_bound is None:
            text = html.escape(result.errors.get(USER_LEVEL, "computing user-level ε…"))
            return f"<i style='color:#777'>{text}</i>"
        cell = "border:1px solid #ddd;padding:3px 8px;text-align:right;"
        k = s.max_examples_per_user
        eps_k, delta_k = result.group_bound
        rows = [
            (f"one example ({accountant_label(s.selected)})", fmt_eps(result.example_epsilon), f"{s.delta:.0e}"),
            (
                f"<b>one user, up to k = {k}</b> (ELS, mixture-of-Gaussians PLD)",
                f"<b>{fmt_eps(result.user_epsilon)}</b>",
                f"{s.delta:.0e}",
            ),
            (
                "one user, group-privacy bound (k ε at δ_k)",
                fmt_eps(eps_k),
                "1 (vacuous)" if delta_k >= 1 else f"{delta_k:.2g}",
            ),
        ]
        heads = ("protects", f"ε after {s.steps:,} steps", "δ")
        head = "".join(f"<th style='{cell}background:#f5f5f5'>{h}</th>" for h in heads)
        body = "".join("<tr>" + "".join(f"<td style='{cell}'>{v}</td>" for v in row) + "</tr>" for row in rows)
        note = "k = 1: user-level equals example-level." if k == 1 else f"Each user keeps at most {k} examples."
        return (
            f"<table style='border-collapse:collapse;font-size:12px'><tr>{head}</tr>{body}</table>"
            f"<div style='color:#555;font-size:12px'>{note}</div>"
        )
