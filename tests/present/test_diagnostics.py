"""What a tuner reads off a run (workbench/present/diagnostics.py and its users): the gradient norms on a log scale in
units of C, the per-module signal to noise in comparable units, the telemetry note, the untuned baseline beside the
run's metric and the sentence on what epsilon protects. Synthetic events in, rows, figures and text out."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from factories import MODULES, NBINS, evaluation, started, step

from workbench.app.live import header_html
from workbench.engine.trainer import log_norm_telemetry
from workbench.events import GRAD_NORM_LOG_BIN_EDGES, RunEnded, StepMetrics, event_from_dict
from workbench.planning.wording import epsilon_sentence
from workbench.present import TELEMETRY_NOTE, RunView, baseline_text, panels
from workbench.present.figures import grad_norm_heatmap, grad_norm_histogram, noise_allocation_figure
from workbench.present.live import LOG_BINS, module_row, rows

LOG_NBINS = len(GRAD_NORM_LOG_BIN_EDGES) + 1  # underflow, 16 bins, overflow
DIMS = {m: 512 * (i + 1) for i, m in enumerate(MODULES)}


def log_step(s: int, norms, *, clip: float = 1.0, **kw) -> StepMetrics:
    """A step as the trainer now writes it: the log histogram and the median of ``norms`` (raw, not / C)."""
    norms = np.asarray(norms, dtype=float)
    return dataclasses.replace(
        step(s, **kw),
        batch_size=len(norms),
        grad_norm_max=float(np.nanmax(norms)),
        clipped_fraction=float(np.mean(norms > clip)),
        **log_norm_telemetry(norms, clip),
    )


def test_the_log_histogram_sums_to_the_batch_and_bins_12_C_and_a_thousandth_of_C():
    clip = 0.1
    rng = np.random.default_rng(0)
    norms = np.concatenate([clip * rng.lognormal(0.0, 2.0, 200), [12 * clip, 0.001 * clip, 0.0, 150 * clip, np.nan]])
    out = log_norm_telemetry(norms, clip)
    hist = out["grad_norm_log_hist"]
    assert len(hist) == LOG_NBINS and sum(hist) == len(norms)
    one = lambda x: log_norm_telemetry(np.array([x * clip]), clip)["grad_norm_log_hist"]  # noqa: E731
    # bin k (1..16) holds [E[k-1], E[k]); 12 C lies in [10 C, 17.8 C), the 13th edge pair
    assert GRAD_NORM_LOG_BIN_EDGES[12] <= 12 < GRAD_NORM_LOG_BIN_EDGES[13] and one(12).index(1) == 13
    assert one(0.001).index(1) == 0 and one(0.0).index(1) == 0  # the underflow bin, below 0.01 C
    assert one(150).index(1) == LOG_NBINS - 1 and one(float("nan")).index(1) == LOG_NBINS - 1  # the overflow bin
    assert one(1.0).index(1) == 9 and one(0.99).index(1) == 8  # C itself opens the first bin at or above C
    # the median, in units of C, against numpy's of the finite norms alone (the NaN sorts above all of them)
    finite = np.sort(norms[np.isfinite(norms)] / clip)
    assert out["grad_norm_median"] == pytest.approx(float(np.median(np.append(finite, np.inf))))
    assert log_norm_telemetry(np.array([]), clip) == {"grad_norm_log_hist": [0] * LOG_NBINS, "grad_norm_median": None}
    assert log_norm_telemetry(np.array([0.3, 0.5, 0.9]), None)["grad_norm_median"] == pytest.approx(0.5)


def test_the_histogram_is_on_a_log_axis_in_units_of_C_with_median_clipped_and_max_in_the_title():
    clip = 0.1
    norms = clip * np.array([0.5, 0.8, 0.8, 1.5, 12.0])
    s = log_step(7, norms, clip=clip)
    fig = grad_norm_histogram(s, clip)
    title = fig.layout.title.text
    assert title.startswith("Per-example gradient norms, step 7: median 0.8 C · 40% clipped · max 12 C")
    bars = fig.data[0]
    assert list(bars.y) == s.grad_norm_log_hist and sum(bars.y) == 5
    assert list(bars.x) == pytest.approx([(lo + hi) / 2 for lo, hi in LOG_BINS])  # log10(norm / C)
    assert list(fig.layout.xaxis.ticktext) == ["0.01", "0.1", "1", "10", "100"]
    assert list(fig.layout.xaxis.tickvals) == [-2, -1, 0, 1, 2]
    assert any(sh.x0 == 0.0 and sh.x1 == 0.0 for sh in fig.layout.shapes)  # the C line at log10(1)
    assert "C = 0.1" in fig.layout.xaxis.title.text and "log" in fig.layout.xaxis.title.text
    heat = grad_norm_heatmap([log_step(t, norms * t, clip=clip) for t in range(1, 6)])
    z = np.asarray(heat.data[0].z)
    assert z.shape == (LOG_NBINS, 5) and np.allclose(z.sum(axis=0), 1.0)
    assert list(heat.layout.yaxis.ticktext) == ["0.01", "0.1", "1", "10", "100"]
    row = rows([(1, started()), (2, s)])["steps"][0]
    assert row["loghist"] == s.grad_norm_log_hist and row["median"] == pytest.approx(0.8) and "hist" not in row
    assert rows([(1, started())])["started"]["log_bins"] == LOG_BINS and len(LOG_BINS) == LOG_NBINS


def test_runs_stored_before_the_log_bins_still_render_on_their_linear_bins():
    old = step(4)  # the factory's step: linear grad_norm_hist only, as runs stored before
    stored = old.to_dict()
    for key in ("grad_norm_log_hist", "grad_norm_median"):
        stored.pop(key)
    assert event_from_dict(stored) == old  # an old stored event reads, with the new fields' defaults
    assert old.grad_norm_log_hist == [] and old.grad_norm_median is None
    fig = grad_norm_histogram(old, 1.0)
    assert list(fig.data[0].y) == old.grad_norm_hist and list(fig.layout.xaxis.range) == [0, 3.15]
    assert "25% clipped · max 1.3 C" in fig.layout.title.text and "median" not in fig.layout.title.text
    heat = grad_norm_heatmap([step(t) for t in range(1, 4)])
    assert np.asarray(heat.data[0].z).shape == (NBINS, 3)
    started_old = started()
    stored_started = started_old.to_dict()
    stored_started.pop("module_dims")
    assert event_from_dict(stored_started).module_dims == {}
    out = rows([(1, started_old), (2, old)])
    assert out["steps"][0]["hist"] == old.grad_norm_hist and "loghist" not in out["steps"][0]
    assert out["modules"]["snr"] == [None] * 4 and out["modules"]["noise"] == [0.5, 1.0, 1.5, 2.0]
    noise = noise_allocation_figure(old, None)
    assert any("no module sizes" in a.text for a in noise.layout.annotations)
    script = (Path(__file__).parents[2] / "workbench" / "app" / "dashboard.js").read_text()
    assert "last.hist && !last.loghist" in script  # the page picks the linear axis for such rows


def test_signal_to_noise_is_the_clipped_sums_norm_over_the_expected_noise_norm():
    s = step(3)  # module_grad_norm 1, 2, 3, 4; module_noise_std 0.5, 1.0, 1.5, 2.0 (per coordinate)
    by_hand = [s.module_grad_norm[m] / (math.sqrt(DIMS[m]) * s.module_noise_std[m]) for m in MODULES]
    st = dataclasses.replace(started(), module_dims=DIMS)
    row = module_row(s, DIMS)
    assert row["snr"] == pytest.approx(by_hand) and row["grad"] == [1.0, 2.0, 3.0, 4.0]
    assert row["noise_norm"] == pytest.approx([math.sqrt(DIMS[m]) * s.module_noise_std[m] for m in MODULES])
    assert row["noise"] == [0.5, 1.0, 1.5, 2.0]  # the allocation stays visible
    assert rows([(1, st), (2, s)])["modules"]["snr"] == pytest.approx(by_hand)
    later = rows([(3, step(4))], started=st)  # a page that already holds the run's first rows
    assert later["started"] is None and later["modules"]["snr"][0] == pytest.approx(1.0 / (math.sqrt(512) * 0.5))
    fig = noise_allocation_figure(s, DIMS)
    snr, noise = fig.data
    assert list(snr.y) == pytest.approx(np.log10(by_hand)) and list(noise.y) == [0.5, 1.0, 1.5, 2.0]
    assert [c[3] for c in snr.customdata] == pytest.approx(by_hand)
    assert "SNR" in snr.name and "σ_l C_l" in noise.name and "noise std per coordinate" in fig.layout.yaxis2.title.text
    assert f"median SNR {float(np.median(by_hand)):.2g}" in fig.layout.title.text
    view = RunView.from_events("r1", [st, s])
    assert list(panels(view)["noise_allocation"].data[0].y) == pytest.approx(np.log10(by_hand))
    nonprivate = dataclasses.replace(s, module_noise_std={m: 0.0 for m in MODULES})
    assert module_row(nonprivate, DIMS)["snr"] == [None] * 4


def test_the_telemetry_note_is_in_the_rows_and_on_every_chart_of_telemetry():
    st = dataclasses.replace(started(), module_dims=DIMS)
    assert rows([(1, st)])["started"]["telemetry_note"] == TELEMETRY_NOTE
    assert "not covered by ε" in TELEMETRY_NOTE and "data owner" in TELEMETRY_NOTE
    s = log_step(2, [0.5, 2.0])
    view = RunView.from_events("r1", [st, step(1), s, evaluation(2)])
    figures = panels(view)
    for name in ("grad_norms", "grad_norm_evolution", "noise_allocation"):
        assert "not covered by ε" in figures[name].layout.title.text, name
    assert "not covered" not in figures["loss"].layout.title.text
    script = (Path(__file__).parents[2] / "workbench" / "app" / "dashboard.js").read_text()
    assert script.count("caption: telemetry(r)") == 3  # the page's histogram, heatmap and noise panel


def test_the_header_shows_the_untuned_baseline_and_what_epsilon_protects():
    view = RunView.from_events("r1", [started(), evaluation(0, accuracy=0.27, val_loss=2.31), step(1), step(2)])
    header = header_html(view, "running", None, now=1010.0)
    assert "untuned accuracy 0.27" in header
    assert "ε = 0.2 at δ = 1e-5 bounds how much one example added or removed can change" in header
    view.add(evaluation(2, accuracy=0.41, val_loss=1.5))
    assert "accuracy 0.41 (untuned 0.27, +0.14)" in header_html(view, "running", None, now=1010.0)
    assert "untuned" not in header_html(
        RunView.from_events("r2", [started("r2"), step(1, "r2")]), "running", None, now=0
    )


def test_baseline_text_and_the_epsilon_sentence():
    assert baseline_text({"accuracy": 0.41, "val_loss": 1.2}, {"accuracy": 0.27, "val_loss": 2.3}) == (
        "accuracy 0.41 (untuned 0.27, +0.14) · val_loss 1.2 (untuned 2.3, -1.1)"
    )
    assert baseline_text({"val_loss": 1.2, "accuracy": None}, {"val_loss": 2.3, "accuracy": None}) == (
        "val_loss 1.2 (untuned 2.3, -1.1)"
    )
    assert baseline_text({"accuracy": 0.4}, None) == ""
    example = epsilon_sentence(7.9, delta=1e-5, unit="example", neighboring="replace_one")
    assert example.startswith("ε = 7.9 at δ = 1e-5 bounds how much one example replaced by another can change")
    assert "not covered" in example
    user = epsilon_sentence(
        9.1, delta=1e-5, unit="user", neighboring="add_remove", max_examples_per_user=8, example_epsilon=7.9
    )
    assert (
        "ε = 9.1" in user
        and "one user added or removed (all of their examples, at most 8; one example alone: ε = 7.9)" in user
    )
    assert "non-private" in epsilon_sentence(math.inf, delta=1e-5, unit="example", neighboring="add_remove")
    assert "does not hold" in epsilon_sentence(1.0, delta=1e-5, unit="example", neighboring="add_remove", seeded=True)
    assert epsilon_sentence(None, delta=1e-5, unit="example", neighboring="add_remove") == ""
    ended = RunEnded(run_id="r1", status="finished", reason="", summary={"example_level_epsilon": 7.9})
    st = dataclasses.replace(started(), privacy_unit="user", config={"max_grad_norm": 1.0, "max_examples_per_user": 8})
    header = header_html(RunView.from_events("r1", [st, step(1), ended]), "finished", None, now=0)
    assert "one user added or removed (all of their examples, at most 8; one example alone: ε = 7.9)" in header


def test_the_prefix_cache_line_every_surface_shows():
    """The one line (present.diagnostics.prefix_cache_text) the CLI's summary, the app's header and the notebook
    dashboard show: its doctest cases, the header's form and the summary's."""
    import doctest

    import workbench.present.diagnostics as diagnostics

    result = doctest.testmod(diagnostics)
    assert result.attempted >= 3 and result.failed == 0
