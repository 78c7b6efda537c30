"""The presentation layer's pure functions (workbench/present): figures, views, progress, tables.
No gradio, no browser: synthetic events in, plotly figures and plain data out."""

from __future__ import annotations

import math

import numpy as np
import pytest
from factories import MODULES, NBINS, evaluation, fake_run, free_port, started, step  # noqa: E402,F401

from workbench.events import RunEnded
from workbench.present import (
    RunView,
    compare_figures,
    downsample,
    epsilon_figure,
    grad_norm_heatmap,
    grad_norm_histogram,
    loss_figure,
    noise_allocation_figure,
    panels,
    plan_figure,
    privacy_utility_scatter,
    progress,
    settings_diff_table,
)


def trace_points(fig) -> int:
    return max(len(t.x) for t in fig.data if t.x is not None)


# -- present: pure functions ----------------------------------------------------------------------


def test_downsample_keeps_ends_and_bounds_points():
    xs = np.arange(10_001)
    x, y = downsample(xs, xs * 2.0, n=2000)
    assert len(x) <= 2000 and x[0] == 0 and x[-1] == 10_000
    assert np.all(np.diff(x) > 0) and np.array_equal(y, x * 2)
    x, _ = downsample([1, 2, 3], [4, 5, 6])
    assert x.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="differ in length"):
        downsample([1, 2], [1])


def test_runview_incremental_equals_batch_and_keeps_only_latest_module_dicts():
    events = [
        started(),
        *[step(s) for s in range(1, 6)],
        evaluation(5),
        RunEnded(run_id="r1", status="stopped", reason="", summary={}),
    ]
    batch = RunView.from_events("r1", list(enumerate(events, 1)))
    live = RunView(run_id="r1")
    for seq, e in enumerate(events, 1):
        assert live.add(e, seq=seq)
    assert not live.add(events[0], seq=1)  # a replayed seq is ignored
    assert [s.step for s in live.steps] == [s.step for s in batch.steps] == [1, 2, 3, 4, 5]
    assert live.status == "stopped" and live.last_seq == len(events)
    assert all(not s.module_noise_std for s in live.steps[:-1]) and live.latest_step.module_noise_std
    assert live.final_epsilon == pytest.approx(0.5) and live.metric() == ("accuracy", 0.5)
    no_acc = RunView.from_events("r2", [evaluation(1, "r2", accuracy=None, val_loss=1.25)])
    assert no_acc.metric() == ("val_loss", 1.25)


def test_loss_figure_downsamples_long_runs_and_skips_empty_batches():
    steps = [step(s, loss=float("nan") if s == 3 else 1.0 / s) for s in range(1, 5001)]
    fig = loss_figure(steps, [evaluation(100), evaluation(5000)])
    assert all(len(t.x) <= 2000 for t in fig.data)
    raw = fig.data[0]
    assert raw.x[0] == 1 and raw.x[-1] == 5000 and 3 not in raw.x
    assert fig.layout.xaxis.title.text == "step" and "loss" in fig.layout.yaxis.title.text
    assert fig.data[-1].name == "validation" and list(fig.data[-1].x) == [100, 5000]


def test_epsilon_figure_shows_spent_planned_and_target():
    fig = epsilon_figure([step(s) for s in range(1, 11)], started().planned_epsilon, 8.0, accountant="edgeworth")
    names = [t.name for t in fig.data]
    assert names == ["planned", "spent"]
    assert fig.data[1].y[-1] == pytest.approx(1.0)
    assert any(s.y0 == 8.0 and s.y1 == 8.0 for s in fig.layout.shapes)  # the target line
    assert "approximation" in fig.layout.title.text
    nonpriv = epsilon_figure([step(1, eps=math.inf)], [], None)
    assert "non-private" in nonpriv.layout.annotations[0].text


def test_grad_norm_histogram_marks_clip_and_fraction():
    hist = [0] * NBINS
    hist[5], hist[15], hist[-1] = 3, 1, 2
    fig = grad_norm_histogram(step(7, hist=hist), clip_norm=0.5)
    bars = fig.data[0]
    assert list(bars.y) == hist and "25% clipped" in fig.layout.title.text and "step 7" in fig.layout.title.text
    assert any(s.x0 == 1.0 and s.x1 == 1.0 for s in fig.layout.shapes)  # clip line at 1 C
    assert "C = 0.5" in fig.layout.xaxis.title.text
    assert "no examples" in grad_norm_histogram(None, 1.0).layout.annotations[0].text


def test_grad_norm_heatmap_columns_are_fractions_and_bounded():
    fig = grad_norm_heatmap([step(s) for s in range(1, 1001)], max_columns=100)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (NBINS, 100)
    assert np.allclose(z.sum(axis=0), 1.0)
    assert fig.data[0].x[-1] == 1000


def test_noise_allocation_has_one_bar_per_module():
    fig = noise_allocation_figure(step(3), {m: 100 for m in MODULES})
    snr, noise = fig.data  # signal to noise (top), the noise allocation (bottom): tests/present/test_diagnostics.py
    assert list(noise.x) == ["layers.0.q_proj", "layers.0.v_proj", "layers.1.q_proj", "layers.1.v_proj"]
    assert list(noise.y) == [0.5, 1.0, 1.5, 2.0] and [c[1] for c in snr.customdata] == [1.0, 2.0, 3.0, 4.0]
    assert list(noise.customdata) == MODULES and "Signal to noise per LoRA module" in fig.layout.title.text


def test_live_panels_skip_plotlys_per_label_overflow_check():
    """Plotly's default tick-label overflow check forces a browser layout per label per redraw
    (a fifth of a watching browser's time); every axis and colour bar of the live panels opts out."""
    view = RunView.from_events("r1", [started(), *(step(s) for s in range(1, 11)), evaluation(10)])
    for fig in panels(view).values():
        layout = fig.to_plotly_json()["layout"]
        axes = [k for k in layout if k.startswith(("xaxis", "yaxis"))]
        assert axes and all(layout[k].get("ticklabeloverflow") == "allow" for k in axes), (fig.layout.title.text, axes)
        for trace in fig.data:
            if trace.type == "heatmap":
                assert trace.colorbar.ticklabeloverflow == "allow"


def test_plan_figure_labels_edgeworth_as_approximation():
    curves = {a: [(s, 0.1 * s) for s in range(0, 101, 10)] for a in ("rdp", "prv", "pld", "edgeworth")}
    fig = plan_figure(curves, 8.0, noise_multiplier=1.2, selected="pld")
    names = [t.name for t in sorted(fig.data, key=lambda t: t.legendrank)]
    assert names == ["RDP", "PRV", "PLD  ← selected", "Edgeworth (approximation)"]
    assert fig.data[0].name.startswith("PLD")  # drawn first: underneath the others
    assert any(s.y0 == 8.0 for s in fig.layout.shapes) and "1.2" in fig.layout.title.text


def test_compare_and_scatter_pick_metric_and_place_nonprivate_runs():
    a = RunView.from_events("a", [started("a"), step(1, "a", eps=2.0), evaluation(1, "a", accuracy=0.7)], name="A")
    b = RunView.from_events("b", [started("b"), step(1, "b", eps=math.inf), evaluation(1, "b", accuracy=0.9)], name="B")
    loss, eps = compare_figures([a, b])
    assert {t.name for t in loss.data} >= {"A", "B"}
    assert [t.name for t in eps.data] == ["A", "B (non-private, ε = ∞)"]
    scatter = privacy_utility_scatter([a, b])
    assert "accuracy" in scatter.layout.title.text
    (xa,), (xb,) = scatter.data[0].x, scatter.data[1].x
    assert xa == 2.0 and xb > xa  # ∞ drawn at the right edge
    c = RunView.from_events("c", [started("c"), step(1, "c"), evaluation(1, "c", accuracy=None)])
    assert "validation loss" in privacy_utility_scatter([a, c]).layout.title.text


def test_settings_diff_table_lists_only_differences():
    table = settings_diff_table(
        {"A": {"lr": 1, "r": 8, "name": "A", "cols": {"x": 1}}, "B": {"lr": 2, "r": 8, "name": "B", "cols": {"x": 2}}}
    )
    assert table.headers == ["setting", "A", "B"]
    assert table.rows == [["lr", 1, 2], ["cols", '{"x": 1}', '{"x": 2}']]


def test_progress_eta_from_step_rate():
    p = progress(started(steps=30, t0=1000.0), step(10, t0=1000.0), now=1025.0)  # step 10 at t=1020
    assert p["fraction"] == pytest.approx(1 / 3)
    assert p["eta"] == pytest.approx(20 * 2.0 - 5.0)  # 2 s per step, 5 s already since the last step
    assert p["epsilon"] == pytest.approx(1.0) and "ε = 1" in p["text"] and "of 8" in p["text"]
    assert progress(None, None, now=0)["text"] == "waiting to start"


def test_present_does_not_import_gradio():
    import subprocess
    import sys

    code = "import sys, workbench.present, workbench.app; assert 'gradio' not in sys.modules, 'gradio imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
