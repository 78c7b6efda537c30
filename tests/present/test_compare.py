"""DP-aware comparison (present/compare.py, `workbench compare`): grouping with seeds aggregated against a
direct numpy computation, curves aligned by epsilon spent, the Pareto front, the frontier and
parallel-coordinates figures, the group table with the resolved privacy values, and the JSON report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sweep_helpers import synthetic_run, synthetic_sweep
from typer.testing import CliRunner

from workbench.cli import app
from workbench.present.compare import (
    CompareError,
    align_curves,
    comparison_report,
    differing_keys,
    frontier_figure,
    frontier_points,
    group_band,
    group_runs,
    group_table,
    grouped_figure,
    load_views,
    parcoords_figure,
    pareto_front,
    resolve_runs,
    run_curve,
    spread,
)
from workbench.store.runs import RunStore

# (label, overrides, synthetic kwargs): two clipping norms x two epsilons x two seeds
RUNS = [
    (
        f"eps{eps}-C{c}-s{seed}",
        {"target_epsilon": float(eps), "max_grad_norm": c, "seed": seed},
        {
            "eps_final": float(eps),
            "sigma": 2.0 / eps,
            "losses": [3.0 / s + 0.1 * seed + c for s in range(1, 11)],
            "evals": ((5, 2.0 + c, 0.4 + 0.02 * eps + 0.01 * seed), (10, 1.5 + c, 0.5 + 0.02 * eps + 0.02 * seed)),
        },
    )
    for eps in (2, 8)
    for c in (0.1, 1.0)
    for seed in (0, 1)
]


@pytest.fixture
def sweep_views():
    store = RunStore()
    synthetic_sweep(store, "grid", RUNS)
    return store, load_views(store, resolve_runs(store, ["grid"]))


def test_runs_group_by_the_settings_that_differ_with_seeds_aggregated(sweep_views):
    store, views = sweep_views
    assert len(views) == 8 and [v.label for v in views][:2] == ["eps2-C0.1-s0", "eps2-C0.1-s1"]
    assert differing_keys(views) == ["target_epsilon", "max_grad_norm", "seed"]
    groups = group_runs(views)
    assert [g.label for g in groups] == ["eps2-C0.1", "eps2-C1", "eps8-C0.1", "eps8-C1"]
    assert all(len(g.runs) == 2 for g in groups)
    assert [g.label for g in group_runs(views, by=["max_grad_norm"])] == ["C0.1", "C1"]
    with pytest.raises(CompareError, match="not a setting"):
        group_runs(views, by=["bogus"])
    # the group's loss band against numpy over its runs' own losses (same steps: no interpolation)
    band = group_band(groups[1], "loss", "step", band="sd")
    losses = np.array([[3.0 / s + 0.1 * seed + 1.0 for s in range(1, 11)] for seed in (0, 1)])
    assert band.x.tolist() == list(range(1, 11)) and band.runs == 2
    np.testing.assert_allclose(band.mean, losses.mean(axis=0))
    np.testing.assert_allclose(band.hi - band.mean, losses.std(axis=0, ddof=1))
    minmax = group_band(groups[1], "loss", "step", band="minmax")
    np.testing.assert_allclose(minmax.lo, losses.min(axis=0))
    np.testing.assert_allclose(minmax.hi, losses.max(axis=0))
    mean, lo, hi = spread(np.array([[1.0, 2.0]]))  # one run: no spread
    assert mean.tolist() == [1.0, 2.0] and lo.tolist() == hi.tolist() == [1.0, 2.0]


def test_curves_align_on_a_common_epsilon_grid():
    store = RunStore()
    # the same loss as a function of epsilon spent, two runs that spend it at different rates
    synthetic_run(
        store, "20260101-000000-aaaaaa", eps_final=2.0, losses=[5 - 2.0 * math.sqrt(s / 10) for s in range(1, 11)]
    )
    synthetic_run(
        store, "20260101-000000-bbbbbb", eps_final=4.0, losses=[5 - 4.0 * math.sqrt(s / 10) for s in range(1, 11)]
    )
    views = load_views(store, ["20260101-000000-aaaaaa", "20260101-000000-bbbbbb"])
    curves = [run_curve(v, "loss", "epsilon") for v in views]
    np.testing.assert_allclose(curves[0][1], 5 - curves[0][0])
    grid, values = align_curves(curves, points=20)
    # the common range is where both runs have points: from the larger first epsilon to the smaller last
    assert grid[0] == pytest.approx(4.0 * math.sqrt(0.1)) and grid[-1] == pytest.approx(2.0) and len(grid) == 10
    # both are loss = 5 - epsilon, linear between their points, so both interpolate to the same line
    np.testing.assert_allclose(values[0], 5 - grid, atol=1e-12)
    np.testing.assert_allclose(values[1], 5 - grid, atol=1e-12)
    # by step they differ; the interpolation matches np.interp of each run
    g2, v2 = align_curves(
        [(np.array([0.0, 1.0, 3.0]), np.array([0.0, 1.0, 0.0])), (np.array([0.5, 2.0]), np.array([1.0, 1.0]))], points=4
    )
    np.testing.assert_allclose(g2, np.linspace(0.5, 2.0, 3))
    np.testing.assert_allclose(v2[0], np.interp(g2, [0.0, 1.0, 3.0], [0.0, 1.0, 0.0]))
    # tokens seen and wall time are axes too; equal xs are merged, empty curves skipped
    xs, _ = run_curve(views[0], "loss", "tokens")
    assert xs.tolist() == [100.0 * s for s in range(1, 11)]
    xs, _ = run_curve(views[0], "val_loss", "time")
    assert xs.tolist() == [10.0, 20.0]
    g3, v3 = align_curves([(np.array([0.0, 0.0, 1.0]), np.array([1.0, 3.0, 4.0])), (np.array([]), np.array([]))])
    assert g3.tolist() == [0.0, 1.0] and v3.tolist() == [[2.0, 4.0]]
    with pytest.raises(CompareError, match="x axis"):
        run_curve(views[0], "loss", "bogus")


def test_pareto_front_marks_the_points_nothing_beats():
    assert pareto_front([(1, 0.5), (2, 0.7), (3, 0.6), (2, 0.7)], maximize=True) == [True, True, False, True]
    # a loss: lower is better
    assert pareto_front([(1, 2.0), (2, 1.0), (3, 1.5), (0.5, 3.0)], maximize=False) == [True, True, False, True]
    assert pareto_front([(1.0, float("nan"))], maximize=True) == [False]
    # brute force on random points: a point is on the front iff no other is at least as good in both and better in one
    rng = np.random.default_rng(0)
    pts = [tuple(p) for p in rng.random((40, 2))]
    flags = pareto_front(pts, maximize=True)
    for (e, m), flag in zip(pts, flags):
        beaten = any((e2 <= e and m2 >= m and (e2 < e or m2 > m)) for e2, m2 in pts)
        assert flag == (not beaten)


def test_frontier_has_error_bars_over_seeds_and_draws_the_front(sweep_views):
    _, views = sweep_views
    groups = group_runs(views)
    points = frontier_points(groups)
    assert [p.group for p in points] == ["eps2-C0.1", "eps2-C1", "eps8-C0.1", "eps8-C1"]
    accs = [0.5 + 0.02 * 8 + 0.02 * seed for seed in (0, 1)]
    p = points[2]
    assert p.metric == pytest.approx(np.mean(accs)) and p.metric_sd == pytest.approx(np.std(accs, ddof=1))
    assert p.epsilon == pytest.approx(8.0) and p.runs == 2 and p.statuses == {"finished": 2}
    # accuracy only depends on epsilon here: every group is on the front (ties in both coordinates)
    assert [q.pareto for q in points] == [True, True, True, True]
    fig = frontier_figure(groups)
    dots, front = fig.data
    assert list(dots.error_y.array) == pytest.approx([q.metric_sd for q in points])
    assert front.name == "Pareto front" and len(front.x) == 4
    assert "error bars" in fig.layout.title.text


def test_parallel_coordinates_over_the_swept_settings(sweep_views):
    _, views = sweep_views
    fig = parcoords_figure(views)
    (trace,) = fig.data
    assert trace.type == "parcoords"
    labels = [d.label for d in trace.dimensions]
    assert labels == ["target_epsilon", "max_grad_norm", "seed", "final ε", "accuracy"]
    assert list(trace.dimensions[0]["values"]) == [2.0] * 4 + [8.0] * 4
    assert list(trace.line.color) == pytest.approx([v.last_eval.accuracy for v in views])
    # text settings become categories with their names as ticks
    store = RunStore()
    synthetic_run(store, "20260101-000000-cccccc", allocation="uniform")
    synthetic_run(store, "20260101-000000-dddddd", allocation="adaptive")
    synthetic_run(store, "20260101-000000-eeeeee", allocation="uniform", seed=1)
    ids = ["20260101-000000-cccccc", "20260101-000000-dddddd", "20260101-000000-eeeeee"]
    (trace,) = parcoords_figure(load_views(store, ids)).data
    alloc = next(d for d in trace.dimensions if d.label == "allocation")
    assert list(alloc.ticktext) == ["uniform", "adaptive"] and list(alloc["values"]) == [0, 1, 0]


def test_grouped_figure_and_table_show_the_resolved_privacy_values(sweep_views):
    _, views = sweep_views
    groups = group_runs(views)
    fig = grouped_figure(groups, "val_loss", "epsilon", band="sd")
    means = [t for t in fig.data if t.name and "(n=2)" in t.name]
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(means) == 4 and len(bands) == 4
    table = group_table(views)
    assert table.headers[:3] == ["group", "target_epsilon", "max_grad_norm"]
    for col in ("σ", "q", "δ", "relation", "status", "ε", "val_loss", "accuracy"):
        assert col in table.headers
    row = dict(zip(table.headers, table.rows[0]))
    assert row["σ"] == "1" and row["q"] == "0.02" and row["relation"] == "replace_one" and row["status"] == "2 finished"
    assert row["val_loss"] == "1.6 ± 0"
    assert row["accuracy"].startswith("0.55 ± 0.014")


def test_compare_report_and_cli_json(sweep_views):
    store, views = sweep_views
    report = comparison_report(views, x="epsilon")
    json.dumps(report)  # plain JSON
    assert report["metric"] == "accuracy" and len(report["groups"]) == 4
    curve = report["groups"][0]["curves"]["loss"]
    assert curve["runs"] == 2 and len(curve["x"]) == len(curve["mean"]) <= 50
    result = CliRunner().invoke(app, ["compare", "grid", "--json", "--by", "target_epsilon"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [g["group"] for g in out["groups"]] == ["eps2", "eps8"]
    assert [p["pareto"] for p in out["frontier"]] == [True, True]
    text = CliRunner().invoke(app, ["compare", "grid", views[0].run_id[:18]])
    assert text.exit_code == 0 and "Pareto front" in text.output
    assert CliRunner().invoke(app, ["compare", "grid", "--x", "nope"]).exit_code == 2


# -- the app's Compare tab and the notebook widget ------------------------------------------------


def test_app_compare_tab_groups_a_sweep(ctx):
    pytest.importorskip("gradio")
    from workbench.app import compare as compare_tab

    synthetic_sweep(ctx.store, "grid", RUNS)
    assert compare_tab.sweep_choices(ctx) == [("grid (8/8 finished)", "grid")]
    ids = compare_tab.sweep_runs(ctx, "grid")
    assert len(ids) == 8 and compare_tab.sweep_runs(ctx, "nope") == []
    assert compare_tab.expand(ctx, ["sweep:grid", ids[0]]) == ids  # the picker's sweep entry stands for its runs
    assert compare_tab.group_choices(ctx, ids) == ["target_epsilon", "max_grad_norm", "seed"]
    loss, metric, frontier, parcoords, table, msg = compare_tab.compare_groups(ctx, ids, [], "epsilon", "sd")
    assert msg == "" and [row[0] for row in table["data"]] == ["eps2-C0.1", "eps2-C1", "eps8-C0.1", "eps8-C1"]
    assert "σ" in table["headers"] and frontier.data[-1].name == "Pareto front"
    assert parcoords.data[0].type == "parcoords" and "ε spent" in loss.layout.xaxis.title.text
    loss, _, _, _, table, _ = compare_tab.compare_groups(ctx, ids, ["target_epsilon"], "tokens", "minmax", True, True)
    assert loss.layout.yaxis.type == "log" and loss.layout.xaxis.title.text == "tokens seen"
    assert [row[0] for row in table["data"]] == ["eps2", "eps8"]
    assert "two or more" in compare_tab.compare_groups(ctx, ids[:1])[-1]
    assert "not a setting" in compare_tab.compare_groups(ctx, ids, ["bogus"])[-1]
    # the existing overlay still works on a sweep's runs
    assert compare_tab.compare(ctx, ids)[-1] == ""


def test_widget_compares_a_sweep_by_group(ctx):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("anywidget")
    from workbench.widgets import compare

    synthetic_sweep(ctx.store, "grid", RUNS)
    cmp = compare("grid", store=ctx.store, group_by=["max_grad_norm"], x="step")
    assert len(cmp.views) == 8 and cmp.group_by.value == ("max_grad_norm",)
    assert [g.label for g in cmp.groups] == ["C0.1", "C1"]
    assert [t.name for t in cmp.figures["group_loss"].data if t.fill != "toself"] == ["C0.1 (n=4)", "C1 (n=4)"]
    assert cmp.figures["parcoords"].data[0].type == "parcoords"
    cmp.group_by.value = ()
    assert len(cmp.groups) == 4 and "eps8-C1" in cmp.groups_table.value
    cmp.x_axis.value = "epsilon"
    assert cmp.figures["group_loss"].layout.xaxis.title.text == "ε spent"
    with pytest.raises(CompareError):
        compare(["nope"], store=ctx.store)
